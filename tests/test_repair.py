"""memoir repair: finding the edits whose own question lost its answer, and refitting them."""

from __future__ import annotations

import torch

from memoir_cli.editor import editing
from memoir_cli.facts import Fact
from memoir_cli.history import replay
from memoir_cli.models import LoadedModel, load_model
from memoir_cli.protection import Protection, share
from memoir_cli.repair import check
from memoir_cli.store import load_pack, read_record

from .conftest import FACTS
from .helpers import edited_pack, loader, ok, overwrite_edit, run, tree, write_facts

PARIS = FACTS[0]["id"]


def _chat_pack(tmp_path, model_dir, facts=FACTS):
    pack = tmp_path / "pack"
    ok("edit", write_facts(tmp_path / "facts.jsonl", facts), "--pack", pack, "--model", model_dir, "--json")
    return pack


def _forgotten(report: dict) -> dict[str, list[str]]:
    return {f["id"]: f["forms"] for f in report}


def test_repair_refits_an_edit_whose_answer_was_lost_as_a_new_version(tmp_path, chat_model_dir):
    pack = _chat_pack(tmp_path, chat_model_dir)
    assert PARIS not in _forgotten(ok("repair", pack, "--dry-run", "--json")["forgotten"])  # it held
    overwrite_edit(pack, PARIS)
    before = load_pack(pack)

    report = ok("repair", pack, "--json")

    assert _forgotten(report["forgotten"])[PARIS] == ["question", "chat"]  # bare and in chat
    assert PARIS in [r["id"] for r in report["refitted"]] and report["rounds"] == 1
    assert PARIS not in _forgotten(report["still_forgotten"]) and report["version"] == 3
    after = load_pack(pack)
    assert after.facts == before.facts and torch.equal(after.memory.bank.packed(), before.memory.bank.packed())
    assert torch.equal(after.memory.keys.packed(), before.memory.keys.packed())  # only weights change
    newest = ok("log", pack, "--json")["versions"][-1]
    assert newest["kind"] == "repair" and newest["message"].startswith("repair: ")
    assert _forgotten(ok("repair", pack, "--dry-run", "--json")["forgotten"]) == _forgotten(report["still_forgotten"])


def test_a_repair_version_replays_from_its_parent_bit_for_bit(tmp_path, chat_model_dir):
    pack = _chat_pack(tmp_path, chat_model_dir)
    overwrite_edit(pack, PARIS)
    ok("repair", pack, "--json")
    record = read_record(pack, 3)
    assert ["refit", PARIS] in record["ops"] and PARIS in record["changes"]["refitted"]
    replayed = replay(load_pack(f"{pack}@2"), record, load_model(str(chat_model_dir)), pack, loader(chat_model_dir))
    assert torch.equal(replayed.memory.weight, load_pack(pack).memory.weight)  # replay also checks the sha256


def test_a_dry_run_lists_the_forgotten_edits_and_writes_nothing(tmp_path, chat_model_dir):
    pack = _chat_pack(tmp_path, chat_model_dir)
    overwrite_edit(pack, PARIS)
    files = tree(pack)
    report = ok("repair", pack, "--dry-run", "--json")
    assert report["dry_run"] and report["checked"] == 3 and report["version"] is None and not report["refitted"]
    assert PARIS in _forgotten(report["forgotten"])
    assert tree(pack) == files
    assert f"forgotten {PARIS} (question, chat)" in run("repair", pack, "--dry-run").stdout


def test_a_pack_whose_edits_all_hold_gets_no_new_version(tmp_path, chat_model_dir):
    pack = _chat_pack(tmp_path, chat_model_dir, FACTS[:1])
    files = tree(pack)
    result = run("repair", pack)
    assert result.exit_code == 0 and "nothing to repair" in result.stdout
    assert tree(pack) == files


def test_a_question_routed_to_another_edit_is_listed_as_not_reached(tmp_path, model_dir):
    """A refit cannot change where a question goes: such an edit is a conflict for the user. Here a
    later edit has the very same mask (ties go to the newer edit), as two facts asking one
    question do."""
    pack = tmp_path / "pack"
    ok("edit", write_facts(tmp_path / "facts.jsonl", FACTS[:2]), "--pack", pack, "--model", model_dir, "--json")
    state = load_pack(pack)
    with editing(load_model(str(model_dir)), state) as editor:
        state.memory.bank.add("f-twin", state.memory.bank.rows([0])[0])
        state.facts.append(Fact(FACTS[0]["prompt"] + " today", "Rome", "f-twin"))
        editor.wrapper.refresh()
        checked, found = check(editor)
    by_id = {f.edit_id: f for f in found}
    assert checked == 3 and not by_id[PARIS].reached and by_id[PARIS].routed_to == "f-twin"
    assert all(f.reached for f in found if f.edit_id != PARIS)


def test_a_refit_leaves_its_own_edit_out_of_protection_and_rehearsal(model, tokenizer):
    generator = torch.Generator().manual_seed(0)
    inputs = [[torch.randn(5, 8, generator=generator)] for _ in range(3)]
    masks = [torch.rand(8, generator=generator) > 0.4 for _ in range(3)]
    everyone, others = Protection(8), Protection(8)
    for number, (x, mask) in enumerate(zip(inputs, masks)):
        everyone.add(x, mask)
        if number != 1:
            others.add(x, mask)
    columns, cpu = torch.tensor([0, 2, 3, 5]), torch.device("cpu")
    without = everyone.damping(columns, 1.0, cpu, without=share(inputs[1], masks[1]))
    assert torch.allclose(without, others.damping(columns, 1.0, cpu), atol=1e-5)

    pack = edited_pack(model, tokenizer, FACTS, steps=2)  # rehearses up to 8 neighbours of any overlap
    with editing(LoadedModel(model, tokenizer, "tiny-llama", None), pack) as editor:
        mask = pack.memory.bank.rows([1])[0]
        assert 1 in editor.neighbours(mask) and 1 not in editor.neighbours(mask, other_than=1)
        assert set(editor.neighbours(mask, other_than=1)) == {0, 2}
