"""How much data a run has: the bytes and objects under its data prefix (S3 ``ListObjectsV2``,
every page), and how many objects the manifest's ``input.glob`` matches. Validate records it on the
run; ``cryopilot cluster-config`` prints the FSx size the storage model makes of it."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from botocore.exceptions import ClientError

from cryopilot.core.errors import ManifestError
from cryopilot.domain.storage import DataSize


def _split(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    return bucket, prefix


def measure_prefix(s3: Any, uri: str, glob: str) -> DataSize:
    """Bytes and objects under ``uri`` (``s3://bucket/prefix/``), and the objects whose key below
    the prefix matches ``glob`` (``movies/*.tif``)."""
    bucket, prefix = _split(uri)
    size = objects = files = 0
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                size += int(obj.get("Size", 0))
                objects += 1
                if fnmatchcase(obj["Key"][len(prefix) :], glob):
                    files += 1
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code in ("NoSuchBucket", "AccessDenied", "403", "404"):
            raise ManifestError(f"{uri}: the data cannot be listed ({code})") from None
        raise
    return DataSize(bytes=size, objects=objects, files=files)
