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
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError
from cryopilot.adapters import admission, campaigns, runs
from cryopilot.domain.campaign import ReferenceSource
from cryopilot.domain.location import ManifestLocation
from cryopilot.domain.manifest import MAX_MANIFEST_BYTES
from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.harness import LocalCloud

from tests.conftest import EVENTS

# One worker runs the whole module (under xdist): its batch of bad uploads is built once.
pytestmark = pytest.mark.xdist_group("bad-input")

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
INTRUDER = "someone@example.org"
OUTSIDER = "someone@elsewhere.example"
#: the bad-input stack's NotifyAllowedDomains
ALLOWED_DOMAINS = "example.org, example.com"


@dataclass(frozen=True)
class Upload:
    """A manifest dropped into ``datasets/BAD-<id>/``; Validate must reject it naming ``expected``."""

    id: str
    body: bytes
    expected: tuple[str, ...]
    name: str = "cryopilot.yaml"
    error_type: str = "ManifestError"

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
    # capacity
    Upload(
        "capacity-unknown",
        _yaml(_manifest(pipeline={"capacity": "spot"})),
        ("pipeline.capacity: Input should be 'on-demand' or 'spot-where-safe' (got 'spot')",),
    ),
    Upload(
        "spot-with-the-white-papers-layout",
        _yaml(_manifest(pipeline={"layout": "whitepaper", "capacity": "spot-where-safe"})),
        ("pipeline: capacity: spot-where-safe needs layout: cryopilot",),
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
        "repeat-without-a-reference",
        _yaml(_manifest("cgrp.yaml", pipeline={"preset": "repeat"})),
        (
            "pipeline.preset: preset repeat needs a campaign reference (import_reference.volume_blob_path"
            " is ${reference.map_path}) and this run has none; a full run is pipeline: {preset: movies}",
        ),
    ),
    Upload(
        "unknown-stage",
        _yaml(_manifest(pipeline={"overrides": {"refine3d": {"compute_num_gpus": 2}}})),
        ("pipeline.overrides.refine3d: no stage 'refine3d' in preset micrographs",),
    ),
    Upload(
        "unknown-option",
        _yaml(_manifest(pipeline={"options": {"templates": "projections"}})),
        ("pipeline.options.templates: preset micrographs has no option 'templates' (options: none)",),
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
    # every value is bounded, so every item the run writes stays far below DynamoDB's 400 KB
    Upload(
        "override-text-400-kb",
        _yaml(_manifest(pipeline={"overrides": {"nurefine": {"refine_symmetry": "C" * 400_000}}})),
        ("pipeline.overrides.nurefine.refine_symmetry: text may be at most 512 characters (got 400,000)",),
    ),
    Upload(
        "glob-2000-characters",
        _yaml(_manifest(input__glob="micrographs/" + "a" * 2000 + "/*.mrc")),
        ("input.glob: String should have at most 512 characters",),
    ),
    # overrides: each value has its parameter's type, range and (for paths) the path rules
    Upload(
        "override-blob-paths-absolute",
        _yaml(_manifest(pipeline={"overrides": {"import": {"blob_paths": "/etc/*"}}})),
        ("pipeline.overrides.import.blob_paths: must be relative to the manifest's folder, not absolute",),
    ),
    Upload(
        "override-gainref-dotdot",
        _yaml(
            _manifest(
                "cgrp.yaml", pipeline={"overrides": {"import": {"gainref_path": "../../../etc/passwd"}}}
            )
        ),
        ("pipeline.overrides.import.gainref_path: must not contain '..'",),
    ),
    Upload(
        "override-defect-other-bucket",
        _yaml(
            _manifest(
                "cgrp.yaml", pipeline={"overrides": {"import": {"defect_path": "s3://other-bucket/secret"}}}
            )
        ),
        ("pipeline.overrides.import.defect_path: must be relative to the manifest's folder, not absolute",),
    ),
    Upload(
        "override-gpus-as-text",
        _yaml(_manifest(pipeline={"overrides": {"ctf": {"compute_num_gpus": "lots"}}})),
        ("pipeline.overrides.ctf.compute_num_gpus: must be an integer (got 'lots')",),
    ),
    Upload(
        "override-gpus-1000",
        _yaml(_manifest(pipeline={"overrides": {"ctf": {"compute_num_gpus": 1000}}})),
        ("pipeline.overrides.ctf.compute_num_gpus: must be from 1 to 8 (got 1000)",),
    ),
    Upload(
        "override-gpus-beyond-the-lane",
        _yaml(_manifest(pipeline={"overrides": {"class2d": {"compute_num_gpus": 8}}})),
        (
            "pipeline.overrides.class2d.compute_num_gpus: 8 GPUs,",
            "but stage class2d runs on lane gpu4 (g6e.12xlarge, 4 GPUs per node)",
        ),
    ),
    Upload(
        "override-boolean-as-number",
        _yaml(_manifest(pipeline={"overrides": {"extract": {"output_f16": 1}}})),
        ("pipeline.overrides.extract.output_f16: must be true or false (got 1)",),
    ),
    # loose parsing: numbers are numbers, keys are unique, symmetry is a point group
    Upload(
        "cs-mm-on",
        SPIKE_YAML.replace(b"cs_mm: 2.7", b"cs_mm: on"),
        ("acquisition.cs_mm: Input should be a valid number (got True)",),
    ),
    Upload(
        "expected-files-true",
        _yaml(_manifest(input__expected_files=True)),
        ("input.expected_files: Input should be a valid integer (got True)",),
    ),
    Upload(
        "max-hours-as-text",
        _yaml(_manifest(limits={"max_hours": "1e2"})),
        ("limits.max_hours: Input should be a valid number (got '1e2')",),
    ),
    Upload(
        "duplicate-key",
        SPIKE_YAML + b"symmetry: C1\n",
        ("is not valid YAML: duplicate key 'symmetry' at line 14",),
    ),
    Upload(
        "symmetry-huge",
        _yaml(_manifest(symmetry="C99999999999999999999")),
        ("symmetry: must be a point group: C1 to C120, D2 to D120, T, O or I (got 'C99999999999999999999')",),
    ),
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
    # mail subscriptions
    Upload(
        "notify-trailing-newline",
        _yaml(_manifest(notify=["a@b.co\n"])),
        ("notify: not an email address: 'a@b.co\\n'",),
    ),
    Upload(
        "notify-zero-width-space",
        _yaml(_manifest(notify=["lab\u200b@example.org"])),
        ("notify: not an email address: 'lab\\u200b@example.org'",),
    ),
    # a manifest names only the dataset of its own folder: this one, in datasets/BAD-another-
    # dataset/, names SPIKE-FAB-07 and would subscribe its address to that dataset's mails
    Upload(
        "another-dataset",
        _yaml(_manifest(notify=[INTRUDER])),
        ("dataset: must be the name of the manifest's folder, 'BAD-another-dataset' (got 'SPIKE-FAB-07')",),
    ),
    # the stack allows notify addresses in ALLOWED_DOMAINS only (NotifyAllowedDomains)
    Upload(
        "notify-outside-domains",
        _yaml(_manifest(dataset="BAD-notify-outside-domains", notify=[OUTSIDER, "lab@example.org"])),
        (f"notify: {OUTSIDER} is not in an allowed domain (NotifyAllowedDomains: {ALLOWED_DOMAINS})",),
    ),
    # campaigns: a reference that cannot be used fails at Validate, before any cluster
    Upload(
        "reference-unknown-run",
        _yaml(_manifest(dataset="BAD-reference-unknown-run", reference={"run": "NO-SUCH-RUN-0123"})),
        ("reference.run: no run 'NO-SUCH-RUN-0123' in this stack's run table",),
        error_type="CampaignReferenceError",
    ),
    Upload(
        "reference-run-failed",
        _yaml(_manifest(dataset="BAD-reference-run-failed", reference={"run": "FAILED-RUN-0123"})),
        ("reference.run: run FAILED-RUN-0123 has not succeeded (status FAILED)",),
        error_type="CampaignReferenceError",
    ),
    Upload(
        "reference-run-predates-campaigns",
        _yaml(_manifest(dataset="BAD-reference-run-predates-campaigns", reference={"run": "OLD-RUN-0123"})),
        ("reference.run: run OLD-RUN-0123 recorded no map pixel size (it predates campaigns)",),
        error_type="CampaignReferenceError",
    ),
    Upload(
        "campaign-reference-pixel-size",
        _yaml(
            _manifest(dataset="BAD-campaign-reference-pixel-size", campaign="RBD-BINDERS", compound="CP-7")
        ),
        (
            "campaign RBD-BINDERS: the reference's pixel size 1.06 Å differs from the data's 0.83 Å"
            " (acquisition.pixel_size_A) by 27.7%; a reference within 2% of it is resampled to it on the"
            " cluster, one further off is refused",
        ),
        error_type="CampaignReferenceError",
    ),
    Upload(
        "reference-and-map",
        _yaml(_manifest(reference={"run": "A-1", "map": "s3://some-bucket/refs/map.mrc"})),
        ("reference: name either run (an earlier run's id) or map (an s3:// map), not both or none",),
    ),
    Upload(
        "compound-newline",
        _yaml(_manifest(compound="CP-1\nCP-2")),
        ("compound: must be printable text on one line",),
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
    error_type: str = "ManifestError"

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
        "inline-override-path-other-bucket",
        _inline(_manifest(pipeline={"overrides": {"import": {"blob_paths": "s3://other-bucket/*.mrc"}}})),
        ("pipeline.overrides.import.blob_paths: must be relative to the manifest's folder, not absolute",),
    ),
    Manual(
        "inline-dose-as-text",
        _inline(_manifest(acquisition__total_dose_e_per_A2="50")),
        ("manifest_inline: acquisition.total_dose_e_per_A2: Input should be a valid number (got '50')",),
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
    # the data folder of an inline manifest: one rule for buckets, folders and keys (README), and
    # the stack's input bucket only; refused at Validate, never at CreateCluster
    Manual(
        "inline-data-bucket-bad-name",
        {**_inline(_manifest()), "data_s3_uri": "s3://Bad_Bucket/x/"},
        ("execution input: data_s3_uri: 'Bad_Bucket' is not an S3 bucket name",),
    ),
    Manual(
        "inline-data-folder-space",
        {**_inline(_manifest()), "data_s3_uri": "s3://{bucket}/datasets/Our Data/"},
        ("execution input: data_s3_uri: folder 'Our Data' contains whitespace U+0020 (SPACE)",),
    ),
    Manual(
        "inline-data-folder-bidi",
        {**_inline(_manifest()), "data_s3_uri": "s3://{bucket}/datasets/SPIKE\u202eFAB/"},
        ("data_s3_uri: folder 'SPIKE\\u202eFAB' contains the invisible formatting character U+202E",),
    ),
    Manual(
        "inline-data-other-bucket",
        {**_inline(_manifest()), "data_s3_uri": "s3://someone-elses-bucket/datasets/SPIKE-FAB-07/"},
        (
            "execution input: data_s3_uri: s3://someone-elses-bucket/datasets/SPIKE-FAB-07/: is not in"
            " this stack's input bucket",
        ),
    ),
    # a version id S3 could not have issued: S3 answers 400, which names the fault
    Manual(
        "manifest-version-forged",
        {"manifest": {"bucket": "{bucket}", "key": "datasets/GONE/cryopilot.yaml", "version_id": "forged-1"}},
        ("datasets/GONE/cryopilot.yaml: S3 refuses the version id as malformed (400)",),
    ),
    Manual(
        "manifest-version-not-an-id",
        {"manifest": {"bucket": "{bucket}", "key": "datasets/GONE/cryopilot.yaml", "version_id": "v 1"}},
        ("datasets/GONE/cryopilot.yaml: version id 'v 1' (3 characters) is not an S3 version id",),
    ),
    # the execution's name is the run id: it goes into S3 keys, tags and the cluster's name
    Manual(
        "name+plus",
        _inline(_manifest()),
        ("execution name: 'manual-name+plus' is not a run id (ASCII letters, digits, '_' and '-'",),
    ),
    # a map solved elsewhere: in one of the stack's buckets, present, at the data's pixel size
    Manual(
        "reference-map-missing",
        _inline(
            _manifest(reference={"map": "s3://{bucket}/references/RBD/absent.mrc", "pixel_size_A": 0.83})
        ),
        ("reference.map: the reference file s3://{bucket}/references/RBD/absent.mrc is not in S3",),
        error_type="CampaignReferenceError",
    ),
    Manual(
        "reference-map-pixel-size",
        _inline(_manifest(reference={"map": "s3://{bucket}/references/RBD/map.mrc", "pixel_size_A": 1.2})),
        (
            "reference.map: the reference's pixel size 1.2 Å differs from the data's 0.83 Å"
            " (acquisition.pixel_size_A) by 44.6%; a reference within 2% of it is resampled to it on the"
            " cluster, one further off is refused",
        ),
        error_type="CampaignReferenceError",
    ),
    Manual(
        "reference-map-not-mrc",
        _inline(_manifest(reference={"map": "s3://{bucket}/references/RBD/map.mrc", "pixel_size_A": 0.83})),
        ("reference.map: the map's header gives a size of 0 x 0 x 0: not an MRC map of at most 2048",),
        error_type="CampaignReferenceError",
    ),
    Manual(
        "reference-map-too-large-to-resample",
        _inline(_manifest(reference={"map": "s3://{bucket}/references/RBD/big.mrc", "pixel_size_A": 0.84})),
        (
            "reference.map: the map is 600 pixels a side and its pixel size 0.84 Å is 1.2% from the data's"
            " 0.83 Å: it would be resampled, which the head node does for maps of at most 512 pixels",
        ),
        error_type="CampaignReferenceError",
    ),
    Manual(
        "reference-map-other-bucket",
        _inline(_manifest(reference={"map": "s3://someone-elses-bucket/map.mrc", "pixel_size_A": 0.83})),
        ("reference.map: must be in this stack's input bucket {bucket} or results bucket",),
        error_type="CampaignReferenceError",
    ),
    Manual(
        "settings-wrong-type",
        {**_inline(_manifest()), "settings": {"cluster_poll_seconds": "every minute"}},
        ("execution input: settings.cluster_poll_seconds: Input should be a valid integer",),
    ),
]

# Uploads whose key no manifest can have: the rule's wildcard lets them through, StartRun ignores them.
NAME_RULE = "a dataset name is ASCII letters, digits, '.', '_' and '-', starting with a letter or digit"
BAD_KEYS = {
    "key-control-character": ("datasets/SPIKE\x1bFAB/cryopilot.yaml", "contains control characters"),
    "key-c1-control-character": ("datasets/SPIKE\x85FAB/cryopilot.yaml", "contains control characters"),
    "key-dot-folder": ("datasets/./cryopilot.yaml", "contains a '.' folder"),
    # dataset folder names follow the manifest's dataset rule: refused, never normalised (README)
    "key-space": (
        "datasets/My Data/cryopilot.yaml",
        f"has a dataset folder that contains whitespace U+0020 (SPACE); {NAME_RULE}",
    ),
    "key-right-to-left-override": (
        "datasets/SPIKE\u202eFAB/cryopilot.yaml",
        "has a dataset folder that contains the invisible formatting character U+202E (RIGHT-TO-LEFT"
        f" OVERRIDE); {NAME_RULE}",
    ),
    "key-zero-width-space": (
        "datasets/SPIKE\u200bFAB/cryopilot.yaml",
        "has a dataset folder that contains the invisible formatting character U+200B (ZERO WIDTH"
        f" SPACE); {NAME_RULE}",
    ),
    "key-fullwidth-letters": (
        "datasets/\uff33\uff30\uff29\uff2b\uff25/cryopilot.yaml",
        "has a dataset folder that contains U+FF33 (FULLWIDTH LATIN CAPITAL LETTER S), a look-alike"
        f" of 'S'; {NAME_RULE}",
    ),
}


@dataclass
class Batch:
    cloud: LocalCloud
    start_fn: str
    gone_version: str = ""
    marker_version: str = ""
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
    _yaml(_manifest(dataset="BAD-storage-over-max-fsx", storage={"expected_particles": 10_000_000_000})),
    ("storage: the run needs an FSx file system of", "above this stack's MaxFsxTiB of 48 TiB"),
)

