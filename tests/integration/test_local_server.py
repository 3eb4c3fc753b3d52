"""`cryopilot local` serves the local stack on loopback; the operator commands reach it with
`--local` from another process, with no AWS credentials and no route to AWS."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryopilot_ops.cli import build_parser
from cryopilot_sim.local_server import LocalServer, commands_to_try

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    # 200× the wall clock: the spike run's 7 simulated hours take about 2 minutes, so the run is
    # still going when the test's commands (a few seconds each on a loaded machine) cancel it,
    # while the cluster's creation (15 simulated minutes) is ready in seconds.
    with LocalServer(profile="spike", speed=200.0, stack_file=tmp_path / "stack.json") as s:
        yield s


def _cli(server: LocalServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "CRYOPILOT_LOCAL_STACK_FILE": str(server.stack_file),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    if "PYTHONPATH" in os.environ:  # the code under test, not whichever the venv installed
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    local = [] if "--local" in args else ["--local"]
    return subprocess.run(
        [sys.executable, "-m", "cryopilot_ops.cli", *args, *local],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _command(line: str, run_id: str = "RUN_ID") -> list[str]:
    """The arguments of a ``cryopilot …`` command the local stack printed, checked by the CLI's
    own parser (it exits on a command it does not know)."""
    argv = shlex.split(line.replace("RUN_ID", run_id))
    assert argv[0] == "cryopilot", line
    args = build_parser().parse_args(argv[1:])
    assert getattr(args, "local", False), f"{line!r} would not reach the local stack"
    return argv[1:]


def test_submit_status_and_cancel_against_the_local_stack(server: LocalServer) -> None:
    stack = server.cloud.operator_stack()
    s3 = server.cloud.client("s3")
    s3.put_object(Bucket=stack.input_bucket, Key="datasets/SPIKE-FAB-07/micrographs/a.mrc", Body=b"m" * 64)

    # the commands `cryopilot local` prints are the ones run here
    printed = commands_to_try("spike")
    assert [c.split()[1] for c in printed] == ["submit", "status", "watch", "cancel", "report"]
    for line in printed:
        _command(line)
    submitted = _cli(server, *_command(printed[0]))
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.split("run ", 1)[1].split()[0]
    assert run_id.startswith("SPIKE-FAB-07-op")
    # and so is the one submit says to follow the run with
    (follow,) = [ln.split(": ", 1)[1] for ln in submitted.stdout.splitlines() if "follow it with" in ln]
    assert _command(follow) == ["watch", run_id, "--local"]

    deadline = time.monotonic() + 60
    while True:
        status = _cli(server, "status", run_id)
        if status.returncode == 0 and "cluster cryopilot-" in status.stdout:
            break
        assert time.monotonic() < deadline, status.stderr
        time.sleep(0.5)
    assert status.stdout.startswith(f"run {run_id}")
    assert " GPU " in status.stdout

    listed = _cli(server, "status")
    assert listed.returncode == 0
    assert run_id in listed.stdout

    cancelled = _cli(server, "cancel", run_id, "--interval", "0.5")
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"stopped execution {run_id}" in cancelled.stdout
    assert cancelled.stdout.rstrip().endswith(": DELETED")
    assert server.cloud.pcluster.clusters() == {}

    # the same manifest again: its run was cancelled, so nothing starts, and submit says so
    again = _cli(server, *_command(printed[0]))
    assert again.returncode == 1, again.stdout
    assert "already submitted" not in again.stdout
    assert again.stderr.strip() == (
        f"cryopilot submit: run {run_id} of this manifest was cancelled (execution ABORTED);"
        " nothing was started. A run's id comes from its manifest and input: change the manifest"
        " (a comment will do) and submit it again"
    )
    assert len(server.cloud.executions()) == 1


def test_without_a_local_stack_the_commands_say_how_to_start_one(server: LocalServer, tmp_path: Path) -> None:
    server.stack_file.rename(tmp_path / "elsewhere.json")
    result = _cli(server, "status")
    assert result.returncode == 3
    assert "no local stack is running" in result.stderr
    assert "cryopilot local" in result.stderr


def test_smoke_passes_against_the_local_stack(server: LocalServer) -> None:
    # what the README's deployment section ends with, against the local stack: preflight, the
    # sample's cluster configuration dry-run, the head node's files, every function
    result = _cli(server, "smoke")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [ln for ln in result.stdout.splitlines() if ln and not ln.startswith(("{", "-"))]
    names = [r.split("  ")[0] for r in rows[1:] if not r.startswith(" ")]
    for name in ("quota L-417A185B", "licence secret", "cluster dryrun", "head-node bundle", "StartRun runs"):
        assert name in names, result.stdout
    assert not [r for r in rows[1:] if " FAIL " in r]
    assert server.cloud.pcluster.clusters() == {}
    assert server.cloud.executions() == []
