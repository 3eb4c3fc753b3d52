"""The operator commands (submit, status, watch, cancel, report) against the local stack."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryopilot_ops import ops
from cryopilot_ops.ops import OperatorError
from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.harness import LocalCloud

from tests.conftest import EVENTS

pytestmark = pytest.mark.slow

DATA = {"movies/m0001.tif": b"\x00" * 64, "movies/m0002.tif": b"\x01" * 64, "gain/gain_ref.mrc": b"g" * 32}
MANIFEST = EVENTS / "manifests" / "cgrp.yaml"


@pytest.fixture
def cloud(request: pytest.FixtureRequest) -> Iterator[LocalCloud]:
    with LocalCloud(clock=VirtualClock(), profile=getattr(request, "param", "cgrp")) as c:
        yield c


def _wait_for_record(stack: ops.Stack, run_id: str, until: str = "stage") -> ops.RunView:
    """The run record once a stage started (``stage``) or once it exists (``record``)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            run = ops.get_run(stack, run_id)
        except OperatorError:
            run = None
        if run and (until == "record" or any(s.started_at for s in run.stages.values())):
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not get to {until}")


def _upload_data(cloud: LocalCloud, dataset: str = "CGRP-2026-11") -> None:
    s3 = cloud.client("s3")
    for rel, body in DATA.items():
        s3.put_object(Bucket=cloud.input_bucket, Key=f"datasets/{dataset}/{rel}", Body=body)


@pytest.mark.parametrize("cloud", ["spike"], indirect=True)
def test_submit_a_local_manifest_then_watch_it_to_the_end(cloud: LocalCloud) -> None:
    """(The spike profile: the shortest of the three, 5 h 41 of simulated work.)"""
    stack = cloud.operator_stack()
    manifest = EVENTS / "manifests" / "spike.yaml"
    dataset = yaml.safe_load(manifest.read_text())["dataset"]
    done = ops.submit(stack, str(manifest))
    assert not done.already
    assert done.run_id.startswith(f"{dataset}-op")
    again = ops.submit(stack, str(manifest))
    assert again.already  # the same manifest starts one run
    assert again.run_id == done.run_id

    shown: list[str] = []
    final = ops.watch(stack, done.run_id, interval=0.05, emit=shown.append, sleep=time.sleep)
    assert final == "SUCCEEDED"
    last = shown[-1]
    assert f"run {done.run_id}" in last
    assert "status SUCCEEDED" in last
    assert "100.0%" in last
    assert "█" * 20 in last
    assert "resolution 2." in last
    assert len(cloud.executions()) == 1
    assert cloud.pcluster.clusters() == {}  # nothing left behind

    listed = ops.list_runs(stack)
    assert [r.run_id for r in listed] == [done.run_id]


def test_status_shows_stages_with_progress_bars_while_running(cloud: LocalCloud) -> None:
    stack = cloud.operator_stack()
    _upload_data(cloud)
    done = ops.submit(stack, str(MANIFEST))
    run = _wait_for_record(stack, done.run_id)
    text = ops.render_status(run, ops.execution_status(stack, done.run_id), now=cloud.clock.now())
    lines = text.splitlines()
    assert lines[0].startswith(f"run {done.run_id}")
    assert "(execution RUNNING)" in lines[0]
    stage_lines = [ln for ln in lines if " GPU " in ln]
    assert len(stage_lines) == len(run.plan) >= 9
    assert any("gpu8" in ln and " 8 GPU" in ln for ln in stage_lines)
    assert any("pending" in ln for ln in stage_lines)
    ops.cancel(stack, done.run_id, interval=600, sleep=cloud.clock.sleep, emit=lambda _: None)


def test_cancel_stops_the_run_and_leaves_no_cluster(cloud: LocalCloud) -> None:
    stack = cloud.operator_stack()
    _upload_data(cloud)
    done = ops.submit(stack, str(MANIFEST))
    _wait_for_record(stack, done.run_id, until="record")
    deadline = time.monotonic() + 120
    while not cloud.pcluster.clusters() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cloud.pcluster.clusters(), "the run never asked for a cluster"

    said: list[str] = []
    step = ops.cancel(
        stack, done.run_id, interval=600, sleep=cloud.clock.sleep, emit=said.append, max_polls=50
    )
    assert step["deleted"] is True
    assert said[0] == f"stopped execution {done.run_id}"
    assert cloud.pcluster.clusters() == {}
    assert ops.execution_status(stack, done.run_id) == "ABORTED"
    run = ops.get_run(stack, done.run_id)
    assert run.status == "CANCELLED"
    assert run.cluster_deleted is True

    # a second cancel is harmless
    again = ops.cancel(stack, done.run_id, sleep=cloud.clock.sleep, emit=said.append)
    assert again["deleted"] is True
    assert said[-2] == f"execution {done.run_id} is ABORTED; nothing to stop"


