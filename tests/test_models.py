"""Loading a model: the auto dtype, a device map, and where inputs go; the `cuda` tests run only
where a GPU exists (benchmarks/gpu_check.sh runs them there)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig

from memoir_cli import models
from memoir_cli.errors import ModelError
from memoir_cli.facts import Fact
from memoir_cli.history import open_pack
from memoir_cli.models import check_gguf_tokenizer, input_device, load_model, resolve_dtype
from memoir_cli.store import load_pack
from memoir_cli.workflows import EditOptions, edit_pack

from .conftest import FACTS
from .helpers import ok, run, tree, write_facts


def test_auto_dtype_is_float32_on_the_cpu_and_the_checkpoints_own_on_a_gpu():
    bf16, plain = LlamaConfig(dtype="bfloat16"), LlamaConfig()
    assert resolve_dtype("auto", torch.device("cpu"), bf16) == "float32"
    assert resolve_dtype("auto", torch.device("cuda"), bf16) == "bfloat16"
    assert resolve_dtype("auto", torch.device("cuda"), plain) == "float32"  # a checkpoint that names none
    assert resolve_dtype("float16", torch.device("cpu"), bf16) == "float16"  # asked for: as asked
    with pytest.raises(ModelError, match="unknown dtype 'float8'"):
        resolve_dtype("float8", torch.device("cpu"), bf16)


def test_a_model_loads_in_float32_on_the_cpu_by_default_and_says_so(model_dir):
    loaded = load_model(str(model_dir))
    assert loaded.dtype == "float32" and next(loaded.model.parameters()).dtype == torch.float32
    assert input_device(loaded.model) == torch.device("cpu") == loaded.input_device


def test_a_pack_of_a_hub_model_records_the_commit_it_was_loaded_at(tmp_path, model_dir):
    """`--model USER/NAME` takes from_pretrained's Hub path, here offline from a Hub cache laid out
    as huggingface_hub lays it out; a local folder has no commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--memoir-test--tiny"
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    facts, pack = write_facts(tmp_path / "a.jsonl", FACTS[:1]), tmp_path / "pack"
    command = [sys.executable, "-m", "memoir_cli", "edit", str(facts), "--pack", str(pack), "--steps", "1"]
    environment = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    done = subprocess.run([*command, "--model", "memoir-test/tiny"], env=environment, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    base = json.loads((pack / "manifest.json").read_text())["base_model"]
    assert (base["id"], base["revision"]) == ("memoir-test/tiny", commit)
    assert load_model(str(model_dir)).revision is None


def test_an_edit_with_a_device_map_equals_one_without_it(tmp_path, model_dir):
    records = [Fact.from_json(f) for f in FACTS[:2]]
    edit_pack(records, tmp_path / "placed", str(model_dir), EditOptions(steps=2, device_map="auto"))
    edit_pack(records, tmp_path / "plain", str(model_dir), EditOptions(steps=2))
    placed, plain = load_pack(tmp_path / "placed"), load_pack(tmp_path / "plain")
    assert torch.equal(placed.memory.weight, plain.memory.weight)
    assert {k: v for k, v in tree(tmp_path / "placed").items() if "objects" in k} == {
        k: v for k, v in tree(tmp_path / "plain").items() if "objects" in k
    }
    answer = ok("apply", tmp_path / "placed", "--prompt", FACTS[0]["prompt"], "--device-map", "auto", "--json")
    assert answer[0]["edit_id"] == FACTS[0]["id"]


def test_a_bf16_models_memory_is_stored_in_bf16_when_asked_and_replays_bit_identically(tmp_path, model_dir):
    half, full = tmp_path / "half", tmp_path / "full"
    common = ["--model", model_dir, "--dtype", "bfloat16", "--steps", 2, "--json"]
    ok("edit", write_facts(tmp_path / "a.jsonl", FACTS[:2]), "--pack", half, "--memory-dtype", "model", *common)
    ok("edit", write_facts(tmp_path / "a.jsonl", FACTS[:2]), "--pack", full, *common)
    shown = ok("show", half, "--json")
    assert shown["memory_dtype"] == "bfloat16" and ok("show", full, "--json")["memory_dtype"] == "float32"
    assert shown["bytes"] < 0.75 * ok("show", full, "--json")["bytes"]  # the memory is most of a pack
    first = load_pack(half)
    assert first.memory.weight.dtype == torch.float32  # read back for use in float32
    assert torch.equal(first.memory.weight, first.memory.weight.to(torch.bfloat16).float())  # bf16 values
    ok("edit", write_facts(tmp_path / "b.jsonl", FACTS[2:]), "--pack", half, "--dtype", "bfloat16", "--steps", 2)
    ok("gc", half, "--grace", 0)
    loaded = load_model(str(model_dir), dtype="bfloat16")
    replayed = open_pack(f"{half}@1", lambda _pack: loaded)  # version 1's files are gone: replayed
    assert torch.equal(replayed.memory.weight, first.memory.weight)
    result = run("edit", write_facts(tmp_path / "c.jsonl", FACTS[:1]), "--pack", half, "--memory-dtype", "float32")
    assert result.exit_code == 2 and "made with memory_dtype bfloat16; it cannot change to float32" in result.stderr


@pytest.mark.cuda
def test_on_a_gpu_auto_dtype_editing_and_routing_run_on_the_gpu(tmp_path, model_dir):
    loaded = load_model(str(model_dir), device="cuda")
    assert loaded.input_device.type == "cuda"
    pack = tmp_path / "pack"
    ok("edit", write_facts(tmp_path / "a.jsonl", FACTS), "--pack", pack, "--model", model_dir, "--device", "cuda")
    answers = ok("apply", pack, "--prompt", FACTS[1]["prompt"], "--device", "cuda", "--json")
    assert answers[0]["edit_id"] == FACTS[1]["id"] and answers[0]["overlap"] == 1.0


@pytest.mark.cuda
def test_on_a_gpu_a_bf16_checkpoint_loads_in_bf16_and_its_memory_can_be_stored_in_it(tmp_path, model_dir):
    folder = tmp_path / "bf16-model"
    model = load_model(str(model_dir), dtype="bfloat16")
    model.model.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    assert load_model(str(folder), device="cuda").dtype == "bfloat16"  # auto: the checkpoint's own
    pack = tmp_path / "pack"
    facts = write_facts(tmp_path / "a.jsonl", FACTS)
    ok("edit", facts, "--pack", pack, "--model", folder, "--device", "cuda", "--memory-dtype", "model", "--steps", 3)
    assert ok("show", pack, "--json")["memory_dtype"] == "bfloat16"
    answers = ok("apply", pack, "--prompt", FACTS[0]["prompt"], "--device", "cuda", "--json")
    assert answers[0]["edit_id"] == FACTS[0]["id"]


@pytest.mark.cuda
def test_on_a_gpu_a_device_map_places_the_model_and_edits_and_routes_there(tmp_path, model_dir):
    assert load_model(str(model_dir), device="cuda", device_map="auto").input_device.type == "cuda"
    pack, placement = tmp_path / "pack", ["--device", "cuda", "--device-map", "auto"]
    ok("edit", write_facts(tmp_path / "a.jsonl", FACTS), "--pack", pack, "--model", model_dir, *placement)
    answers = ok("apply", pack, "--prompt", FACTS[2]["prompt"], *placement, "--json")
    assert answers[0]["edit_id"] == FACTS[2]["id"] and answers[0]["overlap"] == 1.0


def test_a_model_loads_with_the_checkpoints_own_layers_and_no_hub_kernels(model_dir):
    # transformers 5.25 kernelizes by default: on a GPU that fetched code from the Hub, which failed
    # offline, and the swapped layers would compute differently from the pack's recorded base model.
    assert load_model(str(model_dir)).model.use_kernels is False
    assert load_model(str(model_dir), device_map="auto").model.use_kernels is False


def test_a_gguf_tokenizer_that_this_transformers_builds_wrong_is_refused_naming_the_fix(monkeypatch):
    monkeypatch.setattr(models.metadata, "version", lambda package: "5.22.2")
    with pytest.raises(ModelError, match=r"transformers 5.22.2 reads the tokenizer of gemma3_text GGUF files wrong"):
        check_gguf_tokenizer("gemma3_text")
    check_gguf_tokenizer("llama")  # read right by every release
    monkeypatch.setattr(models.metadata, "version", lambda package: "5.23.0")
    check_gguf_tokenizer("gemma3_text")


def test_an_unknown_device_map_is_refused_before_anything_loads(model_dir):
    with pytest.raises(ModelError, match=r"unknown device map 'bogus' \(expected auto, balanced"):
        load_model(str(model_dir), device_map="bogus")


def test_a_device_map_without_a_recent_accelerate_is_refused_naming_the_fix(monkeypatch, model_dir):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    with pytest.raises(ModelError, match=r"needs accelerate >= 1\.2 \(accelerate is not installed\): pip install"):
        load_model(str(model_dir), device_map="auto")
    monkeypatch.setattr(metadata, "version", lambda name: "1.0.0")
    with pytest.raises(ModelError, match=r"accelerate 1\.0\.0 is installed"):
        load_model(str(model_dir), device_map="auto")
