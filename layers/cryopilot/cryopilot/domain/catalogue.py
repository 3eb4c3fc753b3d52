"""The instance catalogue and the white paper's stage times: the inputs of every cost figure.

* ``data/instances.yaml`` (:class:`Catalogue`): GPUs per instance type, On-Demand prices with their
  source, date and ``verified`` flag, cryoSPARC throughput per GPU model relative to the reference
  GPU, node launch time and cluster create/delete durations. A deployment replaces prices with
  :meth:`Catalogue.for_deployment` (the JSON its ``PriceOverrides`` parameter sets) or
  :meth:`Catalogue.with_overrides`; nothing here reads the environment.
* ``data/profiles.yaml`` (:class:`Profile`, :func:`load_profiles`): the stages of the white paper's
  three datasets with their Table 1 wall minutes on one p4d.24xlarge and the GPUs each job used.
"""

import json
import math
from collections.abc import Mapping
from datetime import date
from functools import cache
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cryopilot.core.errors import CryopilotError
from cryopilot.core.queues import NOMINAL_QUEUE_GPUS
from cryopilot.domain.datafiles import read_data_file

__all__ = [
    "DEFAULT_REGION",
    "PRICE_OVERRIDES_ENV",
    "PROFILE_FOR_PRESET",
    "Catalogue",
    "CostingError",
    "InstanceSpec",
    "PriceOverrideError",
    "PriceRecord",
    "Profile",
    "ProfileStorage",
    "SpotShare",
    "StoragePrice",
    "UnknownInstanceType",
    "figure_of",
    "get_profile",
    "load_profiles",
    "parse_price_overrides",
]

#: Region whose prices the catalogue holds and estimates use unless told otherwise.
DEFAULT_REGION = "us-east-1"

#: The instance type the white paper's Table 1 times were measured on.
REFERENCE_INSTANCE_TYPE = "p4d.24xlarge"

#: Environment variable the Lambdas' settings read the deployment's price overrides from (a JSON
#: object, instance type → USD/hour); named in the messages about a malformed value.
PRICE_OVERRIDES_ENV = "CRYOPILOT_PRICE_OVERRIDES"

# --- errors --------------------------------------------------------------------------------------


class CostingError(CryopilotError):
    """An estimate cannot be made (no price for a region, no queue with enough GPUs, ...)."""

    label = "cost estimate impossible"


class UnknownInstanceType(CostingError):
    """An instance type the catalogue does not list."""

    label = "unknown instance type"


class PriceOverrideError(CostingError):
    """A price override (argument or the deployment's ``PriceOverrides``) is malformed."""

    label = "invalid price override"


# --- catalogue -----------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


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
    def _gpu_model_iff_gpus(self) -> Self:
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
    def _reference_is_one(self) -> Self:
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


class StoragePrice(_Model):
    """One published storage rate (USD per GB-month) and where it comes from."""

    usd_per_gb_month: float = Field(gt=0)
    source: str
    as_of: date | None
    verified: bool
    note: str | None = None


class StoragePrices(_Model):
    """FSx for Lustre rates: deployment type → region → throughput tier (MB/s/TiB) → rate; EBS
    snapshot rates by region."""

    fsx_lustre: dict[str, dict[str, dict[int, StoragePrice]]]
    ebs_snapshot: dict[str, StoragePrice] = Field(default_factory=dict)


class SpotShare(_Model):
    """What a Spot node costs as a share of its On-Demand price: a range, since Spot prices move
    (EC2 sets them from supply and demand and changes them gradually), with its source."""

    low: float = Field(gt=0, le=1, description="the cheapest Spot price, as a share of On-Demand")
    high: float = Field(gt=0, le=1, description="the dearest Spot price cryopilot pays, as a share")
    source: str
    as_of: date | None
    verified: bool
    note: str

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.low > self.high:
            raise ValueError("spot: low must not exceed high")
        return self

    def usd_per_hour(self, on_demand: float) -> tuple[float, float]:
        """(lowest, highest) Spot USD per hour of a type whose On-Demand price is ``on_demand``."""
        return on_demand * self.low, on_demand * self.high


