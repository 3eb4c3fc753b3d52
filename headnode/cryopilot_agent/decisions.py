"""The automatic choices cryoSPARC expects a person to make, as pure functions.

select_2d_classes
    Input: the Select 2D job's class list (``get_class_info``: class_idx, res_A,
    num_particles_total). A class is selected when ``res_A <= max_res_A`` and it holds at least
    ``min_particle_fraction`` of all particles. If fewer than ``min_classes`` pass, the
    ``min_classes`` best-resolved classes holding any particles are selected instead. A class
    without a resolution (``res_A`` missing, null or not a finite number) never passes the rule and
    ranks after every resolved class in that fallback.

choose_hetero_class
    Input: per class k of a heterogeneous refinement, the particle count of ``particles_class_k``
    and the resolution of ``volume_class_k`` (summary stats ``fsc_info_best.radwn_final_A``).
    Among classes holding at least ``min_particle_fraction`` of the particles, the best
    (lowest) resolution wins, ties going to the larger class; without resolutions, the largest class.
    The decision says so when it falls back, and why.
"""

from __future__ import annotations

import math
from typing import Any

from cryopilot.protocol.agent import Decision


def resolution(c: dict[str, Any]) -> float | None:
    """A class's ``res_A`` in Å, or None when it has none that is a finite number."""
    value = c.get("res_A")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _class_numbers(c: dict[str, Any], selected: list[int]) -> dict[str, Any]:
    return {
        "class_idx": int(c["class_idx"]),
        "res_A": resolution(c),
        "num_particles": int(c.get("num_particles_total", 0)),
        "selected": int(c["class_idx"]) in selected,
    }


def _best_resolved_first(c: dict[str, Any]) -> tuple[bool, float]:
    res = resolution(c)
    return (res is None, res if res is not None else 0.0)


def select_2d_classes(
    stage_id: str, classes: list[dict[str, Any]], params: dict[str, Any]
) -> tuple[list[int], Decision]:
    max_res = float(params.get("max_res_A", 12.0))
    min_frac = float(params.get("min_particle_fraction", 0.002))
    min_classes = int(params.get("min_classes", 3))
    total = sum(int(c.get("num_particles_total", 0)) for c in classes)
    floor = min_frac * total

    def passes(c: dict[str, Any]) -> bool:
        res = resolution(c)
        return res is not None and res <= max_res and int(c.get("num_particles_total", 0)) >= floor

    passed = [c for c in classes if passes(c)]
    fallback = len(passed) < min_classes
    if fallback:
        with_particles = [c for c in classes if int(c.get("num_particles_total", 0)) > 0]
        passed = sorted(with_particles, key=_best_resolved_first)[:min_classes]
    selected = sorted(int(c["class_idx"]) for c in passed)
    kept = sum(int(c.get("num_particles_total", 0)) for c in passed)
    unresolved = sum(1 for c in classes if resolution(c) is None)
    summary = (
        f"2D selection: kept {len(selected)} of {len(classes)} classes, {kept:,} of {total:,} particles "
        f"({(kept / total if total else 0):.0%}); rule: res <= {max_res:g} Å and >= {min_frac:.2%} particles"
        + (" (too few passed: best-resolved classes taken)" if fallback else "")
        + (f"; {unresolved} class(es) reported no resolution" if unresolved else "")
    )
    numbers: dict[str, Any] = {
        "rule": {"max_res_A": max_res, "min_particle_fraction": min_frac, "min_classes": min_classes},
        "classes_total": len(classes),
        "classes_selected": len(selected),
        "classes_without_resolution": unresolved,
        "particles_total": total,
        "particles_selected": kept,
        "fallback": fallback,
        "selected": selected,
        "classes": [_class_numbers(c, selected) for c in classes],
    }
    return selected, Decision(stage_id=stage_id, kind="select_2d_classes", summary=summary, numbers=numbers)


def choose_hetero_class(
    stage_id: str, classes: list[dict[str, Any]], params: dict[str, Any]
) -> tuple[int, Decision]:
    """``classes``: [{"class": k, "num_particles": n, "res_A": float | None}, ...]."""
    if not classes:
        raise ValueError(f"{stage_id}: heterogeneous refinement has no class outputs")
    min_frac = float(params.get("min_particle_fraction", 0.15))
    total = sum(int(c["num_particles"]) for c in classes)
    share = f">= {min_frac:.0%} of the particles"
    notes: list[str] = []
    eligible = [c for c in classes if int(c["num_particles"]) >= min_frac * total]
    if not eligible:
        eligible = list(classes)
        notes.append(f"no class held {share}, so every class was compared")
    with_res = [c for c in eligible if resolution(c) is not None]
    unresolved = [int(c["class"]) for c in eligible if resolution(c) is None]
    fallback_reason: str | None = None
    if with_res:
        best = min(with_res, key=lambda c: (_best_resolved_first(c), -int(c["num_particles"])))
        head = f"carried class {best['class']} forward ({resolution(best):.2f} Å, "
        basis = f"best resolution among classes with {share}"
        if unresolved:
            notes.append(f"class(es) {', '.join(map(str, unresolved))} reported no resolution")
    else:
        best = max(eligible, key=lambda c: int(c["num_particles"]))
        fallback_reason = (
            f"none of the {len(eligible)} classes compared reported a resolution "
            "(no fsc_info_best.radwn_final_A in their volumes' summary statistics)"
        )
        head = f"fell back to the largest class, class {best['class']} ("
        basis = f"chosen by size because {fallback_reason}"
    k = int(best["class"])
    tail = "".join(f"; {note}" for note in notes)
    summary = f"{stage_id}: {head}{int(best['num_particles']):,} of {total:,} particles) — {basis}{tail}"
    numbers: dict[str, Any] = {
        "rule": {"min_particle_fraction": min_frac},
        "chosen_class": k,
        "particles_total": total,
        "fallback": fallback_reason is not None,
        "fallback_reason": fallback_reason,
        "classes": [
            {"class": int(c["class"]), "num_particles": int(c["num_particles"]), "res_A": resolution(c)}
            for c in classes
        ],
    }
    return k, Decision(stage_id=stage_id, kind="choose_hetero_class", summary=summary, numbers=numbers)
