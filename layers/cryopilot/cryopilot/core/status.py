"""The statuses of a run record and of a Step Functions execution, and which of them are final."""

from __future__ import annotations

#: A run record's ``status``.
RUN_STATUSES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
#: A run record's final statuses: the run is over.
RUN_OVER = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})

#: A Step Functions execution's final statuses (DescribeExecution ``status``).
EXECUTION_OVER = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"})
#: The final statuses that mean the state machine did not finish its own path (the cleanup
#: function's EventBridge rule matches these).
EXECUTION_UNFINISHED = frozenset({"FAILED", "TIMED_OUT", "ABORTED"})
#: The run record's status for an execution that ended this way without closing its record.
RUN_STATUS_FOR_EXECUTION = {
    "SUCCEEDED": "SUCCEEDED",
    "FAILED": "FAILED",
    "TIMED_OUT": "FAILED",
    "ABORTED": "CANCELLED",
}
