"""Write the JSON twin of each YAML data file of a built cryopilot package (a step of the layer's
Makefile; see cryopilot/domain/datafiles.py for why).

    python data_twins.py BUILT_PACKAGE_DIR

Run with the built layer first on the path, so it reads the YAML with the PyYAML the layer pins
and names each twin as the package reads it (``cryopilot.domain.datafiles.TWIN_SUFFIX``). What
JSON cannot hold as it is: a date is written as its ISO string and an integer mapping key as its
decimal string (the models read both back); anything else fails the build.
"""

import datetime
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from cryopilot.domain.datafiles import TWIN_SUFFIX

FOLDERS = ("domain/presets", "domain/data")


def _iso_date(value: Any) -> str:
    if isinstance(value, datetime.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} {value!r} has no JSON form")


def _check_keys(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where}: key {key!r} has no JSON form")
            _check_keys(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_keys(item, f"{where}[{i}]")


def main(package: Path) -> int:
    written = 0
    for folder in FOLDERS:
        for source in sorted((package / folder).glob("*.yaml")):
            data = yaml.safe_load(source.read_text(encoding="utf-8"))
            _check_keys(data, source.name)
            text = json.dumps(data, default=_iso_date, separators=(",", ":"))
            source.with_name(source.name + TWIN_SUFFIX).write_text(text, encoding="utf-8")
            written += 1
    if not written:
        print(f"no YAML data files under {package}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
