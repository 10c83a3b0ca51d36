"""The ceilings benchmarks/zsre.py puts beside its scores, on hand-built records: what any model could
score on Gen and on routing when a subject's records ask one question with several targets."""

import importlib
import sys
from pathlib import Path

import pytest

from memoir_cli.facts import Fact

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
zsre = importlib.import_module("zsre")  # benchmarks/zsre.py

CROSS, OVER = "What river does the bridge cross?", "Over what river does the bridge cross?"
# One subject asked one question twice with two targets (each record's rephrasing is the other's
# prompt), and one agreed subject.
FACTS = [
    Fact(CROSS, "Ohio River", "b1", (OVER,), (), "bridge"),
    Fact(OVER, "Crosse Creek", "b2", (CROSS,), (), "bridge"),
    Fact("Where did Ada study?", "Oxford", "a1", ("Which university did Ada attend?",), (), "Ada"),
]


def routed(edit_id: str | None, gen: float) -> dict:
    return {"gen": gen, "gen_routes": [{"pack": "p", "edit_id": edit_id, "overlap": 0.7}]}


def test_one_answer_per_subject_gets_one_of_two_contested_rephrasings_and_every_agreed_one():
    ceilings = zsre.gen_ceilings(FACTS)
    assert ceilings["one_answer_per_subject"] == pytest.approx(2 / 3)
    assert ceilings["exact_text"] == pytest.approx(1 / 3)  # each contested rephrasing is the other's prompt


def test_one_route_per_subject_sends_one_contested_rephrasing_to_its_own_edit():
    assert zsre.own_route_ceiling(FACTS) == {"all": pytest.approx(2 / 3), "agreed": 1.0, "contested": 0.5}


def test_teacher_forced_ceiling_adds_the_credit_a_siblings_answer_earns_per_token():
    per_record = [routed("b2", 0.4), routed("b1", 0.6), routed("a1", 1.0)]
    tf = zsre.tf_gen_ceiling(FACTS, per_record, 2 / 3)
    assert tf["rephrasings"] == 2  # the agreed record reached its own edit: no sibling credit
    assert tf["sibling_credit"] == pytest.approx(0.5)
    assert tf["estimate"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    low, high = tf["estimate_interval"]
    assert low < tf["estimate"] < high


def test_teacher_forced_ceiling_is_not_estimated_without_a_rephrasing_routed_to_a_sibling():
    per_record = [routed("b1", 1.0), routed(None, 0.2), routed("b1", 0.0)]  # own edit, no edit, another subject
    assert zsre.tf_gen_ceiling(FACTS, per_record, 2 / 3) == {"sibling_credit": None, "rephrasings": 0, "estimate": None}
