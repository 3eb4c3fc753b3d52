"""How long each built Lambda function takes to import its handler: the part of a cold start the
code decides.

    python -m cryopilot_sim.coldstart [--build .aws-sam/build] [--runs 7] [--traced]

Each function of ``sam build``'s output is imported as Lambda imports it: a fresh Python 3.12
process whose path holds the function's code, the built layer and the runtime's boto3 only (a
bare venv under ``build/``, made once, holding the boto3 version the layer pins, with the bytecode
pip compiles). As in Lambda, whose code directories are read-only, no bytecode is written: a
module the build shipped without a usable ``.pyc`` is compiled from source at every import (the
layer's Makefile ships unchecked-hash bytecode for all of it). One unmeasured import first warms
the file cache, then ``--runs`` imports are timed, each in a new process, with
``time.perf_counter`` around the import, in rounds that import every function once (interleaved,
so that a change in the machine's load shifts all rows alike). Tracing is off, as anywhere
outside Lambda; ``--traced`` also times each import as Lambda does it with ``Tracing: Active``
(Powertools' Tracer loads the X-Ray SDK and patches botocore).

The table gives the median and the slowest wall time and the median CPU time of the process
(less sensitive to a busy machine than wall time), and whether the median meets the target. Its
first row is the floor: a stand-in handler importing only what every handler imports before any
code of cryopilot's (boto3, Powertools, pydantic), timed the same way; ``ours`` is each function's
median above it. A
missed target is reported, not an error: the exit status is non-zero only when something could
not be measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryopilot_sim.template import ROOT, load_template, resources_of_type

TARGET_MS = 300.0
RUNTIME = ROOT / "build" / "coldstart-runtime"
LAYER_REQUIREMENTS = ROOT / "layers" / "cryopilot" / "requirements.txt"
LAYER = "CryopilotLayer"

_PROBE = """
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
import {module} as m
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
assert callable(getattr(m, {name!r}))
print(json.dumps({{"wall_ms": wall * 1000, "cpu_ms": cpu * 1000}}))
"""


class ColdStartError(Exception):
    """Something could not be measured."""


@dataclass
class Timing:
    function: str
    wall_ms: list[float]
    cpu_ms: list[float]
    traced_ms: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.wall_ms)


def pinned_boto3(requirements: Path = LAYER_REQUIREMENTS) -> str:
    """The boto3 version the layer pins (what the Lambda runtime is assumed to hold)."""
    for line in requirements.read_text().splitlines():
        match = re.match(r"^\s*boto3\s*==\s*([0-9][^\s;#]*)", line)
        if match:
            return match.group(1)
    raise ColdStartError(f"{requirements} pins no boto3 version")


def runtime_python(venv: Path = RUNTIME) -> Path:
    """A bare Python 3.12 venv holding only the pinned boto3; made once, then reused."""
    if sys.version_info[:2] != (3, 12):
        raise ColdStartError(f"Lambda's runtime is Python 3.12; this is {sys.version.split()[0]}")
    version = pinned_boto3()
    ready = venv / "ready"
    python = venv / "bin" / "python"
    if ready.is_file() and ready.read_text() == version and python.exists():
        return python
    print(f"==> making a bare runtime venv with boto3=={version} in {venv}", file=sys.stderr)
    staging = venv.with_name(venv.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(venv, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--symlinks", str(staging)], check=True)
    subprocess.run(
        [str(staging / "bin" / "python"), "-m", "pip", "install", "-q", f"boto3=={version}"], check=True
    )
    (staging / "ready").write_text(version)
    staging.rename(venv)
    return python


def functions(build: Path) -> dict[str, tuple[str, str]]:
    """{logical id: (handler module, handler function)} of every function in the built template."""
    template = load_template(build / "template.yaml")
    default = template.get("Globals", {}).get("Function", {}).get("Handler", "app.lambda_handler")
    out = {}
    for logical, resource in sorted(resources_of_type(template, "AWS::Serverless::Function").items()):
        module, _, name = str(resource["Properties"].get("Handler") or default).rpartition(".")
        out[logical] = (module, name)
    return out


def _import_once(
    python: Path, build: Path, logical: str, handler: tuple[str, str], traced: bool, code: Path | None = None
) -> dict[str, Any]:
    code = code or build / logical
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": f"{code}{os.pathsep}{build / LAYER / 'python'}",
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    if traced:  # what Lambda sets: Powertools' Tracer turns X-Ray on inside Lambda only
        env["LAMBDA_TASK_ROOT"] = str(code)
    module, name = handler
    proc = subprocess.run(
        [str(python), "-c", _PROBE.format(module=module, name=name)],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise ColdStartError(f"{logical}: importing {module} failed:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


#: What every handler imports before any code of cryopilot's: boto3 (in Lambda's runtime),
#: Powertools' Logger, Metrics and Tracer and its context type, and one pydantic model. Timed like
#: a handler, it is the floor under every handler's import time, which cryopilot cannot lower.
FLOOR = "(floor: boto3, Powertools, pydantic)"
_FLOOR_SOURCE = """import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, Field


