"""The Lambdas' configuration: environment variables validated once into one model.

A plain pydantic model reads the environment itself (``CRYOPILOT_<FIELD>`` in any case, and
``AWS_REGION``; values given to the constructor win), as pydantic-settings did: importing
pydantic-settings (its CLI, cloud and dotenv sources, asyncio) cost every cold start about 80 ms.
"""

import os
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cryopilot.core.queues import SPOT_SUFFIX

ENV_PREFIX = "CRYOPILOT_"


class Settings(BaseModel):
    """Environment of every cryopilot Lambda (set in template.yaml's Globals)."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True, defer_build=True)

    @model_validator(mode="before")
    @classmethod
    def _environment(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        env = {k.upper(): v for k, v in os.environ.items()}
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            alias = field.validation_alias if isinstance(field.validation_alias, str) else None
            key = (alias or ENV_PREFIX + name).upper()
            if key in env and name not in data and (alias is None or alias not in data):
                values[alias or name] = env[key]
        return {**values, **data}

    stack_name: str = "cryopilot"
    region: str = Field(default="us-east-1", validation_alias="AWS_REGION")
    input_bucket: str = "cryopilot-input"
    results_bucket: str = "cryopilot-results"
    artifacts_bucket: str = "cryopilot-artifacts"
    runs_table: str = "cryopilot-runs"
    topic_arn: str = "arn:aws:sns:us-east-1:123456789012:cryopilot"
    state_machine_arn: str = "arn:aws:states:us-east-1:123456789012:stateMachine:cryopilot"
    pcluster_api_url: str = "https://pcluster.invalid/prod"
    vpc_id: str = ""
    head_node_subnet_id: str = ""
    compute_subnet_ids: str = Field(default="", description="comma-separated")
    licence_secret_arn: str = ""
    head_node_policy_arns: str = Field(default="", description="comma-separated managed policy ARNs")
    head_node_instance_type: str = "m6i.2xlarge"
    gpu8_instance_type: str = "p4d.24xlarge"
    gpu4_instance_type: str = "g6e.12xlarge"
    gpu1_instance_type: str = "p5.4xlarge"
    # the further compute resources of each GPU queue (template.yaml's defaults)
    fallback_gpu8_instance_types: str = Field(
        default="p4de.24xlarge,p5.48xlarge", description="comma-separated"
    )
    fallback_gpu4_instance_types: str = Field(default="g5.12xlarge", description="comma-separated")
    fallback_gpu1_instance_types: str = Field(default="g6e.2xlarge", description="comma-separated")
    #: clustermgtd's insufficient_capacity_timeout on the head node (domain/clusterconfig/scaling.py)
    insufficient_capacity_timeout_seconds: int = Field(default=1800, ge=60, le=86400)
    #: a stage waiting this long with every compute resource of its queue down fails (CapacityError)
    capacity_wait_minutes: float = Field(default=60.0, gt=0)
    #: a stage waiting this long for capacity sends one mail (domain.mails.capacity_waiting)
    capacity_mail_minutes: float = Field(default=30.0, gt=0)
    max_run_hours: float = 72.0
    #: Runs holding a cluster at once; the others wait in the queue (cryopilot.adapters.admission).
    max_concurrent_runs: int = Field(default=10, ge=1, le=1000)
    price_overrides: str = Field(
        default="", description="JSON {instance type: USD per hour}, passed to cryopilot.domain.catalogue"
    )
    #: How long one agent verb may take (SSM ``executionTimeout`` and the wait for its answer). The
    #: verbs answer at once; the bound covers a stuck node. Two calls of a stage poll must fit in
    #: the Stage function's timeout (tests/unit/test_asl.py checks the order of these limits).
    agent_timeout_seconds: int = Field(default=60, ge=10, le=75)
    #: NotifyAllowedDomains: the domains a manifest's ``notify`` addresses may be in (empty: any)
    notify_allowed_domains: str = Field(default="", description="comma-separated")

    #: Days a run's /shared snapshot is kept before the janitor deletes it; 0 keeps them all
    #: (stack parameter ``SnapshotRetentionDays``).
    snapshot_retention_days: int = Field(default=30, ge=0, le=3650)
    #: Largest FSx for Lustre file system a run may have (stack parameter ``MaxFsxTiB``).
    max_fsx_tib: float = Field(default=48.0, gt=0)
    #: ``auto`` (the storage model's rule) or a fixed PERSISTENT_2 tier (``FsxThroughputPerTiB``).
    fsx_throughput_mb_per_tib: str = "auto"

    @property
    def fsx_throughput(self) -> int | None:
        """The stack's fixed FSx throughput tier, or None for the storage model's rule."""
        value = self.fsx_throughput_mb_per_tib.strip().lower()
        return None if value in ("", "auto") else int(value)

    def queue_instance_types(self, gpu8: str | None = None, *, spot: bool = False) -> dict[str, str]:
        """Instance type of each GPU queue; ``gpu8``: the type a run's capacity fallback chose;
        ``spot``: each queue's Spot twin too (the same types)."""
        types = {
            "gpu8": gpu8 or self.gpu8_instance_type,
            "gpu4": self.gpu4_instance_type,
            "gpu1": self.gpu1_instance_type,
        }
        if spot:
            types.update({q + SPOT_SUFFIX: t for q, t in list(types.items())})
        return types

    def queue_compute_types(self, gpu8: str | None = None, *, spot: bool = False) -> dict[str, list[str]]:
        """Instance types of each GPU queue's compute resources, in order of preference (``spot``:
        each queue's Spot twin too, with the same)."""
        fallbacks = {
            "gpu8": self.fallback_gpu8_types,
            "gpu4": self.fallback_gpu4_types,
            "gpu1": self.fallback_gpu1_types,
        }
        types = {
            q: list(dict.fromkeys([t, *fallbacks[q]])) for q, t in self.queue_instance_types(gpu8).items()
        }
        if spot:
            types.update({q + SPOT_SUFFIX: ts for q, ts in list(types.items())})
        return types

    @property
    def fallback_gpu8_types(self) -> list[str]:
        return [s.strip() for s in self.fallback_gpu8_instance_types.split(",") if s.strip()]

    @property
    def fallback_gpu4_types(self) -> list[str]:
        return [s.strip() for s in self.fallback_gpu4_instance_types.split(",") if s.strip()]

    @property
    def fallback_gpu1_types(self) -> list[str]:
        return [s.strip() for s in self.fallback_gpu1_instance_types.split(",") if s.strip()]

    @property
    def head_node_policies(self) -> list[str]:
        return [s.strip() for s in self.head_node_policy_arns.split(",") if s.strip()]

    @property
    def notify_domains(self) -> list[str]:
        return [s.strip() for s in self.notify_allowed_domains.split(",") if s.strip()]

    @property
    def compute_subnets(self) -> list[str]:
        return [s.strip() for s in self.compute_subnet_ids.split(",") if s.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
