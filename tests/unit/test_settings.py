"""The Lambdas' settings read the environment as pydantic-settings did."""

from __future__ import annotations

import pytest
from cryopilot.adapters.settings import Settings


def test_environment_values_are_read_and_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYOPILOT_STACK_NAME", "prod")
    monkeypatch.setenv("CRYOPILOT_MAX_RUN_HOURS", "12.5")
    monkeypatch.setenv("cryopilot_max_concurrent_runs", "3")  # any case, as before
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("CRYOPILOT_NOT_A_SETTING", "x")
    s = Settings()
    assert (s.stack_name, s.max_run_hours, s.max_concurrent_runs, s.region) == ("prod", 12.5, 3, "eu-west-1")
    assert s.gpu8_instance_type == "p4d.24xlarge"  # default


def test_values_given_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYOPILOT_STACK_NAME", "prod")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    s = Settings(stack_name="other", region="us-west-2")
    assert (s.stack_name, s.region) == ("other", "us-west-2")


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYOPILOT_MAX_CONCURRENT_RUNS", "0")
    with pytest.raises(ValueError, match="max_concurrent_runs"):
        Settings()
