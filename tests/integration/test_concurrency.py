"""Twenty datasets dropped at once, with ``MaxConcurrentRuns`` 5: twenty independent runs, each
with its own cluster, never more than five clusters at once, the others QUEUED and started oldest
first as slots free; nothing lost, nothing run twice, every cluster deleted at the end.

One batch (module fixture) runs the whole stack of template.yaml on the stand-ins; the tests read
what it left. The lightest dataset (spike, micrographs: no motion correction) keeps it short.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.demo import DemoOptions, run_demo, sample_dataset
from cryopilot_sim.harness import LocalCloud

# One worker runs the whole module (under xdist): the batch is built once.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), pytest.mark.xdist_group("concurrency")]

DATASETS = 20
LIMIT = 5
#: the last dataset dropped: certainly still waiting when its upload is announced again
REPEATED = DATASETS


@dataclass
class Batch:
    cloud: LocalCloud
    folders: list[str]
    #: StartRun's outcome for each upload, in the order of the uploads
    outcomes: list[dict[str, Any]]
    #: StartRun's outcomes for the repeated announcements of the last upload
    repeats: list[dict[str, Any]]
    #: the most clusters the ParallelCluster stand-in held at any sample
    #: ``cryopilot status`` right after the uploads: the runs listed, and the last run's page
    listed: list[Any] = field(default_factory=list)
    status_page: str = ""
    sampled_peak: int = 0
    cluster_names: set[str] = field(default_factory=set)
    wall_seconds: float = 0.0


class _ClusterSampler(threading.Thread):
    """Count the stand-in's clusters every few milliseconds while the runs go."""

    def __init__(self, cloud: LocalCloud) -> None:
        super().__init__(name="cluster-sampler", daemon=True)
        self.cloud = cloud
        self.peak = 0
        self.names: set[str] = set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            clusters = self.cloud.pcluster.clusters()
            self.peak = max(self.peak, len(clusters))
            self.names |= set(clusters)


def _object_created(bucket: str, key: str, head: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": "aws.s3",
        "detail-type": "Object Created",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {"key": key, "etag": head["ETag"].strip('"'), "version-id": head["VersionId"]},
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
        },
    }


def _s3_notification(bucket: str, key: str, head: dict[str, Any]) -> dict[str, Any]:
    obj = {"key": key, "size": 1, "eTag": head["ETag"].strip('"'), "versionId": head["VersionId"]}
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": "2026-11-23T12:00:00.000Z",
                "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "EXAMPLE"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {"x-amz-request-id": "EXAMPLE", "x-amz-id-2": "EXAMPLE"},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "manifests",
                    "bucket": {
                        "name": bucket,
                        "ownerIdentity": {"principalId": "EXAMPLE"},
                        "arn": f"arn:aws:s3:::{bucket}",
                    },
                    "object": obj,
                },
            }
        ]
    }


def _start_run_outcomes(cloud: LocalCloud, key: str) -> list[dict[str, Any]]:
    return [
        o
        for d in cloud.deliveries
        if d.function.endswith("StartRunFunction")
        and d.event.get("detail", {}).get("object", {}).get("key") == key
        for o in d.result["outcomes"]
    ]


def _all_ended(cloud: LocalCloud) -> bool:
    from cryopilot.adapters import admission

    executions = cloud.executions()
    state = admission.read()
    return (
        len(executions) >= DATASETS
        and all(e["status"] != "RUNNING" for e in executions)
        and not state.queue
        and not state.holders
    )


def test_demo_runs_datasets_at_once_waits_for_the_queued_and_reports_the_peak(tmp_path: Path) -> None:
    """`cryopilot demo --datasets 3` with two slots: two independent runs at once (two concurrent
    runs once raced the head node's bootstrap: a cluster reported CREATE_COMPLETE before its head
    node answered), the third queued and waited for, and the summary says how many clusters
    existed at once. (First in the module: the demo builds a local stack of its own, which cannot
    exist next to the batch's.)"""
    summary = run_demo(
        DemoOptions(
            profile="spike", pace=1e9, quiet=True, state_dir=tmp_path, datasets=3, max_concurrent_runs=2
        )
    )
    runs = summary["runs"]
    assert len({r["run_id"] for r in runs}) == 3
    assert {r["dataset"] for r in runs} == {"SPIKE-FAB-07-01", "SPIKE-FAB-07-02", "SPIKE-FAB-07-03"}
    assert [r["status"] for r in runs] == ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED"]
    assert all(r["cluster_deleted"] for r in runs)
    assert summary["status"] == "SUCCEEDED"
    assert len(summary["mails"]) == 6  # started and done, for each
    # never more clusters than slots (the batch below checks the limit is reached, with a sampler)
    assert summary["concurrency"]["max_concurrent_runs"] == 2
    assert 1 <= summary["concurrency"]["peak_clusters"] <= 2
    assert summary["clusters_left"] == []
    assert summary["rehearsal"]["passed"], summary["rehearsal"]["problems"]


