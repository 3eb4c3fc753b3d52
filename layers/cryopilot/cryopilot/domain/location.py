"""Where a manifest lives: its key rule and one version of one manifest object.

StartRun and Validate share these; they are kept apart from the manifest's schema and parser so a
function that only locates manifests does not load them.
"""

from __future__ import annotations

import hashlib
import re

from pydantic import BaseModel, ConfigDict

from cryopilot.core.errors import EventError

MANIFEST_NAMES = ("cryopilot.yaml", "cryopilot.yml", "cryopilot.json")


def is_manifest_key(key: str) -> bool:
    """True for ``datasets/<dataset>/cryopilot.{yaml,yml,json}``."""
    parts = key.split("/")
    return len(parts) == 3 and parts[0] == "datasets" and bool(parts[1]) and parts[2] in MANIFEST_NAMES


def manifest_prefix(key: str) -> str:
    """The folder a manifest's relative paths resolve against (``datasets/<dataset>/``)."""
    return key.rsplit("/", 1)[0] + "/"


def check_key(key: str) -> None:
    """Reject keys no manifest can have, before anything else looks at them."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise EventError(f"object key {key!r} contains control characters")
    if ".." in key.split("/"):
        raise EventError(f"object key {key!r} contains '..'")
    if "." in key.split("/"):
        raise EventError(f"object key {key!r} contains a '.' folder")
    if not is_manifest_key(key):
        raise EventError(
            f"object key {key!r} is not a manifest (expected datasets/<dataset>/{'|'.join(MANIFEST_NAMES)})"
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
        """Deterministic run id, also the execution name (≤ 80 chars of [A-Za-z0-9-_])."""
        name = re.sub(r"[^A-Za-z0-9-]+", "-", self.dataset_folder).strip("-")[:48] or "dataset"
        return f"{name}-{self.digest()[:12]}"
