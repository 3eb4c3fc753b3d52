"""A campaign's item in the run table (``pk = "campaign#<name>"``) and its reference's files in S3.

The item holds the campaign's reference (:class:`~cryopilot.domain.campaign.ReferenceSource`, set
once, by a conditional write, so two runs finishing together cannot both become it) and the ids of
its runs, in the order Validate saw them. The reference's files are copied from the reference
run's exported results to ``campaigns/<campaign>/reference/`` of the results bucket.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from cryopilot.adapters.runs import RunStore, decode, to_ddb
from cryopilot.core import clock
from cryopilot.core.errors import CampaignReferenceError
from cryopilot.domain.campaign import (
    MRC_HEADER_BYTES,
    ReferenceSource,
    mrc_box,
    mrc_pixel_size,
    reference_from_run,
    reference_prefix,
)
from cryopilot.domain.record import RunRecord

#: The reference's own account, in its folder.
REFERENCE_DOC = "reference.json"

#: The run record's fields a campaign view and a reference read.
RUN_FIELDS = [
    "status", "dataset", "campaign", "compound", "created_at", "started_epoch", "export_finished_at",
    "finished_epoch", "resolution_A", "cost_usd", "results", "report", "stages", "preset",
    "map_pixel_size_A", "map_box_pix", "repeat_verdict", "reference", "decisions",
]  # fmt: skip


def _key(campaign: str) -> dict[str, str]:
    return {"pk": f"campaign#{campaign}"}


def get(store: RunStore, campaign: str) -> dict[str, Any] | None:
    item = store.table.get_item(Key=_key(campaign), ConsistentRead=True).get("Item")
    return decode(item) if item else None


def reference_of(store: RunStore, campaign: str) -> ReferenceSource | None:
    item = get(store, campaign) or {}
    ref = item.get("reference")
    return ReferenceSource.model_validate(ref) if ref else None


def add_run(store: RunStore, campaign: str, run_id: str) -> None:
    """Note ``run_id`` among the campaign's runs (creating its item), once."""
    now = clock.now_iso()
    try:
        store.table.update_item(
            Key=_key(campaign),
            UpdateExpression="SET #k = :kind, #n = :name, created_at = if_not_exists(created_at, :now),"
            " updated_at = :now, #r = list_append(if_not_exists(#r, :empty), :run)",
            ConditionExpression="attribute_not_exists(#r) OR NOT contains(#r, :id)",
            ExpressionAttributeNames={"#k": "kind", "#n": "name", "#r": "runs"},
            ExpressionAttributeValues={
                ":kind": "campaign",
                ":name": campaign,
                ":now": now,
                ":empty": [],
                ":run": [run_id],
                ":id": run_id,
            },
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
            raise


def claim_reference(store: RunStore, campaign: str, reference: ReferenceSource) -> bool:
    """Make ``reference`` the campaign's, unless it has one already (False then)."""
    try:
        store.table.update_item(
            Key=_key(campaign),
            UpdateExpression="SET #ref = :ref, reference_run_id = :run, reference_at = :now",
            ConditionExpression="attribute_not_exists(#ref)",
            ExpressionAttributeNames={"#ref": "reference"},
            ExpressionAttributeValues={
                ":ref": to_ddb(reference.model_dump(exclude_none=True)),
                ":run": reference.run_id,
                ":now": clock.now_iso(),
            },
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
            return False
        raise
    return True


def runs_of(store: RunStore, campaign: str) -> list[RunRecord]:
    """The campaign's runs, oldest first (those whose record still exists)."""
    ids = (get(store, campaign) or {}).get("runs") or []
    found = []
    for run_id in ids:
        item = store.get_run_item(run_id, RUN_FIELDS)
        if item is not None:
            found.append(RunRecord.model_validate(item))
    return found


def promote(store: RunStore, s3: Any, bucket: str, run: dict[str, Any]) -> ReferenceSource | None:
    """Make a run that succeeded its campaign's reference when the campaign has none: claim it on
    the campaign's item, then copy its map, mask and class averages to the campaign's folder.
    None when it has no campaign, the campaign has another run's reference, its export holds no
    map, or it did worse than a reference it was given (its repeat verdict names a problem: a
    reference named by its manifest, for a campaign that has none yet)."""
    campaign = run.get("campaign")
    if not campaign:
        return None
    if (run.get("repeat_verdict") or {}).get("problems"):
        return None
    existing = reference_of(store, campaign)
    if existing is not None and existing.run_id != run.get("run_id"):
        return None
    source = reference_from_run(
        run, folder_uri=f"s3://{bucket}/{reference_prefix(campaign)}", kind="campaign"
    )
    if source is None:
        return None
    keys = {f.get("kind"): f.get("key") for f in (run.get("results") or {}).get("files") or []}
    dest = reference_prefix(campaign)
    names = {"map": source.map, "mask": source.mask, "class_averages": source.templates,
             "selected_classes": source.selected}  # fmt: skip
    # claimed first, so two runs ending together cannot both copy; a retried report step of the
    # run that claimed it copies again (the copies are idempotent)
    if existing is None and not claim_reference(store, campaign, source):
        return None
    for kind, name in names.items():
        if name and keys.get(kind):
            s3.copy_object(Bucket=bucket, Key=dest + name, CopySource={"Bucket": bucket, "Key": keys[kind]})
    # what the files are (run, pixel size, box, resolution, particles, decisions), beside them
    s3.put_object(
        Bucket=bucket,
        Key=dest + REFERENCE_DOC,
        Body=json.dumps(source.model_dump(mode="json"), indent=1).encode(),
        ContentType="application/json",
    )
    return source


def _header(s3: Any, reference: ReferenceSource, name: str, *, where: str, what: str) -> bytes:
    """The MRC header of one of the reference's files (a ranged GetObject of its first
    :data:`~cryopilot.domain.campaign.MRC_HEADER_BYTES`)."""
    bucket, _, prefix = reference.folder_uri.removeprefix("s3://").partition("/")
    try:
        body = s3.get_object(Bucket=bucket, Key=prefix + name, Range=f"bytes=0-{MRC_HEADER_BYTES - 1}")
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise CampaignReferenceError(
            f"{where}: the {what} {reference.folder_uri}{name} cannot be read ({code})"
        ) from None
    return bytes(body["Body"].read())


def read_box(s3: Any, reference: ReferenceSource, *, where: str) -> ReferenceSource:
    """A map solved elsewhere with its box, read from its MRC header."""
    header = _header(s3, reference, reference.map, where=where, what="map")
    return reference.model_copy(update={"box_pix": mrc_box(header, where=where)})


def read_templates_pixel_size(s3: Any, reference: ReferenceSource, *, where: str) -> ReferenceSource:
    """The reference with its class averages' pixel size, read from their MRC header: 2D
    classification runs on Fourier-cropped particles, so they are usually at a coarser pixel size
    than the map (cryoSPARC writes it in the header's cell lengths: cryosparc-tools' mrc.py ``write``,
    XLEN = psize x NX). A header without one (a stack made
    elsewhere) is taken to be at the map's pixel size. No class averages: the reference as it is."""
    if reference.templates is None:
        return reference
    header = _header(s3, reference, reference.templates, where=where, what="class averages")
    pixel = mrc_pixel_size(header) or reference.pixel_size_A
    return reference.model_copy(update={"templates_pixel_size_A": pixel})


def check_files_exist(s3: Any, reference: ReferenceSource, *, where: str) -> None:
    """Every file of the reference is in S3 (HeadObject), or one line naming the first missing."""
    bucket, _, prefix = reference.folder_uri.removeprefix("s3://").partition("/")
    for name in reference.files():
        try:
            s3.head_object(Bucket=bucket, Key=prefix + name)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            why = "is not in S3" if code in ("404", "NoSuchKey", "NotFound") else f"cannot be read ({code})"
            raise CampaignReferenceError(
                f"{where}: the reference file s3://{bucket}/{prefix}{name} {why}"
            ) from None
