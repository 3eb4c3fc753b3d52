"""``cryopilot cluster-config``: prints, and only prints, a configuration ParallelCluster's schema loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cryopilot.core.naming import cluster_name_for
from cryopilot_ops import cli

cluster_schema = pytest.importorskip("pcluster.schemas.cluster_schema")

MANIFESTS = Path(__file__).resolve().parents[2] / "events" / "manifests"
VALID = ["cgrp.yaml", "glp1r.yaml", "spike.yaml"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["cluster-config", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def generated(capsys: pytest.CaptureFixture[str], name: str, *flags: str) -> dict[str, Any]:
    code, out, err = run_cli(capsys, str(MANIFESTS / name), *flags)
    assert code == 0, err
    doc = yaml.safe_load(out)
    assert isinstance(doc, dict), out
    return doc


def queue(doc: dict[str, Any], name: str) -> dict[str, Any]:
    queues = {q["Name"]: q for q in doc["Scheduling"]["SlurmQueues"]}
    return queues[name]


def test_the_valid_manifests_are_the_expected_ones() -> None:
    on_disk = {p.name for p in MANIFESTS.glob("*.yaml")} - {"invalid-voltage.yaml"}
    assert on_disk == set(VALID)


@pytest.mark.parametrize("name", VALID)
def test_output_is_only_a_configuration_parallelcluster_loads(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    code, out, _ = run_cli(capsys, str(MANIFESTS / name))
    assert code == 0
    doc = yaml.safe_load(out)  # the whole of stdout is one YAML mapping, nothing else
    assert isinstance(doc, dict)
    dataset = yaml.safe_load((MANIFESTS / name).read_text())["dataset"]
    run_id = f"{dataset}-manual"
    assert {t["Key"]: t["Value"] for t in doc["Tags"]}["cryopilot:run-id"] == run_id
    loaded = cluster_schema.ClusterSchema(cluster_name=cluster_name_for(run_id)).load(doc)
    assert {q.name for q in loaded.scheduling.queues} == {"gpu8", "gpu4", "gpu1"}


def test_default_data_and_results_locations(capsys: pytest.CaptureFixture[str]) -> None:
    doc = generated(capsys, "cgrp.yaml")
    dras = {d["Name"]: d for d in doc["SharedStorage"][1]["FsxLustreSettings"]["DataRepositoryAssociations"]}
    assert dras["data"]["DataRepositoryPath"] == "s3://cryopilot-input/datasets/CGRP-2026-11/"
    assert dras["results"]["DataRepositoryPath"] == "s3://cryopilot-results/runs/CGRP-2026-11-manual/results/"
    assert (
        dras["projects"]["DataRepositoryPath"] == "s3://cryopilot-results/runs/CGRP-2026-11-manual/project/"
    )


def test_flags_change_the_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    default = generated(capsys, "cgrp.yaml")
    assert queue(default, "gpu8")["ComputeResources"][0]["InstanceType"] != "p5.48xlarge"

    subnets = ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2"]
    secret = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:cryosparc-licence-AbCdEf"
    doc = generated(
        capsys,
        "cgrp.yaml",
        "--run-id",
        "cgrp-review-1",
        "--region",
        "eu-west-1",
        "--head-node-subnet",
        "subnet-0123456789abcdef0",
        "--compute-subnets",
        ",".join(subnets),
        "--gpu8-instance-type",
        "p5.48xlarge",
        "--gpu1-instance-type",
        "g6.2xlarge",
        "--licence-secret-arn",
        secret,
        "--artifacts-bucket",
        "my-artifacts",
        "--results-bucket",
        "my-results",
        "--stack-name",
        "cryopilot-prod",
        "--data-s3-uri",
        "s3://my-input/elsewhere/cgrp/",
    )
    cluster_schema.ClusterSchema(cluster_name=cluster_name_for("cgrp-review-1")).load(doc)

    gpu8, gpu1 = queue(doc, "gpu8"), queue(doc, "gpu1")
    assert gpu8["ComputeResources"][0]["InstanceType"] == "p5.48xlarge"
    assert gpu1["ComputeResources"][0]["InstanceType"] == "g6.2xlarge"
    assert gpu8["Networking"]["SubnetIds"] == subnets[:1]
    assert doc["Region"] == "eu-west-1"
    assert doc["HeadNode"]["Networking"]["SubnetId"] == "subnet-0123456789abcdef0"
    args = doc["HeadNode"]["CustomActions"]["OnNodeConfigured"]["Args"]
    assert args[args.index("--licence-secret-arn") + 1] == secret
    assert args[args.index("--run-id") + 1] == "cgrp-review-1"
    assert doc["HeadNode"]["CustomActions"]["OnNodeConfigured"]["Script"].startswith("s3://my-artifacts/")
    dras = {d["Name"]: d for d in doc["SharedStorage"][1]["FsxLustreSettings"]["DataRepositoryAssociations"]}
    assert dras["data"]["DataRepositoryPath"] == "s3://my-input/elsewhere/cgrp/"
    assert dras["results"]["DataRepositoryPath"] == "s3://my-results/runs/cgrp-review-1/results/"
    assert {t["Key"]: t["Value"] for t in doc["Tags"]}["cryopilot:stack"] == "cryopilot-prod"


def test_the_compute_resources_of_each_queue_are_shown(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, str(MANIFESTS / "cgrp.yaml"))
    assert code == 0
    doc = yaml.safe_load(out)
    types = {
        q: [cr["InstanceType"] for cr in queue(doc, q)["ComputeResources"]] for q in ("gpu8", "gpu4", "gpu1")
    }
    assert types == {
        "gpu8": ["p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge"],
        "gpu4": ["g6e.12xlarge", "g5.12xlarge"],
        "gpu1": ["p5.4xlarge", "g6e.2xlarge"],
    }
    assert (
        "note: gpu8 compute resources, in order of preference: p4d.24xlarge > p4de.24xlarge > p5.48xlarge"
        in err
    )
    one = generated(capsys, "cgrp.yaml", "--gpu8-fallback-types", "", "--gpu1-fallback-types", "g5.2xlarge")
    cluster_schema.ClusterSchema(cluster_name=cluster_name_for("CGRP-2026-11-manual")).load(one)
    assert [cr["InstanceType"] for cr in queue(one, "gpu8")["ComputeResources"]] == ["p4d.24xlarge"]
    assert [cr["InstanceType"] for cr in queue(one, "gpu1")["ComputeResources"]] == [
        "p5.4xlarge",
        "g5.2xlarge",
    ]


def test_invalid_manifest_exits_2_naming_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, str(MANIFESTS / "invalid-voltage.yaml"))
    assert code == 2
    assert out == ""
    assert "acquisition.voltage_kV" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-manifest.yaml"
    code, out, err = run_cli(capsys, str(missing))
    assert code == 2
    assert out == ""
    assert str(missing) in err
    assert "no such file" in err


def test_bad_flag_value_exits_2_without_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, str(MANIFESTS / "cgrp.yaml"), "--gpu8-instance-type", "not a type")
    assert code == 2
    assert out == ""
    assert "gpu8_instance_type" in err


def test_fsx_is_sized_by_the_storage_model_from_the_measured_data(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GLP-1R dataset of the white paper (EMPIAR-10673: 1.9 TB, 5,700 K3 movies) in S3: the FSx
    file system holds the lazily imported movies, two float32 micrographs per movie, the particle
    stacks and 25 % headroom, rounded to a PERSISTENT_2 size."""
    from cryopilot_sim.datasets import stage_profile_data
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="cryopilot-input")
        key = "datasets/GLP1R-2026-11/cryopilot.yaml"
        s3.put_object(Bucket="cryopilot-input", Key=key, Body=(MANIFESTS / "glp1r.yaml").read_bytes())
        listing = stage_profile_data("cryopilot-input", "datasets/GLP1R-2026-11/", "glp1r", "movies/*.tif")
        assert listing.bytes == 1_900_000_000_000
        code, out, err = run_cli(capsys, f"s3://cryopilot-input/{key}", "--region", "us-east-1")
    assert code == 0, err
    fsx = yaml.safe_load(out)["SharedStorage"][1]["FsxLustreSettings"]
    gib = 1024**3
    # what the file system must hold: the movies (and the manifest), 5,700 x 2 micrographs of 94.3 MB
    # and 4 MB of side files each, the manifest's 4.8 M particles of 106² float32 pixels (the
    # Fourier-cropped box) and half of them again at 210² pixels; plus 25 % headroom
    held = listing.bytes + len((MANIFESTS / "glp1r.yaml").read_bytes())
    held += 5700 * 2 * 94_300_000 + 5700 * 4_000_000
    held += 4_800_000 * 106**2 * 4 + 2_400_000 * 210**2 * 4
    need = -(-held * 5 // 4 // gib)
    assert f"; {need:,} GiB with 25% headroom" in err
    assert need == 4234
    assert fsx["StorageCapacity"] == 4800  # the next PERSISTENT_2 size: 2 x 2400 GiB
    assert fsx["PerUnitStorageThroughput"] == 250
    assert fsx["DeploymentType"] == "PERSISTENT_2"
    assert "1.90 TB in 5,701 objects measured under the data prefix" in err
    assert "4,800 GiB at 250 MB/s/TiB" in err


def test_a_local_manifest_is_sized_for_its_presets_white_paper_dataset(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(capsys, str(MANIFESTS / "cgrp.yaml"))
    assert code == 0, err
    fsx = yaml.safe_load(out)["SharedStorage"][1]["FsxLustreSettings"]
    assert fsx["StorageCapacity"] == 4800  # the CGRP dataset: 1.6 TB, 5,600 movies, 6.3 M particles
    assert "data prefix not measured (pass --measure-data)" in err
