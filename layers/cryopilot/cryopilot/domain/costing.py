"""What a run costs and how long it takes, on a given layout of instances: pure estimates, no AWS calls.

Inputs:

* the instance catalogue ``data/instances.yaml`` (:class:`Catalogue`): GPUs, prices with their
  source, date and ``verified`` flag, relative cryoSPARC throughput per GPU model, node launch time
  and cluster create/delete durations; a deployment overrides prices with
  :meth:`Catalogue.with_overrides` or the ``CRYOPILOT_PRICE_OVERRIDES`` environment variable;
* a :class:`Plan`: the stages of one pipeline with the white paper's Table 1 wall times, measured on
  one p4d.24xlarge (``data/profiles.yaml``; :func:`plan_for_profile`, :func:`plan_from_stages`);
* a :class:`Layout`: which instance type runs which stage (:meth:`Layout.whitepaper`,
  :meth:`Layout.cryopilot`).

:func:`estimate` replays the plan on a simulated timeline (stages run one after another, as the
state machine submits them) and returns an :class:`Estimate`: per-stage rows, per-queue node usage
and totals (time to structure, cost, GPU-hours paid and busy, utilisation). :func:`compare` runs
both built-in layouts and :func:`render_comparison` prints them side by side with every assumption.

Billing model:

* a node is paid from its launch until it is terminated (per-second billing). With
  ``Layout.hold_for_run`` one node per queue is up for the whole run (a static node started with the
  cluster, as in the white paper); otherwise a queue scales to zero: its node is launched when a job
  arrives and none is up (the job waits the node launch time), stays up while jobs follow within the
  Slurm ``ScaledownIdletime`` and is paid until that idle time after its last job;
* the head node is paid for the whole time to structure (cluster creation, the run, deletion) in
  every layout, and stages without GPUs (import, class selection) run on it at no extra cost;
* wall times are the white paper's; a GPU-bound stage (``speed.gpu_bound_stages`` in the catalogue)
  on another GPU model takes ``minutes / (speed(gpu) / speed(reference gpu))``. A stage always runs
  with its Table 1 GPU count, on an instance with at least that many GPUs: no scaling with GPU count
  is invented.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cryopilot.core.errors import CryopilotError
from cryopilot.core.formatting import fmt_duration
from cryopilot.core.queues import GPU1_QUEUE, GPU4_QUEUE, GPU8_QUEUE
from cryopilot.domain.clusterconfig.params import ClusterParams
from cryopilot.domain.presets import REPEATED_STAGE, PlannedStage, load_preset, profile_stage_id

__all__ = [
    "DEFAULT_REGION",
    "PRICE_OVERRIDES_ENV",
    "SCALEDOWN_IDLE_SECONDS",
    "Catalogue",
    "CostingError",
    "Estimate",
    "Layout",
    "Plan",
    "PlanStage",
    "PriceOverrideError",
    "Profile",
    "QueueUsage",
    "StageEstimate",
    "UnknownInstanceType",
    "compare",
    "estimate",
    "load_profiles",
    "parse_price_overrides",
    "place",
    "plan_for_profile",
    "plan_from_stages",
    "render_comparison",
    "text_table",
]

#: Region whose prices the catalogue holds and estimates use unless told otherwise.
DEFAULT_REGION = "us-east-1"

#: Environment variable with per-deployment price overrides: a JSON object, instance type → USD/hour.
PRICE_OVERRIDES_ENV = "CRYOPILOT_PRICE_OVERRIDES"


def _cluster_default(name: str) -> Any:
    return ClusterParams.model_fields[name].get_default(call_default_factory=True)


#: Slurm ``ScaledownIdletime`` of the cluster cryopilot builds (one source: ``ClusterParams``).
SCALEDOWN_IDLE_SECONDS: int = int(_cluster_default("scaledown_idletime_minutes")) * 60

#: Queue name of the white-paper layout's single node.
WHITEPAPER_QUEUE = "node"
#: "Queue" of the stages that run on the cryoSPARC master (the head node).
HEAD_QUEUE = "head"


# --- errors --------------------------------------------------------------------------------------


class CostingError(CryopilotError):
    """An estimate cannot be made (no price for a region, no queue with enough GPUs, ...)."""

    label = "cost estimate impossible"


class UnknownInstanceType(CostingError):
    """An instance type the catalogue does not list."""

    label = "unknown instance type"


class PriceOverrideError(CostingError):
    """A price override (argument or ``CRYOPILOT_PRICE_OVERRIDES``) is malformed."""

    label = "invalid price override"


# --- catalogue -----------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PriceRecord(_Model):
    """One published On-Demand Linux price and where it comes from."""

    usd_per_hour: float = Field(gt=0)
    source: str
    as_of: date | None = Field(description="date the source states for its data; None when it states none")
    verified: bool = Field(description="read from a source dated 2026 or later (after the June 2025 cuts)")
    note: str | None = None


class InstanceSpec(_Model):
    gpus: int = Field(ge=0)
    gpu_model: str | None
    gpu_memory_gib: float | None = Field(description="per GPU")
    vcpus: int = Field(gt=0)
    memory_gib: float = Field(gt=0)
    spec_source: str
    prices: dict[str, PriceRecord]

    @model_validator(mode="after")
    def _gpu_model_iff_gpus(self) -> InstanceSpec:
        if (self.gpus > 0) != (self.gpu_model is not None):
            raise ValueError("gpu_model must be set exactly when gpus > 0")
        return self


class GpuSpeed(_Model):
    relative_throughput: float = Field(gt=0, description="cryoSPARC throughput relative to the reference GPU")
    fp32_tflops: float = Field(gt=0)
    memory_bandwidth_gbs: float = Field(gt=0)
    source: str
    note: str | None = None


class SpeedTable(_Model):
    reference_gpu: str
    gpu_bound_stages: frozenset[str]
    source: str
    verified: bool
    note: str
    models: dict[str, GpuSpeed]

    @model_validator(mode="after")
    def _reference_is_one(self) -> SpeedTable:
        ref = self.models.get(self.reference_gpu)
        if ref is None or ref.relative_throughput != 1.0:
            raise ValueError(f"the reference GPU {self.reference_gpu} must be listed with speed 1.0")
        return self


class Assumption(_Model):
    value: float = Field(ge=0)
    verified: bool
    source: str | None
    note: str


class Timings(_Model):
    node_launch_seconds: Assumption
    cluster_create_seconds: Assumption
    cluster_delete_seconds: Assumption


class Catalogue(_Model):
    """Instance types with GPUs, prices and speed; load with :meth:`load` or :meth:`from_env`."""

    currency: str
    instances: dict[str, InstanceSpec]
    speed_table: SpeedTable
    timings: Timings
    price_overrides: dict[str, float] = Field(default_factory=dict)
    speed_overrides: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _gpu_models_have_speed(self) -> Catalogue:
        missing = sorted(
            {s.gpu_model for s in self.instances.values() if s.gpu_model} - set(self.speed_table.models)
        )
        if missing:
            raise ValueError(f"no speed for GPU models {missing}")
        return self

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def load(cls) -> Catalogue:
        """The catalogue shipped in ``data/instances.yaml`` (read once, then cached)."""
        return _shipped_catalogue()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Catalogue:
        """The shipped catalogue with the overrides of ``CRYOPILOT_PRICE_OVERRIDES``, if set."""
        env = os.environ if environ is None else environ
        overrides = parse_price_overrides(env.get(PRICE_OVERRIDES_ENV))
        base = cls.load()
        return base._with_price_overrides(overrides, where=PRICE_OVERRIDES_ENV) if overrides else base

    def with_overrides(
        self, prices: Mapping[str, float] | None = None, *, speeds: Mapping[str, float] | None = None
    ) -> Catalogue:
        """A copy with per-deployment prices (type → USD/hour) and/or speeds (GPU model → factor)."""
        out = self._with_price_overrides(prices or {}, where="price override")
        if speeds:
            bad = sorted(set(speeds) - set(self.speed_table.models))
            if bad:
                known = ", ".join(sorted(self.speed_table.models))
                raise CostingError(f"speed override: unknown GPU models {bad}; known: {known}")
            checked = {m: _positive_number(v, f"speed override {m}") for m, v in speeds.items()}
            out = out.model_copy(update={"speed_overrides": {**out.speed_overrides, **checked}})
        return out

    def _with_price_overrides(self, prices: Mapping[str, float], *, where: str) -> Catalogue:
        for name in prices:
            self.instance(name, where=where)
        checked = {name: _positive_number(v, f"{where} {name}") for name, v in prices.items()}
        if not checked:
            return self
        return self.model_copy(update={"price_overrides": {**self.price_overrides, **checked}})

    # -- queries ---------------------------------------------------------------------------------

    def instance(self, instance_type: str, *, where: str = "") -> InstanceSpec:
        """The specification of ``instance_type``; :class:`UnknownInstanceType` if not listed."""
        spec = self.instances.get(instance_type)
        if spec is None:
            prefix = f"{where}: " if where else ""
            raise UnknownInstanceType(
                f"{prefix}unknown instance type {instance_type!r}; the catalogue knows "
                f"{', '.join(sorted(self.instances))}",
                instance_type=instance_type,
            )
        return spec

    def price_record(self, instance_type: str, region: str = DEFAULT_REGION) -> PriceRecord:
        """The price of ``instance_type`` in ``region`` with its provenance (an override wins)."""
        spec = self.instance(instance_type)
        if instance_type in self.price_overrides:
            return PriceRecord(
                usd_per_hour=self.price_overrides[instance_type],
                source="deployment override",
                as_of=None,
                verified=False,
                note=f"set with {PRICE_OVERRIDES_ENV} or Catalogue.with_overrides",
            )
        record = spec.prices.get(region)
        if record is None:
            raise CostingError(
                f"no {region} price for {instance_type} (catalogue regions: "
                f"{', '.join(sorted(spec.prices))}); set one with {PRICE_OVERRIDES_ENV}",
                instance_type=instance_type,
                region=region,
            )
        return record

    def price(self, instance_type: str, region: str = DEFAULT_REGION) -> float:
        """On-Demand Linux USD per hour of ``instance_type`` in ``region``."""
        return self.price_record(instance_type, region).usd_per_hour

    def gpus(self, instance_type: str) -> int:
        """GPUs of one ``instance_type`` node."""
        return self.instance(instance_type).gpus

    def gpu_speed(self, gpu_model: str) -> float:
        if gpu_model in self.speed_overrides:
            return self.speed_overrides[gpu_model]
        return self.speed_table.models[gpu_model].relative_throughput

    def speed(self, instance_type: str) -> float:
        """cryoSPARC throughput of one GPU of ``instance_type`` relative to the reference GPU (A100)."""
        spec = self.instance(instance_type)
        if spec.gpu_model is None:
            raise CostingError(f"{instance_type} has no GPU", instance_type=instance_type)
        return self.gpu_speed(spec.gpu_model)


def _positive_number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PriceOverrideError(f"{what}: expected a positive number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise PriceOverrideError(f"{what}: expected a positive number, got {value!r}")
    return number


def parse_price_overrides(text: str | None) -> dict[str, float]:
    """``CRYOPILOT_PRICE_OVERRIDES`` → {instance type: USD/hour}; empty or unset → {}.

    The value must be a JSON object whose values are positive numbers, e.g.
    ``{"p4d.24xlarge": 21.96, "g6e.2xlarge": 2.24}``. Instance types are checked against the
    catalogue when the overrides are applied (:meth:`Catalogue.from_env`).
    """
    if text is None or not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PriceOverrideError(
            f"{PRICE_OVERRIDES_ENV} is not valid JSON ({exc.msg} at {exc.pos})"
        ) from None
    if not isinstance(raw, dict):
        raise PriceOverrideError(
            f"{PRICE_OVERRIDES_ENV} must be a JSON object of instance type to USD per hour, e.g. "
            f'{{"p4d.24xlarge": 21.96}}; got {type(raw).__name__}'
        )
    return {str(k): _positive_number(v, f"{PRICE_OVERRIDES_ENV}[{k!r}]") for k, v in raw.items()}


def _read_data(name: str) -> Any:
    return yaml.safe_load(
        resources.files("cryopilot.domain").joinpath("data", name).read_text(encoding="utf-8")
    )


@cache
def _shipped_catalogue() -> Catalogue:
    raw = _read_data("instances.yaml")
    return Catalogue.model_validate(
        {
            "currency": raw["currency"],
            "instances": raw["instances"],
            "speed_table": raw["speed"],
            "timings": raw["timings"],
        }
    )


# --- profiles and plans --------------------------------------------------------------------------


class Profile(_Model):
    """One dataset of the white paper's Table 1 (``data/profiles.yaml``)."""

    name: str
    title: str
    preset: str
    hetero_rounds: int = Field(ge=1)
    table1_total_minutes: float
    minutes: dict[str, float]
    stage_gpus: dict[str, int]


