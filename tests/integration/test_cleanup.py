"""Every way a run can end leads to its cluster's deletion: the cleanup after an execution ended
outside the state machine's catches, and the scheduled janitor (real state machine, stand-ins)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.harness import LocalCloud

from tests.conftest import EVENTS

pytestmark = pytest.mark.slow

DATA = {"movies/m0001.tif": b"\x00" * 64, "gain/gain_ref.mrc": b"g" * 32}


@pytest.fixture
def cloud(request: pytest.FixtureRequest) -> Iterator[LocalCloud]:
    with LocalCloud(clock=VirtualClock(), parameters=getattr(request, "param", {})) as c:
        yield c


def _start(cloud: LocalCloud) -> dict:
    cloud.drop_dataset("CGRP-2026-11", (EVENTS / "manifests" / "cgrp.yaml").read_text(), DATA)
    cloud.drain_events()
    (execution,) = cloud.executions()
    return execution


def _until(predicate, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def _cleanup_results(cloud: LocalCloud) -> list[dict]:
    return [d.result for d in cloud.deliveries if d.function.endswith("CleanupFunction")]


def _gone(cloud: LocalCloud) -> bool:
    cloud.clock.sleep(120)  # deletions take simulated minutes
    return cloud.pcluster.clusters() == {}


def test_execution_stopped_by_hand_deletes_the_cluster_and_mails(cloud: LocalCloud) -> None:
    execution = _start(cloud)
    run_id = execution["name"]
    _until(
        lambda: any(s.get("started_at") for s in (cloud.run_record(run_id) or {}).get("stages", {}).values())
    )
    assert cloud.pcluster.clusters(), "the run has a cluster"

    cloud.client("stepfunctions").stop_execution(executionArn=execution["executionArn"], cause="by hand")
    _until(lambda: bool(_cleanup_results(cloud)))
    (result,) = _cleanup_results(cloud)
    assert result["execution_status"] == "ABORTED"
    assert result["action"] == "delete_requested"
    assert result["mailed"] is True
    _until(lambda: _gone(cloud))

    record = cloud.run_record(run_id)
    assert record is not None
    assert record["status"] == "CANCELLED"
    assert record["error"]["type"] == "ExecutionAborted"
    stopped = cloud.mails()[-1]
    assert stopped["subject"] == "[cryopilot] CGRP-2026-11 was stopped"
    assert "is being deleted now" in stopped["message"]


def test_a_failed_run_that_cleaned_up_itself_gets_no_second_mail(cloud: LocalCloud) -> None:
    cloud.cryosparc_setup.append(lambda cs: cs.inject("fail", "class_2D_new"))
    execution = _start(cloud)
    desc = cloud.wait_for_execution(execution["executionArn"], timeout=240)
    assert desc["status"] == "FAILED"
    _until(lambda: bool(_cleanup_results(cloud)))
    (result,) = _cleanup_results(cloud)
    assert result["action"] == "already_deleted"
    assert result["mailed"] is False
    subjects = [m["subject"] for m in cloud.mails()]
    assert len(subjects) == 2, subjects  # started, failed: nothing more


def test_janitor_retries_a_failed_delete_until_the_cluster_is_gone(cloud: LocalCloud) -> None:
    cloud.cryosparc_setup.append(lambda cs: cs.inject("fail", "class_2D_new"))
    cloud.pcluster.inject("delete_failed", count=2)  # the failure path's delete, then the cleanup's
    execution = _start(cloud)
    desc = cloud.wait_for_execution(execution["executionArn"], timeout=240)
    assert desc["status"] == "FAILED"
    failure_mail = [m for m in cloud.mails() if "failed at" in m["subject"]][-1]
    assert "could NOT be confirmed deleted" in failure_mail["message"]

    # the execution's end: the cleanup function asks for the deletion again, and mails
    _until(lambda: bool(_cleanup_results(cloud)))
    (cleanup,) = _cleanup_results(cloud)
    assert cleanup["action"] == "delete_requested"
    assert cleanup["mailed"] is True
    cloud.clock.sleep(900)
    assert list(cloud.pcluster.clusters().values()) == ["DELETE_FAILED"]

    report = cloud.run_schedule("CleanupFunction")
    assert report["checked"] == 1
    (action,) = report["actions"]
    assert action["action"] == "delete_retried"
    assert action["attempts"] == 1
    assert action["loud"] is False
    assert "its run is over (FAILED)" in action["reason"]
    assert report["mailed"] is True
    _until(lambda: _gone(cloud))
    assert cloud.mails()[-1]["subject"] == "[cryopilot] janitor: 1 cluster(s) cleaned up"

    last = cloud.run_schedule("CleanupFunction")
    assert {k: last[k] for k in ("checked", "actions", "snapshots", "mailed")} == {
        "checked": 0,
        "actions": [],
        "snapshots": [],
        "mailed": False,
    }
    # that pass found the cluster gone and closed the run's record, which nothing else would do
    record = cloud.run_record(desc["name"])
    assert record is not None
    assert (record["cluster_deleted"], record["cluster_state"]) == (True, "DELETED")


def test_janitor_reports_loudly_a_cluster_that_keeps_failing_to_delete(cloud: LocalCloud) -> None:
    cloud.cryosparc_setup.append(lambda cs: cs.inject("fail", "class_2D_new"))
    cloud.pcluster.inject("delete_failed", count=10)
    execution = _start(cloud)
    cloud.wait_for_execution(execution["executionArn"], timeout=240)
    _until(lambda: bool(_cleanup_results(cloud)))  # the cleanup's own attempt comes first
    subjects = []
    for _ in range(3):
        cloud.clock.sleep(900)  # the stand-in's deletion fails after its delete time
        assert list(cloud.pcluster.clusters().values()) == ["DELETE_FAILED"]
        cloud.run_schedule("CleanupFunction")
        subjects.append(cloud.mails()[-1]["subject"])
    assert subjects == [
        "[cryopilot] janitor: 1 cluster(s) cleaned up",
        "[cryopilot] janitor: 1 cluster(s) cleaned up",
        "[cryopilot] ACTION NEEDED: 1 cluster(s) cannot be deleted",
    ]
    assert "failed to delete 3 times or more" in cloud.mails()[-1]["message"]
    assert cloud.pcluster.clusters() != {}, "the stand-in keeps refusing: the janitor must not pretend"


@pytest.mark.parametrize("cloud", [{"MaxRunHours": 2}], indirect=True)
def test_janitor_stops_a_run_past_the_maximum_run_hours_and_deletes_its_cluster(cloud: LocalCloud) -> None:
    execution = _start(cloud)
    run_id = execution["name"]
    _until(lambda: (cloud.run_record(run_id) or {}).get("cluster_ready_at") is not None)
    assert cloud.run_schedule("CleanupFunction")["actions"] == [], "young runs are left alone"

    cloud.clock.sleep(3 * 3600)
    report = cloud.run_schedule("CleanupFunction")
    (action,) = report["actions"]
    assert action["action"] == "stopped_and_delete_requested"
    assert "older than the maximum run time" in action["reason"]
    desc = cloud.wait_for_execution(execution["executionArn"], timeout=60)
    assert desc["status"] == "ABORTED"
    _until(lambda: bool(_cleanup_results(cloud)))  # the ABORTED execution's cleanup closes the record
    _until(lambda: _gone(cloud))
    record = cloud.run_record(run_id)
    assert record is not None
    assert record["status"] == "CANCELLED"


def test_janitor_never_touches_another_stacks_or_a_running_runs_cluster(cloud: LocalCloud) -> None:
    import yaml
    from cryopilot.adapters.cluster_config import config_yaml_for
    from cryopilot.adapters.clusters import api
    from cryopilot.adapters.settings import get_settings

    other = {
        "run_id": "OTHER-1",
        "dataset": "OTHER",
        "cluster_name": "cryopilot-other-1",
        "data_s3_uri": f"s3://{cloud.input_bucket}/datasets/OTHER/",
    }
    config = yaml.safe_load(config_yaml_for(other, get_settings()))
    for tag in config["Tags"]:
        if tag["Key"] == "cryopilot:stack":
            tag["Value"] = "someone-else"
    api().create_cluster("cryopilot-other-1", yaml.safe_dump(config))
    execution = _start(cloud)
    run_id = execution["name"]
    _until(lambda: (cloud.run_record(run_id) or {}).get("cluster_ready_at") is not None)
    report = cloud.run_schedule("CleanupFunction")
    assert report["checked"] == 1  # ours only
    assert report["actions"] == []
    assert "cryopilot-other-1" in cloud.pcluster.clusters()
    # a cluster the API will not describe (400, as for a newer ParallelCluster's cluster) is
    # passed over: the pass goes on with the others
    cloud.pcluster.inject("bad_request", cluster="cryopilot-other-1", operation="describe_cluster")
    report = cloud.run_schedule("CleanupFunction")
    assert report["checked"] == 1
    assert cloud.pcluster.pending_faults() == 0


@pytest.mark.parametrize(
    "create_lambda_survives", [True, False], ids=["create-step-ends", "create-step-dies"]
)
def test_a_cancel_while_the_create_is_in_flight_leaves_no_cluster(
    cloud: LocalCloud, create_lambda_survives: bool
) -> None:
    """The operator cancels while CreateCluster's request is on its way: the run record says
    CREATE_REQUESTED and ParallelCluster has no cluster yet (404), then the create lands. The
    harness runs one Lambda at a time, so the interleaving is driven here: the create request is
    held until ``cryopilot cancel`` (stop, delete through the cluster function) has run. Whether
    the create step lives to see its answer, or dies right after sending it, the cluster it made
    is deleted and no mail says that nothing is left running before it is gone."""
    from unittest import mock

    from cryopilot.adapters.pcluster import PClusterClient
    from cryopilot_ops import ops

    stack = cloud.operator_stack()
    real_create = PClusterClient.create_or_adopt
    said: list[str] = []
    cancels: list[dict] = []

    def in_flight(client: PClusterClient, name: str, config: str, run_id: str, **options: object) -> object:
        record = cloud.run_record(run_id) or {}
        assert record.get("cluster_state") == "CREATE_REQUESTED"
        assert name not in cloud.pcluster.clusters()
        cancels.append(ops.cancel(stack, run_id, wait=False, emit=said.append))
        info = real_create(client, name, config, run_id, **options)
        if not create_lambda_survives:
            raise TimeoutError("Task timed out")  # the create's Lambda dies once its request got through
        return info

    with mock.patch.object(PClusterClient, "create_or_adopt", in_flight):
        execution = _start(cloud)
        run_id = execution["name"]
        desc = cloud.wait_for_execution(execution["executionArn"], timeout=120)
        _until(lambda: bool(_cleanup_results(cloud)))
    assert desc["status"] == "ABORTED"
    (cancelled,) = cancels
    assert cancelled["deleted"] is False, "a 404 while the create is in flight is not 'deleted'"
    assert said[0] == f"stopped execution {run_id}"

    (result,) = _cleanup_results(cloud)
    assert result["action"] == "delete_requested", result
    assert cloud.pcluster.clusters() != {}, "the create did land"
    for mail in cloud.mails():
        assert "nothing is left running" not in mail["message"], mail
    assert "is being deleted now" in cloud.mails()[-1]["message"]
    _until(lambda: _gone(cloud))
    record = cloud.run_record(run_id)
    assert record is not None
    assert record["status"] == "CANCELLED"

    # cancel again: it reports the cluster's real end, seen by its own checks
    again = ops.cancel(stack, run_id, sleep=cloud.clock.sleep, emit=said.append, interval=60)
    assert again["deleted"] is True
    assert (cloud.run_record(run_id) or {}).get("cluster_deleted") is True


def test_a_cancel_before_the_create_is_requested_leaves_no_cluster(cloud: LocalCloud) -> None:
    """The operator cancels while the create step builds the configuration, before the record says
    CREATE_REQUESTED: the cancel's deletion finds nothing to delete and asks for nothing, so the
    create step must not make a cluster after it. (Driven here: the configuration is built only
    once ``cryopilot cancel`` has run.)"""
    from unittest import mock

    from cryopilot.steps import cluster as cluster_step
    from cryopilot_ops import ops

    stack = cloud.operator_stack()
    real_config = cluster_step.config_yaml_for
    cancels: list[dict] = []

    def cancel_first(run: object, settings: object) -> str:
        run_id = getattr(run, "run_id", None) or dict(run)["run_id"]  # type: ignore[call-overload]
        if not cancels:
            assert (cloud.run_record(run_id) or {}).get("cluster_state") is None
            cancels.append(ops.cancel(stack, run_id, wait=False, emit=lambda line: None))
        return real_config(run, settings)  # type: ignore[arg-type]

    with mock.patch.object(cluster_step, "config_yaml_for", cancel_first):
        execution = _start(cloud)
        run_id = execution["name"]
        desc = cloud.wait_for_execution(execution["executionArn"], timeout=120)
        _until(lambda: bool(_cleanup_results(cloud)))
    assert desc["status"] == "ABORTED"
    assert len(cancels) == 1
    cloud.clock.sleep(1800)  # past any create's outcome window: nothing appears later
    assert list(cloud.pcluster.requests_for("create_cluster")) == [], "no cluster may be requested"
    assert cloud.pcluster.clusters() == {}
    record = cloud.run_record(run_id)
    assert record is not None
    assert record["status"] == "CANCELLED"
    assert record.get("cluster_state") in (None, "NOT_CREATED")


def test_cancel_while_a_create_that_never_lands_is_in_flight_waits_until_it_is_known(
    cloud: LocalCloud,
) -> None:
    """The same cancel, but the create's request never reaches ParallelCluster (its Lambda dies
    first). Nothing can say at once that no cluster will appear: the deletion stays pending, the
    mail says so, ``cryopilot cancel`` says so, and the janitor settles it once no create can still
    be in flight (15 minutes: no Lambda runs longer)."""
    from unittest import mock

    from cryopilot.adapters.pcluster import PClusterClient
    from cryopilot_ops import ops
    from cryopilot_ops.ops import OperatorError

    stack = cloud.operator_stack()
    said: list[str] = []

    def lost(client: PClusterClient, name: str, config: str, run_id: str, **options: object) -> object:
        ops.cancel(stack, run_id, wait=False, emit=said.append)
        raise TimeoutError("Task timed out")

    with mock.patch.object(PClusterClient, "create_or_adopt", lost):
        execution = _start(cloud)
        run_id = execution["name"]
        cloud.wait_for_execution(execution["executionArn"], timeout=120)
        _until(lambda: bool(_cleanup_results(cloud)))
    assert said[-1].endswith("deleted once it appears)"), said
    (result,) = _cleanup_results(cloud)
    assert result["action"] == "delete_pending"
    stopped = cloud.mails()[-1]
    assert "its deletion is pending" in stopped["message"]
    assert "nothing is left running" not in stopped["message"]

    with pytest.raises(OperatorError, match="its deletion is still pending after 2 checks"):
        ops.cancel(stack, run_id, sleep=cloud.clock.sleep, emit=said.append, interval=60, max_polls=2)
    cloud.run_schedule("CleanupFunction")
    assert cloud.run_record(run_id)["cluster_state"] == "DELETE_REQUESTED_CREATE_PENDING"  # type: ignore[index]

    cloud.clock.sleep(900)
    cloud.run_schedule("CleanupFunction")
    record = cloud.run_record(run_id)
    assert record is not None
    assert (record["cluster_state"], record.get("cluster_deleted")) == ("NOT_CREATED", None)
    assert ops.cancel(stack, run_id, sleep=cloud.clock.sleep, emit=said.append)["deleted"] is True
    assert cloud.pcluster.clusters() == {}


def test_a_create_that_lands_after_the_cleanup_is_deleted_by_the_janitor(cloud: LocalCloud) -> None:
    """Create requested → ``cryopilot cancel`` (its delete gets 404) → the create's Lambda dies
    with its request still inside the ParallelCluster API → the cleanup function runs (deletion
    pending) → the API then creates the cluster. Nobody saw that answer: the janitor's next pass
    finds the cluster of a cancelled run and deletes it, and its record ends deleted."""
    from unittest import mock

    from cryopilot.adapters.pcluster import PClusterClient
    from cryopilot_ops import ops

    stack = cloud.operator_stack()
    real_create = PClusterClient.create_or_adopt
    held: list[tuple] = []

    def still_inside_the_api(
        client: PClusterClient, name: str, config: str, run_id: str, **options: object
    ) -> object:
        ops.cancel(stack, run_id, wait=False, emit=lambda _: None)
        held.append((client, name, config, run_id))
        raise TimeoutError("Task timed out")

    with mock.patch.object(PClusterClient, "create_or_adopt", still_inside_the_api):
        execution = _start(cloud)
        run_id = execution["name"]
        cloud.wait_for_execution(execution["executionArn"], timeout=120)
        _until(lambda: bool(_cleanup_results(cloud)))
    assert [r["action"] for r in _cleanup_results(cloud)] == ["delete_pending"]

    ((client, name, config, _),) = held
    real_create(client, name, config, run_id)  # the API finishes the request: the cluster appears
    assert cloud.pcluster.clusters() == {name: "CREATE_IN_PROGRESS"}
    report = cloud.run_schedule("CleanupFunction")
    (action,) = report["actions"]
    assert (action["cluster"], action["action"]) == (name, "delete_requested")
    assert "its run is over (CANCELLED)" in action["reason"]
    _until(lambda: _gone(cloud))
    cloud.run_schedule("CleanupFunction")
    record = cloud.run_record(run_id)
    assert record is not None
    assert (record["cluster_state"], record["cluster_deleted"]) == ("DELETED", True)
    assert ops.cancel(stack, run_id, sleep=cloud.clock.sleep, emit=lambda _: None)["deleted"] is True
