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
#: Faults the demo rehearses, and how the run must end for the rehearsal to pass.
FAULTS = {
    "none": "SUCCEEDED",
    "cluster-create": "FAILED",  # CREATE_FAILED (not capacity): fails, mailed, cluster deleted
    "capacity": "SUCCEEDED",  # no p4d capacity in the first subnet: the next placement runs
    "job": "FAILED",  # a cryoSPARC job fails mid-pipeline
    "export": "FAILED",  # the results bucket refuses the export: retried, then failed, data kept
    "throttle": "SUCCEEDED",  # the ParallelCluster API answers 429 and 500 for a while
}
STATE_DIR = ROOT / ".cryopilot" / "local"


@dataclass
class DemoOptions:
    profile: str = "cgrp"
    pace: float = 20000.0
    fail: str = "none"
    state_dir: Path = STATE_DIR
    quiet: bool = False
    datasets: int = 1

    @property
    def expected_status(self) -> str:
        return FAULTS[self.fail]


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


def _inject(cloud: LocalCloud, fail: str) -> None:
    if fail == "cluster-create":
        cloud.pcluster.inject("create_failed")
    elif fail == "capacity":
        first_subnet = str(cloud.resolver.parameter_values["ComputeSubnetIds"][0]) if cloud.resolver else None
        cloud.pcluster.inject("create_failed_capacity", count=100, subnet_id=first_subnet)
    elif fail == "job":
        cloud.cryosparc_setup.append(lambda cs: cs.inject("fail", "class_2D_new"))
    elif fail == "throttle":
        cloud.pcluster.inject("throttle", count=4, operation="create_cluster")
        cloud.pcluster.inject("server_error", count=2, operation="describe_cluster")
        cloud.pcluster.inject("throttle", count=2, operation="delete_cluster")
    elif fail == "export":
        deny = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "RehearseAnExportFailure",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:PutObject",
                    "Resource": f"arn:aws:s3:::{cloud.results_bucket}/runs/*/results/*",
                }
            ],
        }
        cloud.client("s3").put_bucket_policy(Bucket=cloud.results_bucket, Policy=json.dumps(deny))


def _render_many(
    records: list[dict[str, Any] | None], plans: dict[str, int], start: float, now: float
) -> Any:
    from rich.table import Table

    table = Table(title=f"cryopilot demo — {len(records)} runs — simulated time {_fmt_h(now - start)}")
    for col in ("run", "status", "step", "stages done", "cluster"):
        table.add_column(col)
    for rec in records:
        if not rec:
            continue
        stages = rec.get("stages") or {}
        done = sum(1 for st in stages.values() if st.get("state") == "completed")
        table.add_row(
            str(rec.get("run_id")),
            str(rec.get("status")),
            str(rec.get("current_step") or ""),
            f"{done}/{plans.get(str(rec.get('run_id')), len(stages))}",
            str(rec.get("cluster_state") or "-"),
        )
    return table


def run_demo(options: DemoOptions) -> dict[str, Any]:
    from rich.console import Console
    from rich.live import Live

    if options.fail not in FAULTS:
        raise ValueError(f"unknown fault {options.fail!r}; one of {', '.join(FAULTS)}")
    if not 1 <= options.datasets <= 50:
        raise ValueError("--datasets must be between 1 and 50")
    console = Console(quiet=options.quiet)
    options.state_dir.mkdir(parents=True, exist_ok=True)
    _send_lambda_logs_to(options.state_dir / "lambda.log")
    clock = VirtualClock(pace=options.pace)
    folder, manifest, files = sample_dataset(options.profile)
    cloud = LocalCloud(clock=clock, profile=options.profile)
    with cloud:
        _inject(cloud, options.fail)
        folders = (
            [folder]
            if options.datasets == 1
            else [f"{folder}-{i:02d}" for i in range(1, options.datasets + 1)]
        )
        console.print(
            f"[bold]cryopilot demo[/bold]: {len(folders)} dataset(s) {folders[0]}"
            + (f" … {folders[-1]}" if len(folders) > 1 else "")
            + f" (profile {options.profile}"
            + (f", rehearsing fault: {options.fail}" if options.fail != "none" else "")
            + f") dropped into s3://{cloud.input_bucket}/datasets/"
        )
        wall0 = time.monotonic()
        for name in folders:
            text = (
                manifest if name == folder else manifest.replace(f"dataset: {folder}", f"dataset: {name}", 1)
            )
            cloud.drop_dataset(name, text, files)
        cloud.drain_events()
        execs = cloud.executions()
        if len(execs) != len(folders):
            raise RuntimeError(
                f"{len(folders)} uploads started {len(execs)} runs: "
                + json.dumps([d.result for d in cloud.deliveries])[:2000]
            )
        arns = {e["name"]: e["executionArn"] for e in execs}
        sfn = cloud.client("stepfunctions")
        from cryopilot import runs

        statuses: dict[str, str] = {}
        plan_sizes: dict[str, int] = {}
        with Live(_render(None, [], clock.start, clock.now()), console=console, refresh_per_second=4) as live:
            while True:
                statuses = {rid: sfn.describe_execution(executionArn=a)["status"] for rid, a in arns.items()}
                done = all(st != "RUNNING" for st in statuses.values())
                if not options.quiet:  # quiet: nothing to show, leave the interpreter to the run
                    records = [cloud.run_record(rid) for rid in arns]
                    if len(arns) == 1:
                        (rid,) = arns
                        record = records[0]
                        plan = runs.get_plan(rid) if record and record.get("preset") else []
                        live.update(_render(record, plan, clock.start, clock.now()))
                    else:
                        for rec in records:
                            if rec and rec.get("preset") and rec["run_id"] not in plan_sizes:
                                plan_sizes[rec["run_id"]] = len(runs.get_plan(rec["run_id"]))
                        live.update(_render_many(records, plan_sizes, clock.start, clock.now()))
                if done:
                    break
                time.sleep(0.25)
        wall = time.monotonic() - wall0
        mails = cloud.mails()
        summaries = []
        for rid in arns:
            record = cloud.run_record(rid) or {}
            report = _fetch_report(cloud, rid, options.state_dir / "reports" / rid)
            summaries.append(_run_summary(record, statuses[rid], report))
        clusters_left = sorted(cloud.pcluster.clusters())
        summary = _write_outputs(options.state_dir, summaries, mails, wall, clock, clusters_left)
    _print_summary(console, summary)
    return summary