#: The white paper's dataset whose Table 1 times stand in for a manifest's own, per preset.
PROFILE_FOR_PRESET = {"movies": "cgrp", "micrographs": "spike"}


@cache
def load_profiles() -> dict[str, Profile]:
    """The Table 1 profiles by name."""
    raw = _read_data("profiles.yaml")
    gpus = raw["stage_gpus"]
    keep = ("title", "preset", "hetero_rounds", "table1_total_minutes", "minutes")
    return {
        name: Profile.model_validate({"name": name, "stage_gpus": gpus, **{k: p[k] for k in keep}})
        for name, p in raw["profiles"].items()
    }


def _profile(name: str) -> Profile:
    profiles = load_profiles()
    if name not in profiles:
        raise CostingError(f"unknown profile {name!r}; known: {', '.join(sorted(profiles))}")
    return profiles[name]


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
    reference_instance_type: str = "p4d.24xlarge"
    stages: list[PlanStage] = Field(min_length=1)
    table1_total_minutes: float | None = None


def plan_for_profile(name: str) -> Plan:
    """The stages of profile ``name`` in its preset's order, hetero split into its Table 1 rounds."""
    profile = _profile(name)
    preset = load_preset(profile.preset)
    known = {s.id for s in preset.stages}
    unknown = sorted(set(profile.minutes) - known)
    if unknown:
        raise CostingError(f"profile {name}: stages {unknown} are not in preset {profile.preset}")
    stages: list[PlanStage] = []
    for stage in preset.stages:
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


