"""The cold-start report: what it reads and how it judges (the timings come from built functions)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryopilot_sim import coldstart


def test_the_runtime_gets_the_boto3_the_layer_pins(tmp_path: Path) -> None:
    assert coldstart.pinned_boto3() == next(
        line.split("==")[1].strip()
        for line in coldstart.LAYER_REQUIREMENTS.read_text().splitlines()
        if line.startswith("boto3==")
    )
    (tmp_path / "requirements.txt").write_text("pydantic==2\n")
    with pytest.raises(coldstart.ColdStartError, match="pins no boto3"):
        coldstart.pinned_boto3(tmp_path / "requirements.txt")


def test_table_says_which_functions_meet_the_target() -> None:
    timings = [
        coldstart.Timing("FastFunction", [120.0, 130.0, 500.0], [100.0, 100.0, 100.0], []),
        coldstart.Timing("SlowFunction", [320.0, 340.0, 330.0], [200.0, 200.0, 200.0], []),
    ]
    text = coldstart.table(timings, target_ms=300)
    fast, slow = (line for line in text.splitlines() if "Function" in line)
    assert fast.split()[1:4] == ["130", "500", "100"]
    assert fast.endswith("met")
    assert slow.endswith("MISSED by 30 ms")
    assert "1 of 2 functions" in text


def test_a_missing_build_is_an_error_not_a_missed_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert coldstart.main(["--build", str(tmp_path)]) == 2
    assert "make build" in capsys.readouterr().err


def test_the_floor_comes_first_and_each_function_says_what_it_adds() -> None:
    timings = [
        coldstart.Timing("SlowFunction", [320.0, 340.0, 330.0], [200.0, 200.0, 200.0], []),
        coldstart.Timing(coldstart.FLOOR, [250.0, 260.0, 255.0], [240.0, 240.0, 240.0], []),
    ]
    lines = coldstart.table(timings, target_ms=300).splitlines()
    assert lines[0].split()[5] == "ours"
    assert lines[2].startswith(coldstart.FLOOR[:27])
    assert lines[2].endswith("(every handler imports these first)")
    assert lines[3].split()[:5] == ["SlowFunction", "330", "340", "200", "75"]
    assert lines[3].endswith("MISSED by 30 ms")
    assert lines[-1].startswith("0 of 1 functions"), "the floor is not a function"
