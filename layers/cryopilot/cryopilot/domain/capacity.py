"""GPU capacity as a lane's Slurm state shows it: what a stage waits for, and when a run gives up.

ParallelCluster launches a queue's nodes when Slurm has a job for them (the GPU queues scale from
zero), so a missing instance type shows at node launch, never at cluster creation. What it does then
(ParallelCluster user guide, "Slurm cluster fast insufficient capacity fail-over", 3.2+):

* for an insufficient-capacity error (:data:`FAST_FAILOVER_CODES`) it disables the compute resource
  for ``insufficient_capacity_timeout`` and requeues the job on the queue's next compute resource
  (or leaves it PENDING when every resource is disabled): the run waits and the controller reports it;
* any other launch error (``VcpuLimitExceeded`` above all: a new account's quota for P instances is
  often 0 vCPUs) leaves the node down with ``(Code:<error>)`` in its reason and fails nothing over:
  the job would wait until the stage's time limit, so the run fails at once (:func:`raise_if_hopeless`).

The failed nodes' reasons read ``(Code:<EC2 error>)Failure when resuming nodes`` (the failed node) or
``(Code:<EC2 error>)Temporarily disabling node due to insufficient capacity`` (the disabled compute
resource's other nodes); node names are ``<queue>-<st|dy>-<compute resource>-<n>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryopilot.core.errors import CapacityError
from cryopilot.protocol.agent import LaneState

#: EC2 launch errors ParallelCluster's fast insufficient-capacity fail-over handles (user guide).
FAST_FAILOVER_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "MaxSpotInstanceCountExceeded",
        "SpotMaxPriceTooLow",
        "Unsupported",
    }
)
#: The EC2 On-Demand vCPU quota each instance family counts against (Service Quotas, service ec2):
#: L-417A185B "Running On-Demand P instances", L-DB2E81BA "Running On-Demand G and VT instances",
#: L-1216C47A "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances" (quota codes as the
#: Service Quotas console and ``aws service-quotas get-service-quota --service-code ec2`` name them).
QUOTAS = {
    "p": ("L-417A185B", "Running On-Demand P instances"),
    "g": ("L-DB2E81BA", "Running On-Demand G and VT instances"),
}
_STANDARD_QUOTA = ("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances")
#: What each non-capacity launch error means for the operator, beside the quota one.
_ADVICE = {
    "InvalidAMIID.NotFound": "the cluster's AMI does not exist in this region: check the stack's custom AMI",
    "InvalidAMIID.Malformed": "the cluster's AMI id is malformed: check the stack's custom AMI",
    "UnauthorizedOperation": "the compute fleet's role may not launch this type: check its IAM policy",
    "InvalidParameterCombination": "EC2 refused the launch parameters (EFA, placement group or type)",
}
_CODE_RE = re.compile(r"\(Code:(?P<code>[A-Za-z0-9.]+)\)")


def _node_resource(node: str, lane: str) -> str | None:
    """The compute resource of a ParallelCluster node name ``<queue>-<st|dy>-<resource>-<n>``."""
    match = re.fullmatch(rf"{re.escape(lane)}-(?:st|dy)-(?P<resource>[a-z0-9-]+)-\d+", node)
    return match["resource"] if match else None


def resource_name(instance_type: str) -> str:
    """The compute-resource name the cluster configuration gives ``instance_type``
    (``p4d.24xlarge`` → ``p4d-24xlarge``, as ``domain.clusterconfig.build`` names it)."""
    name = re.sub(r"[^a-z0-9-]", "-", instance_type.lower())[:25].rstrip("-")
    return name if name[:1].isalpha() else f"c{name}"[:25]


@dataclass(frozen=True)
class LaneCapacity:
    """One lane, seen at one poll: the compute resources down for a launch error, and the jobs waiting."""

    lane: str
    #: (instance type, EC2 error) of each compute resource down for a launch error, in order of preference
    down: list[tuple[str, str]] = field(default_factory=list)
    #: the next compute resource not down (None: all are)
    trying: str | None = None
    #: the project's jobs that wait for a node (PENDING or CONFIGURING), with squeue's reason
    waiting_jobs: list[tuple[str, str]] = field(default_factory=list)

    @property
    def waiting(self) -> bool:
        return bool(self.down and self.waiting_jobs)

    @property
    def all_down(self) -> bool:
        return bool(self.down) and self.trying is None

    @property
    def fatal(self) -> tuple[str, str] | None:
        """(instance type, error) of a launch error ParallelCluster does not fail over."""
        return next(((t, c) for t, c in self.down if c not in FAST_FAILOVER_CODES), None)


def lane_capacity(lane: LaneState, instance_types: Sequence[str]) -> LaneCapacity:
    """What ``lane``'s Slurm state says of its compute resources (``instance_types``: the queue's
    types in order of preference)."""
    by_name = {resource_name(t): t for t in instance_types}
    codes: dict[str, str] = {}
    for node in lane.nodes:
        match = _CODE_RE.search(node.reason)
        resource = _node_resource(node.name, lane.lane)
        if match is None or resource is None or not node.state.startswith(("down", "idle%", "drain")):
            continue
        itype = by_name.get(resource, resource)
        # a node's own launch failure says more than its siblings' "temporarily disabling"
        if itype not in codes or "Failure when resuming" in node.reason:
            codes[itype] = match["code"]
    down = [(t, codes[t]) for t in instance_types if t in codes]
    down += [(t, c) for t, c in codes.items() if t not in instance_types]
    trying = next((t for t in instance_types if t not in codes), None)
    waiting = [
        (job.cryosparc_job or job.name, job.reason)
        for job in lane.jobs
        if job.state in ("PENDING", "CONFIGURING")
    ]
    return LaneCapacity(lane=lane.lane, down=down, trying=trying, waiting_jobs=waiting)


def note(view: LaneCapacity, since: float) -> str:
    """One line for the run: ``waiting for capacity on gpu8 since 10:42: p4d.24xlarge
    InsufficientInstanceCapacity; trying p4de.24xlarge``."""
    at = datetime.fromtimestamp(since, UTC).strftime("%H:%M")
    failed = ", ".join(f"{t} {c}" for t, c in view.down)
    tail = f"trying {view.trying}" if view.trying else "every compute resource is down"
    return f"waiting for capacity on {view.lane} since {at} UTC: {failed}; {tail}"


def quota_for(instance_type: str) -> tuple[str, str]:
    """(quota code, quota name) of the On-Demand vCPU quota ``instance_type`` counts against."""
    return QUOTAS.get(instance_type[:1].lower(), _STANDARD_QUOTA)


def launch_error_message(view: LaneCapacity, *, region: str, vcpus: Mapping[str, int]) -> str:
    """The one-line, actionable message of a launch error nothing fails over."""
    fatal = view.fatal
    assert fatal is not None
    itype, code = fatal
    if code == "VcpuLimitExceeded" or code.endswith("LimitExceeded"):
        quota, name = quota_for(itype)
        per_node = vcpus.get(itype)
        need = f" (needs at least {per_node} vCPUs: one {itype} node)" if per_node else ""
        return (
            f"{view.lane}: {itype} cannot launch: {code}: the EC2 quota '{name}' ({quota}) in {region} is too"
            f" low{need}; ask for an increase in the Service Quotas console (Amazon EC2, {quota}, {region})"
            " and start the run again"
        )
    advice = _ADVICE.get(code, "EC2 refused the launch; ParallelCluster does not fail this error over")
    return f"{view.lane}: {itype} cannot launch: {code}: {advice}"


def raise_if_hopeless(
    view: LaneCapacity,
    *,
    waited_seconds: float,
    limit_seconds: float,
    region: str,
    vcpus: Mapping[str, int],
    stage: str,
) -> None:
    """Raise :class:`CapacityError` when the stage cannot get a node: a launch error that is not
    failed over, or every compute resource of the lane down for ``limit_seconds`` or more."""
    if not view.waiting_jobs:
        return
    if view.fatal is not None:
        message = launch_error_message(view, region=region, vcpus=vcpus)
        raise CapacityError(message, stage=stage, lane=view.lane, code=view.fatal[1])
    if view.all_down and waited_seconds >= limit_seconds:
        failed = ", ".join(f"{t} {c}" for t, c in view.down)
        raise CapacityError(
            f"{view.lane}: no capacity in any compute resource for {waited_seconds / 60:.0f} min ({failed});"
            " add instance types to the queue's fallbacks or try again later",
            stage=stage,
            lane=view.lane,
        )
