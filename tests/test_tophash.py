import torch

from memoir_cli.config import default_top_k
from memoir_cli.tophash import (
    background_prompts,
    make_permutation,
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