def plan_from_stages(planned: Sequence[PlannedStage], profile: str) -> Plan:
    """A plan for the stages :func:`cryopilot.domain.presets.plan` made, timed with profile ``profile``.

    Each hetero round takes the profile's hetero time divided by its Table 1 round count; a stage the
    profile has no time for takes none. GPU counts are Table 1's, whatever the stage asks for.
    """
    prof = _profile(profile)
    stages = []
    for p in planned:
        kind = profile_stage_id(p.id)
        minutes = prof.minutes.get(kind, 0.0)
        if kind == REPEATED_STAGE:
            minutes /= prof.hetero_rounds
        stages.append(PlanStage(id=p.id, kind=kind, gpus=prof.stage_gpus.get(kind, p.gpus), minutes=minutes))
    return Plan(name=profile, title=prof.title, stages=stages)


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
    def _queues_exist(self) -> Layout:
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
    def whitepaper(cls, instance_type: str = "p4d.24xlarge", head_node: str | None = None) -> Layout:
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
    ) -> Layout:
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
    cost_usd: float
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


@dataclass
class _Queue:
    name: str
    instance_type: str
    gpus: int
    price: float
    intervals: list[tuple[float, float]] = field(default_factory=list)
    launched_at: float | None = None  # the current node's launch, None when no node is up
    idle_from: float = 0.0  # end of the current node's last job
    busy_gpu_seconds: float = 0.0
    launches: int = 0

    def is_up(self, t: float, idle: float) -> bool:
        return self.launched_at is not None and t - self.idle_from <= idle

    def close(self, idle: float) -> None:
        if self.launched_at is not None:
            self.intervals.append((self.launched_at, self.idle_from + idle))
            self.launched_at = None


