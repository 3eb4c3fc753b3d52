"""The cluster's file systems as the cryoSPARC stand-in sees them: capacities and bytes written.

The volumes come from the cluster configuration the controller sent (``SharedStorage``): the EBS
``/shared`` volume (``EbsSettings.Size`` GiB) and the FSx for Lustre file system
(``FsxLustreSettings.StorageCapacity`` GiB). A path is on the volume whose mount directory is its
longest prefix. A write that does not fit fills the volume and fails the way a real write does:
``OSError: [Errno 28] No space left on device`` (errno ENOSPC, Linux ``errno.h``); cryoSPARC then
marks the job failed with that error (what the agent reads from ``errors_run``).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Any

GIB = 1024**3

#: The message of a write past the end of a full file system (``strerror(ENOSPC)`` on Linux).
NO_SPACE = f"[Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)}"


@dataclass
class Volume:
    """One mounted file system: its size and what has been written to it."""

    name: str
    mount: str
    capacity_bytes: int
    used: int = 0
    peak: int = 0
    #: (path, bytes) of each write, in order
    writes: list[tuple[str, int]] = field(default_factory=list)

    @property
    def free(self) -> int:
        return max(0, self.capacity_bytes - self.used)

    def write(self, path: str, size: int) -> bool:
        """Write ``size`` bytes at ``path``; False (the volume is then full) when they do not fit."""
        fits = size <= self.free
        wrote = size if fits else self.free
        self.used += wrote
        self.peak = max(self.peak, self.used)
        self.writes.append((path, wrote))
        return fits


@dataclass
class Volumes:
    """The volumes of one cluster, by mount directory."""

    volumes: list[Volume]

    def for_path(self, path: str) -> Volume | None:
        """The volume ``path`` is on (longest mount prefix), or None (the node's own disk)."""
        best: Volume | None = None
        for v in self.volumes:
            mount = v.mount.rstrip("/")
            if (path == mount or path.startswith(mount + "/")) and (
                best is None or len(mount) > len(best.mount)
            ):
                best = v
        return best

    def by_name(self, name: str) -> Volume | None:
        return next((v for v in self.volumes if v.name == name), None)

    @classmethod
    def from_cluster_config(cls, config: dict[str, Any]) -> Volumes:
        """The ``SharedStorage`` of a ParallelCluster configuration (the YAML document, parsed)."""
        volumes = []
        for storage in config.get("SharedStorage") or []:
            kind = storage.get("StorageType")
            if kind == "Ebs":
                gib = int((storage.get("EbsSettings") or {}).get("Size", 35))
            elif kind == "FsxLustre":
                gib = int((storage.get("FsxLustreSettings") or {}).get("StorageCapacity", 1200))
            else:
                continue
            volumes.append(Volume(name=storage["Name"], mount=storage["MountDir"], capacity_bytes=gib * GIB))
        return cls(volumes)
