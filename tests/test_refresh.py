"""Refresh semantics of `memoir edit` on an existing pack, dry runs, and one writer at a time."""

import json
import threading
import time

import pytest
from filelock import FileLock

import memoir_cli.workflows as workflows
from memoir_cli import load_pack
from memoir_cli.facts import Fact, read_facts
from memoir_cli.store import WriteOptions
from memoir_cli.workflows import plan_edits

from .conftest import FACTS
from .helpers import run, tree, write_facts


@pytest.fixture
def pack_dir(tmp_path, facts_file, model_dir):
    result = run("edit", facts_file, "--pack", tmp_path / "pack", "--model", model_dir, "--steps", 2, "--json")
    assert result.exit_code == 0, result.output
    return tmp_path / "pack"


def test_a_new_target_for_an_active_prompt_replaces_the_old_edit(pack_dir, tmp_path):
    new = {"prompt": FACTS[0]["prompt"], "target": "Lisbon"}
    result = run("edit", write_facts(tmp_path / "new.jsonl", [new]), "--pack", pack_dir, "--steps", 2, "--json")
    summary = json.loads(result.stdout)
    assert summary["edited"] == 1 and summary["replaced"] == 1
    pack = load_pack(pack_dir)
    new_id = pack.facts[-1].id
    assert summary["replaces"] == {new_id: FACTS[0]["id"]}
    active = dict(zip(pack.memory.bank.ids, pack.memory.bank.active.tolist()))
    assert active[FACTS[0]["id"]] is False and active[new_id] is True
    answer = json.loads(run("apply", pack_dir, "--prompt", FACTS[0]["prompt"], "--max-new-tokens", 2, "--json").stdout)
    assert answer[0]["edit_id"] == new_id


def test_rerunning_the_same_facts_and_same_targets_is_a_no_op(pack_dir, facts_file):
    before = tree(pack_dir)
    renamed = [dict(f, id=f"other-{i}") for i, f in enumerate(FACTS)]  # same prompts and targets, new ids
    facts = write_facts(facts_file.parent / "renamed.jsonl", renamed)
    for path in (facts_file, facts):
        summary = json.loads(run("edit", path, "--pack", pack_dir, "--json").stdout)
        assert summary["edited"] == 0 and summary["skipped"] == 3
    assert tree(pack_dir) == before


def test_the_later_of_two_lines_with_one_prompt_wins():
    first = Fact.from_json({"prompt": "P", "target": "A"})
    second = Fact.from_json({"prompt": "P", "target": "B"})
    plan = plan_edits([first, second], None)
    assert plan.add == [second] and plan.superseded == [first.id]


def test_dry_run_plans_without_loading_a_model_or_writing(pack_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(workflows, "load_model", lambda *a, **k: pytest.fail("a dry run loaded a model"))
    before = tree(pack_dir)
    facts = write_facts(
        tmp_path / "f.jsonl",
        [{"prompt": FACTS[0]["prompt"], "target": "Lisbon"}, {"prompt": "Brand new?", "target": "yes"}, FACTS[1]],
    )
    summary = json.loads(run("edit", facts, "--pack", pack_dir, "--dry-run", "--json").stdout)
    assert summary["dry_run"] and summary["planned"] == 2 and summary["replaced"] == 1 and summary["skipped"] == 1
    assert tree(pack_dir) == before


def test_a_second_writer_fails_at_once_with_no_wait(pack_dir, facts_file):
    with FileLock(str(pack_dir.parent / f".{pack_dir.name}.lock")):
        result = run("edit", facts_file, "--pack", pack_dir, "--no-wait")
    assert result.exit_code == 5 and "another memoir process is writing" in result.stderr


def test_a_second_writer_waits_for_the_first_and_says_so(pack_dir, facts_file):
    lock = FileLock(str(pack_dir.parent / f".{pack_dir.name}.lock"))
    lock.acquire()
    messages = []
    done = threading.Event()

    def second_writer():
        workflows.edit_pack(read_facts(facts_file), pack_dir, write=WriteOptions(on_wait=messages.append))
        done.set()

    thread = threading.Thread(target=second_writer)
    thread.start()
    deadline = time.monotonic() + 60
    while not messages and time.monotonic() < deadline:  # it loads the model, then finds the lock taken
        time.sleep(0.05)
    assert messages and "waiting for it to finish" in messages[0]
    assert not done.wait(0.5)  # blocked on the lock
    lock.release()
    thread.join(60)
    assert done.is_set()


def test_revert_deactivates_edits_by_id_or_prompt_and_routing_skips_them(pack_dir):
    result = run("revert", pack_dir, FACTS[0]["id"], "--prompt", FACTS[1]["prompt"], "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["reverted"] == [FACTS[0]["id"], FACTS[1]["id"]]
    shown = json.loads(run("show", pack_dir, "--json").stdout)
    assert shown["active"] == 1 and [f["active"] for f in shown["facts"]] == [False, False, True]
    answers = json.loads(
        run(
            "apply",
            pack_dir,
            "--prompt",
            FACTS[0]["prompt"],
            "--prompt",
            FACTS[2]["prompt"],
            "--max-new-tokens",
            2,
            "--json",
        ).stdout
    )
    assert answers[0]["edit_id"] is None and answers[1]["edit_id"] == FACTS[2]["id"]


def test_revert_refuses_unknown_or_inactive_edits_and_leaves_the_pack_alone(pack_dir):
    before = tree(pack_dir)
    for args in (["no-such-id"], ["--prompt", "never edited"], []):
        result = run("revert", pack_dir, *args)
        assert result.exit_code == 2, result.output
    assert tree(pack_dir) == before
    assert run("revert", pack_dir, FACTS[0]["id"]).exit_code == 0
    result = run("revert", pack_dir, FACTS[0]["id"])
    assert result.exit_code == 2 and "already inactive" in result.stderr
