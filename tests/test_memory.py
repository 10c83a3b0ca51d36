"""The residual memory at inference: routing, bitwise identity when unmatched, generation, detach."""

import copy

import pytest
import torch

from memoir_cli import attach, detach
from memoir_cli.errors import MemoirError
from memoir_cli.memory import MemoirLinear
from memoir_cli.session import generate
from memoir_cli.tophash import prompt_features

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
    pack.manifest.routing.threshold = 1.0  # only a prompt whose mask equals a stored mask is routed
    wrapper = attach(model, pack)
    after = logits(model, tokenizer, prompts)
    routed = wrapper.describe_routes()
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
    pack.manifest.routing.threshold = overlap
    logits(model, tokenizer, [prompt])
    assert wrapper.routes.row[0].item() == 0
    pack.manifest.routing.threshold = overlap + 1e-6
    logits(model, tokenizer, [prompt])
    assert wrapper.routes.row[0].item() == -1


def test_routing_is_decided_once_per_generate_call_and_kept_while_decoding(model, tokenizer, pack, monkeypatch):
    wrapper = attach(model, pack)
    decisions = _count_decisions(monkeypatch)
    generate(model, tokenizer, [FACTS[0]["prompt"], UNRELATED[0]], max_new_tokens=6)
    assert len(decisions) == 1 and decisions[0][0] == 2
    assert wrapper.describe_routes()[0]["edit_id"] == FACTS[0]["id"]


def test_routed_mask_rows_are_unpacked_once_per_call_and_kept_on_the_models_device(model, tokenizer, pack, monkeypatch):
    wrapper = attach(model, pack)
    unpacked, inputs = [], []
    original_rows, original_forward = type(pack.memory.bank).rows, MemoirLinear.forward
    monkeypatch.setattr(
        type(pack.memory.bank), "rows", lambda bank, i: unpacked.append(len(i)) or original_rows(bank, i)
    )
    monkeypatch.setattr(MemoirLinear, "forward", lambda self, x: inputs.append(x) or original_forward(self, x))
    generate(model, tokenizer, [FACTS[0]["prompt"], UNRELATED[0]], max_new_tokens=6)
    assert len(inputs) > 1 and unpacked == [1]  # six decoding steps, one unpacking of the one routed row
    placed_rows, placed_masks = wrapper.routes.placed[0]
    assert placed_rows.device == placed_masks.device == inputs[-1].device
    assert placed_masks.dtype == inputs[-1].dtype and placed_rows.tolist() == [0]


def _count_decisions(monkeypatch) -> list:
    decisions = []
    original = MemoirLinear._decide
    monkeypatch.setattr(
        MemoirLinear, "_decide", lambda self, x, m: decisions.append(tuple(x.shape)) or original(self, x, m)
    )
    return decisions


def _statically_edited(model, pack, row: int):
    """A copy of the model whose down-projection always adds edit `row`: W0 + W_m diag(m_row)."""
    reference = copy.deepcopy(model)
    layer = reference.get_submodule(pack.memory.layer_path)
    mask = pack.memory.bank.rows([row])[0].to(layer.weight.dtype)
    layer.weight += pack.memory.weight.to(layer.weight.dtype) * mask
    return reference


def _prompt_batch(tokenizer, prompts):
    from memoir_cli.batching import encode_left_padded

    batch = encode_left_padded(tokenizer, prompts, torch.device("cpu"))
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


GENERATE_MODES = {
    "greedy": dict(do_sample=False),
    "greedy without cache": dict(do_sample=False, use_cache=False),
    "sampling": dict(do_sample=True, top_k=5),
    "two sequences per prompt": dict(do_sample=True, num_return_sequences=2),
    "beam search": dict(do_sample=False, num_beams=3, num_return_sequences=2),
}


