"""Admission: at most ``MaxConcurrentRuns`` runs of a stack hold a cluster at once; the others wait
in a queue and start, oldest first, as slots free. A run beyond the limit is never failed.

The whole state is one item of the run table (``pk = "admission"``):

* ``holders``: string set of the run ids holding a slot (its size is the number of active runs);
* ``queue``: list of the run ids waiting, oldest first.

Every change is one conditional UpdateItem of that item, so any number of StartRun and Cleanup
invocations at once can neither admit more runs than the limit, admit or queue a run twice, let a
new run overtake a waiting one, nor release a slot twice. Reads only choose what to try; the
condition decides, and a refused attempt reads again.

Who calls what:

* StartRun: :func:`admit` a new run; when refused, :func:`enqueue` it, then :func:`start_queued`
  (a slot may have freed in between, and nobody else would notice).
* Cleanup, on every end of an execution (SUCCEEDED included): :func:`finish` releases the run's
  slot and starts the oldest waiting runs.
* The janitor: :func:`reconcile` releases the slots of runs whose execution is over (an end event
  that never arrived), starts a run that holds a slot but whose start was lost, and starts waiting
  runs while slots are free.

* ``cryopilot submit`` goes through StartRun (a direct invocation), so an operator's run takes or
  waits for a slot like any other; ``cryopilot cancel`` of a waiting run :func:`withdraw` s it.

Only a run started with ``cryopilot submit --now`` or a bare StartExecution bypasses admission: it
neither takes nor waits for a slot.
"""

import json
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field

from cryopilot.adapters import aws, runs
from cryopilot.adapters.observability import logger
from cryopilot.adapters.settings import get_settings
from cryopilot.core import clock
from cryopilot.core.errors import CryopilotError, RecordTooLargeError, TransientError
from cryopilot.core.status import EXECUTION_OVER

KEY = {"pk": "admission"}
#: Attempts of a conditional update that other invocations keep beating, before giving up.
MAX_ATTEMPTS = 25
#: A run that took its slot less than this long ago and has no execution yet is being started by
#: whoever took the slot: the janitor leaves it alone.
START_GRACE_SECONDS = 300
#: The run's step while it waits for a slot, and once it has one but its execution has not begun.
WAITING_STEP = "waiting for a slot"
STARTING_STEP = "starting"

Admitted = Literal["admitted", "already_admitted", "refused", "already_queued"]
Queued = Literal["queued", "already_queued", "already_admitted"]


class AdmissionError(CryopilotError):
    """Admission could not do what was asked."""

    label = "admission failed"


class AdmissionContentionError(AdmissionError, TransientError):
    """Other invocations kept changing the admission item; the caller's retry tries again."""

    label = "admission contended"


class AdmissionState(BaseModel):
    holders: set[str] = Field(default_factory=set)
    queue: list[str] = Field(default_factory=list)

    @property
    def active(self) -> int:
        return len(self.holders)

    def position(self, run_id: str) -> int | None:
        """1 for the next run to start; None when the run does not wait."""
        return self.queue.index(run_id) + 1 if run_id in self.queue else None


class EndResult(BaseModel):
    """What an execution's end did to admission."""

    slot_released: bool = False
    started: list[str] = Field(default_factory=list)


class ReconcileReport(BaseModel):
    """The janitor's pass over admission."""

    active: int = 0
    waiting: int = 0
    #: slots of runs whose execution is over (their end event was lost)
    released: list[str] = Field(default_factory=list)
    #: runs that held a slot but whose execution was never started (the starter died)
    restarted: list[str] = Field(default_factory=list)
    #: waiting runs started because slots were free
    started: list[str] = Field(default_factory=list)

    @property
    def acted(self) -> bool:
        return bool(self.released or self.restarted or self.started)


# ------------------------------------------------------------------ the admission item
def read(table: Any | None = None) -> AdmissionState:
    """The slots and the queue. ``table``: the run table, for callers outside the stack's
    functions (the operator's command line)."""
    table = table if table is not None else runs.table()
    item = table.get_item(Key=KEY, ConsistentRead=True).get("Item") or {}
    return AdmissionState(holders=set(item.get("holders") or ()), queue=list(item.get("queue") or ()))