class Event(BaseModel):
    action: str = Field(min_length=1)


def lambda_handler(event: dict, context: LambdaContext) -> None:
    Event.model_validate(event)
"""


def _floor_code() -> Path:
    code = ROOT / "build" / "coldstart-floor"
    code.mkdir(parents=True, exist_ok=True)
    (code / "floor_app.py").write_text(_FLOOR_SOURCE)
    return code


def measure(build: Path, runs: int = 7, traced: bool = False, python: Path | None = None) -> list[Timing]:
    """Time every function's import ``runs`` times, the floor included.

    The imports are interleaved: each round imports every function once, in an order rotated by
    one each round, so a machine that gets busier or quieter during the measurement shifts every
    row alike instead of the rows measured at that moment (the floor and the functions were timed
    one after the other before: in one such table the floor, timed first, read 392 ms, slower
    than six functions that import all it imports).
    """
    if not (build / LAYER / "python").is_dir() or not (build / "template.yaml").is_file():
        raise ColdStartError(f"no sam build output in {build}: run `make build` first")
    python = python or runtime_python()
    subjects: list[tuple[str, tuple[str, str], Path | None]] = [
        (FLOOR, ("floor_app", "lambda_handler"), _floor_code())
    ]
    subjects += [(logical, handler, None) for logical, handler in functions(build).items()]
    modes = [False, True] if traced else [False]
    timings = {logical: Timing(logical, [], [], []) for logical, _, _ in subjects}
    for mode in modes:  # one unmeasured import each: warms the file cache
        for logical, handler, code in subjects:
            if logical != FLOOR or not mode:
                _import_once(python, build, logical, handler, traced=mode, code=code)
    for round_no in range(runs):
        shift = round_no % len(subjects)
        for logical, handler, code in subjects[shift:] + subjects[:shift]:
            for mode in modes:
                if logical == FLOOR and mode:
                    continue  # the floor is Tracer-free by definition
                sample = _import_once(python, build, logical, handler, traced=mode, code=code)
                if mode:
                    timings[logical].traced_ms.append(sample["wall_ms"])
                else:
                    timings[logical].wall_ms.append(sample["wall_ms"])
                    timings[logical].cpu_ms.append(sample["cpu_ms"])
    return list(timings.values())


def table(timings: list[Timing], target_ms: float = TARGET_MS) -> str:
    traced = any(t.traced_ms for t in timings)
    head = f"{'function':<28} {'median':>8} {'max':>8} {'cpu med':>8}"
    head += f" {'traced':>8}" if traced else ""
    floor = next((t for t in timings if t.function == FLOOR), None)
    head += f" {'ours':>6}" if floor else ""
    lines = [head + f"  target {target_ms:.0f} ms (median)", "-" * (len(head) + 26)]
    functions = [t for t in timings if t.function != FLOOR]
    for t in ([floor] if floor else []) + functions:
        name = t.function if len(t.function) <= 28 else t.function[:27] + "…"
        row = f"{name:<28} {t.median:>8.0f} {max(t.wall_ms):>8.0f} {statistics.median(t.cpu_ms):>8.0f}"
        if traced:
            row += f" {statistics.median(t.traced_ms):>8.0f}" if t.traced_ms else f" {'':>8}"
        if floor:  # what the function's own imports add to the floor
            row += f" {t.median - floor.median:>6.0f}" if t is not floor else f" {'':>6}"
        if t is floor:
            lines.append(row + "  (every handler imports these first)")
            continue
        row += "  met" if t.median < target_ms else f"  MISSED by {t.median - target_ms:.0f} ms"
        lines.append(row)
    met = sum(t.median < target_ms for t in functions)
    lines.append(
        f"{met} of {len(functions)} functions import in under {target_ms:.0f} ms (ms, wall unless cpu)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cryopilot_sim.coldstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", type=Path, default=ROOT / ".aws-sam" / "build", help="sam build's output")
    parser.add_argument("--runs", type=int, default=7, help="timed imports per function (fresh processes)")
    parser.add_argument("--target-ms", type=float, default=TARGET_MS)
    parser.add_argument("--traced", action="store_true", help="also time imports with X-Ray tracing on")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        timings = measure(args.build, runs=args.runs, traced=args.traced)
    except (ColdStartError, subprocess.SubprocessError, OSError) as exc:
        print(f"coldstart: {exc}", file=sys.stderr)
        return 2
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"Handler import times, {args.runs} fresh processes each "
        f"(load average {load:.1f}, {os.cpu_count()} CPUs)"
    )
    print(table(timings, args.target_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