def _fetch_report(cloud: LocalCloud, run_id: str, target: Path) -> str | None:
    """Copy the run's report from the local results bucket; the HTML page's path, or None."""
    s3 = cloud.client("s3")
    prefix = f"runs/{run_id}/report/"
    keys = [
        o["Key"] for o in s3.list_objects_v2(Bucket=cloud.results_bucket, Prefix=prefix).get("Contents", [])
    ]
    if not keys:
        return None
    target.mkdir(parents=True, exist_ok=True)
    for key in keys:
        (target / key[len(prefix) :]).write_bytes(
            s3.get_object(Bucket=cloud.results_bucket, Key=key)["Body"].read()
        )
    html = target / "report.html"
    return _shown(html) if html.exists() else None


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _run_summary(record: dict[str, Any], status: str, report: str | None) -> dict[str, Any]:
    start = record.get("started_epoch")
    end = record.get("export_finished_at") or record.get("finished_epoch")
    return {
        "run_id": record.get("run_id"),
        "dataset": record.get("dataset"),
        "status": status,
        "resolution_A": record.get("resolution_A"),
        "time_to_structure_h": round((float(end) - float(start)) / 3600, 3) if start and end else None,
        "cost_usd": record.get("cost_usd"),
        "gpu_hours_paid": record.get("gpu_hours_paid"),
        "gpu_hours_busy": record.get("gpu_hours_busy"),
        "placement": record.get("placement"),
        "cluster_deleted": bool(record.get("cluster_deleted")),
        "error": record.get("error"),
        "report": report,
    }


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
    summaries: list[dict[str, Any]],
    mails: list[dict[str, Any]],
    wall: float,
    clock: VirtualClock,
    clusters_left: list[str],
) -> dict[str, Any]:
    outbox = state_dir / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    for old in outbox.glob("*.txt"):
        old.unlink()
    for i, m in enumerate(mails, 1):
        (outbox / f"{i:03d}-{m['attributes'].get('event', 'mail')}.txt").write_text(
            f"Subject: {m['subject']}\n\n{m['message']}\n", encoding="utf-8"
        )
    first = summaries[0]
    summary = {
        **first,
        "mails": [m["subject"] for m in mails],
        "outbox": _shown(outbox),
        "lambda_log": _shown(state_dir / "lambda.log"),
        "wall_seconds": round(wall, 1),
        "simulated_hours": round((clock.now() - clock.start) / 3600, 2),
        "clusters_left": clusters_left,
    }
    if len(summaries) > 1:
        statuses = {s["status"] for s in summaries}
        summary["status"] = statuses.pop() if len(statuses) == 1 else "MIXED"
        summary["cluster_deleted"] = all(s["cluster_deleted"] for s in summaries) and not clusters_left
        summary["runs"] = summaries
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
    if s.get("gpu_hours_paid") is not None:
        console.print(
            f"  GPU-hours            {float(s['gpu_hours_busy'] or 0):,.1f} used of "
            f"{float(s['gpu_hours_paid']):,.1f} paid (the stages' nodes)"
        )
    if s.get("cost_usd") is not None:
        console.print(f"  cost                 ${float(s['cost_usd']):,.2f} (compute nodes, on-demand)")
    if s.get("placement"):
        console.print(f"  placement            {s['placement']}")
    if s.get("runs"):
        done = sum(1 for r in s["runs"] if r["status"] == "SUCCEEDED")
        console.print(f"  runs                 {done} of {len(s['runs'])} succeeded")
    console.print(f"  clusters left        {len(s['clusters_left'])}")
    console.print(f"  mails                {len(s['mails'])} in {s['outbox']}/")
    if s.get("report"):
        console.print(f"  report               {s['report']}")
    console.print(f"  wall time            {s['wall_seconds']} s")
