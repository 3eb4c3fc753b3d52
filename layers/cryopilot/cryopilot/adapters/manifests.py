"""A manifest version as S3 holds it: whether it exists, and S3's refusals in a few words.

StartRun asks before it takes a slot (an event naming a version that does not exist starts
nothing), Validate before it reads the manifest.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from cryopilot.adapters import aws
from cryopilot.core.errors import EventError
from cryopilot.domain.location import ManifestLocation

#: What S3 answers HeadObject/GetObject for an object or version that is not there. A HEAD
#: response has no body, so botocore names the error by its HTTP status.
_MISSING = ("404", "NoSuchKey", "NoSuchVersion", "NotFound")
#: S3 answers 400 InvalidArgument ("Invalid version id specified") for a version id it could not
#: have issued (HEAD: a bare 400).
_MALFORMED = ("400", "InvalidArgument", "BadRequest")
_DENIED = ("403", "AccessDenied", "Forbidden")
#: HeadObject of a delete marker's version id: 405 Method Not Allowed.
_DELETE_MARKER = ("405", "MethodNotAllowed")


def head_version(location: ManifestLocation) -> dict[str, Any]:
    """HeadObject of the manifest version at ``location`` (the current one when it names no
    version). Raises :class:`EventError` saying why when S3 has no such object or version, the
    version id is malformed, or access is denied; other errors propagate (they may be transient)."""
    extra = {"VersionId": location.version_id} if location.version_id else {}
    try:
        head: dict[str, Any] = aws.client("s3").head_object(Bucket=location.bucket, Key=location.key, **extra)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _MISSING:
            raise EventError("no such object (or version)") from None
        if code in _MALFORMED and location.version_id:
            raise EventError("S3 refuses the version id as malformed (400)") from None
        if code in _DENIED:
            raise EventError("access denied") from None
        if code in _DELETE_MARKER:
            raise EventError("the version is a delete marker, not a manifest") from None
        raise
    return head
