"""Typed errors.

Each class is one failure the state machine tells apart: ASL ``Retry`` and ``Catch`` match the
class *name* (Lambda reports it as ``errorType``), so renaming one is a change to the state machine
too. ``tests/unit/test_asl.py`` checks that every error name the ASL mentions exists here.

Transient errors (retried by the state machine) derive from :class:`TransientError`; everything
else is final for the run.
"""

from __future__ import annotations

import json
from typing import Any


class CryopilotError(Exception):
    """Base of every error cryopilot raises on purpose."""

    #: Short label shown in mails and on the run record.
    label = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class TransientError(CryopilotError):
    """A failure that may go away on its own: the state machine retries it with backoff."""

    label = "transient failure"


# --- input ---------------------------------------------------------------------------------------


class ManifestError(CryopilotError):
    """The dataset manifest is missing, unreadable or invalid. Never retried; no cluster is made."""

    label = "invalid manifest"


class CampaignReferenceError(CryopilotError):
    """A repeat run's reference cannot be used: an unknown or unfinished reference run, a map missing
    from S3, a pixel size too far from the new data's. Never retried; found at Validate, so no
    cluster is made."""

    label = "unusable reference"


class EventError(CryopilotError):
    """An event StartRun cannot act on (wrong shape, another bucket, not a manifest)."""

    label = "unusable event"


# --- ParallelCluster -----------------------------------------------------------------------------


class ThrottledError(TransientError):
    """The ParallelCluster API (or another AWS API) answered 429 or 5xx."""

    label = "API throttled or unavailable"


class ClusterConfigError(CryopilotError):
    """The ParallelCluster API rejected the cluster configuration (400). Never retried."""

    label = "cluster configuration rejected"


class ClusterAlreadyExistsError(CryopilotError):
    """A cluster of that name exists and does not belong to this run (409)."""

    label = "cluster name taken"


class ClusterNotFoundError(CryopilotError):
    """The cluster does not exist (404)."""

    label = "cluster not found"


class ClusterCreateFailedError(CryopilotError):
    """The cluster reached CREATE_FAILED for a reason other than capacity."""

    label = "cluster creation failed"


class CapacityError(CryopilotError):
    """EC2 had no capacity for an instance type the cluster needs (InsufficientInstanceCapacity)."""

    label = "no GPU capacity"


class ClusterTimeoutError(CryopilotError):
    """The cluster did not reach the awaited state within its bound."""

    label = "cluster timed out"


class ClusterDeleteFailedError(TransientError):
    """The cluster reached DELETE_FAILED. Transient: the next deletion may pass. No state retries
    it: the run records it, mails that the cluster could not be confirmed deleted, and the janitor
    asks again at each pass."""

    label = "cluster deletion failed"


class PClusterApiError(CryopilotError):
    """The ParallelCluster API answered something cryopilot does not understand."""

    label = "ParallelCluster API error"


# --- head node / cryoSPARC -----------------------------------------------------------------------


class HeadNodeUnreachableError(CryopilotError):
    """SSM cannot reach the head node (instance gone, agent not registered)."""

    label = "head node unreachable"


class AgentTimeoutError(TransientError):
    """An SSM command to the head-node agent did not finish in time."""

    label = "head-node agent timed out"


class AgentError(CryopilotError):
    """The head-node agent ran but reported an error."""

    label = "head-node agent error"


class JobFailedError(CryopilotError):
    """A cryoSPARC job of the current stage failed."""

    label = "cryoSPARC job failed"


class JobKilledError(CryopilotError):
    """A cryoSPARC job of the current stage was killed."""

    label = "cryoSPARC job killed"


class JobStuckError(CryopilotError):
    """A stage ran past its time limit; its jobs were killed."""

    label = "cryoSPARC stage exceeded its time limit"


class ExportError(TransientError):
    """Exporting or verifying the results failed."""

    label = "export failed"


class RunLimitError(CryopilotError):
    """The run reached a limit of its manifest (``limits.max_hours``, ``limits.max_cost_usd``)."""

    label = "run limit reached"


class RecordTooLargeError(CryopilotError):
    """A run-table write would make an item larger than DynamoDB's 400 KB item limit. Never
    retried: the same write fails again. The failure path keeps a cut-down record instead."""

    label = "run record too large"


class RunStoppedError(CryopilotError):
    """The run was cancelled or superseded (its record is over) before a step that would start
    something (the run itself, its cluster) could do so: the step does nothing. Never retried."""

    label = "run stopped"


class StorageLimitError(CryopilotError):
    """The run's storage model needs a larger FSx file system than the stack allows (``MaxFsxTiB``)."""

    label = "storage limit reached"


class PreflightError(CryopilotError):
    """A preflight check failed (an account quota, an offering, the network, the licence secret, the
    ParallelCluster API, the data): the run would fail later, after a cluster was paid for. Never
    retried; no cluster is made."""

    label = "preflight check failed"


class ReportError(CryopilotError):
    """The run's report cannot be written (never fails the run: the state machine goes on)."""


def parse_error(error: Any) -> tuple[str, str]:
    """(error type, message) from a Catch's ``$.error`` (``Error`` and ``Cause``)."""
    if not isinstance(error, dict):
        return "UnknownError", str(error)
    etype = str(error.get("Error") or "UnknownError")
    cause = error.get("Cause")
    message = str(cause or "")
    if isinstance(cause, str):
        try:
            doc = json.loads(cause)
        except json.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            message = str(doc.get("errorMessage") or doc.get("Message") or message)
            etype = str(doc.get("errorType") or etype)
    if etype == "States.Timeout" and not message:
        message = "a step took longer than its timeout"
    return etype, message[:2000]