@dataclass(frozen=True)
class _Option:
    queue: _Queue
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
) -> Estimate:
    """Time and cost of a plan (or a Table 1 profile's plan) on ``layout``.

    Defaults: ``catalogue`` is :meth:`Catalogue.from_env`; cluster create/delete and node launch
    durations are the catalogue's ``timings`` (assumptions, 30 min / 10 min / 7 min as shipped);
    ``scaledown_idle_seconds`` is the cluster's Slurm ScaledownIdletime (:data:`SCALEDOWN_IDLE_SECONDS`).
    """
    cat = catalogue if catalogue is not None else Catalogue.from_env()
    plan = plan_for_profile(profile_or_plan) if isinstance(profile_or_plan, str) else profile_or_plan
    timings = cat.timings
    create = (
        timings.cluster_create_seconds.value if cluster_create_seconds is None else cluster_create_seconds
    )
    delete = (
        timings.cluster_delete_seconds.value if cluster_delete_seconds is None else cluster_delete_seconds
    )
    launch = timings.node_launch_seconds.value if node_launch_seconds is None else node_launch_seconds
    idle = float(SCALEDOWN_IDLE_SECONDS if scaledown_idle_seconds is None else scaledown_idle_seconds)

    ref_speed = cat.speed(plan.reference_instance_type)
    gpu_bound = cat.speed_table.gpu_bound_stages
    head = layout.head_node_instance_type
    head_gpus = cat.gpus(head)
    queues = {
        name: _Queue(name, itype, cat.gpus(itype), cat.price(itype, region))
        for name, itype in layout.queues.items()
    }

    def speed_on(q: _Queue, stage: PlanStage) -> float:
        """Divisor of the stage's reference wall time on ``q`` (1.0 when it is not GPU-bound)."""
        return cat.speed(q.instance_type) / ref_speed if stage.kind in gpu_bound else 1.0

    def able(stage: PlanStage) -> list[_Queue]:
        """The layout's candidate queues whose nodes have the stage's GPUs."""
        return [queues[n] for n in layout.candidates(stage.kind, stage.gpus) if queues[n].gpus >= stage.gpus]

    def fastest(stage: PlanStage) -> float:
        """The stage's shortest wall time on any queue that can run it (no launch wait)."""
        if stage.gpus == 0:
            return stage.minutes * 60.0
        walls = [stage.minutes * 60.0 / speed_on(q, stage) for q in able(stage)]
        return min(walls, default=stage.minutes * 60.0)

    rest_fastest = [0.0] * (len(plan.stages) + 1)
    for i in range(len(plan.stages) - 1, -1, -1):
        rest_fastest[i] = rest_fastest[i + 1] + fastest(plan.stages[i])

    rows: list[StageEstimate] = []
    used: set[str] = set()
    t = 0.0
    for index, stage in enumerate(plan.stages):
        ref_seconds = stage.minutes * 60.0
        if stage.gpus == 0:
            rows.append(
                StageEstimate(
                    stage=stage.id,
                    kind=stage.kind,
                    gpus=0,
                    queue=HEAD_QUEUE,
                    instance_type=head,
                    node_gpus=head_gpus,
                    speed=1.0,
                    reference_seconds=ref_seconds,
                    wait_seconds=0.0,
                    wall_seconds=ref_seconds,
                    start_seconds=t,
                    end_seconds=t + ref_seconds,
                    node_hours_paid=0.0,
                    gpu_hours_paid=0.0,
                    gpu_hours_busy=0.0,
                    cost_usd=0.0,
                )
            )
            t += ref_seconds
            continue

        options = []
        for q in able(stage):
            speed = speed_on(q, stage)
            wall = ref_seconds / speed
            wait = 0.0 if layout.hold_for_run or q.is_up(t, idle) else launch
            options.append(_Option(q, wait, wall, speed, t + wait + wall, (wait + wall) / 3600 * q.price))
        if not options:
            offered = ", ".join(
                f"{n} ({layout.queues[n]})" for n in layout.candidates(stage.kind, stage.gpus)
            )
            raise CostingError(
                f"layout {layout.name}: no queue for stage {stage.id} with {stage.gpus} GPUs"
                f" (candidates: {offered})"
            )
        if layout.time_budget_seconds is not None:
            pick = _choose_within_budget(options, layout.time_budget_seconds - rest_fastest[index + 1])
        else:
            pick = _choose(options, layout.critical_path_tolerance_seconds)
        q = pick.queue
        if not layout.hold_for_run and pick.wait:
            q.close(idle)
            q.launched_at = t
            q.launches += 1
        start = t + pick.wait
        end = start + pick.wall
        q.idle_from = end
        q.busy_gpu_seconds += stage.gpus * pick.wall
        used.add(q.name)
        node_hours = (pick.wait + pick.wall) / 3600
        rows.append(
            StageEstimate(
                stage=stage.id,
                kind=stage.kind,
                gpus=stage.gpus,
                queue=q.name,
                instance_type=q.instance_type,
                node_gpus=q.gpus,
                speed=pick.speed,
                reference_seconds=ref_seconds,
                wait_seconds=pick.wait,
                wall_seconds=pick.wall,
                start_seconds=start,
                end_seconds=end,
                node_hours_paid=node_hours,
                gpu_hours_paid=node_hours * q.gpus,
                gpu_hours_busy=stage.gpus * pick.wall / 3600,
                cost_usd=node_hours * q.price,
            )
        )
        t = end

    run = t
    usage = []
    for q in queues.values():
        if q.name not in used:
            continue
        if layout.hold_for_run:
            q.intervals = [(0.0, run)]
            q.launches = 1
        else:
            q.close(idle)
        node_hours = sum(b - a for a, b in q.intervals) / 3600
        usage.append(
            QueueUsage(
                queue=q.name,
                instance_type=q.instance_type,
                node_gpus=q.gpus,
                usd_per_hour=q.price,
                node_launches=q.launches,
                paid_intervals=q.intervals,
                node_hours_paid=node_hours,
                gpu_hours_paid=node_hours * q.gpus,
                gpu_hours_busy=q.busy_gpu_seconds / 3600,
                cost_usd=node_hours * q.price,
            )
        )

    tts = create + run + delete
    head_cost = tts / 3600 * cat.price(head, region)
    compute_cost = sum(u.cost_usd for u in usage)
    paid = sum(u.gpu_hours_paid for u in usage)
    busy = sum(u.gpu_hours_busy for u in usage)
    types = [head, *sorted({u.instance_type for u in usage})]
    models = sorted({m for u in usage if (m := cat.instance(u.instance_type).gpu_model)})
    return Estimate(
        plan=plan.name,
        title=plan.title,
        layout=layout.name,
        layout_description=layout.description,
        region=region,
        rows=rows,
        queues=usage,
        head_node_instance_type=head,
        run_seconds=run,
        cluster_create_seconds=create,
        cluster_delete_seconds=delete,
        time_to_structure_seconds=tts,
        compute_cost_usd=compute_cost,
        head_node_cost_usd=head_cost,
        cost_usd=compute_cost + head_cost,
        gpu_hours_paid=paid,
        gpu_hours_busy=busy,
        idle_gpu_hours=paid - busy,
        utilisation=busy / paid if paid else 0.0,
        node_launch_seconds=launch,
        scaledown_idle_seconds=idle,
        hold_for_run=layout.hold_for_run,
        time_budget_seconds=layout.time_budget_seconds,
        prices=[_price_used(cat, it, region) for it in types],
        speeds=[
            SpeedUsed(
                gpu_model=m,
                factor=cat.gpu_speed(m),
                verified=cat.speed_table.verified,
                overridden=m in cat.speed_overrides,
            )
            for m in models
        ],
        reference_gpu=cat.speed_table.reference_gpu,
        reference_instance_type=plan.reference_instance_type,
        gpu_bound_stages=sorted(gpu_bound),
    )


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


