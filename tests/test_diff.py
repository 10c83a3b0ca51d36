"""memoir diff: facts added, removed and retargeted, conflicts within and across packs, settings."""

import pytest

from memoir_cli.bank import MaskBank
from memoir_cli.diff import Side, diff
from memoir_cli.history import open_pack
from memoir_cli.store import read_manifest

from .conftest import FACTS
from .helpers import ok, run, write_facts


def test_diff_of_two_versions_lists_facts_settings_and_memory_change(history, model_dir):
    report = ok("diff", f"{history}@1", history, "--model", model_dir, "--json")
    facts = report["facts"]
    assert [f["id"] for f in facts["added"]] == [FACTS[2]["id"]]
    assert [f["id"] for f in facts["removed"]] == [FACTS[1]["id"]]
    assert facts["retargeted"] == [
        {
            "prompt": FACTS[0]["prompt"],
            "id_a": FACTS[0]["id"],
            "id_b": "f-paris-2",
            "target_a": "Paris",
            "target_b": "Rome",
        }
    ]
    assert 0 < report["memory"]["columns_touched"] <= 128 and report["memory"]["norm"] > 0
    assert report["settings"] == [] and report["stacked"] is False
    text = run("diff", f"{history}@1", history, "--model", model_dir).stdout
    assert "retargeted" in text and "Paris -> Rome" in text


@pytest.mark.parametrize("block", [1024, 1])  # 1: the bank is compared one row at a time
def test_diff_finds_conflicts_within_a_pack_and_across_stacked_packs(tmp_path, model_dir, monkeypatch, block):
    monkeypatch.setattr("memoir_cli.diff.BLOCK", block)
    a, b = tmp_path / "a", tmp_path / "b"
    ok("edit", write_facts(tmp_path / "a.jsonl", FACTS[:1]), "--pack", a, "--model", model_dir, "--steps", 1, "--json")
    ok(
        "edit",
        write_facts(tmp_path / "b.jsonl", FACTS[1:]),
        "--pack",
        b,
        "--model",
        model_dir,
        "--steps",
        1,
        "--threshold",
        0.0,
        "--json",
    )
    report = ok("diff", a, b, "--json")
    assert report["stacked"] is True
    assert [(c["a"], c["b"]) for c in report["conflicts"]["within_b"]] == [(FACTS[1]["id"], FACTS[2]["id"])]
    assert {c["b"] for c in report["conflicts"]["across"]} == {FACTS[1]["id"], FACTS[2]["id"]}
    calibrated = read_manifest(a).routing.threshold  # a new pack's tau is calibrated; b's is fixed at 0
    assert report["settings"] == [
        {"setting": "threshold", "a": calibrated, "b": 0.0},
        {"setting": "threshold auto", "a": True, "b": False},
    ]


def test_diff_across_packs_with_another_seed_hashes_prompts_with_the_base_model(tmp_path, model_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    ok("edit", write_facts(tmp_path / "a.jsonl", FACTS[:1]), "--pack", a, "--model", model_dir, "--steps", 1, "--json")
    ok(
        "edit",
        write_facts(tmp_path / "b.jsonl", FACTS[:1]),
        "--pack",
        b,
        "--model",
        model_dir,
        "--steps",
        1,
        "--seed",
        7,
        "--json",
    )
    report = ok("diff", a, b, "--model", model_dir, "--json")
    assert [(c["a"], c["b"], c["overlap"]) for c in report["conflicts"]["across"]] == [
        (FACTS[0]["id"], FACTS[0]["id"], 1.0)
    ]


def test_diff_refuses_packs_of_different_base_models_unless_forced(tmp_path, model_dir, other_model_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    ok("edit", write_facts(tmp_path / "a.jsonl", FACTS[:1]), "--pack", a, "--model", model_dir, "--steps", 1, "--json")
    ok(
        "edit",
        write_facts(tmp_path / "b.jsonl", FACTS[:1]),
        "--pack",
        b,
        "--model",
        other_model_dir,
        "--steps",
        1,
        "--json",
    )
    result = run("diff", a, b)
    assert result.exit_code == 3 and "different base models" in result.stderr and "--force" in result.stderr
    assert ok("diff", a, b, "--force", "--model", model_dir, "--json")["same_base_model"] is False


def test_a_new_version_is_checked_for_conflicts_only_through_the_edits_it_adds(tmp_path, model_dir, monkeypatch):
    pack = tmp_path / "pack"
    settings = ("--model", model_dir, "--steps", 1, "--threshold", 0.0, "--json")
    ok("edit", write_facts(tmp_path / "1.jsonl", FACTS[:2]), "--pack", pack, *settings)
    ok("edit", write_facts(tmp_path / "2.jsonl", FACTS[2:3]), "--pack", pack, *settings)
    compared = []
    original = MaskBank.rows
    monkeypatch.setattr(MaskBank, "rows", lambda bank, rows: compared.append(list(rows)) or original(bank, rows))
    report = diff(Side("v1", open_pack(f"{pack}@1")), Side("v2", open_pack(pack)), stacked=False)
    pairs = [(c["a"], c["b"]) for c in report["conflicts"]["within_b"]]
    new = FACTS[2]["id"]
    assert sorted(pairs) == sorted([(FACTS[0]["id"], new), (FACTS[1]["id"], new)])  # not the old pair of 0 and 1
    assert compared == [[2]]  # one pass over the bank, for the one new edit
