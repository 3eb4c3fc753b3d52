"""`cryopilot demo --fail SCENARIO` for the fault scenarios of the failure-handling issue, each on
the local stack and a fast clock (the spike profile, the shortest): how the run ends, the error
the record names, the mail people get, and no cluster left. (`none`, `job`: test_demo.py; the
faults themselves, without the demo: test_faults.py, test_state_machine.py, test_cleanup.py.)"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from cryopilot_sim import demo
from cryopilot_sim.demo import REHEARSALS, DemoOptions, run_demo

pytestmark = pytest.mark.slow

PACE = 1e9  # simulated seconds per wall-clock second: no waiting
DATASET = "SPIKE-FAB-07"


def _rehearse(tmp_path: Path, fail: str) -> dict[str, Any]:
    return run_demo(DemoOptions(profile="spike", pace=PACE, quiet=True, state_dir=tmp_path, fail=fail))


def _outbox(tmp_path: Path) -> list[tuple[str, str]]:
    """(subject, text) of every mail the run sent, oldest first."""
    out = []
    for path in sorted((tmp_path / "outbox").glob("*.txt")):
        head, _, body = path.read_text(encoding="utf-8").partition("\n\n")
        out.append((head.removeprefix("Subject: "), body))
    return out


def _assert_clean_end(summary: dict[str, Any], status: str, error: str | None) -> None:
    rehearsal = summary["rehearsal"]
    assert rehearsal["passed"] is True, rehearsal["problems"]
    assert rehearsal["problems"] == []
    assert summary["status"] == status
    assert (summary["error"] or {}).get("type") == error
    assert summary["clusters_left"] == []
    assert summary["cluster_deleted"] is True


# The failing scenarios config-error, ssm-timeout-always, job-killed and job-stuck run end to end,
# with their mails, in tests/integration/test_faults.py and test_state_machine.py. The capacity
# scenarios (capacity, capacity-exhausted, quota, spot-interrupt) run there too, armed by the
# demo's own code, and each of those runs must also pass the demo's verdict: one run checks both.


def test_head_node_lost_mid_run_fails_at_the_stage_it_was_running(tmp_path: Path) -> None:
    summary = _rehearse(tmp_path, "head-node-lost")
    _assert_clean_end(summary, "FAILED", "HeadNodeUnreachableError")
    step = summary["error"]["step"]
    assert step.startswith("stage:")
    assert step not in ("stage:import",), "lost once the second stage started"
    subject, text = _outbox(tmp_path)[-1]
    assert subject.startswith(f"[cryopilot] {DATASET} failed at ")
    assert subject.endswith(": HeadNodeUnreachableError")
    assert "does not answer SSM" in text
    assert "has been deleted; nothing is left running" in text


@pytest.mark.parametrize("fail", ["stopped", "cancel"])
def test_run_stopped_by_hand_is_cleaned_up_and_mailed_once(tmp_path: Path, fail: str) -> None:
    """`stopped`: StopExecution (the console's button), the cleanup function deletes the cluster;
    `cancel`: `cryopilot cancel`, which deletes it itself. Either way one mail says so."""
    summary = _rehearse(tmp_path, fail)
    _assert_clean_end(summary, "ABORTED", "ExecutionAborted")
    assert summary["error"]["step"].startswith("stage:")
    mails = _outbox(tmp_path)
    assert [s for s, _ in mails] == [
        f"[cryopilot] {DATASET} started: 10 stages",
        f"[cryopilot] {DATASET} was stopped",
    ]
    text = mails[-1][1]
    assert f"(execution ABORTED) at step {summary['error']['step']}." in text
    if fail == "stopped":
        assert "is being deleted now" in text


def test_ssm_command_timing_out_once_is_retried_and_the_run_succeeds(tmp_path: Path) -> None:
    summary = _rehearse(tmp_path, "ssm-timeout")
    _assert_clean_end(summary, "SUCCEEDED", None)
    assert summary["resolution_A"] is not None
    subjects = [s for s, _ in _outbox(tmp_path)]
    assert len(subjects) == 2
    assert subjects[-1].startswith(f"[cryopilot] {DATASET} done: ")


def test_delete_failed_is_retried_then_the_janitor_deletes_the_cluster_and_says_so(tmp_path: Path) -> None:
    summary = _rehearse(tmp_path, "delete-failed")
    _assert_clean_end(summary, "FAILED", "ClusterDeleteFailedError")
    assert summary["error"]["step"] == "delete_cluster"
    assert summary["rehearsal"]["janitor_passes"] == 1
    assert summary["resolution_A"] is not None  # the map was made and mailed before the delete failed
    mails = _outbox(tmp_path)
    assert [s for s, _ in mails][1:] == [
        mails[1][0],
        f"[cryopilot] {DATASET} failed at delete_cluster: ClusterDeleteFailedError",
        f"[cryopilot] {DATASET} failed",
        "[cryopilot] janitor: 1 cluster(s) cleaned up",
    ]
    assert mails[1][0].startswith(f"[cryopilot] {DATASET} done: ")
    assert "could NOT be confirmed deleted" in mails[2][1]
    assert "is being deleted now; the janitor confirms it is gone" in mails[3][1]
    assert "delete_retried, attempt 1 - its run is over (FAILED)" in mails[4][1]


def test_the_verdict_names_every_way_a_rehearsal_went_wrong() -> None:
    """A run that did not end as its scenario expects: each difference is a problem."""

    class NoHistory:
        def history(self, arn: str) -> list[dict[str, Any]]:
            return []

    record = {
        "dataset": DATASET,
        "status": "FAILED",
        "error": {"type": "JobFailedError", "step": "stage:ctf"},
        "stages": {"ctf": {"state": "failed"}},
    }
    mail = {
        "subject": f"[cryopilot] {DATASET} failed at CTF: JobFailedError",
        "message": "",
        "attributes": {},
    }
    verdict = demo._verdict(
        NoHistory(),  # type: ignore[arg-type]
        "job-stuck",
        {"r1": "arn:r1"},
        {"r1": "FAILED"},
        {"r1": record},
        [mail],
        ["cryopilot-left-behind"],
        {},
        [],
    )
    assert verdict["passed"] is False
    problems = "\n".join(verdict["problems"])
    assert "1 cluster(s) left: cryopilot-left-behind" in problems
    assert "r1 failed with JobFailedError, not JobStuckError" in problems
    assert "the cleanup function never handled r1's end (FAILED)" in problems
    assert ": JobStuckError' in its subject" in problems
    assert "stage ctf was not killed for its time limit" in problems


def test_cli_exits_0_only_when_the_rehearsal_ends_as_expected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryopilot_ops.cli import main

    real = demo.run_demo
    monkeypatch.setattr(
        demo, "run_demo", lambda o: real(dataclasses.replace(o, state_dir=tmp_path, pace=PACE, quiet=True))
    )
    argv = ["demo", "--profile", "spike", "--fail", "config-error", "--quiet"]
    assert main(argv) == 0
    # the same run, judged against an expectation it does not meet
    wrong = dataclasses.replace(REHEARSALS["config-error"], error="CapacityError")
    monkeypatch.setitem(REHEARSALS, "config-error", wrong)
    assert main(argv) == 1
    last = json.loads((tmp_path / "last-run.json").read_text())
    assert last["rehearsal"]["passed"] is False
    assert any("not CapacityError" in p for p in last["rehearsal"]["problems"])


@pytest.mark.parametrize(
    ("fail", "says"),
    [
        ("quota-zero", "quota L-417A185B: 'Running On-Demand P instances' is 0 vCPUs"),
        ("no-egress", "no default route through a NAT gateway, and no VPC endpoint for cloudformation"),
        ("missing-data", "holds 4 files matching 'micrographs/*.mrc', input.expected_files is 8"),
    ],
)
def test_preflight_ends_a_doomed_run_at_validate_with_one_mail_and_no_cluster(
    tmp_path: Path, fail: str, says: str
) -> None:
    summary = _rehearse(tmp_path, fail)
    rehearsal = summary["rehearsal"]
    assert rehearsal["passed"] is True, rehearsal["problems"]
    assert summary["status"] == "FAILED"
    assert summary["error"]["type"] == "PreflightError"
    assert summary["error"]["step"] == "validate"
    assert says in summary["error"]["message"]
    assert summary["clusters_left"] == []
    ((subject, text),) = _outbox(tmp_path)
    assert subject == f"[cryopilot] {DATASET} failed at validate: PreflightError"
    assert says in text
    assert "No cluster was created." in text
