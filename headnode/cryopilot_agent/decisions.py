"""The automatic choices cryoSPARC expects a person to make, as pure functions.

select_2d_classes
    Input: the Select 2D job's class list (``get_class_info``: class_idx, res_A,
    num_particles_total). A class is selected when ``res_A <= max_res_A`` and it holds at least
    ``min_particle_fraction`` of all particles. If fewer than ``min_classes`` pass, the
    ``min_classes`` best-resolved classes holding any particles are selected instead.

choose_hetero_class
    Input: per class k of a heterogeneous refinement, the particle count of ``particles_class_k``
    and the resolution of ``volume_class_k`` (summary stats ``fsc_info_best.radwn_final_A``).
    Among classes holding at least ``min_particle_fraction`` of the particles, the best
    (lowest) resolution wins, ties going to the larger class; without resolutions, the largest class.
"""

from __future__ import annotations

from typing import Any

from cryopilot.protocol.agent import Decision


def select_2d_classes(
    stage_id: str, classes: list[dict[str, Any]], params: dict[str, Any]
) -> tuple[list[int], Decision]:
    max_res = float(params.get("max_res_A", 12.0))
    min_frac = float(params.get("min_particle_fraction", 0.002))
    min_classes = int(params.get("min_classes", 3))
    total = sum(int(c.get("num_particles_total", 0)) for c in classes)
    floor = min_frac * total
    passed = [
        c
        for c in classes
        if float(c.get("res_A", 1e9)) <= max_res and int(c.get("num_particles_total", 0)) >= floor
    ]
    fallback = False
    if len(passed) < min_classes:
        fallback = True
        ranked = sorted(
            (c for c in classes if int(c.get("num_particles_total", 0)) > 0), key=lambda c: float(c["res_A"])
        )
        passed = ranked[:min_classes]
    selected = sorted(int(c["class_idx"]) for c in passed)
    kept = sum(int(c.get("num_particles_total", 0)) for c in passed)
    summary = (
        f"2D selection: kept {len(selected)} of {len(classes)} classes, {kept:,} of {total:,} particles "
        f"({(kept / total if total else 0):.0%}); rule: res <= {max_res:g} Å and >= {min_frac:.2%} particles"
        + (" (too few passed: best-resolved classes taken)" if fallback else "")
    )
    numbers: dict[str, Any] = {
        "rule": {"max_res_A": max_res, "min_particle_fraction": min_frac, "min_classes": min_classes},
        "classes_total": len(classes),
        "classes_selected": len(selected),
        "particles_total": total,
        "particles_selected": kept,
        "fallback": fallback,
        "selected": selected,
        "classes": [
            {
                "class_idx": int(c["class_idx"]),
                "res_A": float(c["res_A"]),
                "num_particles": int(c.get("num_particles_total", 0)),
                "selected": int(c["class_idx"]) in selected,
            }
            for c in classes
        ],
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
    eligible = [c for c in classes if int(c["num_particles"]) >= min_frac * total] or list(classes)
    with_res = [c for c in eligible if c.get("res_A") is not None]
    if with_res:
        best = min(with_res, key=lambda c: (float(c["res_A"]), -int(c["num_particles"])))
        basis = "best resolution"
    else:
        best = max(eligible, key=lambda c: int(c["num_particles"]))
        basis = "largest class (no resolutions reported)"
    k = int(best["class"])
    res_text = f"{float(best['res_A']):.2f} Å, " if best.get("res_A") is not None else ""
    summary = (
        f"{stage_id}: carried class {k} forward ({res_text}{int(best['num_particles']):,} of {total:,} "
        f"particles) — {basis} among classes with >= {min_frac:.0%} of particles"
    )
    numbers: dict[str, Any] = {
        "rule": {"min_particle_fraction": min_frac},
        "chosen_class": k,
        "particles_total": total,
        "classes": [
            {"class": int(c["class"]), "num_particles": int(c["num_particles"]), "res_A": c.get("res_A")}
            for c in classes
        ],
    }
    return k, Decision(stage_id=stage_id, kind="choose_hetero_class", summary=summary, numbers=numbers)
