"""The run record: the readable account of one run, as the run table keeps it.

Step Functions is the source of truth for *what happens*; the record says what happened (status,
current step, cluster, stage times, job ids, decisions, resolution, cost, error) for the mails, the
report, the janitor and the operator's CLI. These models are its schema: every field a step writes
is declared here, so a reader sees the whole record in one place. ``adapters.runs.RunStore`` reads
and writes them (``adapters.campaigns`` a campaign's own item, ``campaign#<name>``, through the
store's table and encoding); nothing else touches the table's items.

Three items make a run, so that a stage poll reads a few hundred bytes rather than the whole record:

* :class:`RunRecord` (``run#<run id>``): everything, growing with every stage and decision;
* :class:`RunContext` (``ctx#<run id>``): the few values every stage poll needs;
* the plan (``plan#<run id>``): the planned stages (``protocol.stage.PlannedStage``), written once.

Times are ISO-8601 text (``*_at``) or seconds since the epoch (``*_epoch`` and a stage's times).
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cryopilot.core.status import RUN_OVER

RunStatus = Literal["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]


class _Item(BaseModel):
    # Reading an item must never fail on a field a newer version added: unknown fields are ignored.
    model_config = ConfigDict(extra="ignore", defer_build=True)


class StageRecord(_Item):
    """``stages.<stage id>``: one planned stage, as its jobs went."""

    title: str = ""
    lane: str | None = None
    gpus: int | None = None
    state: str = "pending"
    jobs: list[str] = Field(default_factory=list)
    job_types: list[str] = Field(default_factory=list)
    progress: float | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    completed_at: float | None = None
    polls: int | None = None
    last_wait_seconds: int | None = None
    cost_usd: float | None = None
    num_micrographs: int | None = None
    num_particles: int | None = None
    resolution_A: float | None = None
    killed_for_time: bool | None = None
    error: str | None = None
    #: the Spot interruptions of its jobs (``{"at", "job", "lane", "error"}``), and the On-Demand lane
    #: it was resubmitted on (``capacity: spot-where-safe``)
    spot_interruptions: list[dict[str, Any]] = Field(default_factory=list)
    resubmitted_on: str | None = None
    #: the lane's capacity as the last poll saw it, e.g. "waiting for capacity on gpu8 since 10:42 UTC:
    #: p4d.24xlarge InsufficientInstanceCapacity; trying p4de.24xlarge" (domain.capacity)
    capacity_note: str | None = None
    capacity_waiting: bool | None = None

    @property
    def wall_seconds(self) -> float | None:
        if self.started_at is None or self.completed_at is None:
            return None
        return max(0.0, self.completed_at - self.started_at)


class RunRecord(_Item):
    """``run#<run id>``."""

    run_id: str
    status: RunStatus = "QUEUED"
    created_at: str | None = None
    updated_at: str | None = None
    # how it started
    dataset: str | None = None
    trigger: str | None = None
    execution_arn: str | None = None
    #: where the manifest is: ``{bucket, key, version_id, etag}`` of the S3 object version, or
    #: ``{inline: true, data_s3_uri, kept_in: "execution input"}`` (the document itself is never
    #: copied into the record: see the README's manifest reference)
    manifest: dict[str, Any] | None = None
    #: the record outgrew DynamoDB's item limit and was cut down to its essentials
    record_truncated: bool = False
    start_input: str | None = None
    data_s3_uri: str | None = None
    notify: list[str] = Field(default_factory=list)
    # admission (adapters.admission)
    queued_at: str | None = None
    admitted_at: str | None = None
    admitted_epoch: float | None = None
    slot_released_at: str | None = None
    # the campaign (domain.campaign)
    campaign: str | None = None
    compound: str | None = None
    #: a repeat run's reference as Validate resolved it: ``source`` (a ``ReferenceSource``),
    #: ``inputs`` (the ``ReferenceInputs`` the plan took) and ``association_uri`` (the S3 folder of
    #: the cluster's ``reference`` data repository association, None when inside the data's)
    reference: dict[str, Any] | None = None
    #: the manifest's ``repeat`` thresholds, and how the run compared with its reference
    repeat_thresholds: dict[str, Any] | None = None
    repeat_verdict: dict[str, Any] | None = None
    #: the final map's pixel size and box as planned (what a run that becomes a reference gives)
    map_pixel_size_A: float | None = None
    map_box_pix: int | None = None
    # the plan
    preset: str | None = None
    #: why the run took its preset (named by the manifest, the campaign's reference, the input kind)
    preset_reason: str | None = None
    layout: str | None = None
    #: the manifest's ``pipeline.capacity``, and the GPU queues whose Spot twin a stage is planned on
    capacity: str | None = None
    spot_queues: list[str] = Field(default_factory=list)
    settings: dict[str, Any] = Field(default_factory=dict)
    started_at: str | None = None
    started_epoch: float | None = None
    current_step: str | None = None
    current_stage: str | None = None
    # the cluster
    cluster_name: str | None = None
    cluster_state: str | None = None
    cluster_requested_at: str | None = None
    cluster_requested_epoch: float | None = None
    cluster_ready_at: str | None = None
    head_node_instance_id: str | None = None
    placement: str | None = None
    placement_attempt: int | None = None
    # the storage (Validate measures the data and sizes FSx with cryopilot.domain.storage)
    data_bytes: int | None = None
    data_objects: int | None = None
    fsx_storage_gib: int | None = None
    fsx_throughput_mb_per_tib: int | None = None
    #: the storage model's lines, need, capacity and throughput rule, as Validate computed them
    storage: dict[str, Any] | None = None
    #: each preflight check's name, result (ok, warn, fail) and message, as Validate ran them
    preflight: list[dict[str, Any]] | None = None
    #: ``{"label", "cluster", "reason"}`` of each placement that had no capacity
    placements_tried: list[dict[str, Any]] = Field(default_factory=list)
    abandoned_clusters: list[str] = Field(default_factory=list)
    #: the cluster's EBS volumes (found by tag when it was ready) and, once it is deleted, the
    #: snapshots of them the janitor tagged (``{"id", "volume_id", "started", "gib"}``)
    volume_ids: list[str] = Field(default_factory=list)
    shared_snapshots: list[dict[str, Any]] | None = None
    delete_requested_at: str | None = None
    cluster_deleted: bool = False
    cluster_deleted_at: str | None = None
    janitor_delete_attempts: int | None = None
    # the work
    cryosparc_project: str | None = None
    stages: dict[str, StageRecord] = Field(default_factory=dict)
    decisions: list[dict[str, Any]] = Field(default_factory=list)
    #: ``{"stage", "at", "note"}`` each time a stage's capacity changed (waiting, failing over, resolved)
    capacity_events: list[dict[str, Any]] = Field(default_factory=list)
    #: the GPU nodes seen (describeClusterInstances), by instance id: ``{"instance_type", "queue",
    #: "launched_at", "last_seen", "ended_by"}`` (domain.nodes)
    compute_nodes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: what those nodes cost so far, and their GPU-hours (each up to now, or to its last listing's
    #: successor): written by the stage polls, superseded by ``cost_usd`` once the report has run
    nodes_cost_usd: float | None = None
    nodes_gpu_hours: float | None = None
    resolution_A: float | None = None
    # the end
    export_started_at: float | None = None
    export_finished_at: float | None = None
    results: dict[str, Any] | None = None
    partial_export: dict[str, Any] | None = None
    #: ``results`` or ``project`` (the manifest's ``export``)
    export_mode: str | None = None
    #: the data repository task of the export: its id, paths, attempts, files
    export: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    cost_usd: float | None = None
    cost_basis: str | None = None
    stage_cost_usd: float | None = None
    #: the FSx file system's estimated cost (steps/report.py), beside the nodes' ``cost_usd``
    storage_cost_usd: float | None = None
    #: the /shared snapshot's estimated cost over SnapshotRetentionDays (steps/report.py)
    snapshot_cost_usd: float | None = None
    gpu_hours_paid: float | None = None
    gpu_hours_busy: float | None = None
    #: the stages that ran on Spot and what Spot saved, (least, most) USD (steps/report.py)
    spot_summary: str | None = None
    spot_saved_usd: list[float] | None = None
    error: dict[str, Any] | None = None
    finished_at: str | None = None
    finished_epoch: float | None = None
    mails: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def is_over(self) -> bool:
        return self.status in RUN_OVER


class RunContext(_Item):
    """``ctx#<run id>``: what every stage poll reads (Validate and the cluster step write it)."""

    run_id: str
    preset: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)
    started_epoch: float | None = None
    costs: dict[str, float] = Field(default_factory=dict)
    head_node_instance_id: str | None = None
    gpu8_instance_type: str | None = None
    #: per stage id, while it waits for capacity: ``{"since", "all_down_since", "note"}``
    capacity: dict[str, Any] = Field(default_factory=dict)
    cluster_name: str | None = None
    #: per stage id, the On-Demand lane a stage lost to a Spot interruption was resubmitted on
    lanes: dict[str, str] = Field(default_factory=dict)
    #: when the run's nodes were last listed, and each queue's type as its latest node has it
    nodes_checked_epoch: float | None = None
    queue_types: dict[str, str] = Field(default_factory=dict)
