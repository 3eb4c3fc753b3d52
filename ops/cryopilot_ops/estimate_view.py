"""The operator's view of a cost estimate: both layouts side by side as plain text, with every
assumption behind the figures (``cryopilot estimate``; the benchmark reuses :func:`text_table`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cryopilot.core.formatting import fmt_duration
from cryopilot.domain.estimate import HEAD_QUEUE, Estimate

__all__ = ["render_comparison", "render_full_vs_repeat", "text_table"]


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


def _storage_rows(w: Estimate, c: Estimate) -> list[list[str]]:
    """The FSx file system's cost line (both layouts get the same file system, for their own time)."""
    if w.storage is None or c.storage is None:
        return []
    fsx = c.storage
    return [
        [
            f"  FSx for Lustre ({fsx.capacity_gib:,} GiB, {fsx.throughput_mb_per_tib} MB/s/TiB)",
            f"{w.storage_cost_usd:,.2f}",
            f"{c.storage_cost_usd:,.2f}",
            "",
        ],
        *(
            [
                [
                    f"  /shared snapshot after the run ({fsx.snapshot_gib:,.0f} GiB,"
                    f" {fsx.snapshot_days or 30} days; not in the total)",
                    f"{fsx.snapshot_cost_usd:,.2f}",
                    f"{fsx.snapshot_cost_usd:,.2f}",
                    "",
                ]
            ]
            if fsx.snapshot_source
            else []
        ),
    ]


def _storage_assumptions(c: Estimate) -> list[str]:
    """What the FSx size and price rest on."""
    fsx = c.storage
    if fsx is None:
        return []
    when = f"as of {fsx.as_of.isoformat()}" if fsx.as_of else "no date"
    flag = "verified" if fsx.verified else "NOT verified"
    held = "; ".join(f"{what} {gib:,.0f} GiB" for what, gib in fsx.lines)
    return [
        f"  FSx for Lustre {fsx.deployment_type}, {fsx.capacity_gib:,} GiB (storage model: {held};"
        f" {fsx.need_gib:,} GiB with headroom), paid for the whole time to structure",
        f"    throughput: {fsx.throughput_rule}",
        f"    {fsx.usd_per_gb_month:.3f} USD per GB-month at {fsx.throughput_mb_per_tib} MB/s/TiB"
        f"  {when}  {flag}  {fsx.source}",
        *(
            [
                f"  /shared EBS snapshot: {fsx.snapshot_gib:,.0f} GiB (cryoSPARC's install and database: an"
                f" assumption) kept SnapshotRetentionDays, {fsx.snapshot_usd_per_gb_month:.3f} USD per"
                f" GB-month  {'verified' if fsx.snapshot_verified else 'NOT verified'}"
                f"  {fsx.snapshot_source}",
            ]
            if fsx.snapshot_source
            else []
        ),
    ]


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
        *_storage_rows(w, c),
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
    out += _storage_assumptions(c)
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


def render_full_vs_repeat(full: tuple[Estimate, Estimate], repeat: tuple[Estimate, Estimate]) -> str:
    """A repeat structure against the full pipeline on the same dataset: (white-paper layout,
    cryopilot layout) estimates of each, and the repeat on cryopilot's layout as a share of the
    full run on the white paper's."""
    base = full[0]
    columns = [("full, white paper", full[0]), ("full, cryopilot", full[1])]
    columns += [("repeat, white paper", repeat[0]), ("repeat, cryopilot", repeat[1])]

    def share(value: float, of: float) -> str:
        return _pct(value / of) if of else "-"

    rows = [
        ["time to structure", *(fmt_duration(e.time_to_structure_seconds) for _, e in columns)],
        ["cost", *(f"{e.cost_usd:,.2f}" for _, e in columns)],
        ["GPU-hours paid", *(f"{e.gpu_hours_paid:,.1f}" for _, e in columns)],
        ["utilisation (busy / paid)", *(_pct(e.utilisation) for _, e in columns)],
    ]
    rep = repeat[1]
    out = [f"{base.title or base.plan}: full pipeline against repeat ({base.region}, USD)", ""]
    out += text_table(["", *(name for name, _ in columns)], rows, right={1, 2, 3, 4})
    out += [
        "",
        "  repeat on cryopilot's layout:"
        f" {share(rep.time_to_structure_seconds, base.time_to_structure_seconds)}"
        " of the full run's time to structure on the white paper's layout,"
        f" {share(rep.cost_usd, base.cost_usd)} of its cost",
        "  repeat stages: Table 1's figures for the stages kept (data/profiles.yaml, the repeat notes):"
        " no blob picking, 2D classification or ab initio; the template picker at the blob picker's"
        " figure; each hetero round at Table 1's total / the dataset's rounds",
    ]
    return "\n".join(out) + "\n"