def test_submitted_runs_wait_for_a_slot_and_cancel_takes_them_out_of_the_queue(tmp_path: Path) -> None:
    """``cryopilot submit`` goes through admission like an upload: with MaxConcurrentRuns 1 and
    one run going, the next waits in the queue; cancelling it takes it out; ``--now`` bypasses."""
    with LocalCloud(clock=VirtualClock(), profile="cgrp", parameters={"MaxConcurrentRuns": 1}) as cloud:
        stack = cloud.operator_stack()
        _upload_data(cloud)
        first = ops.submit(stack, str(MANIFEST))
        assert (first.already, first.queued) == (False, False)
        manifests = {}
        for name in ("second", "third"):
            doc = yaml.safe_load(MANIFEST.read_text())
            doc["dataset"] = f"CGRP-{name}"
            manifests[name] = tmp_path / f"{name}.yaml"
            manifests[name].write_text(yaml.safe_dump(doc))
        second = ops.submit(stack, str(manifests["second"]))
        assert (second.already, second.queued, second.queue_position) == (False, True, 1)
        assert ops.execution_status(stack, second.run_id) is None
        record = ops.get_run(stack, second.run_id)
        assert record.status == "QUEUED"
        assert record.trigger == "operator"
        again = ops.submit(stack, str(manifests["second"]))
        assert (again.run_id, again.already, again.queued, again.queue_position) == (
            second.run_id,
            True,
            True,
            1,
        )

        said: list[str] = []
        step = ops.cancel(stack, second.run_id, sleep=cloud.clock.sleep, emit=said.append)
        assert said[0] == f"run {second.run_id} was waiting for a slot (place 1); taken out of the queue"
        assert step["deleted"] is True
        assert ops.get_run(stack, second.run_id).status == "CANCELLED"
        assert ops.execution_status(stack, second.run_id) is None
        from cryopilot.adapters import admission

        state = admission.read()
        assert state.queue == []
        assert state.holders == {first.run_id}

        # submitted again, the cancelled run neither waits again nor starts: submit says why
        for now in (False, True):
            with pytest.raises(OperatorError) as refused:
                ops.submit(stack, str(manifests["second"]), now=now)
            assert refused.value.exit_code == ops.EXIT_FAILED
            assert str(refused.value).startswith(
                f"run {second.run_id} of this manifest was cancelled (before it started);"
                " nothing was started."
            )
        assert admission.read().queue == []
        assert ops.execution_status(stack, second.run_id) is None

        third = ops.submit(stack, str(manifests["third"]), now=True)
        assert (third.already, third.queued) == (False, False)
        assert ops.execution_status(stack, third.run_id) == "RUNNING"
        assert admission.read().holders == {first.run_id}  # --now takes no slot

        for run_id in (first.run_id, third.run_id):
            ops.cancel(stack, run_id, interval=600, sleep=cloud.clock.sleep, emit=lambda _: None)
        assert cloud.pcluster.clusters() == {}
        assert len(cloud.executions()) == 2  # the cancelled waiting run never started


