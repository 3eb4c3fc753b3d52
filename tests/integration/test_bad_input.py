"""Bad input, end to end: whichever way a manifest, an event or a manual start is wrong, the user
gets one clear message naming the problem, no cluster is made and no Lambda crashes.

There are two kinds of rejection:

* StartRun ignores an event it cannot use (a key no manifest can have, another bucket, an event
  announcing nothing new): no execution starts and its answer carries the reason. Events the
  stack's EventBridge rules filter out never reach StartRun at all.
* Validate rejects a bad manifest or a bad manual input: the execution fails with a
  ``ManifestError`` whose message names the field, the run record keeps that message, and one
  failure mail repeats it and says that no cluster was created.

One local stack serves every case (each has its own dataset folder or execution name). The
fixture puts everything in at once (uploads, events, manual starts), drains the events once and
waits for all executions together: a run rejected at Validate ends in seconds.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError
from cryopilot.domain.manifest import MAX_MANIFEST_BYTES
from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.harness import LocalCloud

from tests.conftest import EVENTS

BOM = b"\xef\xbb\xbf"
DELETE = object()
NO_CLUSTER = "No cluster was created."


def _manifest(name: str = "spike.yaml", **changes: Any) -> dict[str, Any]:
    """An example manifest with ``changes`` applied (``{"a__b": v}`` sets ``a.b``; DELETE removes)."""
    doc: dict[str, Any] = copy.deepcopy(yaml.safe_load((EVENTS / "manifests" / name).read_text()))
    for dotted, value in changes.items():
        node = doc
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return doc


def _yaml(doc: Any) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode()


def _json(doc: Any) -> bytes:
    return json.dumps(doc, indent=2).encode()


SPIKE_YAML = (EVENTS / "manifests" / "spike.yaml").read_bytes()
INVALID_VOLTAGE = _manifest("spike.yaml", acquisition__voltage_kV=250)
VOLTAGE_MESSAGE = "acquisition.voltage_kV: Input should be 100, 120, 200 or 300 (got 250)"
LATIN1_COMMENT = "# pixel size 0.83 \u00c5 (saved as Latin-1)\n".encode("latin-1")
LATIN1_AT = len(SPIKE_YAML) + LATIN1_COMMENT.index(b"\xc5")


@dataclass(frozen=True)
class Upload:
    """A manifest dropped into ``datasets/BAD-<id>/``; Validate must reject it naming ``expected``."""

    id: str
    body: bytes
    expected: tuple[str, ...]
    name: str = "cryopilot.yaml"

    @property
    def folder(self) -> str:
        return f"BAD-{self.id}"


UPLOADS = [
    # syntax
    Upload(
        "yaml-tab-indent",
        b"dataset: SPIKE-FAB-07\ninput:\n\tkind: micrographs\n",
        ("is not valid YAML", "found character '\\t' that cannot start any token", "line 3"),
    ),
    Upload(
        "json-trailing-comma",
        b'{\n  "dataset": "SPIKE-FAB-07",\n}\n',
        ("is not valid JSON", "Expecting property name enclosed in double quotes at line 3"),
        name="cryopilot.json",
    ),
    Upload("yaml-nul-byte", SPIKE_YAML + b"notify: [\x00]\n", ("is not valid YAML", "#x0000 is not allowed")),
    Upload(
        "json-nested-too-deep",
        b'{"dataset": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        ("nested too deeply",),
        name="cryopilot.json",
    ),
    # wrong types
    Upload(
        "voltage-as-text",
        _yaml(_manifest(acquisition__voltage_kV="300 kV")),
        ("acquisition.voltage_kV: Input should be 100, 120, 200 or 300", "(got '300 kV')"),
    ),
    Upload(
        "override-as-binary",
        _yaml(_manifest(pipeline={"overrides": {"extract": {"box_size_pix": b"\xff\xfe"}}})),
        ("pipeline.overrides.extract.box_size_pix", "must be text, a number, true/false or null, not bytes"),
    ),
    # missing fields
    Upload(
        "missing-pixel-size",
        _yaml(_manifest(acquisition__pixel_size_A=DELETE)),
        ("acquisition.pixel_size_A: required field is missing",),
    ),
    # out of range
    Upload(
        "pixel-size-25",
        _yaml(_manifest(acquisition__pixel_size_A=25)),
        ("acquisition.pixel_size_A: Input should be less than or equal to 20", "(got 25)"),
    ),
    Upload(
        "voltage-in-volts",
        _json(_manifest(acquisition__voltage_kV=300000)),
        ("acquisition.voltage_kV: Input should be 100, 120, 200 or 300", "(got 300000)"),
        name="cryopilot.json",
    ),
    Upload(
        "dose-too-small-to-store",
        _yaml(_manifest(acquisition__total_dose_e_per_A2=1e-300)),
        ("acquisition.total_dose_e_per_A2: must be 0 or between 1e-100 and 1e+100 in size",),
    ),
    Upload(
        "cost-limit-infinite",
        _yaml(_manifest(limits={"max_cost_usd": float("inf")})),
        ("limits.max_cost_usd: Input should be a finite number",),
    ),
    # the pipeline
    Upload(
        "unknown-preset",
        _yaml(_manifest(pipeline={"preset": "tomography"})),
        ("pipeline.preset: unknown preset 'tomography'", "known presets: micrographs, movies"),
    ),
    Upload(
        "unknown-stage",
        _yaml(_manifest(pipeline={"overrides": {"refine3d": {"compute_num_gpus": 2}}})),
        ("pipeline.overrides.refine3d: no stage 'refine3d' in preset micrographs",),
    ),
    Upload(
        "unknown-parameter",
        _yaml(_manifest(pipeline={"overrides": {"extract": {"box_size": 256}}})),
        ("pipeline.overrides.extract.box_size:", "has no parameter 'box_size'"),
    ),
    # size and encoding
    Upload(
        "over-1-mb",
        SPIKE_YAML + b"# " + b"x" * MAX_MANIFEST_BYTES + b"\n",
        (f"is {len(SPIKE_YAML) + MAX_MANIFEST_BYTES + 3:,} bytes; a manifest may be at most 1 MB",),
    ),
    Upload(
        "latin-1-comment",
        SPIKE_YAML + LATIN1_COMMENT,
        (f"is not UTF-8 text (byte {LATIN1_AT})",),
    ),
    Upload("empty-file", b"", ("is empty",)),
    # paths in the manifest
    Upload(
        "glob-control-character",
        _yaml(_manifest(input__glob="micrographs/\x1b[0m*.mrc")),
        ("input.glob: glob must not contain control characters", "\\x1b"),
    ),
    Upload(
        "gain-reference-dotdot",
        _yaml(_manifest("cgrp.yaml", acquisition__gain_reference="../shared/gain_ref.mrc")),
        ("acquisition.gain_reference: gain_reference must not contain '..'",),
    ),
    # not a manifest at all
    Upload(
        "yaml-list", b"- dataset: SPIKE-FAB-07\n- symmetry: C3\n", ("must be a mapping of fields", "not list")
    ),
    Upload("yaml-scalar", b"SPIKE-FAB-07\n", ("must be a mapping of fields", "not str")),
    Upload(
        "json-other-object",
        b'{"name": "Alice", "favourite_colour": "blue"}',
        ("dataset: required field is missing", "name: unknown field", "favourite_colour: unknown field"),
        name="cryopilot.json",
    ),
]

# A byte order mark: some Windows editors (Notepad before 2019, Excel's "UTF-8 CSV") start every
# UTF-8 file with one. YAML 1.2 allows it and RFC 8259 lets a JSON parser ignore it, so a user
# rightly expects the manifest to read the same with or without it: it is skipped, in YAML and in
# JSON alike. These manifests are invalid on purpose (250 kV), so the run still ends at Validate:
# the message is exactly the one the same manifest gets without the mark, not a syntax error.
BOM_UPLOADS = [
    Upload("bom-yaml", BOM + _yaml(INVALID_VOLTAGE), (VOLTAGE_MESSAGE,)),
    Upload("bom-json", BOM + _json(INVALID_VOLTAGE), (VOLTAGE_MESSAGE,), name="cryopilot.json"),
]


@dataclass(frozen=True)
class Manual:
    """A manual start (execution ``manual-<id>``) that Validate must reject naming ``expected``."""

    id: str
    input: Any
    expected: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"manual-{self.id}"


def _inline(doc: dict[str, Any]) -> dict[str, Any]:
    return {"manifest_inline": doc, "data_s3_uri": "s3://{bucket}/datasets/SPIKE-FAB-07/"}


MANUALS = [
    Manual(
        "inline-glob-dotdot",
        _inline(_manifest(input__glob="../../../etc/*")),
        ("manifest_inline: input.glob: glob must not contain '..'",),
    ),
    Manual(
        "inline-gain-reference-nul",
        _inline(_manifest("cgrp.yaml", acquisition__gain_reference="gain/gain\u0000ref.mrc")),
        ("manifest_inline: acquisition.gain_reference: gain_reference must not contain control characters",),
    ),
    Manual(
        "inline-manifest-as-text",
        {"manifest_inline": SPIKE_YAML.decode(), "data_s3_uri": "s3://{bucket}/datasets/SPIKE-FAB-07/"},
        ("execution input: manifest_inline: Input should be a valid dictionary",),
    ),
    Manual(
        "uri-dotdot",
        {"manifest_s3_uri": "s3://{bucket}/datasets/../cryopilot.yaml"},
        ("object key 'datasets/../cryopilot.yaml' contains '..'",),
    ),
    Manual(
        "uri-data-file",
        {"manifest_s3_uri": "s3://{bucket}/datasets/SPIKE-FAB-07/micrographs/a.mrc"},
        ("object key 'datasets/SPIKE-FAB-07/micrographs/a.mrc' is not a manifest",),
    ),
    Manual(
        "uri-no-such-manifest",
        {"manifest_s3_uri": "s3://{bucket}/datasets/NEVER-UPLOADED/cryopilot.yaml"},
        ("datasets/NEVER-UPLOADED/cryopilot.yaml: no such object (or version)",),
    ),
    Manual(
        "manifest-in-another-bucket",
        {"manifest": {"bucket": "someone-elses-bucket", "key": "datasets/SPIKE-FAB-07/cryopilot.yaml"}},
        ("someone-elses-bucket/datasets/SPIKE-FAB-07/cryopilot.yaml: is not in this stack's input bucket",),
    ),
    Manual(
        "settings-wrong-type",
        {**_inline(_manifest()), "settings": {"cluster_poll_seconds": "every minute"}},
        ("execution input: settings.cluster_poll_seconds: Input should be a valid integer",),
    ),
]

# Uploads whose key no manifest can have: the rule's wildcard lets them through, StartRun ignores them.
BAD_KEYS = {
    "key-control-character": ("datasets/SPIKE\x1bFAB/cryopilot.yaml", "contains control characters"),
    "key-dot-folder": ("datasets/./cryopilot.yaml", "contains a '.' folder"),
}


@dataclass
class Batch:
    cloud: LocalCloud
    start_fn: str
    gone_version: str = ""
    direct: dict[str, tuple[bool, Any]] = field(default_factory=dict)
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)
    mails: list[dict[str, Any]] = field(default_factory=list)
    invalid_json_error: ClientError | None = None

    def deliveries_for(self, key: str) -> list[Any]:
        return [
            d
            for d in self.cloud.deliveries
            if isinstance(d.event.get("detail"), dict)
            and d.event["detail"].get("object", {}).get("key") == key
        ]

    def started_run(self, key: str) -> tuple[str, dict[str, Any]]:
        """The run id and finished execution the upload of ``key`` started (exactly one)."""
        (delivery,) = self.deliveries_for(key)
        assert delivery.error is None, delivery.error
        (outcome,) = delivery.result["outcomes"]
        assert outcome["status"] == "started", outcome
        return outcome["run_id"], self.finished[outcome["run_id"]]


def _fill(value: Any, **names: str) -> Any:
    """``value`` with ``{bucket}``-style placeholders in its strings filled in."""
    if isinstance(value, str):
        for k, v in names.items():
            value = value.replace("{" + k + "}", v)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, **names) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, **names) for v in value]
    return value


def _s3_notification(bucket: str, key: str, event_name: str = "ObjectCreated:Put") -> dict[str, Any]:
    event = json.loads((EVENTS / "s3-put.json").read_text())
    record = event["Records"][0]
    record["eventName"] = event_name
    record["s3"]["bucket"]["name"] = bucket
    record["s3"]["object"]["key"] = key
    return event


def _eventbridge_object_deleted(bucket: str) -> dict[str, Any]:
    event = json.loads((EVENTS / "eventbridge-s3-object-created.json").read_text())
    event["detail-type"] = "Object Deleted"
    event["detail"]["bucket"]["name"] = bucket
    return event


def _datasync(state: str) -> dict[str, Any]:
    event = json.loads((EVENTS / "datasync-success.json").read_text())
    event["detail"]["State"] = state
    return event


SPIKE_KEY = "datasets/SPIKE-FAB-07/cryopilot.yaml"

# Events handed straight to StartRun (S3 or DataSync wired to the function, a replay): each is
# built for the stack's input bucket, with the reason StartRun must give for ignoring it.
DIRECT_EVENTS: dict[str, tuple[Callable[[str], dict[str, Any]], str]] = {
    "s3-notification-encoded-dotdot": (
        lambda bucket: _s3_notification(bucket, "datasets/%2E%2E/cryopilot.yaml"),
        "contains '..'",
    ),
    "s3-notification-encoded-newline": (
        lambda bucket: _s3_notification(bucket, "datasets/SPIKE%0AFAB/cryopilot.yaml"),
        "contains control characters",
    ),
    "s3-notification-other-bucket": (
        lambda bucket: _s3_notification("someone-elses-bucket", SPIKE_KEY),
        "'someone-elses-bucket' is not this stack's input bucket",
    ),
    "s3-notification-removal-only": (
        lambda bucket: _s3_notification(bucket, SPIKE_KEY, "ObjectRemoved:Delete"),
        "S3 notification announces no new manifest (ObjectRemoved:Delete); only ObjectCreated:* does",
    ),
    "eventbridge-object-deleted": (
        _eventbridge_object_deleted,
        "aws.s3 event 'Object Deleted' announces no new manifest; only 'Object Created' does",
    ),
    "datasync-still-transferring": (
        lambda bucket: _datasync("TRANSFERRING"),
        "DataSync task execution state is 'TRANSFERRING'; only SUCCESS starts a run",
    ),
}


def _object_created(bucket: str, key: str, version: str, etag: str) -> dict[str, Any]:
    """An S3 ``Object Created`` event as EventBridge carries it (for :meth:`LocalCloud.put_event`)."""
    return {
        "source": "aws.s3",
        "detail-type": "Object Created",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {"key": key, "size": 1, "etag": etag.strip('"'), "version-id": version},
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "reason": "PutObject",
        },
    }


# A valid manifest whose run needs more FSx than the stack allows (MaxFsxTiB, 48 TiB by default):
# ten billion particles of the spike's box are petabytes of particle stacks.
TOO_BIG = Upload(
    "storage-over-max-fsx",
    _yaml(_manifest(storage={"expected_particles": 10_000_000_000})),
    ("storage: the run needs an FSx file system of", "above this stack's MaxFsxTiB of 48 TiB"),
)

REPEATED = "REPEATED"
GONE = "GONE"
FILTERED = "datasets/FILTERED/cryopilot.yaml"


@pytest.fixture(scope="module")
def batch() -> Iterator[Batch]:
    with LocalCloud(clock=VirtualClock(), profile="spike") as cloud:
        start_fn = next(n for n, f in cloud.functions.items() if f.logical_id == "StartRunFunction")
        b = Batch(cloud, start_fn)
        bucket = cloud.input_bucket
        s3 = cloud.client("s3")
        events = cloud.client("events")

        # A manifest version that no longer exists: two uploads with the upload rule off (they
        # start nothing), then the first version deleted.
        rule = next(r["Name"] for r in events.list_rules()["Rules"] if "ManifestUploaded" in r["Name"])
        events.disable_rule(Name=rule)
        try:
            first = cloud.drop_dataset(GONE, _yaml(_manifest()))
            cloud.drop_dataset(GONE, _yaml(_manifest(symmetry="C1")))
            s3.delete_object(
                Bucket=bucket, Key=f"datasets/{GONE}/cryopilot.yaml", VersionId=first["VersionId"]
            )
        finally:
            events.enable_rule(Name=rule)
        b.gone_version = first["VersionId"]

        for case in [*UPLOADS, *BOM_UPLOADS, TOO_BIG]:
            cloud.drop_dataset(case.folder, case.body, manifest_name=case.name)
        for key, _ in BAD_KEYS.values():
            s3.put_object(Bucket=bucket, Key=key, Body=SPIKE_YAML)

        # the same upload announced three times (EventBridge delivers at least once)
        repeated = cloud.drop_dataset(REPEATED, _yaml(_manifest(symmetry="C0")))
        for _ in range(2):
            cloud.put_event(
                _object_created(
                    bucket, f"datasets/{REPEATED}/cryopilot.yaml", repeated["VersionId"], repeated["ETag"]
                )
            )
        # the deleted version announced late
        cloud.put_event(
            _object_created(bucket, f"datasets/{GONE}/cryopilot.yaml", b.gone_version, first["ETag"])
        )
        # events the rules filter out: a deletion, an unfinished transfer, another bucket's upload
        deleted = _object_created(bucket, FILTERED, "v1", "e1")
        deleted["detail-type"] = "Object Deleted"
        cloud.put_event(deleted)
        cloud.put_event(_datasync("ERROR"))
        cloud.put_event(_object_created("someone-elses-bucket", FILTERED, "v1", "e1"))

        sfn = cloud.client("stepfunctions")
        for m in MANUALS:
            doc = _fill(m.input, bucket=bucket)
            sfn.start_execution(stateMachineArn=cloud.state_machine_arn, name=m.name, input=json.dumps(doc))
        try:
            sfn.start_execution(
                stateMachineArn=cloud.state_machine_arn, name="manual-not-json", input="{manifest"
            )
        except ClientError as exc:
            b.invalid_json_error = exc
        sfn.start_execution(
            stateMachineArn=cloud.state_machine_arn, name="manual-input-a-list", input=json.dumps([bucket])
        )

        for case_id, (make_event, _) in DIRECT_EVENTS.items():
            b.direct[case_id] = cloud.invoke(start_fn, make_event(bucket))

        cloud.drain_events()
        for execution in cloud.executions():
            desc = cloud.wait_for_execution(execution["executionArn"], timeout=60)
            b.finished[desc["name"]] = desc
        b.mails = cloud.mails()
        yield b


def _assert_rejected_at_validate(b: Batch, run_id: str, expected: tuple[str, ...]) -> str:
    """The run failed at Validate with a ManifestError naming ``expected``, mailed once, no cluster.
    Returns the recorded message."""
    cloud = b.cloud
    desc = b.finished[run_id]
    assert desc["status"] == "FAILED"
    record = cloud.run_record(run_id)
    assert record is not None
    error = record["error"]
    assert error["type"] == "ManifestError", error
    assert error["step"] == "validate"
    for fragment in expected:
        assert fragment in error["message"], (fragment, error["message"])
    assert not record.get("cluster_name"), "no cluster may be planned for bad input"

    (mail,) = [m for m in b.mails if m["attributes"].get("run_id") == run_id]
    assert mail["attributes"]["event"] == "failed"
    assert mail["subject"].endswith("failed at validate: ManifestError")
    for fragment in expected:
        assert fragment in mail["message"]
    assert NO_CLUSTER in mail["message"]

    entered = cloud.states_entered(desc["executionArn"])
    assert entered[:3] == ["Start", "Validate", "RecordFailure"]
    assert "CreateCluster" not in entered
    assert list(cloud.pcluster.requests_for("create_cluster")) == []
    return str(error["message"])


# --- manifests uploaded to S3 ----------------------------------------------------------------------


@pytest.mark.parametrize("case", UPLOADS, ids=lambda c: c.id)
def test_bad_manifest_upload_fails_at_validate(batch: Batch, case: Upload) -> None:
    key = f"datasets/{case.folder}/{case.name}"
    run_id, _ = batch.started_run(key)
    message = _assert_rejected_at_validate(batch, run_id, case.expected)
    assert "\n" not in message
    assert len(message) <= 2000


@pytest.mark.parametrize("case", BOM_UPLOADS, ids=lambda c: c.id)
def test_a_byte_order_mark_is_skipped(batch: Batch, case: Upload) -> None:
    # Decision (see BOM_UPLOADS): accepted. The message is the one the same manifest gets without
    # the mark, word for word: the mark changed nothing.
    key = f"datasets/{case.folder}/{case.name}"
    run_id, _ = batch.started_run(key)
    message = _assert_rejected_at_validate(batch, run_id, case.expected)
    assert message == f"s3://{batch.cloud.input_bucket}/{key}: {VOLTAGE_MESSAGE}"


def test_a_run_needing_more_fsx_than_max_fsx_tib_fails_at_validate(batch: Batch) -> None:
    run_id, _ = batch.started_run(f"datasets/{TOO_BIG.folder}/{TOO_BIG.name}")
    desc = batch.finished[run_id]
    assert desc["status"] == "FAILED"
    record = batch.cloud.run_record(run_id)
    assert record is not None
    error = record["error"]
    assert (error["type"], error["step"]) == ("StorageLimitError", "validate")
    for fragment in TOO_BIG.expected:
        assert fragment in error["message"], error["message"]
    assert "\n" not in error["message"]
    assert record["fsx_storage_gib"] > 48 * 1024  # the model's size is on the record
    (mail,) = [m for m in batch.mails if m["attributes"].get("run_id") == run_id]
    assert TOO_BIG.expected[1] in mail["message"]
    assert NO_CLUSTER in mail["message"]
    assert "CreateCluster" not in batch.cloud.states_entered(desc["executionArn"])
    assert list(batch.cloud.pcluster.requests_for("create_cluster")) == []


def test_a_version_that_no_longer_exists_fails_at_validate(batch: Batch) -> None:
    key = f"datasets/{GONE}/cryopilot.yaml"
    (delivery,) = batch.deliveries_for(key)  # the two uploads went in with the rule off
    assert delivery.event["detail"]["object"]["version-id"] == batch.gone_version
    run_id, _ = batch.started_run(key)
    _assert_rejected_at_validate(batch, run_id, (f"{key}: no such object (or version)",))


def test_a_repeated_event_starts_one_run(batch: Batch) -> None:
    key = f"datasets/{REPEATED}/cryopilot.yaml"
    deliveries = batch.deliveries_for(key)
    assert len(deliveries) == 3
    outcomes = [d.result["outcomes"][0] for d in deliveries]
    assert sorted(o["status"] for o in outcomes) == ["duplicate", "duplicate", "started"]
    assert len({o["run_id"] for o in outcomes}) == 1
    runs = [name for name in batch.finished if name.startswith(f"{REPEATED}-")]
    assert runs == [outcomes[0]["run_id"]]
    _assert_rejected_at_validate(batch, runs[0], ("symmetry: String should match pattern", "(got 'C0')"))


# --- events StartRun cannot use ------------------------------------------------------------------


@pytest.mark.parametrize("case_id", list(BAD_KEYS))
def test_upload_with_an_impossible_key_is_ignored(batch: Batch, case_id: str) -> None:
    key, reason = BAD_KEYS[case_id]
    (delivery,) = batch.deliveries_for(key)
    assert delivery.error is None, "a bad key must not crash StartRun"
    (outcome,) = delivery.result["outcomes"]
    assert outcome["status"] == "ignored"
    assert outcome["reason"] == f"object key {key!r} {reason}"
    assert "run_id" not in outcome, "nothing may have started"


@pytest.mark.parametrize("case_id", list(DIRECT_EVENTS))
def test_event_handed_to_start_run_is_ignored_with_its_reason(batch: Batch, case_id: str) -> None:
    _, reason = DIRECT_EVENTS[case_id]
    ok, result = batch.direct[case_id]
    assert ok, f"StartRun crashed: {result}"
    (outcome,) = result["outcomes"]
    assert outcome["status"] == "ignored"
    assert reason in outcome["reason"]
    assert set(outcome) == {"status", "reason"}, "nothing may have started"


def test_filtered_events_never_reach_start_run(batch: Batch) -> None:
    # an Object Deleted before any create, a DataSync transfer that ended in ERROR, an upload to
    # another bucket: the rules' patterns do not match, so StartRun is not even invoked
    assert batch.deliveries_for(FILTERED) == []
    assert [d for d in batch.cloud.deliveries if d.event.get("source") == "aws.datasync"] == []


def test_every_execution_is_accounted_for(batch: Batch) -> None:
    # uploads (and the one too big for FSx) + the repeated and the late event (one run each) +
    # manual starts + the list input
    expected = len(UPLOADS) + len(BOM_UPLOADS) + 1 + 2 + len(MANUALS) + 1
    assert len(batch.finished) == expected, sorted(batch.finished)
    assert all(d.error is None for d in batch.cloud.deliveries), "no StartRun delivery may crash"
    assert list(batch.cloud.pcluster.requests_for("create_cluster")) == []
    assert batch.cloud.pcluster.clusters() == {}


# --- manual starts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", MANUALS, ids=lambda c: c.id)
def test_bad_manual_start_fails_at_validate(batch: Batch, case: Manual) -> None:
    message = _assert_rejected_at_validate(batch, case.name, case.expected)
    assert "\n" not in message
    assert len(message) <= 2000


def test_manual_start_with_invalid_json_is_refused_by_the_api(batch: Batch) -> None:
    assert batch.invalid_json_error is not None, "Step Functions must refuse input that is not JSON"
    assert "manual-not-json" not in batch.finished


def test_manual_start_whose_input_is_not_an_object_fails_at_validate(batch: Batch) -> None:
    _assert_rejected_at_validate(batch, "manual-input-a-list", ("execution input", "valid dictionary"))
