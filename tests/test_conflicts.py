"""Conflicts at edit time: found before training, named with both facts, and handled as
--on-conflict says (keep-both, replace, fail), in the JSON report and on stderr."""

import json

import torch

from memoir_cli.conflicts import Conflict, OnConflict, find_conflicts, resolve
from memoir_cli.facts import Fact

from .conftest import FACTS
from .helpers import empty_pack, ok, run, tree, write_facts

NEW = {"id": "f-zorbia-2", "prompt": "Zorbia's capital city is", "target": "Rome"}
SETTINGS = ("--steps", 1, "--threshold", 0.0)  # tau 0: every pair of edits is the same question to the router


def mask(*features: int, d_ff: int) -> torch.Tensor:
    row = torch.zeros(d_ff, dtype=torch.bool)
    row[list(features)] = True
    return row


def test_find_conflicts_pairs_overlapping_masks_with_other_answers_in_the_pack_and_the_input(model, tokenizer):
    pack = empty_pack(model, tokenizer, top_k=2, threshold=0.5)
    d_ff = pack.memory.bank.d_ff
    old = [Fact("Q one", "A", "old-a"), Fact("Q two", "B", "old-b"), Fact("Q three", "C", "old-c")]
    for fact, features in zip(old, [(0, 1), (2, 3), (0, 5)]):
        pack.memory.bank.add(fact.id, mask(*features, d_ff=d_ff))
        pack.facts.append(fact)
    pack.memory.bank.deactivate("old-c")  # overlaps, but routing never selects it
    new = [Fact("Q one again", "Z", "new-1"), Fact("Q two again", "b ", "new-2"), Fact("Q one once more", "Y", "new-3")]
    masks = torch.stack([mask(0, 1, d_ff=d_ff), mask(2, 3, d_ff=d_ff), mask(0, 7, d_ff=d_ff)])
    found = [
        (c.new.id, c.existing.id, c.existing_in, c.overlap)
        for c in find_conflicts(pack.memory, pack.facts, new, masks, {})
    ]
    # new-2 gives old-b's answer ("b " is "B"); new-3 overlaps old-a and new-1 by half, which is tau.
    assert found == [("new-1", "old-a", "pack", 1.0), ("new-3", "old-a", "pack", 0.5), ("new-3", "new-1", "input", 0.5)]
    assert find_conflicts(pack.memory, pack.facts, new, masks, {"new-1": "old-a"})[0].new.id == "new-3"


def test_replace_supersedes_an_earlier_input_fact_and_passes_on_what_it_displaced():
    a, b = Fact("first", "X", "a"), Fact("second", "Y", "b")
    conflicts = [Conflict(a, Fact("old", "W", "old"), 0.9, "pack"), Conflict(b, a, 0.8, "input")]
    add, replaces, superseded = [a, b], {"a": "same-prompt"}, []
    displaced = resolve(conflicts, OnConflict.replace_old, add, replaces, superseded)
    assert add == [b] and superseded == ["a"] and replaces == {}
    assert displaced == {"b": ["old", "same-prompt"]}
    assert resolve(conflicts, OnConflict.keep_both, [a, b], {}, []) == {}


def edit_twice(tmp_path, model_dir, *options):
    """A pack holding FACTS[0], then `memoir edit` of NEW (a rephrasing with another answer) into it."""
    pack = tmp_path / "pack"
    ok("edit", write_facts(tmp_path / "1.jsonl", FACTS[:1]), "--pack", pack, "--model", model_dir, *SETTINGS, "--json")
    before = tree(pack)
    second = write_facts(tmp_path / "2.jsonl", [NEW])
    return pack, before, run("edit", second, "--pack", pack, "--model", model_dir, *SETTINGS, *options)


def test_keep_both_edits_both_and_reports_the_conflict_in_json_and_on_stderr(tmp_path, model_dir):
    pack, _, result = edit_twice(tmp_path, model_dir, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["conflicts"] == [
        {
            "new": NEW["id"],
            "new_target": "Rome",
            "existing": FACTS[0]["id"],
            "existing_target": "Paris",
            "existing_in": "pack",
            "overlap": report["conflicts"][0]["overlap"],
        }
    ]
    assert "conflict" in result.stderr and FACTS[0]["id"] in result.stderr and NEW["id"] in result.stderr
    shown = ok("show", pack, "--json")
    assert [f["active"] for f in shown["facts"]] == [True, True]


def test_replace_deactivates_the_edit_the_new_fact_conflicts_with(tmp_path, model_dir):
    pack, _, result = edit_twice(tmp_path, model_dir, "--on-conflict", "replace", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["displaces"] == {NEW["id"]: [FACTS[0]["id"]]}
    shown = ok("show", pack, "--json")
    assert {f["id"]: f["active"] for f in shown["facts"]} == {FACTS[0]["id"]: False, NEW["id"]: True}
    log = ok("log", pack, "--json")["versions"]
    assert log[-1]["deactivated"] == 1 and log[-1]["added"] == 1


def test_fail_names_both_facts_exits_8_and_leaves_the_pack_as_it_was(tmp_path, model_dir):
    pack, before, result = edit_twice(tmp_path, model_dir, "--on-conflict", "fail")
    assert result.exit_code == 8
    assert FACTS[0]["id"] in result.stderr and NEW["id"] in result.stderr and "Traceback" not in result.output
    assert "--on-conflict" in result.stderr
    assert tree(pack) == before


def test_conflicts_found_in_chunks_are_those_of_every_pair_compared_at_once(model, tokenizer, monkeypatch):
    """60 random new facts against 40 edits, 7 at a time, at tau 0 (every pair is a question the
    router confuses) and 0.75: the same pairs, in the same order, as comparing every pair by hand."""
    import memoir_cli.conflicts as conflicts

    generator = torch.Generator().manual_seed(0)
    pack = empty_pack(model, tokenizer, top_k=8)
    d_ff = pack.memory.bank.d_ff

    def random_mask() -> torch.Tensor:  # 8 of the first 16 features: pairs overlap by half on average
        return mask(*torch.randperm(16, generator=generator)[:8].tolist(), d_ff=d_ff)

    for number in range(40):
        pack.memory.bank.add(f"old-{number}", random_mask())
        pack.facts.append(Fact(f"old question {number}", "ABC"[number % 3], f"old-{number}"))
    pack.memory.bank.deactivate("old-3")
    new = [Fact(f"new question {n}", "ABCD"[n % 4], f"new-{n}") for n in range(60)]
    masks = torch.stack([random_mask() for _ in new])
    monkeypatch.setattr(conflicts, "CHUNK", 7)
    for tau in (0.0, 0.75):
        pack.manifest.routing.threshold = tau
        expected = []
        for i, fact in enumerate(new):
            for j, old in enumerate(pack.facts):
                overlap = float((masks[i] & pack.memory.bank.rows([j])[0]).sum()) / 8
                if old.id != "old-3" and overlap >= tau and old.target != fact.target:
                    expected.append((fact.id, old.id, "pack", overlap))
            for j in range(i):
                overlap = float((masks[i] & masks[j]).sum()) / 8
                if overlap >= tau and new[j].target != fact.target:
                    expected.append((fact.id, new[j].id, "input", overlap))
        found = [
            (c.new.id, c.existing.id, c.existing_in, c.overlap)
            for c in find_conflicts(pack.memory, pack.facts, new, masks, {})
        ]
        assert found == expected and any(c[2] == "input" for c in found) and any(c[2] == "pack" for c in found)
