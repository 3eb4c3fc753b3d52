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


def test_imports_are_interleaved_so_a_change_of_load_shifts_every_row_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "CryopilotLayer" / "python").mkdir(parents=True)
    (tmp_path / "template.yaml").write_text("{}")
    monkeypatch.setattr(coldstart, "functions", lambda build: {"A": ("app", "h"), "B": ("app", "h")})
    monkeypatch.setattr(coldstart, "_floor_code", lambda: tmp_path)
    order: list[tuple[str, bool]] = []
    clock = iter(range(1, 1000))

    def fake_import(python: Path, build: Path, logical: str, handler: object, traced: bool, code=None):
        order.append((logical, traced))
        return {"wall_ms": float(next(clock)), "cpu_ms": 1.0}

    monkeypatch.setattr(coldstart, "_import_once", fake_import)
    timings = {t.function: t for t in coldstart.measure(tmp_path, runs=3, traced=True, python=tmp_path)}
    floor = coldstart.FLOOR
    assert order[:3] == [(floor, False), ("A", False), ("B", False)], "one unmeasured import each"
    assert order[3:5] == [("A", True), ("B", True)], "and one traced, for the traced rows"
    timed = [name for name, traced in order[5:] if not traced]
    assert timed == [floor, "A", "B", "A", "B", floor, "B", floor, "A"], "each round rotates by one"
    assert (floor, True) not in order, "the floor is never traced"
    assert len(timings[floor].wall_ms) == len(timings["A"].wall_ms) == len(timings["A"].traced_ms) == 3
    # the load drifts up by one ms per import: each row's median sits within one round of the others'
    medians = [t.median for t in timings.values()]
    assert max(medians) - min(medians) <= 5