def test_clear_errors_for_unknown_runs_bad_manifests_and_missing_stacks(
    cloud: LocalCloud, tmp_path: pytest.TempPathFactory
) -> None:
    stack = cloud.operator_stack()
    with pytest.raises(OperatorError, match="no run nope-123 in stack") as err:
        ops.get_run(stack, "nope-123")
    assert err.value.exit_code == ops.EXIT_NOT_FOUND
    with pytest.raises(OperatorError, match="no run nope-123"):
        ops.cancel(stack, "nope-123", emit=lambda _: None)
    with pytest.raises(OperatorError, match="no run nope-123"):
        list(ops.report_files(stack, "nope-123"))

    bad = tmp_path / "cryopilot.yaml"  # type: ignore[operator]
    bad.write_text("dataset: x\ninput: {kind: films}\n")
    with pytest.raises(OperatorError, match=r"input\.kind") as err:
        ops.submit(stack, str(bad))
    assert err.value.exit_code == ops.EXIT_USAGE
    with pytest.raises(OperatorError, match="no such file"):
        ops.submit(stack, str(tmp_path / "absent.yaml"))  # type: ignore[operator]
    with pytest.raises(OperatorError, match="cannot be read"):
        ops.submit(stack, f"s3://{cloud.input_bucket}/datasets/none/cryopilot.yaml")
    # --data: a folder of the stack's input bucket, by the one rule for S3 folders (README)
    good = tmp_path / "good.yaml"  # type: ignore[operator]
    good.write_bytes(MANIFEST.read_bytes())
    for data, said in [
        ("s3://someone-elses-bucket/datasets/x/", "is not in this stack's input bucket"),
        ("s3://Bad_Bucket/x/", "'Bad_Bucket' is not an S3 bucket name"),
        (f"s3://{cloud.input_bucket}/datasets/My Data/", "folder 'My Data' contains whitespace"),
    ]:
        with pytest.raises(OperatorError, match=re.escape(said)) as err:
            ops.submit(stack, str(good), data_s3_uri=data)
        assert err.value.exit_code == ops.EXIT_USAGE
        assert "\n" not in str(err.value)
    assert cloud.executions() == []

    with pytest.raises(OperatorError, match="stack absent not found in us-east-1") as err:
        ops.Stack.from_cloudformation("absent", "us-east-1")
    assert err.value.exit_code == ops.EXIT_NOT_FOUND


@pytest.mark.parametrize("cloud", ["spike"], indirect=True)
def test_submit_a_dataset_whose_name_has_dots(cloud: LocalCloud, tmp_path: Path) -> None:
    """The manifest allows '.' in a dataset name; the run id is derived by the one function every
    entry point uses, so StartRun takes it."""
    doc = yaml.safe_load((EVENTS / "manifests" / "spike.yaml").read_text())
    doc["dataset"] = "SPIKE.FAB.07"
    manifest = tmp_path / "cryopilot.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    stack = cloud.operator_stack()
    done = ops.submit(stack, str(manifest))
    assert (done.already, done.queued) == (False, False)
    assert re.fullmatch(r"SPIKE-FAB-07-op[0-9a-f]{10}", done.run_id)
    assert [e["name"] for e in cloud.executions()] == [done.run_id]
    run = _wait_for_record(stack, done.run_id, until="record")
    assert run.dataset == "SPIKE.FAB.07"


def test_cli_maps_errors_to_exit_codes(cloud: LocalCloud, capsys: pytest.CaptureFixture[str]) -> None:
    from cryopilot_ops.cli import main

    assert main(["status", "some-run", "--stack", "absent"]) == ops.EXIT_NOT_FOUND
    err = capsys.readouterr().err
    assert err.strip() == "cryopilot status: stack absent not found in us-east-1"


