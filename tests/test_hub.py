"""push / pull / Hub references, through the real huggingface_hub client against tests/fake_hub.py.

Every memoir command runs as a subprocess with HF_ENDPOINT, HF_HOME, HF_TOKEN and HF_HUB_OFFLINE
set in its environment, so they are read the way huggingface_hub reads them.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memoir_cli.cli import app
from memoir_cli.store import read_record

from .conftest import FACTS
from .fake_hub import FakeHub

TOKEN = "hf_writer_token"
REPO = "alice/zorbia-facts"
runner = CliRunner()


@pytest.fixture
def hub():
    with FakeHub(tokens={TOKEN}) as server:
        yield server


class Shell:
    """Runs `python -m memoir_cli` with a Hugging Face environment of its own."""

    def __init__(self, hub: FakeHub, home: Path, token: str | None = TOKEN, offline: bool = False) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        self.env.update(
            HF_ENDPOINT=hub.endpoint,
            HF_HOME=str(home),
            HF_HUB_OFFLINE="1" if offline else "0",
            HF_HUB_DISABLE_TELEMETRY="1",
        )
        if token:
            self.env["HF_TOKEN"] = token

    def __call__(self, *args, code: int = 0) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "memoir_cli", *map(str, args)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == code, f"exit {result.returncode}: {result.stdout}{result.stderr}"
        return result

    def json(self, *args):
        return json.loads(self(*args, "--json").stdout)


def edit(pack: Path, facts: list[dict], model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / f"facts-{len(facts)}-{facts[0]['id']}.jsonl"
    path.write_text("".join(json.dumps(f) + "\n" for f in facts))
    result = runner.invoke(app, ["edit", str(path), "--pack", str(pack), "--model", str(model_dir), "--steps", "3"])
    assert result.exit_code == 0, result.output


@pytest.fixture
def pushed(hub, tmp_path, model_dir):
    """A two-version pack pushed to the fake Hub: v1 holds two facts, v2 adds the third."""
    pack = tmp_path / "pack"
    edit(pack, FACTS[:2], model_dir, tmp_path)
    shell = Shell(hub, tmp_path / "writer-home")
    first = shell.json("push", pack, REPO, "--private", "--license", "apache-2.0")
    assert first["pushed"] == [1] and first["already_on_hub"] == []
    edit(pack, FACTS[2:], model_dir, tmp_path)
    scored = runner.invoke(app, ["eval", str(pack), "--model", str(model_dir), "--json"])  # for the model card
    assert scored.exit_code == 0, scored.output
    second = shell.json("push", pack, REPO)
    assert second["pushed"] == [2] and second["already_on_hub"] == [1]  # only the new version
    assert shell.json("push", pack, REPO)["pushed"] == []
    return pack


def answers(shell: Shell, ref: str, model_dir: Path) -> list[dict]:
    prompts = [arg for f in FACTS for arg in ("--prompt", f["prompt"])]
    return shell.json("apply", ref, "--model", model_dir, *prompts, "--max-new-tokens", 3)


def test_round_trip_edit_push_pull_apply_gives_identical_outputs(hub, pushed, tmp_path, model_dir):
    repo = hub.repos[REPO]
    assert sorted(repo.tags) == ["v1", "v2"] and repo.private
    card = repo.commits[repo.tags["v2"]].files["README.md"].decode()
    assert re.search(r"^library_name: memoir$", card, re.M) and "license: apache-2.0" in card
    assert "- memoir\n- model-editing" in card and "version 2: 3 edited fact(s)" in card
    assert hub.cards[-1]["library_name"] == "memoir" and hub.cards[-1]["tags"] == ["memoir", "model-editing"]
    assert "Latest `memoir eval` of this version (3 records)" in card and "| Reliability |" in card
    assert "Latest `memoir eval`" not in repo.commits[repo.tags["v1"]].files["README.md"].decode()  # not scored
    local = answers(Shell(hub, tmp_path / "local-home"), str(pushed), model_dir)
    reader = Shell(hub, tmp_path / "empty-cache")
    pulled = reader.json("pull", REPO)
    assert pulled["version"] == 2 and str(tmp_path / "empty-cache") in pulled["path"]
    remote = answers(reader, REPO, model_dir)
    assert [a["output"] for a in remote] == [a["output"] for a in local]
    assert [a["edit_id"] for a in remote] == [f["id"] for f in FACTS]
    assert remote[0]["pack"] == REPO


def test_each_pushed_version_is_pulled_with_its_own_answers(hub, pushed, tmp_path, model_dir):
    shell = Shell(hub, tmp_path / "cache")
    then = answers(shell, f"{REPO}@v1", model_dir)
    now = answers(shell, f"{REPO}@v2", model_dir)
    assert then[2]["edit_id"] is None and now[2]["edit_id"] == FACTS[2]["id"]
    commit = hub.repos[REPO].tags["v1"]
    assert shell.json("show", f"{REPO}@{commit}")["version"] == 1
    assert [(v["version"], v["added"]) for v in shell.json("log", REPO)["versions"]] == [(1, 2), (2, 1)]
    assert [v["version"] for v in shell.json("log", f"{REPO}@v1")["versions"]] == [1]
    copy = tmp_path / "copy"
    shell("pull", f"{REPO}@v1", "--to", copy)
    assert [v["version"] for v in shell.json("log", copy)["versions"]] == [1]
    edit(copy, FACTS[2:], model_dir, tmp_path)  # a pulled copy takes new versions
    assert [v["version"] for v in shell.json("log", copy)["versions"]] == [1, 2]


def test_pushing_versions_whose_files_were_not_kept_replays_them(hub, tmp_path, model_dir):
    pack = tmp_path / "pack"
    for facts in (FACTS[:1], FACTS[1:2], FACTS[2:]):
        edit(pack, facts, model_dir, tmp_path)
    gc = runner.invoke(app, ["gc", str(pack), "--grace", "0", "--json"])
    assert json.loads(gc.stdout)["kept_versions"] == [3]  # versions 1 and 2 are then kept only as records
    result = Shell(hub, tmp_path / "h").json("push", pack, "alice/late", "--model", model_dir)
    assert result["pushed"] == [1, 2, 3]
    repo = hub.repos["alice/late"]
    for number in (1, 2, 3):
        files = repo.commits[repo.tags[f"v{number}"]].files
        recorded = read_record(pack, number)["manifest"]["files"]
        assert {name: hashlib.sha256(files[name]).hexdigest() for name in recorded} == {
            name: entry["sha256"] for name, entry in recorded.items()
        }  # replayed bit for bit


def test_offline_works_from_a_warm_cache_and_fails_clearly_from_a_cold_one(hub, pushed, tmp_path, model_dir):
    warm = tmp_path / "warm"
    Shell(hub, warm)("pull", f"{REPO}@v2")
    assert Shell(hub, warm, offline=True).json("show", f"{REPO}@v2")["version"] == 2
    cold = Shell(hub, tmp_path / "cold", offline=True)("show", f"{REPO}@v2", code=6)
    assert "HF_HUB_OFFLINE" in cold.stderr and "Traceback" not in cold.stderr


def test_hub_failures_are_one_clear_line_each(hub, pushed, tmp_path):
    anonymous = Shell(hub, tmp_path / "anon", token=None)
    private = anonymous("pull", REPO, code=6)
    assert "repository not found" in private.stderr and "HF_TOKEN" in private.stderr
    missing = Shell(hub, tmp_path / "h")("pull", "alice/nothing-here", code=6)
    assert "alice/nothing-here: repository not found" in missing.stderr
    no_rights = anonymous("push", pushed, "alice/new-pack", code=6)
    assert "401" in no_rights.stderr and "token" in no_rights.stderr
    unknown = Shell(hub, tmp_path / "h")("pull", f"{REPO}@v9", code=6)
    assert "no such revision" in unknown.stderr
    down = Shell(hub, tmp_path / "h")
    down.env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there
    offline_network = down("pull", "alice/other", code=6)
    assert "cannot reach the Hub" in offline_network.stderr and "retry" in offline_network.stderr
    for result in (private, missing, no_rights, unknown, offline_network):
        assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1


def test_a_repo_that_is_not_a_memoir_pack_is_refused(hub, tmp_path, monkeypatch):
    from huggingface_hub import HfApi, constants

    # huggingface_hub 1.x parses a commit's URL against constants.ENDPOINT, not the client's endpoint.
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    api.create_repo("alice/some-model")
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "config.json").write_text("{}")
    api.upload_folder(repo_id="alice/some-model", folder_path=tmp_path / "up")
    result = Shell(hub, tmp_path / "h")("pull", "alice/some-model", code=6)
    assert "not a memoir pack" in result.stderr


def tamper(hub: FakeHub, change) -> None:
    """Rewrite the files of the repo's v2 commit in place (what a compromised upload would serve)."""
    commit = hub.repos[REPO].commits[hub.repos[REPO].tags["v2"]]
    change(commit.files)