REPEATED = "REPEATED"
GONE = "GONE"
FORGED = "FORGED"
#: Object Created events for datasets/FORGED/cryopilot.yaml (which exists) naming versions that do
#: not: each is ignored by StartRun with its reason, takes no slot, starts and mails nothing.
FORGED_VERSIONS = {
    "forged-version-1": "S3 refuses the version id as malformed (400)",
    "../../x": "S3 refuses the version id as malformed (400)",
    "A" * 1024: "S3 refuses the version id as malformed (400)",
    "null": "no such object (or version)",  # S3's id of a version stored unversioned: none here
    "00000000-0000-4000-8000-000000000000": "no such object (or version)",
    "A" * 1025: "(1025 characters) is not an S3 version id",
    "v 1": "version id 'v 1' (3 characters) is not an S3 version id",
}
FILTERED = "datasets/FILTERED/cryopilot.yaml"


OVERSIZED = "manual-oversized-record"
OVERSIZED_DATASET = "BIG-RECORD"


def _seed_oversized_record(cloud: LocalCloud) -> None:
    """A run record grown to 404,990 bytes as moto counts them (attribute names and values; it
    refuses an item past 405,000): no update of it can be written any more. The run holds an
    admission slot and its manual start is invalid."""
    runs.store().table.put_item(
        Item={
            "pk": f"run#{OVERSIZED}",
            "kind": "run",
            "run_id": OVERSIZED,
            "status": "RUNNING",
            "dataset": OVERSIZED_DATASET,
            "created_at": "2026-01-01T00:00:00Z",
            "stages": {},
            "decisions": [json.dumps({"stage": "hetero1", "note": "x" * 404_813})],
            "mails": [],
        }
    )
    admission.admit(OVERSIZED, 1000)
    cloud.client("stepfunctions").start_execution(
        stateMachineArn=cloud.state_machine_arn,
        name=OVERSIZED,
        input=json.dumps(_fill(_inline(_manifest(acquisition__voltage_kV=250)), bucket=cloud.input_bucket)),
    )


