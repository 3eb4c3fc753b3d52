"""The agent's automatic choices (``cryopilot_agent.decisions``) on classes with and without a
resolution."""

from __future__ import annotations

import math

import pytest
from cryopilot_agent.decisions import choose_hetero_class, select_2d_classes

RULE = {"max_res_A": 12.0, "min_particle_fraction": 0.01, "min_classes": 2}


def cls2d(idx: int, res: float | None, n: int) -> dict[str, object]:
    return {"class_idx": idx, "res_A": res, "num_particles_total": n}


def test_a_2d_class_without_a_resolution_never_passes_the_rule() -> None:
    classes = [cls2d(0, 5.0, 1000), cls2d(1, None, 5000), cls2d(2, 7.5, 800), cls2d(3, math.nan, 900)]
    selected, decision = select_2d_classes("select2d", classes, RULE)
    assert selected == [0, 2]
    assert decision.numbers["fallback"] is False
    assert decision.numbers["classes_without_resolution"] == 2
    assert [c["res_A"] for c in decision.numbers["classes"]] == [5.0, None, 7.5, None]
    assert "2 class(es) reported no resolution" in decision.summary


def test_the_2d_fallback_takes_resolved_classes_before_unresolved_ones() -> None:
    classes = [cls2d(0, None, 9000), cls2d(1, 20.0, 500), cls2d(2, 15.0, 400), cls2d(3, 30.0, 0)]
    selected, decision = select_2d_classes("select2d", classes, RULE)
    assert selected == [1, 2]  # the best-resolved classes holding particles
    assert decision.numbers["fallback"] is True
    assert "best-resolved classes taken" in decision.summary


def test_the_2d_fallback_takes_unresolved_classes_when_too_few_are_resolved() -> None:
    classes = [cls2d(0, None, 900), cls2d(1, 25.0, 500), cls2d(2, None, 0)]
    selected, decision = select_2d_classes("select2d", classes, RULE)
    assert selected == [0, 1]
    assert decision.numbers["fallback"] is True


def hetero(k: int, n: int, res: float | None) -> dict[str, object]:
    return {"class": k, "num_particles": n, "res_A": res}


def test_hetero_chooses_the_best_resolution_and_names_classes_without_one() -> None:
    classes = [hetero(0, 4000, 4.1), hetero(1, 3000, 3.6), hetero(2, 3000, None), hetero(3, 100, 2.0)]
    chosen, decision = choose_hetero_class("hetero1", classes, {"min_particle_fraction": 0.15})
    assert chosen == 1
    assert decision.numbers["fallback"] is False
    assert decision.numbers["fallback_reason"] is None
    assert decision.summary.startswith("hetero1: carried class 1 forward (3.60 Å, 3,000 of 10,100 particles)")
    assert "class(es) 2 reported no resolution" in decision.summary


@pytest.mark.parametrize("missing", [None, math.nan, "n/a"])
def test_hetero_without_resolutions_says_plainly_that_it_fell_back_to_the_largest_class(
    missing: object,
) -> None:
    classes = [hetero(0, 2000, None), hetero(1, 5000, None), hetero(2, 3000, None)]
    classes[2]["res_A"] = missing
    chosen, decision = choose_hetero_class("hetero2", classes, {"min_particle_fraction": 0.15})
    assert chosen == 1
    assert decision.numbers["chosen_class"] == 1
    assert decision.numbers["fallback"] is True
    reason = decision.numbers["fallback_reason"]
    assert reason.startswith("none of the 3 classes compared reported a resolution")
    assert decision.summary.startswith("hetero2: fell back to the largest class, class 1 (5,000 of 10,000")
    assert reason in decision.summary
    assert [c["res_A"] for c in decision.numbers["classes"]] == [None, None, None]


def test_hetero_says_when_no_class_holds_the_minimum_share() -> None:
    classes = [hetero(k, 100, 8.0 - k / 10) for k in range(10)]
    chosen, decision = choose_hetero_class("hetero1", classes, {"min_particle_fraction": 0.15})
    assert chosen == 9
    assert "no class held >= 15% of the particles, so every class was compared" in decision.summary
