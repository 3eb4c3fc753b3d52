"""The package's data files (the presets, the job-type register, the instance catalogue, the
white paper's profiles) as Python values.

In the source tree they are YAML, with their comments, for people to read and review. The layer's
build (``layers/cryopilot/Makefile``) writes each one's JSON twin beside it (``<name>.yaml.json``),
so a Lambda function parses JSON, with the module it has loaded anyway, instead of importing PyYAML
(tens of milliseconds of a cold start) and parsing the YAML in pure Python. Where no twin exists
(the source tree: the tests, the operator CLI) the YAML is read. A twin is made from its YAML by the
build that ships it, so it cannot be stale; ``tests/contract`` compares each built twin with its
YAML. Dates in the YAML (a price's ``as_of``) are ISO strings in the twin, which the models read as
dates again.
"""

import json
from importlib import resources
from typing import Any

__all__ = ["TWIN_SUFFIX", "read_data_file"]

#: What the build appends to a YAML data file's name for its JSON twin.
TWIN_SUFFIX = ".json"


def read_data_file(folder: str, name: str) -> Any:
    """The data file ``cryopilot/domain/<folder>/<name>`` (a ``.yaml``), from its JSON twin when
    the build made one."""
    directory = resources.files("cryopilot.domain").joinpath(folder)
    twin = directory.joinpath(name + TWIN_SUFFIX)
    if twin.is_file():
        return json.loads(twin.read_text(encoding="utf-8"))
    import yaml  # heavy, and only where the build made no twin (see the module's doc)

    return yaml.safe_load(directory.joinpath(name).read_text(encoding="utf-8"))