class Catalogue(_Model):
    """Instance types with GPUs, prices and speed; load with :meth:`load` or :meth:`for_deployment`."""

    currency: str
    instances: dict[str, InstanceSpec]
    speed_table: SpeedTable
    timings: Timings
    storage: StoragePrices | None = None
    spot: SpotShare | None = None
    price_overrides: dict[str, float] = Field(default_factory=dict)
    speed_overrides: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _gpu_models_have_speed(self) -> Self:
        missing = sorted(
            {s.gpu_model for s in self.instances.values() if s.gpu_model} - set(self.speed_table.models)
        )
        if missing:
            raise ValueError(f"no speed for GPU models {missing}")
        return self

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def load(cls) -> "Catalogue":
        """The catalogue shipped in ``data/instances.yaml`` (read once, then cached)."""
        return _shipped_catalogue()

    @classmethod
    def for_deployment(cls, price_overrides: str | None) -> "Catalogue":
        """The shipped catalogue with a deployment's price overrides (the JSON object of its
        ``PriceOverrides`` parameter, e.g. ``Settings.price_overrides``); empty or None: none.
        Cached per value."""
        return _deployment_catalogue(price_overrides or "")

    def with_overrides(
        self, prices: Mapping[str, float] | None = None, *, speeds: Mapping[str, float] | None = None
    ) -> Self:
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

    def _with_price_overrides(self, prices: Mapping[str, float], *, where: str) -> Self:
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

    def fsx_price(self, deployment_type: str, throughput: int, region: str = DEFAULT_REGION) -> StoragePrice:
        """The FSx for Lustre rate of ``deployment_type`` at ``throughput`` MB/s/TiB in ``region``."""
        rates = (self.storage.fsx_lustre if self.storage else {}).get(deployment_type, {})
        record = rates.get(region, {}).get(throughput)
        if record is None:
            raise CostingError(
                f"no FSx for Lustre price for {deployment_type} at {throughput} MB/s/TiB in {region}"
            )
        return record

    def snapshot_price(self, region: str = DEFAULT_REGION) -> StoragePrice:
        """The EBS snapshot rate (Standard tier) in ``region``."""
        record = (self.storage.ebs_snapshot if self.storage else {}).get(region)
        if record is None:
            raise CostingError(f"no EBS snapshot price in {region}")
        return record

    def gpus(self, instance_type: str) -> int:
        """GPUs of one ``instance_type`` node."""
        return self.instance(instance_type).gpus

    def queue_gpus(self, queue: str, instance_type: str) -> int:
        """GPUs per node of GPU queue ``queue`` when it runs ``instance_type``: the type's GPUs, or
        the queue's nominal count (8, 4 or 1) for a type the catalogue does not list."""
        spec = self.instances.get(instance_type)
        return spec.gpus if spec is not None else NOMINAL_QUEUE_GPUS[queue]

    def gpu_speed(self, gpu_model: str) -> float:
        if gpu_model in self.speed_overrides:
            return self.speed_overrides[gpu_model]
        return self.speed_table.models[gpu_model].relative_throughput

    def stage_seconds(
        self, kind: str, minutes: float, instance_type: str, reference_instance_type: str
    ) -> float:
        """Run time of a stage of profiles.yaml id ``kind`` that takes ``minutes`` on the reference
        instance type, on ``instance_type``."""
        return minutes * 60.0 / self.speed_ratio(kind, instance_type, reference_instance_type)

    def speed_ratio(self, kind: str, instance_type: str, reference_instance_type: str) -> float:
        """How many times faster a stage of profiles.yaml id ``kind`` runs on ``instance_type``
        than on the reference instance type: the GPUs' speed ratio when the stage is GPU-bound
        (``speed.gpu_bound_stages``), 1.0 otherwise."""
        if kind not in self.speed_table.gpu_bound_stages:
            return 1.0
        return self.speed(instance_type) / self.speed(reference_instance_type)

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
    catalogue when the overrides are applied (:meth:`Catalogue.for_deployment`).
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
    return read_data_file("data", name)


@cache
def _shipped_catalogue() -> Catalogue:
    raw = _read_data("instances.yaml")
    return Catalogue.model_validate(
        {
            "currency": raw["currency"],
            "instances": raw["instances"],
            "speed_table": raw["speed"],
            "timings": raw["timings"],
            "storage": raw.get("storage"),
            "spot": raw.get("spot"),
        }
    )


@cache
def _deployment_catalogue(price_overrides: str) -> Catalogue:
    overrides = parse_price_overrides(price_overrides)
    base = _shipped_catalogue()
    return base._with_price_overrides(overrides, where=PRICE_OVERRIDES_ENV) if overrides else base


# --- profiles --------------------------------------------------------------------------


class Profile(_Model):
    """One dataset of the white paper's Table 1 (``data/profiles.yaml``)."""

    name: str
    title: str
    preset: str
    hetero_rounds: int = Field(ge=1)
    table1_total_minutes: float
    minutes: dict[str, float]
    stage_gpus: dict[str, int]
    movies: int = Field(gt=0, description="movies (or micrographs) of the dataset")
    size_tb: float = Field(gt=0, description="size of the uploaded data, TB (10^12 bytes)")
    particles: int = Field(gt=0, description="particles the white paper extracted")
    storage: "ProfileStorage"


class ProfileStorage(_Model):
    """What the storage model assumes about a profile's files (``profiles.yaml``, ``storage``)."""

    micrograph_mb: float = Field(gt=0, description="one motion-corrected micrograph, MB (10^6 bytes)")
    box_px: int = Field(gt=0, description="extraction box, pixels")
    box_binned_px: int = Field(gt=0, description="box the first (Fourier-cropped) extraction stores")
    reextract_fraction: float = Field(gt=0, le=1, description="share of the particles re-extracted")


#: The white paper's dataset whose Table 1 times stand in for a manifest's own, per preset.
PROFILE_FOR_PRESET = {"movies": "cgrp", "micrographs": "spike", "repeat": "cgrp"}


@cache
def load_profiles() -> dict[str, Profile]:
    """The Table 1 profiles by name."""
    raw = _read_data("profiles.yaml")
    gpus = raw["stage_gpus"]
    keep = (
        "title",
        "preset",
        "hetero_rounds",
        "table1_total_minutes",
        "minutes",
        "movies",
        "size_tb",
        "particles",
        "storage",
    )
    return {
        name: Profile.model_validate({"name": name, "stage_gpus": gpus, **{k: p[k] for k in keep}})
        for name, p in raw["profiles"].items()
    }


@cache
def figure_of() -> dict[str, str]:
    """Stage id → the ``profiles.yaml`` stage whose Table 1 figure it takes, where they differ
    (``repeat.figure_of``: the repeat preset's imports of the reference's files)."""
    raw = _read_data("profiles.yaml")
    return dict((raw.get("repeat") or {}).get("figure_of") or {})


def get_profile(name: str) -> Profile:
    """The Table 1 profile ``name``; :class:`CostingError` naming the known ones if there is none."""
    profiles = load_profiles()
    if name not in profiles:
        raise CostingError(f"unknown profile {name!r}; known: {', '.join(sorted(profiles))}")
    return profiles[name]
