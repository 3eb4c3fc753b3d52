"""`cryopilot estimate`: both layouts side by side, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryopilot_ops.cli import main

from tests.conftest import EVENTS


def test_profile_estimate_prints_both_layouts_and_the_assumptions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--profile", "glp1r"]) == 0
    out = capsys.readouterr().out
    assert "white paper" in out
    assert "cryopilot" in out
    assert "time to structure" in out
    assert "utilisation (busy / paid)" in out
    assert "Assumptions" in out
    assert "p4d.24xlarge" in out
    # every stage of the GLP-1R profile has a row, hetero split into its Table 1 rounds
    for stage in ("motion", "ctf", "class2d", "abinit", "hetero1", "hetero4", "nurefine"):
        assert f"\n{stage} " in out


def test_manifest_estimate_uses_the_presets_stages(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", str(EVENTS / "manifests" / "spike.yaml")]) == 0
    out = capsys.readouterr().out
    assert "stage times of the white paper's spike dataset" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("stage "))
    rows = []
    for line in lines[header + 2 :]:
        if not line.strip():
            break
        rows.append(line.split()[0])
    assert rows[0] == "import"  # motion-corrected micrographs: no motion correction stage
    assert "motion" not in rows
    assert rows[-1] == "nurefine"


def test_the_estimate_prints_the_fsx_file_systems_size_and_cost(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", str(EVENTS / "manifests" / "glp1r.yaml")]) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("  FSx for Lustre (")]
    assert row.startswith("  FSx for Lustre (4,800 GiB, 250 MB/s/TiB)")
    whitepaper, cryopilot = (float(v) for v in row.split(")")[1].split())
    assert whitepaper > cryopilot > 0  # the same file system, paid for each layout's time
    assert "FSx for Lustre PERSISTENT_2, 4,800 GiB (storage model: raw data" in out
    assert "USD per GB-month at 250 MB/s/TiB" in out


def test_price_override_changes_the_cost(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--profile", "spike"]) == 0
    base = capsys.readouterr().out
    assert main(["estimate", "--profile", "spike", "--price", '{"p4d.24xlarge": 100}']) == 0
    dearer = capsys.readouterr().out
    assert base != dearer
    assert "100.0000" in dearer


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--price", "{not json"], "CRYOPILOT_PRICE_OVERRIDES"),
        (["--price", '{"p4d.24xlarge": -1}'], "p4d.24xlarge"),
        (["--price", '{"x9.huge": 1}'], "x9.huge"),
    ],
)
def test_bad_price_overrides_exit_2_with_a_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["estimate", "--profile", "cgrp", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cryopilot estimate: ")
    assert message in err


def test_bad_manifest_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "cryopilot.yaml"
    bad.write_text("dataset: x\n")
    assert main(["estimate", str(bad)]) == 2
    assert "input" in capsys.readouterr().err
    assert main(["estimate", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_the_estimate_prints_the_shared_snapshots_cost_apart(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", str(EVENTS / "manifests" / "glp1r.yaml")]) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("  /shared snapshot after the run (")]
    assert row.startswith("  /shared snapshot after the run (25 GiB, 30 days; not in the total)")
    whitepaper, cryopilot = (float(v) for v in row.split(")")[1].split())
    # 25 GiB at the catalogue's 0.05 USD per GB-month for 30 days of a 730-hour month
    assert whitepaper == cryopilot == pytest.approx(25 * 0.05 * 720 / 730, abs=0.01)
    assert "/shared EBS snapshot: 25 GiB" in out
    assert "https://aws.amazon.com/ebs/pricing/" in out


def test_repeat_estimate_sets_the_repeat_against_the_full_pipeline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["estimate", "--profile", "glp1r", "--preset", "repeat"]) == 0
    out = capsys.readouterr().out
    assert "GLP-1 receptor (EMPIAR-10673), repeat preset: white-paper layout vs cryopilot layout" in out
    rows = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"import_reference", "pick", "hetero1", "hetero2", "nurefine"} <= rows
    assert not {"class2d", "select2d", "abinit", "hetero3"} & rows
    block = out[out.index("full pipeline against repeat") :]
    assert "full, white paper" in block
    assert "repeat, cryopilot" in block
    for label in ("time to structure", "cost", "GPU-hours paid", "utilisation (busy / paid)"):
        assert f"\n{label} " in block
    share = next(line for line in block.splitlines() if "repeat on cryopilot's layout:" in line)
    time_share, cost_share = (float(part.split(" %")[0].split()[-1]) for part in share.split(",")[:2])
    assert 0 < time_share < 100
    assert 0 < cost_share < 100


def test_preset_is_for_profiles_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", str(EVENTS / "manifests" / "spike.yaml"), "--preset", "repeat"]) == 2
    assert "--preset applies to --profile, not to a manifest" in capsys.readouterr().err


def test_a_repeat_manifest_is_estimated_at_the_box_a_full_run_would_use(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = (EVENTS / "manifests" / "cgrp.yaml").read_text().replace("preset: movies", "preset: repeat")
    assert "preset: repeat" in text
    manifest = tmp_path / "compound-7.yaml"
    manifest.write_text(text)
    assert main(["estimate", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert (
        "preset repeat, stage times of the white paper's cgrp dataset (Table 1), reference box assumed" in out
    )
    rows = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"import_reference", "hetero2", "nurefine"} <= rows
    assert "abinit" not in rows


def test_a_spot_where_safe_manifest_estimate_shows_the_spot_stages_and_a_cost_range(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import re

    import yaml

    doc = yaml.safe_load((EVENTS / "manifests" / "cgrp.yaml").read_text())
    doc.setdefault("pipeline", {})["capacity"] = "spot-where-safe"
    path = tmp_path / "cgrp-spot.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["estimate", str(path)]) == 0
    out = capsys.readouterr().out
    (stages,) = [ln for ln in out.splitlines() if ln.startswith("capacity: spot-where-safe: on Spot first: ")]
    assert "motion" in stages
    assert "nurefine" not in stages  # never the final refinement
    (costs,) = re.findall(r"the cryopilot layout costs \$([\d,.]+)–\$([\d,.]+)", out)
    low, high = (float(c.replace(",", "")) for c in costs)
    assert low < high
    assert "https://aws.amazon.com/ec2/spot/pricing/ (NOT verified)" in out
    assert main(["estimate", str(EVENTS / "manifests" / "cgrp.yaml")]) == 0
    assert "spot-where-safe" not in capsys.readouterr().out  # On-Demand: no Spot lines