def _update(expression: str, condition: str, names: dict[str, str], values: dict[str, Any]) -> bool:
    """One conditional update of the admission item; False when its condition did not hold."""
    try:
        runs.table().update_item(
            Key=KEY,
            UpdateExpression=expression,
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
            return False
        raise
    return True


_HAS_ROOM = "(attribute_not_exists(#h) OR size(#h) < :limit)"
_NOBODY_WAITS = "(attribute_not_exists(#q) OR size(#q) = :zero)"


def admit(run_id: str, limit: int) -> Admitted:
    """Take a slot for ``run_id`` if one is free and no run waits (a new run never overtakes a
    waiting one). ``refused``: the caller queues it with :func:`enqueue`."""
    if _update(
        "ADD #h :me",
        f"{_HAS_ROOM} AND {_NOBODY_WAITS} AND NOT contains(#h, :id)",
        {"#h": "holders", "#q": "queue"},
        {":me": {run_id}, ":id": run_id, ":limit": limit, ":zero": 0},
    ):
        return "admitted"
    state = read()
    if run_id in state.holders:
        return "already_admitted"
    if run_id in state.queue:
        return "already_queued"
    return "refused"


def enqueue(run_id: str) -> Queued:
    """Put ``run_id`` at the end of the queue, unless it already waits or holds a slot."""
    if _update(
        "SET #q = list_append(if_not_exists(#q, :empty), :me)",
        "NOT contains(#q, :id) AND NOT contains(#h, :id)",
        {"#h": "holders", "#q": "queue"},
        {":me": [run_id], ":empty": [], ":id": run_id},
    ):
        return "queued"
    return "already_admitted" if run_id in read().holders else "already_queued"


def take_next(limit: int) -> str | None:
    """Move the oldest waiting run into a free slot: its run id, or None (nobody waits, or no
    slot is free)."""
    for _ in range(MAX_ATTEMPTS):
        state = read()
        if not state.queue or state.active >= limit:
            return None
        head = state.queue[0]
        if head in state.holders:  # never left that way by this module; drop the stale entry
            _update("REMOVE #q[0]", "#q[0] = :id", {"#q": "queue"}, {":id": head})
            continue
        if _update(
            "ADD #h :me REMOVE #q[0]",
            f"#q[0] = :id AND {_HAS_ROOM} AND NOT contains(#h, :id)",
            {"#h": "holders", "#q": "queue"},
            {":me": {head}, ":id": head, ":limit": limit},
        ):
            return head
    raise AdmissionContentionError(f"could not take a slot from the queue in {MAX_ATTEMPTS} attempts")


def release(run_id: str) -> bool:
    """Give back ``run_id``'s slot. True only for the call that released it: a repeated end
    event, or the janitor after the event, releases nothing more."""
    return _update("DELETE #h :me", "contains(#h, :id)", {"#h": "holders"}, {":me": {run_id}, ":id": run_id})


def requeue(run_id: str) -> bool:
    """Give back a slot taken by :func:`take_next` and put the run back at the queue's head (its
    start failed; it keeps its turn)."""
    return _update(
        "SET #q = list_append(:me_first, if_not_exists(#q, :empty)) DELETE #h :me",
        "contains(#h, :id) AND NOT contains(#q, :id)",
        {"#h": "holders", "#q": "queue"},
        {":me": {run_id}, ":me_first": [run_id], ":empty": [], ":id": run_id},
    )


def withdraw(run_id: str, table: Any | None = None) -> int | None:
    """Take a waiting run out of the queue (it was cancelled): the place it had (1 = next), or
    None when it was not waiting. ``table``: the run table, for callers outside the stack's
    functions (the operator's command line)."""
    table = table if table is not None else runs.table()
    for _ in range(MAX_ATTEMPTS):
        queue = read(table).queue
        if run_id not in queue:
            return None
        index = queue.index(run_id)
        try:
            table.update_item(
                Key=KEY,
                UpdateExpression=f"REMOVE #q[{index}]",
                ConditionExpression=f"#q[{index}] = :id",
                ExpressionAttributeNames={"#q": "queue"},
                ExpressionAttributeValues={":id": run_id},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            continue  # the queue moved under us: look again
        return index + 1
    raise AdmissionContentionError(f"could not take {run_id} out of the queue in {MAX_ATTEMPTS} attempts")


# ------------------------------------------------------------------ executions
def execution_arn(run_id: str) -> str:
    arn = get_settings().state_machine_arn
    return arn.replace(":stateMachine:", ":execution:") + f":{run_id}"


def execution_status(run_id: str) -> str | None:
    try:
        desc = aws.client("stepfunctions").describe_execution(executionArn=execution_arn(run_id))
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ExecutionDoesNotExist":
            return None
        raise
    return str(desc["status"])


def stop_execution(run_id: str, error: str, cause: str) -> bool:
    """Stop the run's execution if it is running (StopExecution): it ends ABORTED, and the
    cleanup function then deletes its cluster, mails and frees its slot. False when it was not
    running."""
    if execution_status(run_id) != "RUNNING":
        return False
    try:
        aws.client("stepfunctions").stop_execution(
            executionArn=execution_arn(run_id), error=error, cause=cause
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ExecutionDoesNotExist":
            raise
        return False
    return True


def start_execution(run_id: str, execution_input: dict[str, Any] | str) -> bool:
    """Start the run's execution (named after the run). False when it already exists."""
    text = execution_input if isinstance(execution_input, str) else json.dumps(execution_input)
    try:
        aws.client("stepfunctions").start_execution(
            stateMachineArn=get_settings().state_machine_arn, name=run_id, input=text
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ExecutionAlreadyExists":
            raise
        return False
    return True


def mark_admitted(run_id: str) -> None:
    runs.store().update_existing_run(
        run_id, admitted_at=clock.now_iso(), admitted_epoch=clock.now(), current_step=STARTING_STEP
    )


def mark_waiting(run_id: str) -> None:
    """The record says the run waits for a slot (unless a racing duplicate already admitted it)."""
    runs.store().update_existing_run(
        run_id,
        only_if="attribute_not_exists(admitted_at)",
        queued_at=clock.now_iso(),
        current_step=WAITING_STEP,
    )


def _released(run_id: str) -> None:
    try:
        runs.store().update_existing_run(run_id, slot_released_at=clock.now_iso())
    except RecordTooLargeError:  # the slot is released; only its note on the record is lost
        logger.warning("slot release not noted on the run record", extra={"run_id": run_id})


def _not_admitted(run_id: str, step: str) -> None:
    """The record forgets an admission whose start failed (the run waits again, or the event's
    retry decides again)."""
    runs.store().forget_admission(run_id, step)


def release_failed_start(run_id: str) -> None:
    """Release the slot :func:`admit` gave a run whose start then failed."""
    if release(run_id):
        _not_admitted(run_id, "queued")


# ------------------------------------------------------------------ what the functions call
def start_queued(limit: int | None = None) -> list[str]:
    """Start waiting runs, oldest first, while slots are free: the run ids started. A waiting run
    cancelled meanwhile (or without a record) is dropped from the queue, not started."""
    limit = get_settings().max_concurrent_runs if limit is None else limit
    started: list[str] = []
    while (run_id := take_next(limit)) is not None:
        run = runs.store().get_run(run_id, ["status", "start_input"])
        if run is None or run.is_over or not run.start_input:
            release(run_id)
            logger.warning(
                "dropped a waiting run that cannot start",
                extra={"run_id": run_id, "status": run.status if run is not None else None},
            )
            continue
        mark_admitted(run_id)
        try:
            start_execution(run_id, run.start_input)
        except Exception:
            if requeue(run_id):
                _not_admitted(run_id, WAITING_STEP)
            raise
        logger.info("waiting run started", extra={"run_id": run_id})
        started.append(run_id)
    return started


def finish(detail: dict[str, Any]) -> EndResult:
    """An execution of this stack's state machine ended (any terminal status): release its slot
    (once, however often the event comes) and start the oldest waiting runs."""
    settings = get_settings()
    run_id = str(detail.get("name") or "")
    if (
        detail.get("stateMachineArn") != settings.state_machine_arn
        or detail.get("status") not in EXECUTION_OVER
        or not run_id
    ):
        return EndResult()
    released = release(run_id)
    if released:
        _released(run_id)
    return EndResult(slot_released=released, started=start_queued(settings.max_concurrent_runs))


def reconcile(now: float | None = None) -> ReconcileReport:
    """The janitor's pass: no slot stays held by a run that is over, no run holding a slot stays
    unstarted, and no run waits while a slot is free (so a lost event never strands the queue)."""
    settings = get_settings()
    now = clock.now() if now is None else now
    report = ReconcileReport()
    for run_id in sorted(read().holders):
        status = execution_status(run_id)
        if status is None:
            run = runs.store().get_run(run_id, ["status", "start_input", "admitted_epoch"])
            if run is not None and run.start_input and not run.is_over:
                if now - float(run.admitted_epoch or 0) < START_GRACE_SECONDS:
                    continue  # whoever admitted it is starting it now
                start_execution(run_id, run.start_input)
                report.restarted.append(run_id)
                continue
        elif status not in EXECUTION_OVER:
            continue  # RUNNING (or waiting for a redrive): it keeps its slot
        if release(run_id):
            _released(run_id)
            report.released.append(run_id)
    report.started = start_queued(settings.max_concurrent_runs)
    state = read()
    report.active, report.waiting = state.active, len(state.queue)
    if report.acted:
        logger.info("admission reconciled", extra=report.model_dump())
    return report
