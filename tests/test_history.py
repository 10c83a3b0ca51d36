"""Versions: log, PACK@N, rollback (bit-identical), replay of dropped versions, rebuild."""

import json

import pytest
import torch

from memoir_cli.history import open_pack
from memoir_cli.store import load_pack, protection_cache, read_record

from .conftest import FACTS
from .helpers import loader, ok, run, tree, write_facts


def test_each_change_is_a_version_that_log_lists_with_what_it_did(history):
    versions = ok("log", history, "--json")["versions"]
    assert [v["version"] for v in versions] == [1, 2, 3, 4]
    assert [v["kind"] for v in versions] == ["edit", "edit", "edit", "revert"]
    assert versions[0]["message"] == "first two" and versions[3]["message"] == "wrong colour"
    assert [(v["added"], v["replaced"], v["deactivated"]) for v in versions] == [
        (2, 0, 0),
        (1, 0, 0),
        (0, 1, 0),
        (0, 0, 1),
    ]
    assert [(v["edits"], v["active"]) for v in versions] == [(2, 2), (3, 3), (4, 3), (4, 2)]
    assert [v["stored"] for v in versions] == [False, False, False, True]  # only the current one, at 1 in 10
    assert versions[1]["stats"]["columns_touched"] == 37  # one fact: its k columns
    text = ok("log", history).stdout
    assert "revert" in text and "wrong" in text and "+1 ~0 -0" in text


def test_log_of_a_version_lists_the_history_that_led_to_it(history):
    assert [v["version"] for v in ok("log", f"{history}@2", "--json")["versions"]] == [1, 2]
    result = run("log", f"{history}@9")
    assert result.exit_code == 3 and "no version 9 (versions are 1 to 4)" in result.stderr


def test_rerunning_a_nightly_job_with_nothing_new_adds_no_version(history, tmp_path):
    before = tree(history)
    summary = ok("edit", tmp_path / "b.jsonl", "--pack", history, "--json")
    assert summary["versions"] == [] and tree(history) == before


def test_pack_at_n_names_a_version_for_show_and_apply(history, model_dir):
    shown = ok("show", f"{history}@2", "--model", model_dir, "--json")
    assert shown["version"] == 2 and [f["id"] for f in shown["facts"]] == [f["id"] for f in FACTS]
    prompt = FACTS[1]["prompt"]
    then = ok("apply", f"{history}@2", "--prompt", prompt, "--max-new-tokens", 1, "--json")
    now = ok("apply", history, "--prompt", prompt, "--max-new-tokens", 1, "--json")
    assert then[0]["edit_id"] == FACTS[1]["id"] and now[0]["edit_id"] is None


def test_a_dropped_version_is_replayed_bit_identically(tmp_path, model_dir):
    pack = tmp_path / "pack"
    ok(
        "edit",
        write_facts(tmp_path / "a.jsonl", FACTS[:2]),
        "--pack",
        pack,
        "--model",
        model_dir,
        "--steps",
        3,
        "--json",
    )
    first = load_pack(pack)
    ok("edit", write_facts(tmp_path / "b.jsonl", FACTS[2:]), "--pack", pack, "--steps", 3, "--json")
    assert load_pack(f"{pack}@1").version == 1  # within gc's grace period version 1's files are still there
    assert ok("gc", pack, "--grace", 0, "--json")["removed_objects"] == 3  # its memory, masks and facts
    with pytest.raises(Exception, match="not kept"):
        load_pack(f"{pack}@1")
    replayed = open_pack(f"{pack}@1", loader(model_dir))
    assert torch.equal(replayed.memory.weight, first.memory.weight)
    assert torch.equal(replayed.memory.bank.packed(), first.memory.bank.packed()) and replayed.facts == first.facts


def test_a_replay_that_does_not_reproduce_the_version_is_refused(tmp_path, model_dir):
    pack = tmp_path / "pack"
    ok(
        "edit",
        write_facts(tmp_path / "a.jsonl", FACTS[:2]),
        "--pack",
        pack,
        "--model",
        model_dir,
        "--steps",
        3,
        "--json",
    )
    ok("edit", write_facts(tmp_path / "b.jsonl", FACTS[2:]), "--pack", pack, "--steps", 3, "--json")
    ok("gc", pack, "--grace", 0, "--json")
    record_file = pack / "versions" / "000001.json"
    record = json.loads(record_file.read_text())
    record["facts"][0]["target"] = "somewhere else"  # the record no longer says what was done
    record_file.write_text(json.dumps(record))
    result = run("show", f"{pack}@1", "--model", model_dir)
    assert result.exit_code == 3 and "did not reproduce it" in result.stderr


@pytest.mark.parametrize("snapshot_every", [None, 1])
def test_rollback_makes_version_n_current_bit_identically_as_a_new_version(tmp_path, model_dir, snapshot_every):
    pack = tmp_path / "pack"
    kept = ["--snapshot-every", snapshot_every] if snapshot_every else []
    ok(
        "edit",
        write_facts(tmp_path / "a.jsonl", FACTS[:2]),
        "--pack",
        pack,
        "--model",
        model_dir,
        "--steps",
        2,
        *kept,
        "--json",
    )
    ok("edit", write_facts(tmp_path / "b.jsonl", FACTS[2:]), "--pack", pack, "--steps", 2, "--json")
    ok("revert", pack, FACTS[0]["id"], "--json")
    result = ok("rollback", pack, "--to", 1, "--model", model_dir, "--json")
    assert result["version"] == 4
    files_now = json.loads((pack / "manifest.json").read_text())["files"]
    assert files_now == read_record(pack, 1)["manifest"]["files"]  # same sha256: bit-identical files
    log = ok("log", pack, "--json")["versions"]
    assert [v["kind"] for v in log] == ["edit", "edit", "revert", "rollback"] and log[3]["restored"] == 1
    assert load_pack(pack).memory.bank.ids == [f["id"] for f in FACTS[:2]]


