"""Where a manifest and its data live: the one rule for names, keys, S3 URIs, version ids and
run ids, and one version of one manifest object.

StartRun, Validate, the cluster configuration and the operator CLI share these; they are kept
apart from the manifest's schema and parser so a function that only locates manifests does not
load them.

Names are refused, not normalised: a dataset name (the manifest's ``dataset``, a dataset folder
under ``datasets/``, a path segment of ``data_s3_uri``) is ASCII letters, digits, ``.``, ``_`` and
``-``. It becomes a cluster tag, an FSx data repository path, an IAM resource in the head node's
``S3Access``, a mail subject and a line of ``cryopilot status``; outside this set a name could
look like another (fullwidth letters, invisible or bidirectional formatting characters) or need
quoting somewhere along that way (spaces).
"""

import hashlib
import re
import unicodedata

from pydantic import BaseModel, ConfigDict

from cryopilot.core.errors import EventError

MANIFEST_NAMES = ("cryopilot.yaml", "cryopilot.yml", "cryopilot.json")

#: A dataset name: the manifest's ``dataset`` and its folder ``datasets/<name>/``.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$"
NAME_RULE = "ASCII letters, digits, '.', '_' and '-', starting with a letter or digit, at most 48 characters"
_NAME_RE = re.compile(NAME_PATTERN)

#: One folder of an S3 prefix cryopilot reads data from: the characters of a dataset name.
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]{1,255}")
SEGMENT_RULE = "ASCII letters, digits, '.', '_' and '-'"

#: S3's general purpose bucket naming rules
#: (https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html): 3 to 63
#: lowercase letters, digits, '.' and '-', beginning and ending with a letter or digit, no two
#: adjacent periods, not formatted as an IP address, none of the reserved prefixes (xn--, sthree-,
#: amzn-s3-demo-) and suffixes (-s3alias, --ol-s3, .mrap, --x-s3, --table-s3).
#: (The look-aheads stop at the bucket's end, '/' or the end of the text, so the pattern holds
#: inside :data:`S3_FOLDER_RE` too.)
BUCKET_RE = re.compile(
    r"(?!xn--|sthree-|amzn-s3-demo-)(?!\d+\.\d+\.\d+\.\d+(?:/|\Z))(?![^/]*\.\.)"
    r"(?![^/]*(?:-s3alias|--ol-s3|\.mrap|--x-s3|--table-s3)(?:/|\Z))[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
)
BUCKET_RULE = "an S3 bucket name (3-63 lowercase letters, digits, '.' and '-'; S3's bucket naming rules)"

#: An ``s3://bucket/folder/.../`` URI whose folders follow :data:`SEGMENT_RULE` (may be the bucket's root).
S3_FOLDER_RE = re.compile(r"s3://(" + BUCKET_RE.pattern + r")/((?:[A-Za-z0-9._-]{1,255}/)*)")

#: S3 version ids are "Unicode, UTF-8 encoded, URL-ready, opaque strings that are no more than 1,024
#: bytes long" (S3 User Guide, "How S3 Versioning works"); S3 gives objects stored while
#: versioning was off the version id ``null``, which is an id like any other here (S3 itself says
#: whether that version exists). URL-ready: unreserved characters and base64's ``+ / =``.
VERSION_ID_RE = re.compile(r"[A-Za-z0-9._~+/=-]{1,1024}")

#: A run id: the execution's name (Step Functions allows at most 80 characters; cryopilot keeps to
#: these, which every place a run id goes, a cluster tag, a results prefix, a shell argument, takes).
RUN_ID_PATTERN = r"^[A-Za-z0-9_-]{1,80}$"


def _character(ch: str) -> str:
    name = unicodedata.name(ch, "unnamed")
    return f"U+{ord(ch):04X} ({name})"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a dataset name (:data:`NAME_RULE`), in a few words, or None."""
    if _NAME_RE.fullmatch(name):
        return None
    for ch in name:
        if ch.isascii() and (ch.isalnum() or ch in "._-"):
            continue
        if unicodedata.category(ch) == "Cf":  # zero-width and bidirectional controls are all Cf
            return f"contains the invisible formatting character {_character(ch)}"
        if unicodedata.category(ch) == "Cc":
            return f"contains the control character {_character(ch)}"
        if ch.isspace():
            return f"contains whitespace {_character(ch)}"
        folded = unicodedata.normalize("NFKC", ch)
        if folded != ch and folded.isascii():
            return f"contains {_character(ch)}, a look-alike of {folded!r}"
        return f"contains the character {_character(ch)}"
    return "is empty" if not name else "must start with a letter or digit and be at most 48 characters"


def check_name(name: str, what: str) -> None:
    """Raise :class:`ValueError` naming ``what`` when ``name`` breaks :data:`NAME_RULE`."""
    problem = name_problem(name)
    if problem:
        raise ValueError(f"{what} {name!r} {problem}; a dataset name is {NAME_RULE}")


def bucket_problem(bucket: str) -> str | None:
    return None if BUCKET_RE.fullmatch(bucket) else f"{bucket!r} is not {BUCKET_RULE}"


def data_uri_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be a data folder ``s3://bucket/folder/.../``, or None. Its bucket must
    still be one the stack reads (:func:`foreign_bucket`)."""
    if not uri.startswith("s3://"):
        return "must be an s3:// URI"
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    problem = bucket_problem(bucket)
    if problem:
        return problem
    if not prefix.endswith("/") or prefix == "/":
        return "must name a folder in the bucket, ending in '/'"
    if len(prefix.encode()) > 1024:
        return "is longer than S3's 1,024-byte keys"
    for segment in prefix[:-1].split("/"):
        if segment in ("", ".", ".."):
            return f"must not contain an empty, '.' or '..' folder (got {segment!r})"
        if not _SEGMENT_RE.fullmatch(segment):
            problem = name_problem(segment) or "breaks the rule"
            return f"folder {segment!r} {problem}; its folders are {SEGMENT_RULE}"
    return None


