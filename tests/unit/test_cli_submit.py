"""`cryopilot submit`: what the operator is told, started or waiting for a slot."""

from __future__ import annotations

from typing import Any

import pytest
from cryopilot_ops import cli, ops

#: what the stubbed ops.submit answers next (each test sets it)
ANSWERS: list[ops.Submitted] = []


@pytest.fixture
def submitted(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The calls the command made to ops.submit, which answers from :data:`ANSWERS`."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(cli, "_stack", lambda args: "the-stack")

    def submit(stack: Any, manifest: str, **kwargs: Any) -> ops.Submitted:
        calls.append({"stack": stack, "manifest": manifest, **kwargs})
        return ANSWERS.pop(0)

    monkeypatch.setattr(ops, "submit", submit)
    return calls


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (ops.Submitted("R1", "arn:R1", already=False), "started: run R1"),
        (ops.Submitted("R1", "arn:R1", already=True), "already submitted: run R1"),
        (
            ops.Submitted("R1", "arn:R1", already=True, execution="SUCCEEDED"),
            "already done: run R1 of this manifest succeeded; nothing was started",
        ),
        (
            ops.Submitted("R1", "arn:R1", already=False, queue_position=3, queued=True),
            "queued: run R1 waits for a free slot (MaxConcurrentRuns reached), place 3 in the queue",
        ),
        (
            ops.Submitted("R1", "arn:R1", already=True, queue_position=1, queued=True),
            "already waiting: run R1 waits for a free slot (MaxConcurrentRuns reached), place 1",
        ),
    ],
)
def test_submit_says_whether_the_run_started_or_waits(
    submitted: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], answer: ops.Submitted, said: str
) -> None:
    ANSWERS[:] = [answer]
    assert cli.main(["submit", "cryopilot.yaml", "--stack", "prod"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(said)
    assert "cryopilot watch R1 --stack prod" in out
    assert submitted[0]["now"] is False


def test_submit_now_asks_for_a_start_outside_the_limit(
    submitted: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    ANSWERS[:] = [ops.Submitted("R2", "arn:R2", already=False)]
    assert cli.main(["submit", "m.yaml", "--now", "--data", "s3://in/datasets/x/"]) == 0
    assert submitted == [
        {"stack": "the-stack", "manifest": "m.yaml", "data_s3_uri": "s3://in/datasets/x/", "now": True}
    ]
    assert capsys.readouterr().out.startswith("started: run R2")
