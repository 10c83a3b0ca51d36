"""The pack on disk: bit-identical round trips, refusals, checksums, atomic writes."""

import json

import numpy as np
import pytest
import torch

import memoir_cli.pack as pack_module
from memoir_cli import attach, load_pack
from memoir_cli.errors import PackError
from memoir_cli.models import fingerprints_match, layer_fingerprint

from .conftest import FACTS, tiny_llama
from .helpers import edited_pack, save_pack


def object_of(path, name):
    return path / "objects" / json.loads((path / "manifest.json").read_text())["files"][name]["sha256"]


def test_save_then_load_is_bit_identical(saved):
    pack, path = saved
    loaded = load_pack(path)
    assert torch.equal(loaded.memory.weight, pack.memory.weight)
    assert torch.equal(loaded.memory.bank.packed(), pack.memory.bank.packed())
    assert torch.equal(loaded.memory.bank.active, pack.memory.bank.active)
    assert torch.equal(loaded.memory.permutation, pack.memory.permutation)
    assert torch.equal(loaded.memory.background, pack.memory.background)
    assert loaded.memory.bank.ids == [f["id"] for f in FACTS]
    assert loaded.facts == pack.facts
    assert loaded.manifest == pack.manifest
    save_pack(loaded, path.parent / "again")
    for name in pack_module.DATA_FILES:
        assert object_of(path, name).read_bytes() == object_of(path.parent / "again", name).read_bytes()


def test_a_chat_packs_further_keys_round_trip_and_a_pack_without_keys_writes_none(tmp_path, chat_model, chat_tokenizer):
    pack = edited_pack(chat_model, chat_tokenizer, FACTS[:2], steps=1)
    pack.memory.deactivate(FACTS[0]["id"])
    save_pack(pack, tmp_path / "chat")
    loaded = load_pack(tmp_path / "chat")
    assert len(loaded.memory.keys) == 6 and loaded.manifest.counts.keys == 6
    assert torch.equal(loaded.memory.keys.packed(), pack.memory.keys.packed())
    assert loaded.memory.keys.owners.tolist() == [0, 0, 0, 1, 1, 1]
    bits = np.unpackbits(pack.memory.keys.packed().numpy(), axis=1)[:, : pack.memory.bank.d_ff]
    routed = loaded.memory.best_match(torch.from_numpy(bits).bool())[0].tolist()  # each key's own mask
    assert routed[3:] == [1, 1, 1] and 0 not in routed  # the deactivated edit's keys lead nowhere
    bare = edited_pack(chat_model, chat_tokenizer, FACTS[:1], steps=1, extra_keys=False)
    save_pack(bare, tmp_path / "one-key")
    tensors = pack_module._load_safetensors(object_of(tmp_path / "one-key", pack_module.MASKS_FILE))
    assert set(tensors) == {"masks", "active", "permutation"}  # the files of a pack made before keys


def test_manifest_records_what_the_issue_lists(saved):
    _, path = saved
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["version"] == 1 and manifest["tool_version"]
    assert manifest["base_model"]["fingerprint"]["shape"] == [64, 128]
    assert manifest["layer"] == {
        "index": 2,
        "path": "model.layers.2.mlp.down_proj",
        "num_layers": 3,
        "d_ff": 128,
        "d_model": 64,
    }
    assert manifest["tophash"]["k"] == 37 and manifest["tophash"]["aggregation"] == "mean_after_first"
    assert manifest["counts"] == {
        "edits": 3,
        "active": 3,
        "keys": 0,
    }  # a pack without a chat template has no further keys
    assert set(manifest["files"]) == {
        "memory.safetensors",
        "masks.safetensors",
        "background.safetensors",
        "facts.jsonl",
    }
    card = (path / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: memoir" in card and "- model-editing" in card


def test_pack_for_another_base_model_is_refused_naming_both(saved, tokenizer):
    _, path = saved
    other = tiny_llama(tokenizer, seed=1)
    other.config._name_or_path = "other/tiny-model"
    with pytest.raises(PackError, match=r"made for base model 'tiny-llama', not for 'other/tiny-model'"):
        attach(other, load_pack(path))


def test_fingerprint_matches_the_same_weights_in_bfloat16_and_not_another_model(model, tokenizer):
    weight = model.model.layers[2].mlp.down_proj.weight
    reference = layer_fingerprint(weight)
    assert fingerprints_match(reference, layer_fingerprint(weight.to(torch.bfloat16)))
    other = tiny_llama(tokenizer, seed=1).model.layers[2].mlp.down_proj.weight
    assert not fingerprints_match(reference, layer_fingerprint(other))


def test_a_file_changed_behind_the_tools_back_is_named(saved):
    _, path = saved
    target = object_of(path, "memory.safetensors")
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(PackError, match=rf"{target.name}: memory\.safetensors: checksum mismatch"):
        load_pack(path)


def test_invalid_manifest_is_refused_before_any_tensor_is_read(saved):
    _, path = saved
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["../escape.safetensors"] = manifest["files"].pop("memory.safetensors")
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackError, match=r"invalid manifest at 'files'"):
        load_pack(path)


def test_missing_pack_and_non_pack_folder_are_clear_errors(tmp_path):
    with pytest.raises(PackError, match="no such pack"):
        load_pack(tmp_path / "nope")
    with pytest.raises(PackError, match="not a memoir pack"):
        load_pack(tmp_path)