@pytest.mark.parametrize("mode", GENERATE_MODES)
def test_users_own_generate_decides_once_per_row_and_keeps_it_for_every_new_token(
    model, tokenizer, pack, mode, monkeypatch
):
    model.double()
    pack.memory.weight *= 50  # large enough to change the generated tokens
    prompts = [FACTS[0]["prompt"], UNRELATED[0]]
    wrapper = attach(model, pack)
    decisions = _count_decisions(monkeypatch)
    settings = dict(GENERATE_MODES[mode], max_new_tokens=6, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    output = model.generate(**_prompt_batch(tokenizer, prompts), **settings)
    copies = settings.get("num_return_sequences", 1)
    rows_per_prompt = settings.get("num_beams", copies)  # beam search runs every beam as a row
    assert len(decisions) == 1 and decisions[0][0] == 2 * rows_per_prompt
    routed = [r["edit_id"] for r in wrapper.describe_routes()]
    assert routed == [FACTS[0]["id"]] * rows_per_prompt + [None] * rows_per_prompt
    detach(model)
    for reference, rows in ((_statically_edited(model, pack, 0), slice(0, copies)), (model, slice(copies, None))):
        torch.manual_seed(0)
        expected = reference.generate(**_prompt_batch(tokenizer, prompts), **settings)
        # A row that has ended (the pack trains EOS after the target) is padded to the batch's width.
        assert _unpadded(output[rows], tokenizer) == _unpadded(expected[rows], tokenizer)


def _unpadded(rows: torch.Tensor, tokenizer) -> list[list[int]]:
    """Each generated row without the padding that follows its end of sequence."""
    trimmed = []
    for row in rows.tolist():
        while row and row[-1] == tokenizer.pad_token_id:
            row.pop()
        trimmed.append(row)
    return trimmed


def test_generate_without_an_attention_mask_routes_left_padded_rows_from_their_real_tokens(
    model, tokenizer, pack, monkeypatch
):
    prompts = [FACTS[0]["prompt"], "Hi"]
    batch = _prompt_batch(tokenizer, prompts)
    wrapper = attach(model, pack)
    model(**batch)
    expected = wrapper.describe_routes()
    model.generate(input_ids=batch["input_ids"], max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert wrapper.describe_routes() == expected


def test_plain_forward_passes_decide_afresh_each_call(model, tokenizer, pack, monkeypatch):
    wrapper = attach(model, pack)
    decisions = _count_decisions(monkeypatch)
    logits(model, tokenizer, [FACTS[0]["prompt"]])
    assert wrapper.describe_routes()[0]["edit_id"] == FACTS[0]["id"]
    logits(model, tokenizer, [UNRELATED[0], UNRELATED[1]])
    assert [r["edit_id"] for r in wrapper.describe_routes()] == [None, None]
    assert len(decisions) == 2


def test_a_prompt_routed_to_no_edit_generates_exactly_the_base_models_tokens(model, tokenizer, pack):
    base = generate(model, tokenizer, UNRELATED, max_new_tokens=12)
    pack.memory.weight *= 50
    wrapper = attach(model, pack)
    edited = generate(model, tokenizer, UNRELATED, max_new_tokens=12)
    assert [r["edit_id"] for r in wrapper.describe_routes()] == [None, None]
    assert edited == base


def test_detach_removes_the_generate_wrapper(model, tokenizer, pack):
    attach(model, pack)
    assert "generate" in vars(model)
    detach(model)
    assert "generate" not in vars(model) and model.generate.__func__ is type(model).generate


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
    first.label, second.label = "first", "second"
    wrapper = attach(model, first, second)
    logits(model, tokenizer, [FACTS[0]["prompt"], FACTS[2]["prompt"]])
    routed = wrapper.describe_routes()
    assert [(r["pack"], r["edit_id"]) for r in routed] == [("first", FACTS[0]["id"]), ("second", FACTS[2]["id"])]


def test_attaching_twice_is_refused(model, tokenizer, pack):
    attach(model, pack)
    with pytest.raises(MemoirError, match="already has packs attached"):
        attach(model, pack)


def test_a_prompt_that_matches_a_further_key_gets_that_edits_trained_mask(model, tokenizer, pack):
    wrapper = attach(model, pack)
    logits(model, tokenizer, [UNRELATED[0]])
    assert wrapper.routes.row.tolist() == [-1]
    features = prompt_features(model, tokenizer, wrapper, [UNRELATED[0]], aggregation=pack.memory.aggregation)
    key = pack.memory.query_masks(features)
    pack.memory.keys.add(1, key)  # the unrelated prompt's own mask, as a key of edit 1
    logits(model, tokenizer, [UNRELATED[0]])
    assert wrapper.routes.row.tolist() == [1] and wrapper.routes.overlap.tolist() == [1.0]
    _, masks = wrapper.routes.placed[0]
    assert torch.equal(masks[0].bool(), pack.memory.bank.rows([1])[0])  # the trained columns, not the key
    pack.memory.deactivate(FACTS[1]["id"])
    logits(model, tokenizer, [UNRELATED[0]])
    assert wrapper.routes.row.tolist() != [1]


def test_a_key_and_a_trained_mask_that_tie_route_to_the_more_recent_edit(model, tokenizer, pack):
    memory = pack.memory
    query = memory.bank.rows([0])  # edit 0's trained mask, exactly
    memory.keys.add(2, query)  # and a key of the later edit 2 equal to it
    rows, overlaps = memory.best_match(query)
    assert rows.tolist() == [2] and overlaps.tolist() == [1.0]
    assert memory.routing_overlaps(query)[0, [0, 2]].tolist() == [1.0, 1.0]


def test_each_stacked_pack_routes_with_its_own_pooling(model, tokenizer):
    paper = edited_pack(model, tokenizer, FACTS[:1], steps=1, aggregation="mean")
    ours = edited_pack(model, tokenizer, FACTS[1:2], steps=1)
    assert (paper.memory.aggregation, ours.memory.aggregation) == ("mean", "mean_after_first")
    wrapper = attach(model, paper, ours)
    logits(model, tokenizer, [FACTS[0]["prompt"], FACTS[1]["prompt"]])
    routed = [(r["edit_id"], r["overlap"]) for r in wrapper.describe_routes()]
    assert routed == [(FACTS[0]["id"], 1.0), (FACTS[1]["id"], 1.0)]  # each key is met exactly as it was made


def test_one_edits_overlaps_equal_that_edits_column_of_the_routing_overlaps(model, tokenizer, pack):
    memory = pack.memory
    queries = memory.query_masks(torch.randn(5, memory.bank.d_ff, generator=torch.Generator().manual_seed(1)))
    memory.keys.add(1, queries[:2])  # two further keys for edit 1: queries 0 and 1 match it exactly
    for row in range(len(memory.bank)):
        assert torch.equal(memory.edit_overlaps(queries, row), memory.routing_overlaps(queries)[:, row])
    assert memory.edit_overlaps(queries, 1)[:2].tolist() == [1.0, 1.0]
