"""``cryopilot demo``: one whole run on the local stand-ins, shown live in the terminal.

A sample dataset (small generated files and a manifest) is dropped into the local input bucket;
the template's EventBridge rule routes the upload to StartRun; the real state machine runs; the
terminal shows each stage, its queue and GPUs, and the cluster's state, on the simulated clock.
Outputs under ``.cryopilot/local/``: ``outbox/`` (one file per SNS message) and ``last-run.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cryopilot_sim.clock import VirtualClock
from cryopilot_sim.harness import LocalCloud
from cryopilot_sim.template import ROOT

PROFILES = {"cgrp": "cgrp.yaml", "glp1r": "glp1r.yaml", "spike": "spike.yaml"}
FAULTS = ("cluster-create", "job", "none")
STATE_DIR = ROOT / ".cryopilot" / "local"


@dataclass
class DemoOptions:
    profile: str = "cgrp"
    pace: float = 20000.0
    fail: str = "none"
    state_dir: Path = STATE_DIR
    quiet: bool = False


def sample_dataset(profile: str) -> tuple[str, str, dict[str, bytes]]:
    """(folder, manifest text, files) of a small generated dataset for ``profile``."""
    text = (ROOT / "events" / "manifests" / PROFILES[profile]).read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    folder = doc["dataset"]
    pattern = doc["input"]["glob"]
    directory, _, suffix = pattern.rpartition("/*")
    files = {f"{directory}/sample_{i:04d}{suffix}": bytes([i % 256]) * 256 for i in range(8)}
    gain = doc.get("acquisition", {}).get("gain_reference")
    if gain:
        files[gain] = b"\x01" * 256
    doc["input"].pop("expected_files", None)
    return folder, yaml.safe_dump(doc, sort_keys=False), files


def _fmt_h(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60:d} h {minutes % 60:02d} min"


def _render(record: dict[str, Any] | None, plan: list[dict[str, Any]], start: float, now: float) -> Any:
    from rich.table import Table

    table = Table(title=f"cryopilot demo — simulated time {_fmt_h(now - start)}", expand=False)
    table.add_column("stage")
    table.add_column("queue")
    table.add_column("GPUs", justify="right")
    table.add_column("progress")
    table.add_column("state")
    table.add_column("elapsed", justify="right")
    if not record:
        table.add_row("(waiting for the run to start)", "", "", "", "", "")
        return table
    table.caption = (
        f"run {record.get('run_id')} · cluster {record.get('cluster_name') or '-'}: "
        f"{record.get('cluster_state') or 'not requested'} · step {record.get('current_step')}"
    )
    stages = record.get("stages") or {}
    for planned in plan:
        rec = stages.get(planned["id"], {})
        progress = float(rec.get("progress") or 0.0)
        state = rec.get("state", "pending")
        if state == "completed":
            progress = 1.0
        bar = "█" * int(progress * 20) + "░" * (20 - int(progress * 20))
        elapsed = ""
        if rec.get("started_at"):
            end = rec.get("completed_at") or now
            elapsed = _fmt_h(float(end) - float(rec["started_at"]))
        table.add_row(
            planned["title"],
            planned.get("lane") or "master",
            str(planned.get("gpus", 0)),
            f"{bar} {progress * 100:5.1f}%",
            state,
            elapsed,
        )
    return table


def run_demo(options: DemoOptions) -> dict[str, Any]:
    from rich.console import Console
    from rich.live import Live

    console = Console(quiet=options.quiet)
    options.state_dir.mkdir(parents=True, exist_ok=True)
    _send_lambda_logs_to(options.state_dir / "lambda.log")
    clock = VirtualClock(pace=options.pace)
    folder, manifest, files = sample_dataset(options.profile)
    cloud = LocalCloud(clock=clock, profile=options.profile)
    with cloud:
        if options.fail == "cluster-create":
            cloud.pcluster.inject("create_failed")
        elif options.fail == "job":
            cloud.cryosparc_setup.append(lambda cs: cs.inject("fail", "class_2D_new"))
        console.print(
            f"[bold]cryopilot demo[/bold]: dataset {folder} (profile {options.profile}), "
            f"dropped into s3://{cloud.input_bucket}/datasets/{folder}/"
        )
        wall0 = time.monotonic()
        cloud.drop_dataset(folder, manifest, files)
        cloud.drain_events()
        execs = cloud.executions()
        if not execs:
            raise RuntimeError(
                "the upload started no run: " + json.dumps([d.result for d in cloud.deliveries])
            )
        arn = execs[0]["executionArn"]
        run_id = execs[0]["name"]
        sfn = cloud.client("stepfunctions")
        from cryopilot import runs

        with Live(_render(None, [], clock.start, clock.now()), console=console, refresh_per_second=8) as live:
            while True:
                status = sfn.describe_execution(executionArn=arn)["status"]
                record = cloud.run_record(run_id)
                plan = runs.get_plan(run_id) if record and record.get("preset") else []
                live.update(_render(record, plan, clock.start, clock.now()))
                if status != "RUNNING":
                    break
                time.sleep(0.1)
        wall = time.monotonic() - wall0
        record = cloud.run_record(run_id) or {}
        mails = cloud.mails()
        summary = _write_outputs(options.state_dir, record, mails, status, wall, clock)
    _print_summary(console, summary)
    return summary


def _send_lambda_logs_to(path: Path) -> None:
    """The handlers log JSON lines (as in CloudWatch); keep them out of the live display."""
    import logging
    import warnings

    from cryopilot.observability import logger as lambda_logger

    stream = path.open("w", encoding="utf-8")
    for handler in logging.getLogger(lambda_logger.name).handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)
    # moto logs every Fail state it executes at ERROR level; the demo reports failures itself.
    logging.getLogger("moto").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    warnings.filterwarnings("ignore", module="cryosparc")


def _write_outputs(
    state_dir: Path,
    record: dict[str, Any],
    mails: list[dict[str, Any]],
    status: str,
    wall: float,
    clock: VirtualClock,
) -> dict[str, Any]:
    outbox = state_dir / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    for old in outbox.glob("*.txt"):
        old.unlink()
    for i, m in enumerate(mails, 1):
        (outbox / f"{i:03d}-{m['attributes'].get('event', 'mail')}.txt").write_text(
            f"Subject: {m['subject']}\n\n{m['message']}\n", encoding="utf-8"
        )
    start = record.get("started_epoch")
    end = record.get("export_finished_at") or record.get("finished_epoch")
    summary = {
        "run_id": record.get("run_id"),
        "dataset": record.get("dataset"),
        "status": status,
        "resolution_A": record.get("resolution_A"),
        "time_to_structure_h": round((float(end) - float(start)) / 3600, 3) if start and end else None,
        "cluster_deleted": bool(record.get("cluster_deleted")),
        "error": record.get("error"),
        "mails": [m["subject"] for m in mails],
        "outbox": str(outbox.relative_to(ROOT)) if outbox.is_relative_to(ROOT) else str(outbox),
        "lambda_log": str(state_dir / "lambda.log"),
        "report": None,
        "wall_seconds": round(wall, 1),
        "simulated_hours": round((clock.now() - clock.start) / 3600, 2),
    }
    (state_dir / "last-run.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _print_summary(console: Any, s: dict[str, Any]) -> None:
    ok = s["status"] == "SUCCEEDED"
    console.print(f"\nrun {s['run_id']}: [bold {'green' if ok else 'red'}]{s['status']}[/]")
    if s["resolution_A"] is not None:
        console.print(f"  resolution           {s['resolution_A']:.2f} Å")
    if s["time_to_structure_h"] is not None:
        console.print(f"  time to structure    {_fmt_h(s['time_to_structure_h'] * 3600)} (simulated)")
    if s["error"]:
        console.print(f"  failed at            {s['error'].get('step')}: {s['error'].get('type')}")
    console.print(f"  cluster deleted      {'yes' if s['cluster_deleted'] else 'NO'}")
    console.print(f"  mails                {len(s['mails'])} in {s['outbox']}/")
    console.print(f"  wall time            {s['wall_seconds']} s")