def _seed_references(cloud: LocalCloud) -> None:
    """A reference map in the input bucket; a run that failed; a campaign whose reference (its files
    present) was made at 1.06 Å per pixel, where the spike's data has 0.83 Å."""
    s3 = cloud.client("s3")
    s3.put_object(Bucket=cloud.input_bucket, Key="references/RBD/map.mrc", Body=b"\0" * 1024)
    big = struct.pack("<4i", 600, 600, 600, 2).ljust(1024, b"\0")  # a 600-pixel map's header
    s3.put_object(Bucket=cloud.input_bucket, Key="references/RBD/big.mrc", Body=big)
    store = runs.store()
    store.create_run("FAILED-RUN-0123", status="FAILED", dataset="OLD")
    store.create_run("OLD-RUN-0123", status="SUCCEEDED", dataset="OLD", resolution_A=3.1)
    prefix = "campaigns/RBD-BINDERS/reference/"
    s3.put_object(Bucket=cloud.results_bucket, Key=prefix + "map.mrc", Body=b"\0" * 1024)
    campaigns.claim_reference(
        store,
        "RBD-BINDERS",
        ReferenceSource(
            kind="campaign",
            folder_uri=f"s3://{cloud.results_bucket}/{prefix}",
            map="map.mrc",
            pixel_size_A=1.06,
            run_id="RBD-FIRST-0001",
            campaign="RBD-BINDERS",
        ),
    )


