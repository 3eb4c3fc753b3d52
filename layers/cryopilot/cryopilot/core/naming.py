"""Names cryopilot gives to what it creates: clusters and their tags, and the rounds of the
repeated stage (``hetero1``, ``hetero2``, …).

ParallelCluster's rule for a cluster name (``pcluster/constants.py``: ``PCLUSTER_NAME_REGEX``,
``PCLUSTER_NAME_MAX_LENGTH``; the API's models add the minimum of 5): a letter, then letters,
digits and hyphens, 5 to 60 characters in all. :data:`CLUSTER_NAME_RE` is that rule, and every
check of a cluster name uses it.
"""

from __future__ import annotations

import hashlib
import re

CLUSTER_NAME_MAX_LENGTH = 60
CLUSTER_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{4,59}$")

#: Every cluster cryopilot names starts with this (the janitor lists only those).
CLUSTER_NAME_PREFIX = "cryopilot"

#: Tag keys cryopilot puts on its clusters.
TAG_RUN_ID = "cryopilot:run-id"
TAG_DATASET = "cryopilot:dataset"
TAG_STACK = "cryopilot:stack"

#: The stage a preset may repeat: its rounds are planned as ``hetero1``, ``hetero2``, …
REPEATED_STAGE = "hetero"
_ROUND_RE = re.compile(rf"{REPEATED_STAGE}\d+")


def is_cluster_name(name: str) -> bool:
    return bool(CLUSTER_NAME_RE.match(name))


def cluster_name_for(run_id: str) -> str:
    """A valid, deterministic ParallelCluster name for a run.

    ``cryopilot-`` followed by the run id reduced to letters, digits and hyphens; when that would be
    longer than 60 characters (or changed the id), a short hash of the full id keeps names distinct.
    """
    if not run_id:
        raise ValueError("run_id is empty")
    cleaned = re.sub(r"[^A-Za-z0-9]+", "-", run_id).strip("-").lower()
    name = f"{CLUSTER_NAME_PREFIX}-{cleaned}" if cleaned else CLUSTER_NAME_PREFIX
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    if cleaned != run_id or len(name) > CLUSTER_NAME_MAX_LENGTH:
        name = f"{name[: CLUSTER_NAME_MAX_LENGTH - 9].rstrip('-')}-{digest}"
    assert is_cluster_name(name), name
    return name


def profile_stage_id(stage_id: str) -> str:
    """The profiles.yaml stage id of a planned stage (``hetero3`` → ``hetero``)."""
    return REPEATED_STAGE if _ROUND_RE.fullmatch(stage_id) else stage_id
