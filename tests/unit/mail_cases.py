"""Fixed run records for the mail tests: every kind of mail the controller sends."""

from __future__ import annotations

from typing import Any

REGION = "us-east-1"
RESULTS_BUCKET = "cryopilot-results-123"
STACK = "cryopilot-mailtest"

PLAN: list[dict[str, Any]] = [
    {
        "id": "import",
        "title": "Import movies",
        "job_type": "import_movies",
        "lane": None,
        "gpus": 0,
        "params": {},
        "inputs": [],
        "time_limit_seconds": 3600,
    },
    {
        "id": "motion",
        "title": "Patch motion correction",
        "job_type": "patch_motion_correction_multi",
        "lane": "gpu8",
        "gpus": 8,
        "params": {},
        "inputs": [],
        "time_limit_seconds": 7200,
    },
    {
        "id": "refine",
        "title": "Non-uniform refinement with a title far longer than forty characters",
        "job_type": "nonuniform_refine_new",
        "lane": "gpu1",
        "gpus": 1,
        "params": {},
        "inputs": [],
        "time_limit_seconds": 7200,
    },
]

BASE: dict[str, Any] = {
    "run_id": "cgrp-20260101T000000-1a2b",
    "dataset": "cgrp",
    "execution_arn": (
        "arn:aws:states:us-east-1:123456789012:execution:cryopilot-run:cgrp-20260101T000000-1a2b"
    ),
    "cluster_name": "cryopilot-cgrp-1a2b",
    "cluster_state": "CREATE_COMPLETE",
    "current_step": "stage:motion",
    "cryosparc_project": "P3",
    "started_epoch": 1_767_225_600.0,
    "finished_epoch": 1_767_240_000.5,
    "stages": {
        "import": {
            "title": "Import movies",
            "lane": None,
            "gpus": 0,
            "state": "completed",
            "started_at": 1_767_226_000.0,
            "completed_at": 1_767_226_300.0,
        },
        "motion": {
            "title": "Patch motion correction",
            "lane": "gpu8",
            "gpus": 8,
            "state": "running",
            "started_at": 1_767_226_400.0,
        },
    },
    "decisions": [
        {"stage_id": "select2d", "summary": "kept 12 of 50 classes", "kind": "select_2d_classes"},
        {"stage_id": "hetero", "summary": "class 2 (41%)", "kind": "choose_hetero_class"},
    ],
    "placements_tried": [
        {"label": "us-east-1a p4d", "cluster": "cryopilot-cgrp-1a2b", "reason": "no capacity"},
    ],
    "placement": "us-east-1b p5",
}

SUCCEEDED: dict[str, Any] = {
    **BASE,
    "status": "RUNNING",
    "current_step": "exported",
    "export_finished_at": 1_767_239_000.25,
    "resolution_A": 2.871,
    "cost_usd": 1234.56,
    "cost_basis": "nodes billed",
    "results": {
        "uri": "s3://cryopilot-results-123/runs/cgrp-20260101T000000-1a2b/results/",
        "files": [
            {"kind": "map", "key": "runs/x/results/map.mrc", "size": 123456789},
            {"kind": "fsc", "key": "runs/x/results/fsc.txt", "size": 1024},
        ],
    },
    "report": {"html": "s3://cryopilot-results-123/runs/x/report/report.html"},
    "stages": {
        **BASE["stages"],
        "motion": {**BASE["stages"]["motion"], "state": "completed", "completed_at": 1_767_230_000.0},
        "refine": {
            "title": PLAN[2]["title"],
            "lane": "gpu1",
            "gpus": 1,
            "state": "completed",
            "started_at": 1_767_230_100.0,
            "completed_at": 1_767_238_000.0,
        },
    },
}

#: failure-mail variants: (name, record)
FAILURES: list[tuple[str, dict[str, Any]]] = [
    (
        "stage_failed_cluster_left",
        {
            **BASE,
            "status": "FAILED",
            "cost_usd": 88.4,
            "cost_basis": "stage time",
            "error": {"type": "JobFailedError", "message": "job J7 failed", "step": "stage:motion"},
        },
    ),
    (
        "not_submitted_stage_deleted",
        {
            **BASE,
            "status": "FAILED",
            "cluster_deleted": True,
            "cluster_state": "DELETED",
            "error": {"type": "AgentError", "message": "no head node", "step": "stage:refine"},
            "resolution_A": 3.5,
            "partial_export": {"files": 3, "stage": "motion", "uri": "s3://b/runs/x/results/partial/"},
        },
    ),
    (
        "export_no_cluster",
        {
            "run_id": "r-export",
            "status": "FAILED",
            "cluster_state": "NOT_CREATED",
            "error": {"type": "ExportError", "message": "missing fsc", "step": "export"},
            "partial_export": {"files": 0, "reason": "no stage had made a map yet"},
            "results": {"files": [{"kind": "map", "key": "k", "size": 1}]},
        },
    ),
    ("bare", {"run_id": "r-bare"}),
]

#: cleanup-mail variants: (name, record, execution status, action)
CLEANUPS: list[tuple[str, dict[str, Any], str, str]] = [
    ("aborted_delete_requested", {**BASE, "status": "CANCELLED"}, "ABORTED", "delete_requested"),
    ("timed_out_delete_failed", {**BASE, "status": "FAILED"}, "TIMED_OUT", "delete_failed"),
    ("failed_already_deleted", {**BASE, "cluster_deleted": True}, "FAILED", "already_deleted"),
    ("no_cluster_no_step", {"run_id": "r-nc", "current_step": None}, "FAILED", "no_cluster"),
]

#: janitor reports: (name, checked, actions)
JANITORS: list[tuple[str, int, list[dict[str, Any]]]] = [
    (
        "quiet",
        3,
        [
            {
                "cluster": "cryopilot-a",
                "run_id": "a",
                "reason": "its run is over (FAILED)",
                "action": "delete_requested",
                "attempts": 1,
            },
            {
                "cluster": "cryopilot-b",
                "run_id": None,
                "reason": "no run record for its run id",
                "action": "deleting",
                "attempts": 0,
            },
        ],
    ),
    (
        "loud",
        2,
        [
            {
                "cluster": "cryopilot-c",
                "run_id": "c",
                "reason": "older than the maximum run time",
                "action": "delete_failed",
                "attempts": 3,
                "loud": True,
                "detail": "boom",
            },
            {
                "cluster": "cryopilot-d",
                "run_id": None,
                "reason": "no run record for its run id",
                "action": "stopped_and_delete_requested",
                "attempts": 1,
            },
        ],
    ),
]