def test_rollback_to_the_current_or_an_unknown_version_is_refused_and_changes_nothing(history, model_dir):
    before = tree(history)
    for to, code, words in ((4, 2, "already the current version"), (9, 3, "no version 9")):
        result = run("rollback", history, "--to", to, "--model", model_dir)
        assert result.exit_code == code and words in result.stderr
    assert tree(history) == before


def test_rebuild_equals_editing_the_active_facts_into_a_fresh_pack(history, tmp_path, model_dir):
    ok("rebuild", history, "--json")
    rebuilt = load_pack(history)
    active = [f.to_json() for f in rebuilt.facts]
    assert [f["id"] for f in active] == [FACTS[2]["id"], "f-paris-2"]  # reverted and replaced edits dropped
    fresh = tmp_path / "fresh"
    ok(
        "edit",
        write_facts(tmp_path / "active.jsonl", active),
        "--pack",
        fresh,
        "--model",
        model_dir,
        "--steps",
        2,
        "--json",
    )
    again = load_pack(fresh)
    assert rebuilt.manifest.files == again.manifest.files  # bit-identical data files
    assert ok("log", history, "--json")["versions"][-1]["kind"] == "rebuild"


def test_eval_scores_a_named_version(history, model_dir):
    then = ok("eval", f"{history}@2", "--model", model_dir, "--json")
    now = ok("eval", history, "--json")
    assert then["records"] == 3 and now["records"] == 2  # version 2's active facts, and today's


def test_writing_commands_refuse_a_version_name_and_create_nothing(history, tmp_path):
    for args in (
        ["revert", f"{history}@2", FACTS[2]["id"]],
        ["rollback", f"{history}@2", "--to", 1],
        ["edit", tmp_path / "b.jsonl", "--pack", f"{history}@2"],
    ):
        result = run(*args)
        assert result.exit_code == 2 and "versions never change" in result.output
    assert not (tmp_path / "pack@2").exists() and len(ok("log", history, "--json")["versions"]) == 4


def test_a_tampered_version_record_is_named(history):
    record = history / "versions" / "000002.json"
    data = json.loads(record.read_text())
    data["ops"] = [["explode", 3, 4]]
    record.write_text(json.dumps(data))
    result = run("log", history)
    assert result.exit_code == 3 and f"{record}: invalid version record at 'ops/0'" in result.stderr


def test_a_long_run_commits_a_checkpoint_version_every_50_facts_by_default(tmp_path, model_dir):
    facts = [{"prompt": f"The code word number {i} is", "target": f"w{i}"} for i in range(51)]
    summary = ok(
        "edit",
        write_facts(tmp_path / "many.jsonl", facts),
        "--pack",
        tmp_path / "pack",
        "--model",
        model_dir,
        "--steps",
        1,
        "--rehearse",
        0,
        "--json",
    )
    assert summary["versions"] == [1, 2]
    versions = ok("log", tmp_path / "pack", "--json")["versions"]
    assert [(v["added"], v["message"]) for v in versions] == [
        (50, "edit: 50 added (facts 1-50 of 51)"),
        (1, "edit: 1 added (facts 51-51 of 51)"),
    ]


def test_writing_commands_on_a_missing_pack_name_it_draw_no_progress_and_create_nothing(tmp_path):
    missing = tmp_path / "nowhere" / "pack"
    for args in (
        ["rollback", missing, "--to", 1],
        ["rebuild", missing],
        ["revert", missing, "some-id"],
        ["log", missing],
        ["repair", missing],
        ["repair", missing, "--dry-run"],
    ):
        result = run(*args)
        assert result.exit_code == 3 and "no such pack" in result.stderr
        assert "questions checked" not in result.stderr  # no progress bar for work that never began
    assert list(tmp_path.iterdir()) == []
    result = run("pull", "not-a-repo-id")
    assert result.exit_code == 2 and "not a Hub repo id" in result.stderr


def test_a_protected_packs_dropped_versions_replay_bit_identically(tmp_path, model_dir):
    """Protection's matrix is summed from the active facts and is no part of a version: a replay
    must rebuild exactly what the runs had, the first grown fact by fact, the second started from
    the matrix the first left in the pack's cache."""
    pack = tmp_path / "pack"
    first = write_facts(tmp_path / "a.jsonl", FACTS[:2])
    ok("edit", first, "--pack", pack, "--model", model_dir, "--steps", 3, "--protect", 1.0, "--checkpoint-every", 1)
    assert load_pack(pack).manifest.training.protect == 1.0 and protection_cache(pack).is_file()
    ok("edit", write_facts(tmp_path / "b.jsonl", FACTS[2:]), "--pack", pack, "--steps", 3)
    later = {"id": "f-later", "prompt": "The oldest bridge in Zorbia crosses the", "target": "river Quill"}
    ok("edit", write_facts(tmp_path / "c.jsonl", [later]), "--pack", pack, "--steps", 3)
    made = [load_pack(f"{pack}@{number}") for number in (2, 3, 4)]
    ok("gc", pack, "--grace", 0, "--json")
    for number in (2, 3):
        with pytest.raises(Exception, match="not kept"):
            load_pack(f"{pack}@{number}")
    for number, version in zip((2, 3), made):
        assert torch.equal(open_pack(f"{pack}@{number}", loader(model_dir)).memory.weight, version.memory.weight)
    assert torch.equal(load_pack(f"{pack}@4").memory.weight, made[2].memory.weight)
