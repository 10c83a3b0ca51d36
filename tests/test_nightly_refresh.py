"""examples/nightly_refresh.sh, run as cron would: keep a good refresh, roll back a bad one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memoir_cli.history import log
from memoir_cli.store import load_pack, read_record

from .conftest import FACTS
from .helpers import overwrite_edit

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "nightly_refresh.sh"


def refresh(facts: Path, pack: Path, model_dir: Path, **settings) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        MEMOIR_PACK=str(pack),
        MEMOIR_MODEL=str(model_dir),
        PYTHON=sys.executable,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    env.update({"MEMOIR_MIN_REL": "0.5", **settings})  # a random tiny model fits 30 steps less well than a real one
    return subprocess.run(["bash", str(SCRIPT), str(facts)], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def nights(tmp_path):
    first, second = tmp_path / "night1.jsonl", tmp_path / "night2.jsonl"
    first.write_text("".join(json.dumps(f) + "\n" for f in FACTS[:2]))
    second.write_text(json.dumps(FACTS[2]) + "\n")
    return first, second


def test_a_good_refresh_is_kept_and_rerunning_it_changes_nothing(tmp_path, nights, model_dir):
    pack = tmp_path / "pack"
    done = refresh(nights[0], pack, model_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kept: " in done.stdout and [v["message"] for v in log(pack)][0].startswith("nightly refresh")
    versions = len(log(pack))  # the edit, and a repair where the tiny model forgot an edit
    again = refresh(nights[0], pack, model_dir)
    assert again.returncode == 0 and "nothing new" in again.stdout and len(log(pack)) == versions


def test_a_refresh_below_the_bar_is_rolled_back_and_fails(tmp_path, nights, model_dir):
    pack = tmp_path / "pack"
    assert refresh(nights[0], pack, model_dir, MEMOIR_REPAIR_ROUNDS="0").returncode == 0
    bad = refresh(nights[1], pack, model_dir, MEMOIR_REPAIR_ROUNDS="0", MEMOIR_MIN_REL="1.01")
    assert bad.returncode == 10, bad.stdout + bad.stderr
    assert "quality below the bar" in bad.stdout and "repair: " not in bad.stdout
    assert [v["kind"] for v in log(pack)] == ["edit", "edit", "rollback"]
    assert load_pack(pack).manifest.files == read_record(pack, 1)["manifest"]["files"]


def test_by_default_a_forgotten_edit_is_refitted_before_scoring_and_a_rollback_undoes_both(tmp_path, nights, model_dir):
    pack = tmp_path / "pack"
    assert refresh(nights[0], pack, model_dir, MEMOIR_REPAIR_ROUNDS="0").returncode == 0
    overwrite_edit(pack, FACTS[0]["id"])  # version 2: the first night's first edit lost its answer
    bad = refresh(nights[1], pack, model_dir, MEMOIR_MIN_REL="1.01")  # no MEMOIR_REPAIR_ROUNDS: one round
    assert bad.returncode == 10, bad.stdout + bad.stderr
    assert "repair: " in bad.stdout and "quality below the bar" in bad.stdout
    assert [v["kind"] for v in log(pack)] == ["edit", "edit", "edit", "repair", "rollback"]
    assert FACTS[0]["id"] in read_record(pack, 4)["changes"]["refitted"]
    assert load_pack(pack).manifest.files == read_record(pack, 2)["manifest"]["files"]


def test_a_bad_facts_file_exits_2_and_leaves_the_pack_alone(tmp_path, nights, model_dir):
    pack = tmp_path / "pack"
    assert refresh(nights[0], pack, model_dir).returncode == 0
    versions = len(log(pack))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "no target"}\n')
    result = refresh(broken, pack, model_dir)
    assert result.returncode == 2 and "'target' is required" in result.stderr
    assert len(log(pack)) == versions


def test_a_bad_repair_setting_exits_2_before_the_pack_is_touched(tmp_path, nights, model_dir):
    pack = tmp_path / "pack"
    assert refresh(nights[0], pack, model_dir).returncode == 0
    versions = len(log(pack))
    result = refresh(nights[1], pack, model_dir, MEMOIR_REPAIR_ROUNDS="two")
    assert result.returncode == 2 and "MEMOIR_REPAIR_ROUNDS must be a whole number" in result.stderr
    assert "Traceback" not in result.stderr and len(log(pack)) == versions


def test_with_a_hub_repo_the_pack_is_pulled_when_missing_and_kept_versions_are_pushed(tmp_path, nights, model_dir):
    from .fake_hub import FakeHub

    with FakeHub(tokens={"hf_team"}) as hub:
        hub_env = {
            "MEMOIR_HUB_REPO": "team/kb",
            "HF_ENDPOINT": hub.endpoint,
            "HF_TOKEN": "hf_team",
            "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_OFFLINE": "0",
            "MEMOIR_REPAIR_ROUNDS": "0",  # one version a night, whatever the tiny model forgets
        }
        first = refresh(nights[0], tmp_path / "monday", model_dir, **hub_env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "no pack on the Hub yet" in first.stdout and sorted(hub.repos["team/kb"].tags) == ["v1"]
        second = refresh(nights[1], tmp_path / "tuesday", model_dir, **hub_env)  # another machine: pulls first
        assert second.returncode == 0, second.stdout + second.stderr
        assert sorted(hub.repos["team/kb"].tags) == ["v1", "v2"]
        assert [v["added"] for v in log(tmp_path / "tuesday")] == [2, 1]