@pytest.fixture(scope="module")
def batch() -> Iterator[Batch]:
    folder, manifest, files = sample_dataset("spike")
    with LocalCloud(clock=VirtualClock(), profile="spike", parameters={"MaxConcurrentRuns": LIMIT}) as cloud:
        sampler = _ClusterSampler(cloud)
        sampler.start()
        wall0 = time.monotonic()
        folders = [f"{folder}-{i:02d}" for i in range(1, DATASETS + 1)]
        heads = {}
        for name in folders:
            text = manifest.replace(f"dataset: {folder}", f"dataset: {name}", 1)
            heads[name] = cloud.drop_dataset(name, text, files)
        cloud.drain_events()
        keys = [f"datasets/{name}/cryopilot.yaml" for name in folders]
        outcomes = [_start_run_outcomes(cloud, key)[0] for key in keys]

        # the last upload announced again, through EventBridge and as an S3 notification
        last, key = folders[REPEATED - 1], keys[REPEATED - 1]
        cloud.put_event(_object_created(cloud.input_bucket, key, heads[last]))
        cloud.drain_events()
        start_fn = next(n for n, f in cloud.functions.items() if f.logical_id == "StartRunFunction")
        ok, direct = cloud.invoke(start_fn, _s3_notification(cloud.input_bucket, key, heads[last]))
        assert ok, direct
        repeats = _start_run_outcomes(cloud, key)[1:] + direct["outcomes"]

        from cryopilot_ops import ops

        stack = cloud.operator_stack()
        listed = ops.list_runs(stack, limit=50)
        last_id = outcomes[-1]["run_id"]
        status_page = ops.render_status(ops.get_run(stack, last_id), ops.execution_status(stack, last_id))

        deadline = time.monotonic() + 800
        while not _all_ended(cloud):
            assert time.monotonic() < deadline, "the runs did not all end in time"
            time.sleep(0.5)
        cloud.drain_events()
        sampler.done.set()
        sampler.join()
        yield Batch(
            cloud=cloud,
            folders=folders,
            outcomes=outcomes,
            repeats=repeats,
            listed=listed,
            status_page=status_page,
            sampled_peak=sampler.peak,
            cluster_names=sampler.names,
            wall_seconds=time.monotonic() - wall0,
        )


def test_twenty_datasets_become_twenty_runs_five_at_a_time_the_rest_queued(batch: Batch) -> None:
    statuses = [o["status"] for o in batch.outcomes]
    assert statuses == ["started"] * LIMIT + ["queued"] * (DATASETS - LIMIT)
    assert [o.get("queue_position") for o in batch.outcomes[LIMIT:]] == list(range(1, DATASETS - LIMIT + 1))
    run_ids = [o["run_id"] for o in batch.outcomes]
    assert len(set(run_ids)) == DATASETS


def test_every_run_succeeded_once_with_its_own_cluster_now_deleted(batch: Batch) -> None:
    cloud = batch.cloud
    run_ids = [o["run_id"] for o in batch.outcomes]
    executions = cloud.executions()
    assert sorted(e["name"] for e in executions) == sorted(run_ids), "one execution per run, no more"
    assert {e["status"] for e in executions} == {"SUCCEEDED"}

    records = [cloud.run_record(rid) for rid in run_ids]
    assert all(r is not None for r in records)
    assert [r["status"] for r in records] == ["SUCCEEDED"] * DATASETS  # type: ignore[index]
    assert [r["dataset"] for r in records] == batch.folders  # type: ignore[index]
    clusters = {r["cluster_name"] for r in records}  # type: ignore[index]
    assert len(clusters) == DATASETS
    assert all(r["cluster_deleted"] for r in records)  # type: ignore[index]
    assert clusters == set(cloud.pcluster.history), "every run's cluster, and no other, was created"
    assert batch.cluster_names <= clusters
    assert cloud.pcluster.clusters() == {}
    done = [m for m in cloud.mails() if " done: " in m["subject"]]
    assert len(done) == DATASETS


