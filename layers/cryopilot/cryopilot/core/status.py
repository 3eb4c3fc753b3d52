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

#: A run record's ``cluster_state`` from the moment the create step asks ParallelCluster for the
#: cluster until it records the answer: the cluster may or may not exist yet.
CLUSTER_CREATE_REQUESTED = "CREATE_REQUESTED"
#: ``cluster_state`` when a deletion was asked while the create may still be in flight and
#: ParallelCluster had no cluster of that name yet (404): whatever the create makes must go.
CLUSTER_DELETE_AWAITS_CREATE = "DELETE_REQUESTED_CREATE_PENDING"
#: The ``cluster_state`` values under which a 404 does not mean "deleted".
CLUSTER_CREATE_MAY_BE_PENDING = (CLUSTER_CREATE_REQUESTED, CLUSTER_DELETE_AWAITS_CREATE)
#: How long after the create was requested its cluster may still appear. The ParallelCluster API
#: validates the configuration, then creates the cluster's CloudFormation stack, inside one Lambda
#: invocation; until then DescribeCluster and DeleteCluster answer 404. No Lambda runs longer than
#: 15 minutes, so a cluster that has not appeared by then never will.
CREATE_OUTCOME_WINDOW_SECONDS = 900
