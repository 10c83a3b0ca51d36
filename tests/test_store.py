"""The pack on disk over time (store.py): commits that fail part way, format 1 upgrades, refusals."""

import json

import pytest
import torch

import memoir_cli.store as store
from memoir_cli import load_pack
from memoir_cli.errors import PackError
from memoir_cli.history import log

from .helpers import save_pack


@pytest.mark.parametrize("point", ["commit:objects", "commit:record"])
def test_a_commit_that_fails_before_the_manifest_swap_leaves_the_previous_version(saved, monkeypatch, point):
    pack, path = saved
    weight = pack.memory.weight.clone()
    pack.memory.weight += 1.0

    def crash(name):
        if name == point:
            raise OSError("disk full")

    monkeypatch.setattr(store, "pause_point", crash)
    with pytest.raises(OSError):
        save_pack(pack, path)
    assert load_pack(path).version == 1
    assert torch.equal(load_pack(path).memory.weight, weight)
    monkeypatch.undo()
    save_pack(pack, path)  # the next commit is version 2 and removes the leftover record and staging
    assert not [p for p in path.iterdir() if p.name.startswith(".")]
    store.collect_garbage(path, grace_seconds=0)  # objects go once no reader can still want them
    assert load_pack(path).version == 2 and torch.equal(load_pack(path).memory.weight, pack.memory.weight)
    assert sorted(p.name for p in (path / "versions").iterdir()) == ["000001.json", "000002.json"]
    kept = {entry["sha256"] for entry in load_pack(path).manifest.files.values()}
    assert {p.name for p in (path / "objects").iterdir()} == kept  # version 1's files are replayable, not kept
    assert not [p for p in path.iterdir() if p.name.startswith(".")]


def test_a_format_1_pack_is_read_as_version_1_and_upgraded_on_its_next_commit(saved, tmp_path):
    pack, path = saved
    flat = tmp_path / "flat"
    flat.mkdir()
    manifest = json.loads((path / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        (flat / name).write_bytes((path / "objects" / entry["sha256"]).read_bytes())
    for key in ("version", "snapshot_every"):
        manifest.pop(key)
    manifest["format_version"] = 1
    (flat / "manifest.json").write_text(json.dumps(manifest))
    old = load_pack(flat)
    assert old.version == 1 and torch.equal(old.memory.weight, pack.memory.weight)
    old.memory.weight += 1.0
    save_pack(old, flat)
    assert [e["version"] for e in log(flat)] == [1, 2]
    assert store.read_record(flat, 1)["manifest"]["files"] == manifest["files"]  # version 1 is the old pack
    assert torch.equal(load_pack(f"{flat}@1").memory.weight, pack.memory.weight)  # kept: it cannot be replayed
    assert not (flat / "memory.safetensors").exists()


def test_save_refuses_to_overwrite_a_folder_that_is_not_a_pack(saved, tmp_path):
    pack, _ = saved
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(PackError, match="not a memoir pack; refusing"):
        save_pack(pack, tmp_path / "photos")
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"meow"
