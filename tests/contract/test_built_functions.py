"""Each function as `sam build` built it must import with only boto3 and the built layer.

This catches a layer that misses a dependency (e.g. Powertools' tracer extra), which no test
that runs inside the development venv can see. `make test` builds before it runs pytest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryopilot.domain.datafiles import TWIN_SUFFIX
from cryopilot_sim.template import load_template, resources_of_type

from tests.conftest import ROOT

# One process builds the bare runtime venv these tests share.
pytestmark = pytest.mark.xdist_group("lambda-runtime")

BUILD = ROOT / ".aws-sam" / "build"
#: Where the built layer's packages are (its python/ folder, Lambda's /opt/python).
LAYER_CODE = "CryopilotLayer/python"
RUNTIME = ROOT / "build" / "lambda-runtime"
TEMPLATE = load_template()
FUNCTIONS = sorted(resources_of_type(TEMPLATE, "AWS::Serverless::Function"))


def _handler(logical: str) -> tuple[str, str]:
    """(module, function) of a function's handler, from the template."""
    handler = (
        TEMPLATE["Resources"][logical]["Properties"].get("Handler")
        or TEMPLATE["Globals"]["Function"]["Handler"]
    )
    module, _, name = handler.rpartition(".")
    return module, name


def _make_runtime_venv() -> None:
    """Make the venv in a child process, then move it into place.

    The venv is made by `python -m venv` (symlinks, no binary copied) in its own process: a
    binary being written in this multi-threaded worker could be inherited open by a child that
    another test's thread forks at that moment, and running it would then fail with ETXTBSY.
    A half-made venv never sits at RUNTIME: it is built beside it and renamed once complete.
    """
    import boto3

    staging = RUNTIME.with_name(RUNTIME.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(RUNTIME, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--symlinks", str(staging)], check=True)
    subprocess.run(
        [str(staging / "bin" / "python"), "-m", "pip", "install", "-q", f"boto3=={boto3.__version__}"],
        check=True,
    )
    (staging / "ready").write_text(boto3.__version__)
    staging.rename(RUNTIME)


def _built(part: str) -> Path:
    """``part`` of the sam build output; a failure in CI (make test builds first), else a skip."""
    path = BUILD / part
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail("no sam build output: make test runs `make build` first")
        pytest.skip("run `make build` first")
    return path


@pytest.fixture(scope="module")
def runtime_python() -> Path:
    """A bare venv holding what the Lambda runtime holds: boto3 (same version as pinned)."""
    _built(LAYER_CODE)
    import boto3

    ready = RUNTIME / "ready"
    if not ready.exists() or ready.read_text() != boto3.__version__:
        _make_runtime_venv()
    return RUNTIME / "bin" / "python"


def _import_built(runtime_python: Path, logical: str, **env_extra: str) -> dict[str, list[str]]:
    """Import the built function's handler with only boto3 and the layer on the path; the
    modules it loaded (cryopilot's, and the heavy ones a handler should load only when used)."""
    code = BUILD / logical
    layer = BUILD / LAYER_CODE
    module, name = _handler(logical)
    assert (code / f"{module}.py").is_file()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": f"{code}{os.pathsep}{layer}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PYTHONNOUSERSITE": "1",
        **env_extra,
    }
    script = (
        f"import {module} as m, sys, json; assert callable(m.{name}); "
        "print(json.dumps({'cryopilot': sorted(m for m in sys.modules if m.startswith('cryopilot')), "
        f"'heavy': sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules)}}))"
    )
    proc = subprocess.run(
        [str(runtime_python), "-c", script], cwd=code, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded: dict[str, list[str]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


#: Modules that cost a cold start tens of milliseconds each: the X-Ray SDK (only when tracing is
#: on), pydantic-settings (no longer used), Powertools' S3 parser models, PyYAML, and two of
#: cryopilot's own: the estimate (with the presets, the manifest and the cluster's inputs) and the
#: cluster configuration's schema (about 30 models).
HEAVY = {
    "aws_xray_sdk.core",
    "pydantic_settings",
    "aws_lambda_powertools.utilities.parser.models.s3",
    "yaml",
    "cryopilot.domain.estimate",
    "cryopilot.domain.clusterconfig.models",
}

#: The heavy modules a function may load, because it uses them: every other function loads none.
MAY_LOAD = {
    "StartRunFunction": {"aws_lambda_powertools.utilities.parser.models.s3"},  # parses S3 events
    # estimates the run's time and cost (PyYAML: only when it parses a YAML manifest)
    "ValidateFunction": {"cryopilot.domain.estimate"},
    # builds the cluster configuration (its schema; PyYAML: only when it renders one)
    "ClusterFunction": {"cryopilot.domain.clusterconfig.models"},
}


@pytest.mark.parametrize("logical", FUNCTIONS)
def test_built_function_imports_with_only_boto3_and_the_layer(runtime_python: Path, logical: str) -> None:
    loaded = _import_built(runtime_python, logical, POWERTOOLS_TRACE_DISABLED="true")
    assert not any(m.startswith("cryopilot_sim") for m in loaded["cryopilot"])
    # the delivery function ships the agent, never runs it
    assert not any(m.startswith("cryopilot_agent") for m in loaded["cryopilot"])
    # tracing off: the X-Ray SDK is not even imported; nothing imports what it does not call
    unexpected = set(loaded["heavy"]) - MAY_LOAD.get(logical, set())
    assert not unexpected, sorted(unexpected)
    assert sys.version_info[:2] == (3, 12)


@pytest.mark.parametrize("logical", ["StartRunFunction", "HeadNodeBootstrapFunction"])
def test_built_function_imports_with_tracing_on_as_in_lambda(runtime_python: Path, logical: str) -> None:
    """With ``Tracing: Active`` in Lambda, Powertools' Tracer loads the X-Ray SDK from the layer."""
    loaded = _import_built(runtime_python, logical, LAMBDA_TASK_ROOT=str(BUILD / logical))
    assert "aws_xray_sdk.core" in loaded["heavy"]


@pytest.mark.parametrize(("built", "module"), [(LAYER_CODE, "cryopilot"), ("ReportFunction", "matplotlib")])
def test_built_code_ships_bytecode_lambda_uses_without_checking_the_source(built: str, module: str) -> None:
    """Lambda's /opt and /var/task are read-only: a module without usable bytecode is compiled at
    every cold start. The Makefiles of the layer and of the report function (whose matplotlib and
    python-dateutil sit in /var/task) ship an unchecked-hash .pyc (PEP 552: flags 0b01) for every
    module, made from the very source beside it."""
    import importlib.util

    layer = _built(built)
    sources = sorted(layer.rglob("*.py"))
    assert any(p.parts[-2:] == (module, "__init__.py") for p in sources)
    problems = []
    for source in sources:
        cached = Path(importlib.util.cache_from_source(str(source)))
        if not cached.is_file():
            problems.append(f"{source.relative_to(layer)}: no bytecode")
            continue
        header = cached.read_bytes()[:16]
        flags = int.from_bytes(header[4:8], "little")
        if header[:4] != importlib.util.MAGIC_NUMBER or flags != 0b01:
            problems.append(f"{source.relative_to(layer)}: not unchecked-hash bytecode of this Python")
        elif header[8:16] != importlib.util.source_hash(source.read_bytes()):
            problems.append(f"{source.relative_to(layer)}: bytecode of another source")
    assert not problems, problems[:10]


def test_built_layer_ships_a_json_twin_equal_to_each_yaml_data_file() -> None:
    """The layer's Makefile writes each data file's JSON twin (cryopilot.domain.datafiles): the same
    values as the YAML, in what JSON can hold: dates as ISO strings, and a number as a mapping's
    key (the FSx rates' throughput tiers) as its decimal string, which the models read back."""
    import datetime

    import yaml

    def dates_as_text(value: object) -> object:
        if isinstance(value, dict):
            return {str(k): dates_as_text(v) for k, v in value.items()}
        if isinstance(value, list):
            return [dates_as_text(v) for v in value]
        return value.isoformat() if isinstance(value, datetime.date) else value

    domain = _built(LAYER_CODE) / "cryopilot" / "domain"
    sources = sorted(domain.glob("presets/*.yaml")) + sorted(domain.glob("data/*.yaml"))
    names = {p.name for p in sources}
    assert {"job_types.yaml", "movies.yaml", "repeat.yaml", "instances.yaml", "profiles.yaml"} <= names
    for source in sources:
        twin = source.with_name(source.name + TWIN_SUFFIX)
        assert twin.is_file(), f"{source.relative_to(domain)} has no JSON twin"
        assert json.loads(twin.read_text()) == dates_as_text(yaml.safe_load(source.read_text())), source.name


def test_the_built_layer_reads_its_data_files_without_pyyaml(runtime_python: Path) -> None:
    """With only boto3 and the layer on the path (no venv), the catalogue, the profiles, every preset
    and the job-type register load, and PyYAML is never imported."""
    script = (
        "import json, sys\n"
        "from cryopilot.domain import catalogue, presets\n"
        "c = catalogue.Catalogue.load(); catalogue.load_profiles()\n"
        "plans = [presets.load_preset(n).name for n in presets.preset_names()]\n"
        "presets.job_types()\n"
        "fsx = c.fsx_price('PERSISTENT_2', 125).usd_per_gb_month\n"
        "p4d = c.price('p4d.24xlarge', 'us-east-1')\n"
        "print(json.dumps({'presets': plans, 'yaml': 'yaml' in sys.modules, 'fsx': fsx, 'p4d': p4d}))"
    )
    env = {"PYTHONPATH": str(_built(LAYER_CODE)), "PYTHONDONTWRITEBYTECODE": "1", "PATH": os.environ["PATH"]}
    proc = subprocess.run([str(runtime_python), "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out["presets"]) >= {"movies", "micrographs", "repeat"}
    assert out["yaml"] is False
    # the same figures as the YAML gives the source tree's catalogue (a tier keyed by a number)
    from cryopilot.domain.catalogue import Catalogue

    source = Catalogue.load()
    assert out["fsx"] == source.fsx_price("PERSISTENT_2", 125).usd_per_gb_month
    assert out["p4d"] == float(source.price("p4d.24xlarge", "us-east-1"))
