"""Deliver the head node's bootstrap files to S3, as a CloudFormation custom resource.

The cluster's ``OnNodeConfigured`` action downloads ``headnode-setup.sh`` from the bootstrap
prefix of the artifacts bucket; the script downloads the lane template and the agent from the
same prefix. The stack uploads them itself (no manual step): the delivery function's code is the
``headnode/`` folder, and on every create or update of the custom resource it uploads

- ``headnode-setup.sh`` and ``cryosparc-cluster-script.sh`` (from ``headnode/bootstrap/``);
- ``cryopilot-agent.zip``: the ``cryopilot_agent`` package and the part of ``cryopilot`` it
  imports (``cryopilot/protocol/``), zipped reproducibly;
- ``bundle.json``: each file's SHA-256 and size, so an operator can see what a cluster got.

The resource's properties carry the function's published version, so a change of the code is an
update of the resource and the new files are delivered by the same ``sam deploy``. On delete the
files are left in place (the bucket is retained; a cluster still running may need them).
"""

from __future__ import annotations

import hashlib
import io
import json
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryopilot import protocol
from cryopilot.adapters import aws
from cryopilot.adapters.observability import logger

BOOTSTRAP_DIR = "bootstrap"
AGENT_PACKAGE = "cryopilot_agent"
AGENT_ZIP = "cryopilot-agent.zip"
SCRIPTS = ("headnode-setup.sh", "cryosparc-cluster-script.sh")
MANIFEST = "bundle.json"
# A fixed timestamp keeps the zip byte-identical for identical sources.
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)


class BundleError(Exception):
    """The code folder lacks a file the head node needs."""


@dataclass(frozen=True)
class BundleFile:
    name: str
    body: bytes
    content_type: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


def _agent_zip(agent_dir: Path, shared: list[tuple[Path, str]]) -> bytes:
    """One zip: the agent package, plus the shared files given as (file, name in the zip).

    Sources and data files only, in a fixed order with a fixed date, so identical sources give a
    byte-identical zip."""
    entries = [
        (path, str(path.relative_to(agent_dir.parent)))
        for path in sorted(agent_dir.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    ]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path, name in [*entries, *shared]:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def _protocol_files() -> list[tuple[Path, str]]:
    """What the agent imports of the ``cryopilot`` package: its ``__init__`` and ``protocol/``
    (the agent's request and answer models and the planned stage), so both sides speak the same
    version. Nothing else of the package goes to the head node."""
    package = Path(protocol.__file__).resolve().parent.parent
    files = [package / "__init__.py", *sorted((package / "protocol").glob("*.py"))]
    return [(path, str(path.relative_to(package.parent))) for path in files]


def bundle(root: Path) -> list[BundleFile]:
    """The files the head node downloads, built from the ``headnode/`` folder at ``root``."""
    files: list[BundleFile] = []
    for name in SCRIPTS:
        path = root / BOOTSTRAP_DIR / name
        if not path.is_file():
            raise BundleError(f"{BOOTSTRAP_DIR}/{name} is missing from the delivery function's code")
        files.append(BundleFile(name, path.read_bytes(), "text/x-shellscript"))
    package = root / AGENT_PACKAGE
    if not (package / "__init__.py").is_file():
        raise BundleError(f"the {AGENT_PACKAGE} package is missing from the delivery function's code")
    files.append(BundleFile(AGENT_ZIP, _agent_zip(package, _protocol_files()), "application/zip"))
    manifest = {f.name: {"sha256": f.sha256, "bytes": len(f.body)} for f in files}
    files.append(
        BundleFile(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode(), "application/json")
    )
    return files


def upload(files: list[BundleFile], bucket: str, prefix: str) -> dict[str, Any]:
    """Upload ``files`` under ``s3://bucket/prefix``; returns what was written."""
    s3 = aws.client("s3")
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    written = {}
    for f in files:
        key = prefix + f.name
        s3.put_object(Bucket=bucket, Key=key, Body=f.body, ContentType=f.content_type)
        written[f.name] = {"key": key, "sha256": f.sha256, "bytes": len(f.body)}
    return written


# ------------------------------------------------------------------ custom resource protocol
# Written here rather than taken from AWS's crhelper (PyPI ``crhelper``): the protocol this
# resource needs is one JSON document PUT to the response URL, whatever happened, and the code
# below does that in 30 lines with the stdlib. crhelper (2.0.12, October 2024; releases are
# years apart) brings what this resource does not use and some that it must not have: it sets
# up its own handlers on the root logger (beside Powertools' JSON logger), sleeps two minutes
# on every Delete by default, and its polling for long operations creates EventBridge rules and
# Lambda permissions the function's role would have to be granted. Its import is cheap (boto3
# is loaded anyway), and it would run offline (it PUTs with urllib to whatever URL it gets,
# so the harness's localhost URL works); neither outweighs a dependency for 30 lines.
# What it has and this lacks: a timer that answers FAILED just before Lambda's timeout. This
# function's work is a few small S3 PUTs, well inside its 60 s.
Sender = Callable[[str, bytes], None]


_LOOPBACK = ("http://127.0.0.1:", "http://localhost:")


def _put_response(url: str, body: bytes) -> None:
    """PUT the response to CloudFormation's pre-signed S3 URL (empty content type, as it expects).
    Only https, or plain http to this machine's loopback (the local stack's stand-in)."""
    if not url.startswith(("https://", *_LOOPBACK)):
        raise ValueError("the custom resource response URL must be https")
    req = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, data=body, method="PUT", headers={"Content-Type": "", "Content-Length": str(len(body))}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - scheme checked above
        resp.read()


def handle(event: dict[str, Any], root: Path, send: Sender = _put_response) -> dict[str, Any]:
    """Serve one CloudFormation custom-resource request; always answers CloudFormation, so a
    failure shows in the stack events instead of a stack hanging for an hour."""
    request_type = event.get("RequestType")
    props = event.get("ResourceProperties") or {}
    bucket = str(props.get("Bucket") or "")
    prefix = str(props.get("Prefix") or "headnode/")
    physical_id = event.get("PhysicalResourceId") or f"s3://{bucket}/{prefix}"
    status, reason, data = "SUCCESS", "", {}
    try:
        if request_type in ("Create", "Update"):
            if not bucket:
                raise BundleError("the custom resource needs a Bucket property")
            written = upload(bundle(root), bucket, prefix)
            data = {"Uri": f"s3://{bucket}/{prefix}", "AgentSha256": written[AGENT_ZIP]["sha256"]}
            logger.info("bootstrap files delivered", extra={"bucket": bucket, "files": written})
        elif request_type == "Delete":
            logger.info("bootstrap files left in place on delete", extra={"bucket": bucket})
        else:
            raise BundleError(f"unknown RequestType {request_type!r}")
    except Exception as exc:
        logger.exception("bootstrap delivery failed")
        status, reason = "FAILED", f"{type(exc).__name__}: {exc}"[:1000]
    response = {
        "Status": status,
        "Reason": reason or "see the function's log",
        "PhysicalResourceId": physical_id,
        "StackId": event.get("StackId", ""),
        "RequestId": event.get("RequestId", ""),
        "LogicalResourceId": event.get("LogicalResourceId", ""),
        "Data": data,
    }
    send(str(event.get("ResponseURL", "")), json.dumps(response).encode())
    return response