def test_a_tampered_data_file_is_caught_by_its_checksum(hub, pushed, tmp_path):
    def flip(files):
        data = bytearray(files["memory.safetensors"])
        data[-1] ^= 0xFF
        files["memory.safetensors"] = bytes(data)

    tamper(hub, flip)
    result = Shell(hub, tmp_path / "h")("pull", f"{REPO}@v2", code=3)
    assert "memory.safetensors: checksum mismatch" in result.stderr
    result = Shell(hub, tmp_path / "h2")("pull", f"{REPO}@v2", "--to", tmp_path / "copy", code=3)
    assert "checksum mismatch" in result.stderr
    assert not (tmp_path / "copy").exists() and not list(tmp_path.glob(".copy.pulling-*"))  # nothing half-pulled


def test_file_names_that_leave_the_pack_are_refused_before_anything_is_read(hub, pushed, tmp_path):
    def escape(files):
        manifest = json.loads(files["manifest.json"])
        manifest["files"]["../../evil.safetensors"] = manifest["files"].pop("memory.safetensors")
        files["manifest.json"] = json.dumps(manifest).encode()

    tamper(hub, escape)
    result = Shell(hub, tmp_path / "h")("pull", f"{REPO}@v2", code=3)
    assert "invalid manifest at 'files'" in result.stderr


def test_only_the_packs_own_data_files_are_downloaded(hub, pushed, tmp_path):
    tamper(hub, lambda files: files.update({"adapter_model.bin": b"\x80\x04pickle", "run.py": b"import os"}))
    folder = Path(Shell(hub, tmp_path / "h").json("pull", f"{REPO}@v2")["path"])
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "background.safetensors",
        "facts.jsonl",
        "manifest.json",
        "masks.safetensors",
        "memory.safetensors",
        "versions",
    ]


def test_a_pack_for_another_base_model_is_refused_before_any_weight_is_touched(hub, pushed, tmp_path, other_model_dir):
    result = Shell(hub, tmp_path / "h")("apply", REPO, "--model", other_model_dir, "--prompt", "Hi", code=3)
    assert "was made for base model" in result.stderr


def test_the_package_never_unpickles():
    source = "\n".join(p.read_text() for p in Path(__file__).parent.parent.joinpath("memoir_cli").glob("*.py"))
    assert "torch.load" not in source and "import pickle" not in source and "weights_only=False" not in source