def place(
    profile_or_plan: str | Plan,
    layout: Layout,
    catalogue: Catalogue | None = None,
    *,
    tolerance_percent: float = 0.0,
    **kwargs: Any,
) -> Estimate:
    """cryopilot's placement: ``layout``'s queues with the run's time budget set to the plan's
    pipeline time on the white paper's layout (every stage on one reference instance held for the
    run) plus ``tolerance_percent``. The estimate's rows say which queue each stage gets.

    ``kwargs`` go to :func:`estimate` (region, create/delete/launch/idle durations).
    """
    cat = catalogue if catalogue is not None else Catalogue.from_env()
    plan = plan_for_profile(profile_or_plan) if isinstance(profile_or_plan, str) else profile_or_plan
    reference = estimate(plan, Layout.whitepaper(plan.reference_instance_type), cat, **kwargs)
    budget = reference.run_seconds * (1.0 + tolerance_percent / 100.0)
    return estimate(plan, layout.model_copy(update={"time_budget_seconds": budget}), cat, **kwargs)


def compare(profile: str, catalogue: Catalogue | None = None, **kwargs: Any) -> tuple[Estimate, Estimate]:
    """(white-paper layout, cryopilot layout) estimates of a Table 1 profile, the second placed
    by :func:`place` on the default cluster's queues.

    ``kwargs`` go to :func:`estimate` (region, create/delete/launch/idle durations).
    """
    cat = catalogue if catalogue is not None else Catalogue.from_env()
    return (
        estimate(profile, Layout.whitepaper(), cat, **kwargs),
        place(profile, Layout.cryopilot(), cat, **kwargs),
    )