def test_operator_reads_while_a_run_writes_the_table_never_race(cloud: LocalCloud) -> None:
    """An operator reading runs (the caller's thread) while the state machine's handlers write the
    run record (moto's execution thread): each request is atomic, as on AWS, so no read ever sees
    moto's in-memory table half-changed. Reading an item here yields the interpreter between its
    attributes, which widens the window a read and a write would have to share."""
    import threading
    from unittest import mock

    from moto.dynamodb.models.dynamo_type import Item

    real_to_json = Item.to_json

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for nested in value.values():
                time.sleep(0.0005)  # let another thread run mid-iteration
                walk(getattr(nested, "value", None))

    def slow_to_json(item: Item, *args: object, **kwargs: object) -> dict:
        walk(item.attrs)
        return real_to_json(item, *args, **kwargs)  # type: ignore[arg-type]

    stack = cloud.operator_stack()
    _upload_data(cloud)
    errors: list[BaseException] = []
    reads_while_running = 0
    with mock.patch.object(Item, "to_json", slow_to_json):
        done = ops.submit(stack, str(MANIFEST))
        _wait_for_record(stack, done.run_id, until="record")
        table = ops._table(stack)

        def read() -> None:
            nonlocal reads_while_running
            deadline = time.monotonic() + 20
            for _ in range(1000):
                if time.monotonic() > deadline:
                    return
                try:
                    ops.get_run(stack, done.run_id)
                    ops.list_runs(stack)
                    table.scan()
                    if ops.execution_status(stack, done.run_id) != "RUNNING":
                        return
                    reads_while_running += 1
                except Exception as exc:  # any failure is the finding
                    errors.append(exc)
                    return

        readers = [threading.Thread(target=read, daemon=True) for _ in range(2)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(timeout=60)
        ops.cancel(stack, done.run_id, interval=600, sleep=cloud.clock.sleep, emit=lambda _: None)
    assert not any(reader.is_alive() for reader in readers)
    assert not errors, repr(errors[0])
    assert reads_while_running > 0, "no read overlapped the running execution"


def test_unsubscribe_removes_a_dataset_from_an_address_then_the_address(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from cryopilot.adapters import subscriptions
    from cryopilot_ops import cli

    stack = cloud.operator_stack()
    monkeypatch.setattr(cli, "_stack", lambda args: stack)
    sns = cloud.client("sns")
    address = "medchem-team@example.org"
    for dataset in ("CGRP-2026-11", "SPIKE-FAB-07"):  # what Validate does for each manifest
        subscriptions.subscribe(sns, cloud.topic_arn, address, dataset)

    def subscribed() -> dict[str, list[str] | None]:
        found: dict[str, list[str] | None] = {}
        for sub in sns.list_subscriptions_by_topic(TopicArn=cloud.topic_arn)["Subscriptions"]:
            attrs = sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])["Attributes"]
            policy = attrs.get("FilterPolicy")
            found[sub["Endpoint"]] = json.loads(policy)["dataset"] if policy else None
        return found

    assert subscribed()[address] == ["CGRP-2026-11", "SPIKE-FAB-07"]

    assert cli.main(["unsubscribe", address, "--dataset", "CGRP-2026-11"]) == 0
    assert capsys.readouterr().out.strip() == f"{address} no longer receives the mails of CGRP-2026-11"
    assert subscribed()[address] == ["SPIKE-FAB-07"]

    # a dataset it does not receive, an address with no subscription: not found, nothing changed
    assert cli.main(["unsubscribe", address, "--dataset", "CGRP-2026-11"]) == ops.EXIT_NOT_FOUND
    assert capsys.readouterr().err.strip() == (
        f"cryopilot unsubscribe: {address} does not receive the mails of CGRP-2026-11"
    )
    assert cli.main(["unsubscribe", "nobody@example.org"]) == ops.EXIT_NOT_FOUND
    assert "nobody@example.org has no subscription" in capsys.readouterr().err

    # its last dataset: the subscription ends
    assert cli.main(["unsubscribe", address, "--dataset", "SPIKE-FAB-07"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"{address} no longer receives the mails of SPIKE-FAB-07; it had no other dataset:"
        " its subscription ended"
    )
    assert address not in subscribed()
    # the stack's own address receives every mail: without --dataset its subscription ends
    assert subscribed() == {"structures@example.org": None}
    assert cli.main(["unsubscribe", "structures@example.org"]) == 0
    assert capsys.readouterr().out.strip() == "structures@example.org: subscription ended (every dataset)"
    assert subscribed() == {}


@pytest.mark.parametrize("cloud", ["spike"], indirect=True)
@pytest.mark.parametrize("how", ["cancel", "stop"])
def test_stopping_a_succeeded_run_while_its_cluster_is_deleting_sends_no_stopped_mail(
    cloud: LocalCloud, how: str
) -> None:
    """The run SUCCEEDED and its "done" mail went out; its execution is deleting the cluster when
    the operator cancels it (or someone stops the execution by hand). Nothing was stopped: no
    "was stopped" mail follows the "done" one, and ``cancel`` says the run had finished and what
    is left (its cluster's deletion), until the cluster is gone."""
    from unittest import mock

    from cryopilot.adapters import clusters
    from cryopilot.steps import cluster as cluster_step

    stack = cloud.operator_stack()
    said: list[str] = []
    asked: list[str] = []

    def delete_then_cancel(run_id: str) -> clusters.Deletion:
        deletion = clusters.request_deletion(run_id)
        if not asked and (cloud.run_record(run_id) or {}).get("status") == "SUCCEEDED":
            asked.append(run_id)  # (once: the cancel's own delete comes through here too)
            if how == "cancel":
                ops.cancel(stack, run_id, wait=False, emit=said.append)
            else:
                cloud.client("stepfunctions").stop_execution(
                    executionArn=stack.execution_arn(run_id), cause="by hand"
                )
        return deletion

    with mock.patch.object(cluster_step, "request_deletion", delete_then_cancel):
        done = ops.submit(stack, str(EVENTS / "manifests" / "spike.yaml"))
        desc = cloud.wait_for_execution(stack.execution_arn(done.run_id), timeout=240)
        # every end of an execution reaches the cleanup function: wait for it to have run
        deadline = time.monotonic() + 60
        while not [d for d in cloud.deliveries if d.function.endswith("CleanupFunction")]:
            assert time.monotonic() < deadline, "the execution's end never reached the cleanup function"
            time.sleep(0.02)
    assert asked == [done.run_id]
    subjects = [m["subject"] for m in cloud.mails()]
    assert " done: " in subjects[-1], subjects
    assert not [s for s in subjects if s.endswith("was stopped")], subjects
    record = ops.get_run(stack, done.run_id)
    assert record.status == "SUCCEEDED"
    assert record.error is None
    if how == "cancel":
        assert desc["status"] == "SUCCEEDED", "a finished run's execution is left to delete its cluster"
        finished = f"run {done.run_id} had already finished (SUCCEEDED, its results mailed); nothing to stop"
        assert said[0] == finished
        assert said[1].endswith(": DELETE_IN_PROGRESS"), said
    # what is left goes: cancel (again) reports the cluster's end
    final = ops.cancel(stack, done.run_id, sleep=cloud.clock.sleep, emit=said.append, interval=60)
    assert final["deleted"] is True
    assert cloud.pcluster.clusters() == {}


@pytest.mark.parametrize("cloud", ["spike"], indirect=True)
def test_a_succeeded_run_whose_cluster_cannot_be_deleted_still_mails_action_needed(cloud: LocalCloud) -> None:
    """The run SUCCEEDED; its execution is stopped by hand while it deletes the cluster, and the
    cleanup function's own deletion request then fails. Its "done" mail said nothing of that: the
    cleanup mails that the cluster could NOT be deleted (a succeeded run is spared only the mails
    it does not need: deletion requested, already deleted)."""
    from unittest import mock

    from cryopilot.adapters import clusters
    from cryopilot.steps import cluster as cluster_step

    stack = cloud.operator_stack()
    stopped: list[str] = []

    def delete_then_stop(run_id: str) -> clusters.Deletion:
        deletion = clusters.request_deletion(run_id)
        if not stopped and (cloud.run_record(run_id) or {}).get("status") == "SUCCEEDED":
            stopped.append(run_id)
            # the cleanup function's request is the next one: ParallelCluster refuses it
            cloud.pcluster.inject("bad_request", operation="delete_cluster")
            cloud.client("stepfunctions").stop_execution(
                executionArn=stack.execution_arn(run_id), cause="by hand"
            )
        return deletion

    with mock.patch.object(cluster_step, "request_deletion", delete_then_stop):
        done = ops.submit(stack, str(EVENTS / "manifests" / "spike.yaml"))
        cloud.wait_for_execution(stack.execution_arn(done.run_id), timeout=240)
        deadline = time.monotonic() + 60
        while not [d for d in cloud.deliveries if d.function.endswith("CleanupFunction")]:
            assert time.monotonic() < deadline, "the execution's end never reached the cleanup function"
            time.sleep(0.02)
    assert stopped == [done.run_id]
    (cleanup,) = [d.result for d in cloud.deliveries if d.function.endswith("CleanupFunction")]
    assert (cleanup["action"], cleanup["mailed"]) == ("delete_failed", True)
    subjects = [m["subject"] for m in cloud.mails()]
    assert " done: " in subjects[-2], subjects
    assert subjects[-1] == "[cryopilot] SPIKE-FAB-07 succeeded - cluster NOT deleted", subjects
    body = cloud.mails()[-1]["message"]
    assert "ACTION NEEDED" in body
    assert "was stopped" not in body
    assert ops.get_run(stack, done.run_id).status == "SUCCEEDED"
