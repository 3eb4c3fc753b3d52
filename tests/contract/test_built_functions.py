"""Each function as `sam build` built it must import with only boto3 and the built layer.

This catches a layer that misses a dependency (e.g. Powertools' tracer extra), which no test
that runs inside the development venv can see. `make test` builds before it runs pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from cryopilot_sim.template import load_template, resources_of_type

from tests.conftest import ROOT

# One process builds the bare runtime venv these tests share.
pytestmark = pytest.mark.xdist_group("lambda-runtime")

BUILD = ROOT / ".aws-sam" / "build"
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


@pytest.fixture(scope="module")
def runtime_python() -> Path:
    """A bare venv holding what the Lambda runtime holds: boto3 (same version as pinned)."""
    if not (BUILD / "CryopilotLayer").is_dir():
        if os.environ.get("CI"):
            pytest.fail("no sam build output: make test runs `make build` first")
        pytest.skip("run `make build` first")
    python = RUNTIME / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(RUNTIME)
        import boto3

        subprocess.run([str(python), "-m", "pip", "install", "-q", f"boto3=={boto3.__version__}"], check=True)
    return python


@pytest.mark.parametrize("logical", FUNCTIONS)
def test_built_function_imports_with_only_boto3_and_the_layer(runtime_python: Path, logical: str) -> None:
    code = BUILD / logical
    layer = BUILD / "CryopilotLayer" / "python"
    module, name = _handler(logical)
    assert (code / f"{module}.py").is_file()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": f"{code}{os.pathsep}{layer}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "PYTHONNOUSERSITE": "1",
    }
    script = (
        f"import {module} as m, sys; assert callable(m.{name}); "
        "print(sorted(m for m in sys.modules if m.startswith('cryopilot')))"
    )
    proc = subprocess.run(
        [str(runtime_python), "-c", script], cwd=code, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cryopilot_sim" not in proc.stdout
    assert "cryopilot_agent" not in proc.stdout  # the delivery function ships the agent, never runs it
    assert sys.version_info[:2] == (3, 12)
