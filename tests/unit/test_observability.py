"""Tracing off outside Lambda without loading X-Ray; metrics published only when a call adds some."""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest
from cryopilot.adapters import observability as obs


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({"LAMBDA_TASK_ROOT": "/var/task"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "true"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "false"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_SAM_LOCAL": "true"}, False),
        ({}, False),
    ],
)
def test_tracing_only_inside_lambda(env: dict[str, str], enabled: bool) -> None:
    assert obs.tracing_enabled(env) is enabled


def test_the_tracer_here_records_nothing_and_passes_answers_and_errors_through() -> None:
    assert isinstance(obs.tracer.provider, obs.NoTracing)

    @obs.tracer.capture_lambda_handler
    def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
        if event.get("fail"):
            raise RuntimeError("boom")
        return {"ok": True}

    assert handler({}, None) == {"ok": True}
    with pytest.raises(RuntimeError, match="boom"):
        handler({"fail": True}, None)


def _emf_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]


def test_log_metrics_publishes_what_a_call_added(capsys: pytest.CaptureFixture[str]) -> None:
    @obs.log_metrics
    def handler(event: dict[str, Any], context: object) -> None:
        obs.metrics.add_dimension(name="stage", value="ctf")
        obs.metrics.add_metric(name="StageDuration", unit=obs.MetricUnit.Seconds, value=12.5)
        if event.get("fail"):
            raise RuntimeError("boom")

    handler({}, None)
    with pytest.raises(RuntimeError):
        handler({"fail": True}, None)  # published even when the handler raises
    first, second = _emf_lines(capsys.readouterr().out)
    (directive,) = first["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "cryopilot"
    assert [sorted(d) for d in directive["Dimensions"]] == [["service", "stage"]]
    assert (first["StageDuration"], first["stage"], first["service"]) == ([12.5], "ctf", "cryopilot")
    assert second["StageDuration"] == [12.5]


def test_log_metrics_is_silent_when_a_call_added_none(capsys: pytest.CaptureFixture[str]) -> None:
    @obs.log_metrics
    def handler(event: dict[str, Any], context: object) -> str:
        obs.metrics.add_dimension(name="stage", value="ctf")  # a dimension alone is not kept
        return "ok"

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert handler({}, None) == "ok"
    assert _emf_lines(capsys.readouterr().out) == []
    assert "stage" not in obs.metrics.dimension_set
