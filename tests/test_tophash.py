import pytest
import torch

from memoir_cli.config import default_top_k
from memoir_cli.tophash import (
    Aggregation,
    background_prompts,
    make_permutation,
    pool,
    tophash,
)


def test_permutation_and_masks_are_deterministic_for_a_seed():
    features, background = torch.randn(4, 128), torch.randn(128)
    first = tophash(features, background, 20, make_permutation(128, seed=7))
    again = tophash(features, background, 20, make_permutation(128, seed=7))
    other = tophash(features, background, 20, make_permutation(128, seed=8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_mask_is_the_permuted_top_k_of_the_decentred_feature():
    background = torch.zeros(8)
    features = torch.tensor([[0.1, -5.0, 0.2, 3.0, 0.0, 0.3, -0.1, 0.05]])
    permutation = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0])
    mask = tophash(features, background, 2, permutation)[0]
    # |feature| is largest at indices 1 and 3, which the permutation sends to 6 and 4.
    assert mask.nonzero().flatten().tolist() == [4, 6]
    # De-centring changes the winners: subtracting the background removes feature 1's lead.
    decentred = tophash(features, torch.tensor([0, -5.0, 0, 0, 0, 0, 0, 0]), 2, permutation)[0]
    assert decentred.nonzero().flatten().tolist() == [2, 4]


def test_defaults_scale_with_the_model():
    assert default_top_k(14336) == 4100  # the reference's 4096 of 14336, rounded from 28.6%
    assert default_top_k(1536) == 439
    assert len(background_prompts()) >= 100


def test_pooling_after_the_first_token_leaves_out_each_rows_first_real_token():
    x = torch.tensor([[[0.0], [100.0], [2.0], [4.0]], [[7.0], [9.0], [1.0], [3.0]]])  # [2 rows, 4 tokens, 1]
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])  # row 0 is left-padded: its first real token is 100
    assert pool(x, mask, Aggregation.mean).flatten().tolist() == pytest.approx([106 / 3, 5.0])  # the paper's
    assert pool(x, mask, Aggregation.mean_after_first).flatten().tolist() == pytest.approx([3.0, 13 / 3])
    assert pool(x, None, Aggregation.mean_after_first).flatten().tolist() == pytest.approx([106 / 3, 13 / 3])


def test_pooling_after_the_first_token_keeps_a_one_token_prompts_token():
    x = torch.tensor([[[5.0], [8.0]]])
    assert pool(x, torch.tensor([[0, 1]]), Aggregation.mean_after_first).flatten().tolist() == [8.0]


def test_a_routing_span_inside_the_prompt_leaves_out_its_own_first_token():
    x = torch.arange(6.0).reshape(1, 6, 1)
    span = torch.tensor([[0, 0, 1, 1, 1, 0]])  # a chat question's tokens: the span's first is token 2
    assert pool(x, span, Aggregation.mean_after_first).flatten().tolist() == [3.5]