def test_never_more_clusters_at_once_than_max_concurrent_runs(batch: Batch) -> None:
    pc = batch.cloud.pcluster
    assert 0 < batch.sampled_peak <= LIMIT
    # exactly, from each cluster's creation request to the end of its deletion (simulated time)
    edges = []
    for name, seen in pc.history.items():
        edges += [
            (float(seen["created_at"]), 1),
            (float(pc.delete_requests[name][0]) + pc.delete_seconds, -1),
        ]
    current = peak = 0
    for _, step in sorted(edges):
        current += step
        peak = max(peak, current)
    assert peak == LIMIT


def test_queued_runs_started_oldest_first_as_slots_freed(batch: Batch) -> None:
    cloud = batch.cloud
    order = {o["run_id"]: i for i, o in enumerate(batch.outcomes)}
    started = sorted(cloud.executions(), key=lambda e: (e["startDate"], order[e["name"]]))
    assert [order[e["name"]] for e in started] == list(range(DATASETS))
    # each end freed its slot exactly once, and the queue's runs were started by those ends
    ends = [d.result for d in cloud.deliveries if d.function.endswith("CleanupFunction")]
    assert len(ends) == DATASETS
    assert all(r["execution_status"] == "SUCCEEDED" and r["slot_released"] for r in ends)
    assert sorted(rid for r in ends for rid in r["started"]) == sorted(
        o["run_id"] for o in batch.outcomes[LIMIT:]
    )


def test_a_repeated_event_for_a_queued_dataset_starts_nothing_more(batch: Batch) -> None:
    first = batch.outcomes[REPEATED - 1]
    assert first["status"] == "queued"
    assert [r["status"] for r in batch.repeats] == ["duplicate", "duplicate"]
    assert {r["run_id"] for r in batch.repeats} == {first["run_id"]}
    assert all("waits for a free slot" in r["reason"] for r in batch.repeats)
    assert [e["name"] for e in batch.cloud.executions()].count(first["run_id"]) == 1


def test_nothing_is_left_for_the_janitor(batch: Batch) -> None:
    from cryopilot.adapters import admission

    state = admission.read()
    assert (state.holders, state.queue) == (set(), [])
    report = batch.cloud.run_schedule("CleanupFunction")
    assert {k: report[k] for k in ("checked", "actions", "snapshots", "mailed")} == {
        "checked": 0,
        "actions": [],
        "snapshots": [],  # every run's /shared snapshot is young: kept
        "mailed": False,
    }


def test_status_shows_the_waiting_runs_and_their_place_in_the_queue(batch: Batch) -> None:
    by_id = {r.run_id: r for r in batch.listed}
    run_ids = [o["run_id"] for o in batch.outcomes]
    assert set(by_id) == set(run_ids)
    waiting = [rid for rid in run_ids if by_id[rid].status == "QUEUED" and by_id[rid].queue_position]
    assert waiting == run_ids[LIMIT:], "the queued runs, none started yet"
    assert [by_id[rid].queue_position for rid in waiting] == list(range(1, len(waiting) + 1))
    assert all(by_id[rid].current_step == "waiting for a slot" for rid in waiting)
    assert f"run {run_ids[-1]}" in batch.status_page
    assert "status QUEUED" in batch.status_page
    assert (
        f"waiting for a free slot: #{len(waiting)} in the queue, {LIMIT} run(s) active" in batch.status_page
    )


def test_demo_gives_up_on_a_queue_that_never_drains(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs left waiting while nothing runs any more end the demo (which then exits non-zero)
    instead of hanging it."""
    from cryopilot_sim.demo import _PeakClusters

    monkeypatch.setattr(_PeakClusters, "STALL_SECONDS", 0.0)
    peak = _PeakClusters(cloud=None)  # type: ignore[arg-type]
    assert not peak.stalled({"a": "RUNNING", "b": "QUEUED"})
    assert not peak.stalled({"a": "RUNNING", "b": "QUEUED"}), "a run still runs: its end frees a slot"
    assert not peak.stalled({"a": "SUCCEEDED", "b": "QUEUED"}), "just changed"
    assert peak.stalled({"a": "SUCCEEDED", "b": "QUEUED"})
