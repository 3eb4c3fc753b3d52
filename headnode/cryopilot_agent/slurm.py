"""The lanes' Slurm state on the head node: ``sinfo`` and ``squeue``, parsed.

Each cryoSPARC lane is a Slurm partition of the same name (one ParallelCluster queue). Node names are
ParallelCluster's ``<queue>-<st|dy>-<compute resource>-<n>``; a node that failed to launch carries
the EC2 error in its reason as ``(Code:<error>)...`` (ParallelCluster user guide, "Slurm cluster fast
insufficient capacity fail-over", and the Slurm guide for multiple queue mode). cryoSPARC's jobs are
named ``cryosparc_<project uid>_<job uid>`` by the lane's submission script.

The formats asked for are fixed and ``|``-separated (sinfo(1) ``--format``: ``%R`` partition, ``%N``
node, ``%t`` compact state, ``%E`` reason; squeue(1) ``--format``: ``%i`` id, ``%j`` name, ``%P``
partition, ``%T`` state, ``%r`` reason).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from cryopilot.protocol.agent import LaneState, SlurmJob, SlurmNode

SINFO = ["sinfo", "--noheader", "--Node", "--format=%R|%N|%t|%E"]
SQUEUE = ["squeue", "--noheader", "--format=%i|%j|%P|%T|%r"]
_JOB_NAME = re.compile(r"^cryosparc_(?P<project>P\d+)_(?P<job>J\d+)$")
#: States listed node by node: anything but plain idle, powered-down idle and allocated nodes.
_QUIET_STATES = frozenset({"idle", "idle~", "alloc", "mix"})
TIMEOUT_SECONDS = 20
#: Where ParallelCluster installs Slurm's commands on the head node.
SLURM_BIN = "/opt/slurm/bin"


def run_command(argv: list[str]) -> str:
    """Run one Slurm command; its standard output (raises on a failure). SSM's shell is not a login
    shell, so ``/opt/slurm/bin`` (where ParallelCluster installs Slurm) may be missing from PATH."""
    program = shutil.which(argv[0]) or str(Path(SLURM_BIN) / argv[0])
    done = subprocess.run(
        [program, *argv[1:]], capture_output=True, text=True, check=True, timeout=TIMEOUT_SECONDS
    )
    return done.stdout


def lane_states(lanes: list[str], project_uid: str | None) -> list[LaneState]:
    """The Slurm state of each lane: nodes by state, the nodes that are not quiet (down, failing,
    powering up) with their reasons, and the project's jobs with their state and pending reason."""
    states = {lane: LaneState(lane=lane) for lane in lanes}
    counts: dict[str, Counter[str]] = {lane: Counter() for lane in lanes}
    for line in run_command(SINFO).splitlines():
        parts = line.split("|", 3)
        if len(parts) != 4 or parts[0].rstrip("*") not in states:
            continue
        partition, node, state, reason = parts[0].rstrip("*"), parts[1], parts[2], parts[3]
        counts[partition][state] += 1
        if state not in _QUIET_STATES:
            states[partition].nodes.append(
                SlurmNode(name=node, state=state, reason="" if reason == "none" else reason)
            )
    for line in run_command(SQUEUE).splitlines():
        parts = line.split("|", 4)
        if len(parts) != 5 or parts[2] not in states:
            continue
        job_id, name, partition, state, reason = parts
        match = _JOB_NAME.match(name)
        if match is None or (project_uid is not None and match["project"] != project_uid):
            continue
        states[partition].jobs.append(
            SlurmJob(job_id=job_id, name=name, state=state, reason=reason, cryosparc_job=match["job"])
        )
    for lane, lane_state in states.items():
        lane_state.nodes_by_state = dict(sorted(counts[lane].items()))
    return list(states.values())