# --- rendering -----------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def text_table(header: Sequence[str], rows: Iterable[Sequence[str]], right: set[int]) -> list[str]:
    """Lines of a plain-text table: the header, a rule, the rows; columns in ``right`` right-aligned."""
    body = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in body) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(body[0]), line(["-" * w for w in widths]), *[line(r) for r in body[1:]]]


def render_comparison(whitepaper: Estimate, cryopilot: Estimate) -> str:
    """Both estimates as a plain-text report: stages, totals, and every assumption behind them."""
    title = whitepaper.title or whitepaper.plan
    out = [f"{title}: white-paper layout vs cryopilot layout ({whitepaper.region}, USD)", ""]

    cp_rows = {r.stage: r for r in cryopilot.rows}
    stage_rows = []
    for wr in whitepaper.rows:
        cr = cp_rows.get(wr.stage)
        stage_rows.append(
            [
                wr.stage,
                str(wr.gpus),
                wr.instance_type,
                fmt_duration(wr.wall_seconds),
                f"{cr.queue} {cr.instance_type}" if cr else "-",
                fmt_duration(cr.wait_seconds) if cr and cr.wait_seconds else "",
                fmt_duration(cr.wall_seconds) if cr else "-",
                fmt_duration(cr.start_seconds) if cr else "-",
                f"{cr.cost_usd:,.2f}" if cr and cr.queue != HEAD_QUEUE else "",
            ]
        )
    out += text_table(
        ["stage", "GPUs", "white paper", "wall", "cryopilot", "launch", "wall", "start", "cost"],
        stage_rows,
        right={1, 3, 5, 6, 7, 8},
    )
    out.append("")

    def ratio(a: float, b: float) -> str:
        return _pct(b / a) if a else "-"

    def delta(a: float, b: float) -> str:
        return f"{100 * (b - a) / a:+.1f} %" if a else "-"

    w, c = whitepaper, cryopilot
    totals = [
        [
            "time to structure",
            fmt_duration(w.time_to_structure_seconds),
            fmt_duration(c.time_to_structure_seconds),
            delta(w.time_to_structure_seconds, c.time_to_structure_seconds),
        ],
        [
            "  pipeline run",
            fmt_duration(w.run_seconds),
            fmt_duration(c.run_seconds),
            delta(w.run_seconds, c.run_seconds),
        ],
        [
            "  cluster create + delete",
            fmt_duration(w.cluster_create_seconds + w.cluster_delete_seconds),
            fmt_duration(c.cluster_create_seconds + c.cluster_delete_seconds),
            "",
        ],
        ["cost", f"{w.cost_usd:,.2f}", f"{c.cost_usd:,.2f}", ratio(w.cost_usd, c.cost_usd)],
        [
            "  GPU nodes",
            f"{w.compute_cost_usd:,.2f}",
            f"{c.compute_cost_usd:,.2f}",
            ratio(w.compute_cost_usd, c.compute_cost_usd),
        ],
        [
            f"  head node ({w.head_node_instance_type})",
            f"{w.head_node_cost_usd:,.2f}",
            f"{c.head_node_cost_usd:,.2f}",
            "",
        ],
        [
            "GPU-hours paid",
            f"{w.gpu_hours_paid:,.1f}",
            f"{c.gpu_hours_paid:,.1f}",
            ratio(w.gpu_hours_paid, c.gpu_hours_paid),
        ],
        ["GPU-hours busy", f"{w.gpu_hours_busy:,.1f}", f"{c.gpu_hours_busy:,.1f}", ""],
        ["idle GPU-hours", f"{w.idle_gpu_hours:,.1f}", f"{c.idle_gpu_hours:,.1f}", ""],
        ["utilisation (busy / paid)", _pct(w.utilisation), _pct(c.utilisation), ""],
        [
            "GPU node launches",
            str(sum(q.node_launches for q in w.queues)),
            str(sum(q.node_launches for q in c.queues)),
            "",
        ],
    ]
    out += text_table(["", "white paper", "cryopilot", "cryopilot vs white paper"], totals, right={1, 2, 3})
    out.append("")

    out.append("Assumptions")
    out.append(f"  white paper layout: {w.layout_description}")
    out.append(f"  cryopilot layout: {c.layout_description}")
    if c.time_budget_seconds is not None:
        out.append(
            "  cryopilot placement: each GPU stage on the cheapest queue that keeps the pipeline within"
            f" {fmt_duration(c.time_budget_seconds)} (the white paper's layout)"
        )
    prices = {p.instance_type: p for p in [*w.prices, *c.prices]}
    out.append(f"  On-Demand Linux prices, {w.region}, USD per hour:")
    for p in prices.values():
        when = f"as of {p.as_of.isoformat()}" if p.as_of else "no date"
        flag = "override" if p.overridden else ("verified" if p.verified else "NOT verified")
        out.append(f"    {p.instance_type:<14} {p.usd_per_hour:>10.4f}  {when:<16} {flag:<12} {p.source}")
    speeds = {s.gpu_model: s for s in [*w.speeds, *c.speeds]}
    out.append(
        f"  cryoSPARC speed per GPU relative to {w.reference_gpu} (applied to "
        + ", ".join(w.gpu_bound_stages)
        + "; other stages keep Table 1 times):"
    )
    for s in speeds.values():
        if s.gpu_model == w.reference_gpu:
            flag = "reference (Table 1 hardware)"
        elif s.overridden:
            flag = "override"
        else:
            flag = "verified" if s.verified else "NOT verified (lower of vendor FP32 and bandwidth ratios)"
        out.append(f"    {s.gpu_model:<10} {s.factor:>5.2f}  {flag}")
    out.append(
        f"  GPU node launch {fmt_duration(c.node_launch_seconds)} (assumption); Slurm ScaledownIdletime "
        f"{fmt_duration(c.scaledown_idle_seconds)} (clusterconfig); a node is paid until that idle time"
        " after its last job"
    )
    out.append(
        f"  cluster create {fmt_duration(c.cluster_create_seconds)}, delete "
        f"{fmt_duration(c.cluster_delete_seconds)} (assumptions);"
        " head node paid for the whole time to structure"
    )
    out.append(
        f"  wall times: white paper Table 1 ({w.reference_instance_type});"
        " each stage keeps its Table 1 GPU count"
    )
    return "\n".join(out) + "\n"
