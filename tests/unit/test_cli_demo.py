"""`cryopilot demo` and `cryopilot local`: a bad number is one line from argparse, before anything
is built (no traceback, no local stack)."""

from __future__ import annotations

import pytest
from cryopilot_ops import cli


@pytest.fixture(autouse=True)
def nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(args: object) -> int:
        raise AssertionError("a bad option must stop the command before it runs")

    monkeypatch.setattr(cli, "_demo", refuse)
    monkeypatch.setattr(cli, "_local", refuse)


SPEED = "must be a positive, finite number of simulated seconds per wall-clock second"


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["demo", "--datasets", "0"], "argument --datasets: must be a whole number from 1 to 50 (got '0')"),
        (["demo", "--datasets", "51"], "argument --datasets: must be a whole number from 1 to 50 (got '51')"),
        (
            ["demo", "--datasets", "two"],
            "argument --datasets: must be a whole number from 1 to 50 (got 'two')",
        ),
        (["demo", "--speed", "0"], f"argument --speed: {SPEED} (got '0')"),
        (["demo", "--speed", "-5"], f"argument --speed: {SPEED} (got '-5')"),
        (["demo", "--speed", "nan"], f"argument --speed: {SPEED} (got 'nan')"),
        (["demo", "--speed", "inf"], f"argument --speed: {SPEED} (got 'inf')"),
        (["demo", "--speed", "fast"], f"argument --speed: {SPEED} (got 'fast')"),
        (["local", "--speed", "0"], f"argument --speed: {SPEED} (got '0')"),
        (["local", "--speed", "nan"], f"argument --speed: {SPEED} (got 'nan')"),
    ],
)
def test_a_bad_number_is_one_line_from_argparse(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == f"cryopilot {argv[0]}: error: {said}"


@pytest.mark.parametrize(
    ("argv", "speed", "datasets"), [(["demo", "--speed", "1e5", "--datasets", "50"], 1e5, 50)]
)
def test_good_numbers_pass(
    argv: list[str], speed: float, datasets: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[object] = []
    monkeypatch.setattr(cli, "_demo", lambda args: seen.append(args) or 0)
    assert cli.main(argv) == 0
    (args,) = seen
    assert (args.speed, args.datasets) == (speed, datasets)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_the_clocks_refuse_a_speed_that_is_not_positive_and_finite(bad: float) -> None:
    from cryopilot_sim.clock import ScaledClock, VirtualClock

    with pytest.raises(ValueError, match="positive, finite"):
        VirtualClock(pace=bad)
    with pytest.raises(ValueError, match="positive, finite"):
        ScaledClock(bad)
