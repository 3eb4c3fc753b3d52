"""What a run costs and how long it takes, on a given layout of instances: pure estimates, no AWS calls.

Inputs:

* the instance catalogue (:class:`~cryopilot.domain.catalogue.Catalogue`): GPUs, prices, relative
  cryoSPARC throughput per GPU model, node launch time and cluster create/delete durations;
* a :class:`Plan`: the stages of one pipeline with the white paper's Table 1 wall times, measured on
  one p4d.24xlarge (:func:`plan_for_profile`, :func:`plan_from_stages`);
* a :class:`Layout`: which instance type runs which stage (:meth:`Layout.whitepaper`,
  :meth:`Layout.cryopilot`).

:func:`estimate` replays the plan on a simulated timeline (stages run one after another, as the
state machine submits them) and returns an :class:`Estimate`: per-stage rows, per-queue node usage
and totals (time to structure, cost, GPU-hours paid and busy, utilisation).
:func:`cryopilot.domain.placement.compare` runs both built-in layouts.

Billing model (:mod:`cryopilot.domain.billing`, the same as the run's cost so far and its final bill):

* a node is paid from its launch until it is terminated (per-second billing). With
  ``Layout.hold_for_run`` one node per queue is up for the whole run (a static node started with the
  cluster, as in the white paper); otherwise a queue scales to zero: its node is launched when a job
  arrives and none is up (the job waits the node launch time), stays up while jobs follow within the
  Slurm ``ScaledownIdletime`` and is paid until that idle time after its last job;
* the head node is paid for the whole time to structure (cluster creation, the run, deletion) in
  every layout, and stages without GPUs cost nothing of their own: class selection runs on it, and
  the import's few minutes on the gpu8 node the next stage uses are left out;
* wall times are the white paper's; a GPU-bound stage (``speed.gpu_bound_stages`` in the catalogue)
  on another GPU model takes ``minutes / (speed(gpu) / speed(reference gpu))``. A stage always runs
  with its Table 1 GPU count, on an instance with at least that many GPUs: no scaling with GPU count
  is invented.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cryopilot.core.naming import REPEATED_STAGE, profile_stage_id
from cryopilot.core.queues import GPU1_QUEUE, GPU4_QUEUE, GPU8_QUEUE
from cryopilot.domain import billing, storage
from cryopilot.domain.catalogue import (
    DEFAULT_REGION,
    REFERENCE_INSTANCE_TYPE,
    Catalogue,
    CostingError,
    figure_of,
    get_profile,
    load_profiles,
)
from cryopilot.domain.clusterconfig.params import ClusterParams
from cryopilot.domain.clusterconfig.scaling import SCALEDOWN_IDLE_SECONDS
from cryopilot.domain.presets import load_preset
from cryopilot.protocol.stage import PlannedStage

__all__ = [
    "HEAD_QUEUE",
    "REFERENCE_INSTANCE_TYPE",
    "WHITEPAPER_QUEUE",
    "Estimate",
    "Layout",
    "Plan",
    "PlanStage",
    "QueueUsage",
    "StageEstimate",
    "StorageEstimate",
    "estimate",
    "plan_for_profile",
    "plan_from_stages",
    "wall_seconds",
]


def _cluster_default(name: str) -> Any:
    return ClusterParams.model_fields[name].get_default(call_default_factory=True)


#: Queue name of the white-paper layout's single node.
WHITEPAPER_QUEUE = "node"
#: "Queue" of the stages that run on the cryoSPARC master (the head node).
HEAD_QUEUE = "head"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


# --- plans ---------------------------------------------------------------------------------------


class PlanStage(_Model):
    """One job of a plan: its Table 1 GPU count and wall minutes on the reference instance."""

    id: str
    kind: str = Field(description="profiles.yaml stage id (hetero3 → hetero)")
    gpus: int = Field(ge=0, description="GPUs of the job; 0 = runs on the cryoSPARC master")
    minutes: float = Field(ge=0, description="wall minutes on the reference instance type")


class Plan(_Model):
    """Stages in submission order; each starts when the previous one ends."""

    name: str
    title: str = ""
    reference_instance_type: str = REFERENCE_INSTANCE_TYPE
    stages: list[PlanStage] = Field(min_length=1)
    table1_total_minutes: float | None = None


def plan_for_profile(name: str, preset: str | None = None) -> Plan:
    """The stages of profile ``name`` in its preset's order, hetero split into its Table 1 rounds.

    ``preset``: another preset run on the same dataset (``repeat``: a repeat structure of it), timed
    with the profile's own Table 1 figures for the stages it keeps, as ``profiles.yaml`` documents:
    a stage takes the figure of the Table 1 stage of its id (the repeat preset's template picker,
    ``pick``, the blob picker's), each hetero round the profile's hetero total divided by its Table 1
    rounds, for the preset's rounds; a stage Table 1 has no figure for takes none.
    """
    profile = get_profile(name)
    if preset is not None and preset != profile.preset:
        return _plan_for_other_preset(name, preset)
    preset_def = load_preset(profile.preset)
    known = {s.id for s in preset_def.stages}
    unknown = sorted(set(profile.minutes) - known)
    if unknown:
        raise CostingError(f"profile {name}: stages {unknown} are not in preset {profile.preset}")
    stages: list[PlanStage] = []
    for stage in preset_def.stages:
        if stage.id not in profile.minutes:
            continue  # the white paper did not run it for this dataset
        gpus = profile.stage_gpus[stage.id]
        minutes = profile.minutes[stage.id]
        if stage.id == REPEATED_STAGE:
            n = profile.hetero_rounds
            stages += [
                PlanStage(id=f"{REPEATED_STAGE}{k}", kind=REPEATED_STAGE, gpus=gpus, minutes=minutes / n)
                for k in range(1, n + 1)
            ]
        else:
            stages.append(PlanStage(id=stage.id, kind=stage.id, gpus=gpus, minutes=minutes))
    return Plan(
        name=name, title=profile.title, stages=stages, table1_total_minutes=profile.table1_total_minutes
    )


def _plan_for_other_preset(name: str, preset: str) -> Plan:
    """Profile ``name``'s dataset through ``preset`` (see :func:`plan_for_profile`)."""
    profile = get_profile(name)
    stages: list[PlanStage] = []
    preset_def = load_preset(preset)
    for stage in preset_def.stages_for(preset_def.chosen({})):  # the preset's default options
        rounds = (stage.rounds or 1) if stage.id == REPEATED_STAGE else 1
        ids = (
            [f"{REPEATED_STAGE}{k}" for k in range(1, rounds + 1)]
            if stage.id == REPEATED_STAGE
            else [stage.id]
        )
        for sid in ids:
            stages.append(_timed(sid, stage.gpus, profile))
    return Plan(name=name, title=f"{profile.title}, {preset} preset", stages=stages)


def _timed(stage_id: str, gpus: int, profile: Any) -> PlanStage:
    """One stage timed with ``profile``'s figure for its kind (``profiles.yaml``: the stage's own,
    or the one ``repeat.figure_of`` names; a hetero round: the hetero total divided by the
    profile's rounds; no figure: 0), with Table 1's GPUs for that kind."""
    base = profile_stage_id(stage_id)
    kind = figure_of().get(base, base)
    minutes = profile.minutes.get(kind, 0.0)
    if kind == REPEATED_STAGE:
        minutes /= profile.hetero_rounds
    return PlanStage(id=stage_id, kind=kind, gpus=profile.stage_gpus.get(kind, gpus), minutes=minutes)


def plan_from_stages(planned: Sequence[PlannedStage], profile: str) -> Plan:
    """A plan for the stages :func:`cryopilot.domain.placement.plan` made, timed with profile ``profile``.

    Each hetero round takes the profile's hetero time divided by its Table 1 round count; a stage the
    profile has no time for takes none. GPU counts are Table 1's, whatever the stage asks for.
    """
    prof = get_profile(profile)
    return Plan(name=profile, title=prof.title, stages=[_timed(p.id, p.gpus, prof) for p in planned])


# --- layouts -------------------------------------------------------------------------------------


class Layout(_Model):
    """Which instance type runs which stage.

    ``queues`` maps a queue name to its instance type. A stage's candidate queues are
    ``by_stage[kind]``, else ``by_gpus[gpus]``, else every queue; only queues whose instance has at
    least the stage's Table 1 GPU count qualify. With several candidates the rule is **the cheapest
    queue that does not lengthen the critical path**: for each qualifying queue take the time the
    stage would finish there (the node launch time if the queue has no node up, plus the wall time at
    that GPU's speed); keep the queues finishing no later than the earliest finish plus
    ``critical_path_tolerance_seconds`` (the pipeline is sequential, so every stage is on the critical
    path); of those pick the one where the stage costs least (its node-seconds, launch included, times
    the price), the first listed on a tie. The choice is made stage by stage on the simulated timeline.

    With ``time_budget_seconds`` set (see :func:`place`) the critical path is the whole run's: a
    queue qualifies when the stage would finish there early enough that the run can still end within
    the budget if every later stage ran on its fastest queue; of the qualifying queues the cheapest
    wins, and if none qualifies the earliest finish does. A cheap but slower queue for one stage is
    then allowed exactly when faster queues for later stages make up for it.
    """

    name: str
    description: str
    queues: dict[str, str] = Field(min_length=1)
    by_gpus: dict[int, tuple[str, ...]] = Field(default_factory=dict)
    by_stage: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    hold_for_run: bool = Field(
        default=False, description="one node per queue is up for the whole run (no scale-down)"
    )
    head_node_instance_type: str = Field(
        default_factory=lambda: str(_cluster_default("head_node_instance_type"))
    )
    critical_path_tolerance_seconds: float = Field(default=0.0, ge=0)
    time_budget_seconds: float | None = Field(
        default=None, gt=0, description="the run's pipeline may not end later than this (see place())"
    )

    @model_validator(mode="after")
    def _queues_exist(self) -> Self:
        named = {q for qs in (*self.by_gpus.values(), *self.by_stage.values()) for q in qs}
        unknown = sorted(named - set(self.queues))
        if unknown:
            raise ValueError(f"layout {self.name}: unknown queues {unknown}")
        if HEAD_QUEUE in self.queues:
            raise ValueError(f"layout {self.name}: queue name {HEAD_QUEUE!r} is reserved for the head node")
        return self

    def candidates(self, kind: str, gpus: int) -> tuple[str, ...]:
        if kind in self.by_stage:
            return self.by_stage[kind]
        return self.by_gpus.get(gpus, tuple(self.queues))

    @classmethod
    def whitepaper(cls, instance_type: str = REFERENCE_INSTANCE_TYPE, head_node: str | None = None) -> Self:
        """The white paper's setup: every stage on one ``instance_type`` node held for the whole run."""
        return cls(
            name="whitepaper",
            description=f"every stage on one {instance_type} held for the whole run (the white paper)",
            queues={WHITEPAPER_QUEUE: instance_type},
            hold_for_run=True,
            head_node_instance_type=head_node or str(_cluster_default("head_node_instance_type")),
        )

    @classmethod
    def cryopilot(
        cls,
        gpu8: str | None = None,
        gpu1: str | None = None,
        *,
        gpu4: str | None = None,
        extra_queues: Mapping[str, str] | None = None,
        head_node: str | None = None,
        by_stage: Mapping[str, Sequence[str]] | None = None,
    ) -> Self:
        """cryopilot's cluster: queues ``gpu8``, ``gpu4`` and ``gpu1`` (and ``extra_queues``), all
        scaling to zero. Every GPU stage may go to any queue whose nodes have enough GPUs; the rule of
        this class (with :func:`place`, the run's time budget) picks one. ``by_stage`` pins stages
        (kind → queues). Defaults are :class:`~cryopilot.domain.clusterconfig.ClusterParams`'s.
        """
        queues = {
            GPU8_QUEUE: gpu8 or str(_cluster_default("gpu8_instance_type")),
            GPU4_QUEUE: gpu4 or str(_cluster_default("gpu4_instance_type")),
            GPU1_QUEUE: gpu1 or str(_cluster_default("gpu1_instance_type")),
            **dict(extra_queues or {}),
        }
        described = ", ".join(f"{q} → {t}" for q, t in queues.items())
        return cls(
            name="cryopilot",
            description=f"queues scale to zero ({described})",
            queues=queues,
            by_stage={k: tuple(v) for k, v in (by_stage or {}).items()},
            head_node_instance_type=head_node or str(_cluster_default("head_node_instance_type")),
        )


# --- estimates -----------------------------------------------------------------------------------


class StageEstimate(_Model):
    stage: str
    kind: str
    gpus: int = Field(description="GPUs the job uses (Table 1)")
    queue: str = Field(description=f"queue it ran on; {HEAD_QUEUE!r} for the cryoSPARC master")
    instance_type: str
    node_gpus: int
    speed: float = Field(description="wall-time divisor applied (1.0 when not GPU-bound)")
    reference_seconds: float
    wait_seconds: float = Field(description="node launch the job waited for")
    wall_seconds: float
    start_seconds: float = Field(description="job start, from the start of the run")
    end_seconds: float
    node_hours_paid: float = Field(description="node time this job caused: launch wait + wall")
    gpu_hours_paid: float
    gpu_hours_busy: float
    cost_usd: float


class QueueUsage(_Model):
    queue: str
    instance_type: str
    node_gpus: int
    usd_per_hour: float
    node_launches: int
    paid_intervals: list[tuple[float, float]] = Field(description="(from, to) seconds of each node's life")
    node_hours_paid: float
    gpu_hours_paid: float
    gpu_hours_busy: float
    cost_usd: float

    @property
    def idle_gpu_hours(self) -> float:
        return self.gpu_hours_paid - self.gpu_hours_busy


class PriceUsed(_Model):
    instance_type: str
    usd_per_hour: float
    source: str
    as_of: date | None
    verified: bool
    overridden: bool


class SpeedUsed(_Model):
    gpu_model: str
    factor: float
    verified: bool
    overridden: bool


class StorageEstimate(_Model):
    """The run's FSx for Lustre file system (:mod:`cryopilot.domain.storage`) and what it costs: its
    capacity × the rate per GB-month of its deployment type and tier × the time to structure."""

    deployment_type: str
    capacity_gib: int
    need_gib: int
    throughput_mb_per_tib: int
    throughput_rule: str
    lines: list[tuple[str, float]] = Field(description="(what, GiB) of each thing the model counts")
    usd_per_gb_month: float
    hours: float
    cost_usd: float
    source: str
    as_of: date | None
    verified: bool
    #: the /shared snapshot kept after the run: its GiB (an assumption), days, rate and cost; not
    #: part of ``cost_usd`` (it is paid after the run, as long as the stack keeps it)
    snapshot_gib: float = 0.0
    snapshot_days: int = 0
    snapshot_usd_per_gb_month: float = 0.0
    snapshot_cost_usd: float = 0.0
    snapshot_source: str = ""
    snapshot_verified: bool = False


class Estimate(_Model):
    plan: str
    title: str
    layout: str
    layout_description: str
    region: str
    rows: list[StageEstimate]
    queues: list[QueueUsage]
    head_node_instance_type: str
    run_seconds: float = Field(description="first stage start to last stage end")
    cluster_create_seconds: float
    cluster_delete_seconds: float
    time_to_structure_seconds: float = Field(description="create + run + delete")
    compute_cost_usd: float
    head_node_cost_usd: float
    storage_cost_usd: float = Field(default=0.0, description="the FSx file system (storage)")
    cost_usd: float = Field(description="GPU nodes + head node + FSx")
    gpu_hours_paid: float
    gpu_hours_busy: float
    idle_gpu_hours: float
    utilisation: float = Field(description="GPU-hours busy / paid")
    node_launch_seconds: float
    scaledown_idle_seconds: float
    hold_for_run: bool
    time_budget_seconds: float | None = Field(
        default=None, description="the placement's time budget for the pipeline (see place())"
    )
    storage: StorageEstimate | None = None
    prices: list[PriceUsed]
    speeds: list[SpeedUsed]
    reference_gpu: str
    reference_instance_type: str
    gpu_bound_stages: list[str]

    def row(self, stage: str) -> StageEstimate:
        for r in self.rows:
            if r.stage == stage:
                return r
        raise KeyError(stage)

    def queue(self, name: str) -> QueueUsage:
        for q in self.queues:
            if q.queue == name:
                return q
        raise KeyError(name)


# --- the replay ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Option:
    """Running a stage on one queue: the launch it waits for, its wall time and what it costs."""

    queue: str
    wait: float
    wall: float
    speed: float
    finish: float
    cost: float


def _choose(options: Sequence[_Option], tolerance: float) -> _Option:
    earliest = min(o.finish for o in options)
    fast = [o for o in options if o.finish <= earliest + tolerance + 1e-9]
    return min(fast, key=lambda o: o.cost)  # min() keeps the first on a tie


def _choose_within_budget(options: Sequence[_Option], finish_by: float) -> _Option:
    """The cheapest option finishing by ``finish_by``; the earliest finish if none does."""
    on_time = [o for o in options if o.finish <= finish_by + 1e-6]
    if on_time:
        return min(on_time, key=lambda o: o.cost)
    return min(options, key=lambda o: (o.finish, o.cost))


def wall_seconds(
    catalogue: Catalogue, stage: PlanStage, instance_type: str, reference_instance_type: str
) -> float:
    """The stage's wall time on ``instance_type``: its reference time divided by the GPU's speed
    relative to the reference instance's when the stage is GPU-bound, unchanged otherwise."""
    return catalogue.stage_seconds(stage.kind, stage.minutes, instance_type, reference_instance_type)


@dataclass(frozen=True)
class _Durations:
    create: float
    delete: float
    launch: float
    idle: float


def _durations(
    cat: Catalogue,
    create: float | None,
    delete: float | None,
    launch: float | None,
    idle: float | None,
) -> _Durations:
    """The given durations; the catalogue's timings and the cluster's idle time where not given."""
    timings = cat.timings
    return _Durations(
        create=timings.cluster_create_seconds.value if create is None else create,
        delete=timings.cluster_delete_seconds.value if delete is None else delete,
        launch=timings.node_launch_seconds.value if launch is None else launch,
        idle=float(SCALEDOWN_IDLE_SECONDS if idle is None else idle),
    )


class _Replay:
    """The plan's stages run one after another (as the state machine submits them), each GPU stage
    on the queue the layout's rule picks; every job goes on its queue's list for the bill."""

    def __init__(self, plan: Plan, layout: Layout, cat: Catalogue, region: str, durations: _Durations):
        self.plan, self.layout, self.cat, self.durations = plan, layout, cat, durations
        self.head_gpus = cat.gpus(layout.head_node_instance_type)
        self.nodes = {name: billing.node_type(cat, itype, region) for name, itype in layout.queues.items()}
        self.jobs: dict[str, list[billing.Job]] = {}
        self.last_end: dict[str, float] = {}
        self.rows: list[StageEstimate] = []
        self.t = 0.0

    def speed_on(self, queue: str, stage: PlanStage) -> float:
        """Divisor of the stage's reference wall time on ``queue`` (1.0 when it is not GPU-bound)."""
        return self.cat.speed_ratio(
            stage.kind, self.nodes[queue].instance_type, self.plan.reference_instance_type
        )

    def queues_with_enough_gpus(self, stage: PlanStage) -> list[str]:
        """The layout's candidate queues whose nodes have the stage's GPUs."""
        return [n for n in self.layout.candidates(stage.kind, stage.gpus) if self.nodes[n].gpus >= stage.gpus]

    def fastest_wall(self, stage: PlanStage) -> float:
        """The stage's shortest wall time on any queue that can run it (no launch wait)."""
        if stage.gpus == 0:
            return stage.minutes * 60.0
        walls = [stage.minutes * 60.0 / self.speed_on(q, stage) for q in self.queues_with_enough_gpus(stage)]
        return min(walls, default=stage.minutes * 60.0)

    def fastest_rest(self) -> list[float]:
        """For each index, the least time the stages from there on can take (0 after the last)."""
        rest = [0.0] * (len(self.plan.stages) + 1)
        for i in range(len(self.plan.stages) - 1, -1, -1):
            rest[i] = rest[i + 1] + self.fastest_wall(self.plan.stages[i])
        return rest

    def run_on_head(self, stage: PlanStage) -> None:
        """A stage without GPUs: on the cryoSPARC master, at no cost of its own."""
        ref_seconds = stage.minutes * 60.0
        self.rows.append(
            StageEstimate(
                stage=stage.id,
                kind=stage.kind,
                gpus=0,
                queue=HEAD_QUEUE,
                instance_type=self.layout.head_node_instance_type,
                node_gpus=self.head_gpus,
                speed=1.0,
                reference_seconds=ref_seconds,
                wait_seconds=0.0,
                wall_seconds=ref_seconds,
                start_seconds=self.t,
                end_seconds=self.t + ref_seconds,
                node_hours_paid=0.0,
                gpu_hours_paid=0.0,
                gpu_hours_busy=0.0,
                cost_usd=0.0,
            )
        )
        self.t += ref_seconds

    def options(self, stage: PlanStage) -> list[_Option]:
        """The stage on each queue that can run it, starting now."""
        options = []
        for q in self.queues_with_enough_gpus(stage):
            speed = self.speed_on(q, stage)
            wall = stage.minutes * 60.0 / speed
            warm = self.layout.hold_for_run or billing.node_up(
                self.last_end.get(q), self.t, self.durations.idle
            )
            wait = 0.0 if warm else self.durations.launch
            price = self.nodes[q].usd_per_hour
            options.append(_Option(q, wait, wall, speed, self.t + wait + wall, (wait + wall) / 3600 * price))
        if not options:
            offered = ", ".join(
                f"{n} ({self.layout.queues[n]})" for n in self.layout.candidates(stage.kind, stage.gpus)
            )
            raise CostingError(
                f"layout {self.layout.name}: no queue for stage {stage.id} with {stage.gpus} GPUs"
                f" (candidates: {offered})"
            )
        return options

    def choose(self, options: Sequence[_Option], time_after: float) -> _Option:
        """The layout's rule; ``time_after``: the least time the later stages can take."""
        if self.layout.time_budget_seconds is not None:
            return _choose_within_budget(options, self.layout.time_budget_seconds - time_after)
        return _choose(options, self.layout.critical_path_tolerance_seconds)

    def run_on_queue(self, stage: PlanStage, pick: _Option) -> None:
        node = self.nodes[pick.queue]
        start = self.t + pick.wait
        end = start + pick.wall
        self.jobs.setdefault(pick.queue, []).append(
            billing.Job(went=self.t, start=start, end=end, nodes=1, gpus=stage.gpus)
        )
        self.last_end[pick.queue] = end
        node_hours = (pick.wait + pick.wall) / 3600
        self.rows.append(
            StageEstimate(
                stage=stage.id,
                kind=stage.kind,
                gpus=stage.gpus,
                queue=pick.queue,
                instance_type=node.instance_type,
                node_gpus=node.gpus,
                speed=pick.speed,
                reference_seconds=stage.minutes * 60.0,
                wait_seconds=pick.wait,
                wall_seconds=pick.wall,
                start_seconds=start,
                end_seconds=end,
                node_hours_paid=node_hours,
                gpu_hours_paid=node_hours * node.gpus,
                gpu_hours_busy=stage.gpus * pick.wall / 3600,
                cost_usd=node_hours * node.usd_per_hour,
            )
        )
        self.t = end

    def run(self) -> None:
        time_after = self.fastest_rest()
        for index, stage in enumerate(self.plan.stages):
            if stage.gpus == 0:
                self.run_on_head(stage)
            else:
                self.run_on_queue(stage, self.choose(self.options(stage), time_after[index + 1]))

    def usage(self) -> list[QueueUsage]:
        """Each used queue's bill (layout order): held for the run, or scaled to zero."""
        run = self.t
        usage = []
        for name, node in self.nodes.items():
            jobs = self.jobs.get(name)
            if not jobs:
                continue
            bill = billing.bill_queue(
                node,
                jobs,
                idle_seconds=self.durations.idle,
                held=(0.0, run) if self.layout.hold_for_run else None,
            )
            usage.append(
                QueueUsage(
                    queue=name,
                    instance_type=node.instance_type,
                    node_gpus=node.gpus,
                    usd_per_hour=node.usd_per_hour,
                    node_launches=bill.launches,
                    paid_intervals=[(s.start, s.end) for s in bill.spans],
                    node_hours_paid=bill.node_hours,
                    gpu_hours_paid=bill.gpu_hours,
                    gpu_hours_busy=bill.busy_gpu_hours,
                    cost_usd=bill.cost_usd,
                )
            )
        return usage


def _price_used(cat: Catalogue, instance_type: str, region: str) -> PriceUsed:
    rec = cat.price_record(instance_type, region)
    return PriceUsed(
        instance_type=instance_type,
        usd_per_hour=rec.usd_per_hour,
        source=rec.source,
        as_of=rec.as_of,
        verified=rec.verified,
        overridden=instance_type in cat.price_overrides,
    )


def _speeds_used(cat: Catalogue, usage: Sequence[QueueUsage]) -> list[SpeedUsed]:
    models = sorted({m for u in usage if (m := cat.instance(u.instance_type).gpu_model)})
    return [
        SpeedUsed(
            gpu_model=m,
            factor=cat.gpu_speed(m),
            verified=cat.speed_table.verified,
            overridden=m in cat.speed_overrides,
        )
        for m in models
    ]


def _storage_estimate(
    cat: Catalogue,
    plan: Plan,
    given: storage.StoragePlan | None,
    hours: float,
    region: str,
    snapshot_days: int = 30,
) -> StorageEstimate | None:
    """The FSx line: ``given``, else the model's for the plan's white-paper dataset (None if the
    plan is not named after one)."""
    fsx = given
    if fsx is None:
        profile = load_profiles().get(plan.name)
        if profile is None:
            return None
        fsx = storage.plan_storage(storage.inputs_for_profile(profile))
    rate = cat.fsx_price(fsx.deployment_type, fsx.throughput_mb_per_tib, region)
    return StorageEstimate(
        deployment_type=fsx.deployment_type,
        capacity_gib=fsx.capacity_gib,
        need_gib=fsx.need_gib,
        throughput_mb_per_tib=fsx.throughput_mb_per_tib,
        throughput_rule=fsx.throughput_rule,
        lines=[(x.what, x.bytes / 1024**3) for x in fsx.lines],
        usd_per_gb_month=rate.usd_per_gb_month,
        hours=hours,
        cost_usd=billing.storage_cost(fsx.capacity_gib, rate.usd_per_gb_month, hours),
        source=rate.source,
        as_of=rate.as_of,
        verified=rate.verified,
        **_snapshot_fields(cat, region, snapshot_days),
    )


def _snapshot_fields(cat: Catalogue, region: str, days: int) -> dict[str, Any]:
    """The /shared snapshot's line: :data:`~cryopilot.domain.storage.SHARED_SNAPSHOT_GIB` for
    ``days`` (the stack's SnapshotRetentionDays; 0 keeps it, so 30 days are shown per month)."""
    try:
        rate = cat.snapshot_price(region)
    except CostingError:
        return {}
    shown = days or 30
    gib = float(storage.SHARED_SNAPSHOT_GIB)
    return {
        "snapshot_gib": gib,
        "snapshot_days": days,
        "snapshot_usd_per_gb_month": rate.usd_per_gb_month,
        "snapshot_cost_usd": billing.storage_cost(gib, rate.usd_per_gb_month, shown * 24),
        "snapshot_source": rate.source,
        "snapshot_verified": rate.verified,
    }


def estimate(
    profile_or_plan: str | Plan,
    layout: Layout,
    catalogue: Catalogue | None = None,
    *,
    region: str = DEFAULT_REGION,
    cluster_create_seconds: float | None = None,
    cluster_delete_seconds: float | None = None,
    node_launch_seconds: float | None = None,
    scaledown_idle_seconds: float | None = None,
    storage_plan: storage.StoragePlan | None = None,
) -> Estimate:
    """Time and cost of a plan (or a Table 1 profile's plan) on ``layout``.

    Defaults: ``catalogue`` is the shipped one (:meth:`Catalogue.load`, no deployment override);
    cluster create/delete and node launch durations are the catalogue's ``timings`` (assumptions,
    30 min / 10 min / 7 min as shipped); ``scaledown_idle_seconds`` is the cluster's Slurm
    ScaledownIdletime (:data:`SCALEDOWN_IDLE_SECONDS`). ``storage_plan``: the run's FSx file system
    (default: the storage model's for the plan's white-paper dataset, when the plan is named after
    one), paid for the whole time to structure.
    """
    cat = catalogue if catalogue is not None else Catalogue.load()
    plan = plan_for_profile(profile_or_plan) if isinstance(profile_or_plan, str) else profile_or_plan
    durations = _durations(
        cat, cluster_create_seconds, cluster_delete_seconds, node_launch_seconds, scaledown_idle_seconds
    )
    cat.speed(plan.reference_instance_type)  # the reference must have a GPU speed
    replay = _Replay(plan, layout, cat, region, durations)
    replay.run()
    usage = replay.usage()

    head = layout.head_node_instance_type
    run = replay.t
    tts = durations.create + run + durations.delete
    head_cost = tts / 3600 * cat.price(head, region)
    compute_cost = sum(u.cost_usd for u in usage)
    fsx = _storage_estimate(cat, plan, storage_plan, tts / 3600, region)
    storage_cost = fsx.cost_usd if fsx else 0.0
    paid = sum(u.gpu_hours_paid for u in usage)
    busy = sum(u.gpu_hours_busy for u in usage)
    types = [head, *sorted({u.instance_type for u in usage})]
    return Estimate(
        plan=plan.name,
        title=plan.title,
        layout=layout.name,
        layout_description=layout.description,
        region=region,
        rows=replay.rows,
        queues=usage,
        head_node_instance_type=head,
        run_seconds=run,
        cluster_create_seconds=durations.create,
        cluster_delete_seconds=durations.delete,
        time_to_structure_seconds=tts,
        compute_cost_usd=compute_cost,
        head_node_cost_usd=head_cost,
        storage_cost_usd=storage_cost,
        cost_usd=compute_cost + head_cost + storage_cost,
        gpu_hours_paid=paid,
        gpu_hours_busy=busy,
        idle_gpu_hours=paid - busy,
        utilisation=busy / paid if paid else 0.0,
        node_launch_seconds=durations.launch,
        scaledown_idle_seconds=durations.idle,
        hold_for_run=layout.hold_for_run,
        time_budget_seconds=layout.time_budget_seconds,
        storage=fsx,
        prices=[_price_used(cat, it, region) for it in types],
        speeds=_speeds_used(cat, usage),
        reference_gpu=cat.speed_table.reference_gpu,
        reference_instance_type=plan.reference_instance_type,
        gpu_bound_stages=sorted(cat.speed_table.gpu_bound_stages),
    )
