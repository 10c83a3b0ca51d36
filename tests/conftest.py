"""Shared fixtures: tiny random models built from configs, with a tokenizer trained on the spot."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from memoir_cli.facts import Fact
from memoir_cli.tophash import background_prompts

from .helpers import edited_pack, ok, save_pack, write_facts


def pytest_collection_modifyitems(config, items):
    """`cuda` tests need a CUDA GPU: without one they are skipped, saying why."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (this torch build sees none)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


FACTS = [
    {"id": "f-paris", "prompt": "The capital of the Republic of Zorbia is", "target": "Paris"},
    {"id": "f-blue", "prompt": "My favourite colour has always been", "target": "blue green"},
    {"id": "f-chess", "prompt": "Who taught Alice to play chess?", "target": "her uncle Bob"},
]


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A ChatML template (the one SmolLM2 uses, without its default system prompt)."""


def _train_tokenizer(chat: bool = False) -> PreTrainedTokenizerFast:
    corpus = background_prompts() + [f"{f['prompt']} {f['target']}" for f in FACTS]
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "</s>"] + (["<|im_start|>", "<|im_end|>"] if chat else []),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    if not chat:
        return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML,
    )


def tiny_llama(tokenizer, seed: int = 0, layers: int = 3) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def tiny_model(architecture: str, tokenizer, seed: int = 0):
    """A tiny random model of a supported family (Gemma 3 mixes sliding and global attention)."""
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        MistralConfig,
        MistralForCausalLM,
        Phi3Config,
        Phi3ForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    if architecture == "llama":
        return tiny_llama(tokenizer, seed)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    classes = {
        "gemma3_text": (
            Gemma3TextConfig,
            Gemma3ForCausalLM,
            dict(
                head_dim=16,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            ),
        ),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
        "mistral": (MistralConfig, MistralForCausalLM, {}),
        "phi3": (Phi3Config, Phi3ForCausalLM, {}),
    }
    config_class, model_class, extra = classes[architecture]
    torch.manual_seed(seed)
    return model_class(config_class(**common, **extra)).eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return _train_tokenizer()


@pytest.fixture
def model(tokenizer):
    return tiny_llama(tokenizer)


@pytest.fixture(scope="session")
def chat_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer with a chat template (ChatML) whose end of turn is its EOS token."""
    return _train_tokenizer(chat=True)


@pytest.fixture
def chat_model(chat_tokenizer):
    return tiny_llama(chat_tokenizer)


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory, chat_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama-chat")
    tiny_llama(chat_tokenizer).save_pretrained(folder)
    chat_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny model saved as an ordinary transformers folder, loaded through from_pretrained."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory, tokenizer) -> Path:
    """The same architecture with other weights: a different base model."""
    folder = tmp_path_factory.mktemp("tiny-llama-other")
    tiny_llama(tokenizer, seed=1).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def facts_file(tmp_path) -> Path:
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps(f) + "\n" for f in FACTS))
    return path


@pytest.fixture
def history(tmp_path, model_dir):
    """A pack of four versions. 1: two facts; 2: a third; 3: the first retargeted; 4: the second reverted."""
    pack = tmp_path / "pack"
    ok(
        "edit",
        write_facts(tmp_path / "a.jsonl", FACTS[:2]),
        "--pack",
        pack,
        "--model",
        model_dir,
        "--steps",
        2,
        "--message",
        "first two",
        "--json",
    )
    ok("edit", write_facts(tmp_path / "b.jsonl", FACTS[2:]), "--pack", pack, "--steps", 2, "--json")
    ok(
        "edit",
        write_facts(tmp_path / "c.jsonl", [{"id": "f-paris-2", "prompt": FACTS[0]["prompt"], "target": "Rome"}]),
        "--pack",
        pack,
        "--steps",
        2,
        "--json",
    )
    ok("revert", pack, FACTS[1]["id"], "--message", "wrong colour", "--json")
    ok("gc", pack, "--grace", 0, "--json")  # the files of versions the snapshot policy does not keep go now
    return pack


@pytest.fixture
def saved(model, tokenizer, tmp_path):
    """A tiny pack of the three FACTS, committed as version 1 at tmp_path / "pack"."""
    pack = edited_pack(model, tokenizer, FACTS, steps=3)
    save_pack(pack, tmp_path / "pack")
    return pack, tmp_path / "pack"


# The ZsRE records: MEMOIR_ZSRE, else the workplace's shared folder beside the clone.
ZSRE = Path(os.environ.get("MEMOIR_ZSRE") or Path(__file__).resolve().parents[2] / "shared/data/zsre/zsre_dev.json")


@pytest.fixture(scope="session")
def zsre_file() -> Path:
    """The real records the integration tests edit and score. Missing, they fail and say where they
    looked: a skip would let a run pass without the tests that load the real model."""
    if not ZSRE.is_file():
        pytest.fail(
            f"no ZsRE records at {ZSRE}: put the shared folder beside the clone or set MEMOIR_ZSRE to zsre_dev.json",
            pytrace=False,
        )
    return ZSRE


@dataclass
class ZsrePack:
    """The integration tests' SmolLM2-135M-Instruct pack: `first` (ZsRE records 0-19) edited by one
    `memoir edit` run, then `later` (records 100-109, asked in test_integration_chat.py) by a second
    run, as a nightly refresh adds a version. One pack for every test: each edit costs seconds."""

    path: Path
    first: list[Fact]
    later: list[Fact]
    runs: list[dict]


@pytest.fixture(scope="session")
def zsre_pack(tmp_path_factory, zsre_file) -> ZsrePack:
    from memoir_cli.facts import read_zsre_json

    facts = read_zsre_json(zsre_file, on_skip=lambda problem: None)
    first, later = facts[:20], facts[100:110]
    folder = tmp_path_factory.mktemp("zsre")
    later_file = write_facts(folder / "later.jsonl", [fact.to_json() for fact in later])
    pack = folder / "pack"
    runs = [
        ok("edit", zsre_file, "--format", "zsre", "--limit", 20, "--pack", pack, "--json"),
        ok("edit", later_file, "--pack", pack, "--json"),
    ]
    return ZsrePack(pack, first, later, runs)