def foreign_bucket(uri: str, input_bucket: str) -> str | None:
    """Why ``uri`` is in a bucket this stack does not read, or None: runs read their manifests and
    data from the stack's input bucket only (the head node gets ``S3Access`` to the data folder)."""
    bucket = uri[len("s3://") :].partition("/")[0] if uri.startswith("s3://") else ""
    if bucket == input_bucket:
        return None
    return f"{uri}: is not in this stack's input bucket {input_bucket} (runs read only from it)"


def version_id_problem(version_id: str) -> str | None:
    """Why ``version_id`` cannot be an S3 version id (:data:`VERSION_ID_RE`), or None."""
    if VERSION_ID_RE.fullmatch(version_id):
        return None
    shown = version_id if len(version_id) <= 40 else version_id[:37] + "..."
    return (
        f"version id {shown!r} ({len(version_id)} characters) is not an S3 version id"
        " (at most 1,024 URL-ready characters)"
    )


def run_id_problem(run_id: str) -> str | None:
    """Why ``run_id`` (an execution's name) cannot be a run id, or None."""
    if re.fullmatch(RUN_ID_PATTERN[1:-1], run_id):
        return None
    return f"{run_id!r} is not a run id (ASCII letters, digits, '_' and '-', at most 80 characters)"


def run_id_for(name: str, tag: str) -> str:
    """The run id (and execution name) of a run of dataset ``name``: the name with anything but
    letters, digits and '-' made '-', then ``tag`` (a digest of what makes the run unique). Every
    entry point derives run ids here, so each matches :data:`RUN_ID_PATTERN`."""
    stem = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")[:48] or "dataset"
    run_id = f"{stem}-{tag}"
    problem = run_id_problem(run_id)
    if problem:
        raise ValueError(problem)
    return run_id


def is_manifest_key(key: str) -> bool:
    """True for ``datasets/<dataset>/cryopilot.{yaml,yml,json}``."""
    parts = key.split("/")
    return len(parts) == 3 and parts[0] == "datasets" and bool(parts[1]) and parts[2] in MANIFEST_NAMES


def manifest_prefix(key: str) -> str:
    """The folder a manifest's relative paths resolve against (``datasets/<dataset>/``)."""
    return key.rsplit("/", 1)[0] + "/"


def check_key(key: str) -> None:
    """Reject keys no manifest can have, before anything else looks at them: a manifest's key is
    ``datasets/<dataset name>/cryopilot.{yaml,yml,json}``."""
    if any(unicodedata.category(ch) == "Cc" for ch in key):
        raise EventError(f"object key {key!r} contains control characters")
    if ".." in key.split("/"):
        raise EventError(f"object key {key!r} contains '..'")
    if "." in key.split("/"):
        raise EventError(f"object key {key!r} contains a '.' folder")
    if not is_manifest_key(key):
        raise EventError(
            f"object key {key!r} is not a manifest (expected datasets/<dataset>/{'|'.join(MANIFEST_NAMES)})"
        )
    folder = key.split("/")[1]
    problem = name_problem(folder)
    if problem:
        raise EventError(
            f"object key {key!r} has a dataset folder that {problem}; a dataset name is {NAME_RULE}"
        )


class ManifestLocation(BaseModel):
    """One version of one manifest object."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None

    @property
    def dataset_folder(self) -> str:
        return self.key.split("/")[1]

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def digest(self) -> str:
        """Identity of this manifest *version*: the idempotency key of a run."""
        version = self.version_id or f"etag:{(self.etag or '').strip(chr(34))}"
        raw = f"{self.bucket}\n{self.key}\n{version}".encode()
        return hashlib.sha256(raw).hexdigest()

    def folder_digest(self) -> str:
        """Identity of the dataset folder (any version, any manifest name): at most one run of a
        folder goes at a time, the one of its newest manifest version."""
        raw = f"{self.bucket}\n{manifest_prefix(self.key)}".encode()
        return hashlib.sha256(raw).hexdigest()

    def run_id(self) -> str:
        """Deterministic run id, also the execution name (:func:`run_id_for`)."""
        return run_id_for(self.dataset_folder, self.digest()[:12])


def check_version(location: ManifestLocation) -> None:
    """Reject a version id S3 cannot have issued (a forged or mangled event)."""
    problem = version_id_problem(location.version_id) if location.version_id is not None else None
    if problem:
        raise EventError(f"{location.uri}: {problem}")
