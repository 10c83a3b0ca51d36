"""The residual memory at inference: routing, bitwise identity when unmatched, generation, detach."""
import pytest
import torch

from memoir_cli import attach, detach
from memoir_cli.errors import MemoirError
from memoir_cli.memory import MemoirLinear
from memoir_cli.workflows import generate

from .conftest import FACTS
from .helpers import edited_pack, empty_pack, logits

UNRELATED = ["How do bees make honey?", "Describe a sunset over the ocean."]


@pytest.fixture
def pack(model, tokenizer):
    return edited_pack(model, tokenizer, FACTS, steps=5)


def test_empty_pack_leaves_logits_bitwise_identical(model, tokenizer):
    prompts = [FACTS[0]["prompt"]] + UNRELATED
    before = logits(model, tokenizer, prompts)
    attach(model, empty_pack(model, tokenizer))
    assert torch.equal(logits(model, tokenizer, prompts), before)


def test_unmatched_prompts_get_bitwise_base_logits_and_matched_ones_change(model, tokenizer, pack):
    prompts = [FACTS[0]["prompt"]] + UNRELATED
    before = logits(model, tokenizer, prompts)
    pack.memory.threshold = 1.0  # only a prompt whose mask equals a stored mask is routed
    wrapper = attach(model, pack)
    after = logits(model, tokenizer, prompts)
    routed = wrapper.routes.describe(wrapper.memories)
    assert routed[0]["edit_id"] == FACTS[0]["id"] and routed[0]["overlap"] == 1.0
    assert [r["edit_id"] for r in routed[1:]] == [None, None]
    assert not torch.equal(after[0], before[0])
    assert torch.equal(after[1:], before[1:])


def test_routing_follows_the_threshold(model, tokenizer, pack):
    wrapper = attach(model, pack)
    prompt = "The capital of the Republic of Zorbia was"  # close to, but not, FACTS[0]
    logits(model, tokenizer, [prompt])
    overlap = wrapper.routes.overlap[0].item()
    assert 0.0 < overlap < 1.0
    pack.memory.threshold = overlap
    logits(model, tokenizer, [prompt])
    assert wrapper.routes.row[0].item() == 0
    pack.memory.threshold = overlap + 1e-6
    logits(model, tokenizer, [prompt])
    assert wrapper.routes.row[0].item() == -1


def test_routing_is_decided_once_per_generate_call_and_kept_while_decoding(model, tokenizer, pack, monkeypatch):
    wrapper = attach(model, pack)
    decisions = []
    original = MemoirLinear._decide
    monkeypatch.setattr(MemoirLinear, "_decide", lambda self, x, m: decisions.append(x.shape) or original(self, x, m))
    generate(model, tokenizer, [FACTS[0]["prompt"], UNRELATED[0]], max_new_tokens=6)
    assert len(decisions) == 1 and decisions[0][0] == 2
    assert wrapper.routes.describe(wrapper.memories)[0]["edit_id"] == FACTS[0]["id"]


def test_batched_generation_equals_one_prompt_at_a_time(model, tokenizer, pack):
    model.double()
    pack.memory.weight *= 50  # make the edits visible in the generated tokens
    attach(model, pack)
    prompts = [FACTS[0]["prompt"], UNRELATED[0], FACTS[2]["prompt"], "Hi", UNRELATED[1], FACTS[1]["prompt"]]
    batched = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=6)
    single = [generate(model, tokenizer, [p], max_new_tokens=8)[0] for p in prompts]
    assert batched == single
    detach(model)
    base = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=6)
    assert batched[0] != base[0] and batched[1] == base[1]


def test_detach_restores_the_original_modules_exactly(model, tokenizer, pack):
    layer = model.model.layers[2].mlp
    original_module = layer.down_proj
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = logits(model, tokenizer, [FACTS[0]["prompt"]])
    attach(model, pack)
    assert isinstance(layer.down_proj, MemoirLinear)
    detach(model)
    assert layer.down_proj is original_module
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not model._forward_pre_hooks
    assert torch.equal(logits(model, tokenizer, [FACTS[0]["prompt"]]), before)


def test_stacked_packs_route_to_the_best_match_across_packs(model, tokenizer):
    first = edited_pack(model, tokenizer, FACTS[:1], steps=2)
    second = edited_pack(model, tokenizer, FACTS[1:], steps=2)
    first.memory.name, second.memory.name = "first", "second"
    wrapper = attach(model, first, second)
    logits(model, tokenizer, [FACTS[0]["prompt"], FACTS[2]["prompt"]])
    routed = wrapper.routes.describe(wrapper.memories)
    assert [(r["pack"], r["edit_id"]) for r in routed] == [("first", FACTS[0]["id"]), ("second", FACTS[2]["id"])]


def test_attaching_twice_is_refused(model, tokenizer, pack):
    attach(model, pack)
    with pytest.raises(MemoirError, match="already has packs attached"):
        attach(model, pack)