def _cleanup_results(cloud: LocalCloud) -> list[dict[str, Any]]:
    return [d.result or {} for d in cloud.deliveries if d.function.endswith("CleanupFunction")]


def _until(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def batch() -> Iterator[Batch]:
    parameters = {"NotifyAllowedDomains": ALLOWED_DOMAINS.replace(" ", "")}
    with LocalCloud(clock=VirtualClock(), profile="spike", parameters=parameters) as cloud:
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
            forged = cloud.drop_dataset(FORGED, _yaml(_manifest()))
            marker = s3.delete_object(Bucket=bucket, Key=f"datasets/{FORGED}/cryopilot.yaml")
            s3.delete_object(
                Bucket=bucket, Key=f"datasets/{GONE}/cryopilot.yaml", VersionId=first["VersionId"]
            )
        finally:
            events.enable_rule(Name=rule)
        b.gone_version = first["VersionId"]
        b.marker_version = marker["VersionId"]

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
        # forged or malformed version ids of an existing manifest
        for version in [*FORGED_VERSIONS, b.marker_version]:
            cloud.put_event(
                _object_created(bucket, f"datasets/{FORGED}/cryopilot.yaml", version, forged["ETag"])
            )
        # events the rules filter out: a deletion, an unfinished transfer, another bucket's upload
        deleted = _object_created(bucket, FILTERED, "v1", "e1")
        deleted["detail-type"] = "Object Deleted"
        cloud.put_event(deleted)
        cloud.put_event(_datasync("ERROR"))
        cloud.put_event(_object_created("someone-elses-bucket", FILTERED, "v1", "e1"))

        # a run whose record can no longer be written (it holds a slot, like an admitted run)
        _seed_oversized_record(cloud)
        _seed_references(cloud)

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

        # one worker delivers every upload's event in turn: a deadline for a hang, not a timing
        # (a busy machine takes longer than the default 30 s for the whole batch)
        cloud.drain_events(timeout=180)
        for execution in cloud.executions():
            desc = cloud.wait_for_execution(execution["executionArn"], timeout=180)
            b.finished[desc["name"]] = desc
        _until(lambda: any(r.get("run_id") == OVERSIZED for r in _cleanup_results(cloud)))
        b.mails = cloud.mails()
        yield b


def _assert_rejected_at_validate(
    b: Batch, run_id: str, expected: tuple[str, ...], error_type: str = "ManifestError"
) -> str:
    """The run failed at Validate with ``error_type`` naming ``expected``, mailed once, no cluster.
    Returns the recorded message."""
    cloud = b.cloud
    desc = b.finished[run_id]
    assert desc["status"] == "FAILED"
    record = cloud.run_record(run_id)
    assert record is not None
    error = record["error"]
    assert error["type"] == error_type, error
    assert error["step"] == "validate"
    for fragment in expected:
        assert fragment in error["message"], (fragment, error["message"])
    assert not record.get("cluster_name"), "no cluster may be planned for bad input"

    (mail,) = [m for m in b.mails if m["attributes"].get("run_id") == run_id]
    assert mail["attributes"]["event"] == "failed"
    assert mail["subject"].endswith(f"failed at validate: {error_type}")
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
    message = _assert_rejected_at_validate(batch, run_id, case.expected, case.error_type)
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


def test_a_refused_reference_mail_names_the_compound(batch: Batch) -> None:
    key = "datasets/BAD-campaign-reference-pixel-size/cryopilot.yaml"
    run_id, _ = batch.started_run(key)
    (mail,) = [m for m in batch.mails if m["attributes"].get("run_id") == run_id]
    assert mail["subject"].startswith(
        "[cryopilot] BAD-campaign-reference-pixel-size (CP-7) failed at validate"
    )
    assert "Compound: CP-7 (campaign RBD-BINDERS)" in mail["message"]


def test_a_refused_manifest_subscribes_no_address(batch: Batch) -> None:
    # Validate refused these manifests before any address was subscribed to any dataset's mails
    sns = batch.cloud.client("sns")
    subs = sns.list_subscriptions_by_topic(TopicArn=batch.cloud.topic_arn)["Subscriptions"]
    endpoints = {s["Endpoint"] for s in subs}
    assert endpoints == {"structures@example.org"}, endpoints  # the stack's NotificationEmail only


def test_a_run_needing_more_fsx_than_max_fsx_tib_fails_at_validate(batch: Batch) -> None:
    run_id, _ = batch.started_run(f"datasets/{TOO_BIG.folder}/{TOO_BIG.name}")
    desc = batch.finished[run_id]
    assert desc["status"] == "FAILED"
    record = batch.cloud.run_record(run_id)
    assert record is not None
    error = record["error"]
    assert (error["type"], error["step"]) == ("StorageLimitError", "validate"), error["message"]
    for fragment in TOO_BIG.expected:
        assert fragment in error["message"], error["message"]
    assert "\n" not in error["message"]
    assert record["fsx_storage_gib"] > 48 * 1024  # the model's size is on the record
    (mail,) = [m for m in batch.mails if m["attributes"].get("run_id") == run_id]
    assert TOO_BIG.expected[1] in mail["message"]
    assert NO_CLUSTER in mail["message"]
    assert "CreateCluster" not in batch.cloud.states_entered(desc["executionArn"])
    assert list(batch.cloud.pcluster.requests_for("create_cluster")) == []


def test_a_version_that_no_longer_exists_is_ignored(batch: Batch) -> None:
    key = f"datasets/{GONE}/cryopilot.yaml"
    (delivery,) = batch.deliveries_for(key)  # the two uploads went in with the rule off
    assert delivery.event["detail"]["object"]["version-id"] == batch.gone_version
    assert delivery.error is None
    (outcome,) = delivery.result["outcomes"]
    assert outcome == {
        "status": "ignored",
        "reason": f"s3://{batch.cloud.input_bucket}/{key} version {batch.gone_version!r}: "
        "no such object (or version)",
    }
    location = ManifestLocation(bucket=batch.cloud.input_bucket, key=key, version_id=batch.gone_version)
    assert batch.cloud.run_record(location.run_id()) is None


@pytest.mark.parametrize(
    "version", list(FORGED_VERSIONS), ids=lambda v: v if len(v) < 20 else f"{len(v)}-chars"
)
def test_an_event_naming_a_forged_version_is_ignored(batch: Batch, version: str) -> None:
    key = f"datasets/{FORGED}/cryopilot.yaml"
    (delivery,) = [
        d for d in batch.deliveries_for(key) if d.event["detail"]["object"]["version-id"] == version
    ]
    assert delivery.error is None, "a forged event must not crash StartRun"
    (outcome,) = delivery.result["outcomes"]
    assert outcome["status"] == "ignored"
    assert outcome["reason"].startswith(f"s3://{batch.cloud.input_bucket}/{key}")
    assert FORGED_VERSIONS[version] in outcome["reason"]
    assert "\n" not in outcome["reason"]
    assert len(outcome["reason"]) < 400
    assert set(outcome) == {"status", "reason"}, "nothing may have started"
    # no record (so no slot: a run takes one only through its record), no execution, no mail
    location = ManifestLocation(bucket=batch.cloud.input_bucket, key=key, version_id=version)
    assert batch.cloud.run_record(location.run_id()) is None
    assert not [name for name in batch.finished if name.startswith(f"{FORGED}-")]
    assert not [m for m in batch.mails if FORGED in m["subject"] or FORGED in m["message"]]


def test_a_repeated_event_starts_one_run(batch: Batch) -> None:
    key = f"datasets/{REPEATED}/cryopilot.yaml"
    deliveries = batch.deliveries_for(key)
    assert len(deliveries) == 3
    outcomes = [d.result["outcomes"][0] for d in deliveries]
    assert sorted(o["status"] for o in outcomes) == ["duplicate", "duplicate", "started"]
    assert len({o["run_id"] for o in outcomes}) == 1
    runs = [name for name in batch.finished if name.startswith(f"{REPEATED}-")]
    assert runs == [outcomes[0]["run_id"]]
    _assert_rejected_at_validate(batch, runs[0], ("symmetry: must be a point group", "(got 'C0')"))


# --- events StartRun cannot use ------------------------------------------------------------------


@pytest.mark.parametrize("case_id", list(BAD_KEYS))
def test_upload_with_an_impossible_key_is_ignored(batch: Batch, case_id: str) -> None:
    key, reason = BAD_KEYS[case_id]
    (delivery,) = batch.deliveries_for(key)
    assert delivery.error is None, "a bad key must not crash StartRun"
    (outcome,) = delivery.result["outcomes"]
    assert outcome["status"] == "ignored"
    assert outcome["reason"].startswith(f"object key {key!r} {reason}")
    assert outcome["reason"].isprintable(), "the reason is one line of visible characters"
    assert "run_id" not in outcome, "nothing may have started"
    # the name reached no record, no mail subject and so no `cryopilot status`
    folder = key.split("/")[1]
    if len(folder) > 1:
        assert not [m for m in batch.mails if folder in m["subject"] or folder in m["message"]]


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


def test_an_event_naming_a_delete_marker_is_ignored(batch: Batch) -> None:
    key = f"datasets/{FORGED}/cryopilot.yaml"
    version = batch.marker_version
    (delivery,) = [
        d for d in batch.deliveries_for(key) if d.event["detail"]["object"]["version-id"] == version
    ]
    assert delivery.error is None, "a delete marker must not crash StartRun (it would be retried for nothing)"
    (outcome,) = delivery.result["outcomes"]
    assert outcome == {
        "status": "ignored",
        "reason": f"s3://{batch.cloud.input_bucket}/{key} version {version!r}: the version is a delete"
        " marker, not a manifest",
    }


def test_every_execution_is_accounted_for(batch: Batch) -> None:
    # uploads (and the one too big for FSx) + the repeated event (one run) + manual starts + the
    # list input + the run whose record cannot be written; the late event of a deleted version and
    # the forged versions start nothing
    expected = len(UPLOADS) + len(BOM_UPLOADS) + 1 + 1 + len(MANUALS) + 1 + 1
    assert len(batch.finished) == expected, sorted(batch.finished)
    assert all(d.error is None for d in batch.cloud.deliveries), "no StartRun delivery may crash"
    assert list(batch.cloud.pcluster.requests_for("create_cluster")) == []
    assert batch.cloud.pcluster.clusters() == {}


# --- manual starts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", MANUALS, ids=lambda c: c.id)
def test_bad_manual_start_fails_at_validate(batch: Batch, case: Manual) -> None:
    expected = tuple(_fill(e, bucket=batch.cloud.input_bucket) for e in case.expected)
    message = _assert_rejected_at_validate(batch, case.name, expected, case.error_type)
    assert "\n" not in message
    assert len(message) <= 2000


def test_manual_start_with_invalid_json_is_refused_by_the_api(batch: Batch) -> None:
    assert batch.invalid_json_error is not None, "Step Functions must refuse input that is not JSON"
    assert "manual-not-json" not in batch.finished


def test_manual_start_whose_input_is_not_an_object_fails_at_validate(batch: Batch) -> None:
    _assert_rejected_at_validate(batch, "manual-input-a-list", ("execution input", "valid dictionary"))


def test_a_record_that_cannot_be_written_still_ends_failed_mailed_and_released(batch: Batch) -> None:
    # The record is too large for any update: Validate's refusal is one line naming the record and
    # the field, the failure is still recorded (the record is cut down to what the run's end
    # needs), the failure mail still
    # carries the dataset attribute that subscriptions filter on, cleanup does not crash and the
    # run's admission slot is released.
    cloud = batch.cloud
    assert batch.finished[OVERSIZED]["status"] == "FAILED"
    record = cloud.run_record(OVERSIZED)
    assert record is not None
    assert record["status"] == "FAILED"
    assert record["record_truncated"] is True, "cut down to its essentials to take the failure"
    error = record["error"]
    assert error["type"] == "RecordTooLargeError", error
    assert error["message"].startswith(f"run record {OVERSIZED}: writing "), error
    assert error["message"].endswith("would make it larger than DynamoDB's 400 KB item limit"), error
    (mail,) = [m for m in batch.mails if m["attributes"].get("run_id") == OVERSIZED]
    assert mail["attributes"]["dataset"] == OVERSIZED_DATASET
    assert mail["attributes"]["event"] == "failed"
    deliveries = [
        d
        for d in cloud.deliveries
        if d.function.endswith("CleanupFunction") and (d.result or {}).get("run_id") == OVERSIZED
    ]
    assert deliveries
    assert all(d.error is None for d in deliveries)
    assert OVERSIZED not in admission.read().holders
