"""The mask bank: shared-feature counts, the best active match, its tie-break, growth and copies,
and that the bit-packed bank routes exactly as the float matmul it replaced."""

import numpy as np
import pytest
import torch

from memoir_cli.bank import GROWTH, KeyBank, MaskBank, popcount_and, to_words


def bank_of(rows: list[list[int]], d_ff: int = 8) -> MaskBank:
    bank = MaskBank(d_ff)
    for number, features in enumerate(rows):
        mask = torch.zeros(d_ff, dtype=torch.bool)
        mask[features] = True
        bank.add(f"e{number}", mask)
    return bank


def queries_of(rows: list[list[int]], d_ff: int = 8) -> torch.Tensor:
    queries = torch.zeros((len(rows), d_ff), dtype=torch.bool)
    for number, features in enumerate(rows):
        queries[number, features] = True
    return queries


def test_shared_counts_the_features_a_query_and_each_edit_have_in_common():
    bank = bank_of([[0, 1, 2], [2, 3, 4], [5, 6, 7]])
    shared = bank.shared(queries_of([[0, 2, 4], [7]]))
    assert shared.tolist() == [[2.0, 2.0, 0.0], [0.0, 0.0, 1.0]]


def test_shared_equals_the_popcount_of_and_on_random_banks():
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand((50, 64), generator=generator) < 0.3
    queries = torch.rand((7, 64), generator=generator) < 0.3
    bank = MaskBank(64, masks, [f"e{i}" for i in range(50)])
    expected = (queries.unsqueeze(1) & masks.unsqueeze(0)).sum(-1).float()
    assert torch.equal(bank.shared(queries), expected)


def test_the_best_match_ties_go_to_the_most_recent_edit():
    bank = bank_of([[0, 1], [0, 1], [2, 3]])
    rows, counts = bank.best_match(queries_of([[0, 1], [3]]))
    assert rows.tolist() == [1, 2] and counts.tolist() == [2.0, 1.0]


def test_an_inactive_edit_is_never_the_best_match():
    bank = bank_of([[0, 1], [0, 1, 2]])
    bank.deactivate("e1")
    rows, counts = bank.best_match(queries_of([[0, 1, 2]]))
    assert rows.tolist() == [0] and counts.tolist() == [2.0]
    bank.deactivate("e0")
    rows, counts = bank.best_match(queries_of([[0, 1, 2]]))
    assert rows.tolist() == [-1] and counts.tolist() == [0.0]


def test_an_empty_bank_matches_nothing():
    rows, counts = MaskBank(8).best_match(queries_of([[0], [1]]))
    assert rows.tolist() == [-1, -1] and counts.tolist() == [0.0, 0.0]


def test_add_returns_the_new_row_and_is_seen_by_the_next_match():
    bank = bank_of([[0, 1]])
    bank.best_match(queries_of([[0, 1]]))
    assert bank.add("late", queries_of([[0, 1]])[0]) == 1
    assert len(bank) == 2 and bank.ids == ["e0", "late"] and bank.active.tolist() == [True, True]
    assert bank.best_match(queries_of([[0, 1]]))[0].tolist() == [1]


def test_a_copy_does_not_share_state_with_the_bank():
    bank = bank_of([[0, 1]])
    copy = bank.copy()
    copy.deactivate("e0")
    copy.add("more", queries_of([[2]])[0])
    assert bank.active.tolist() == [True] and bank.ids == ["e0"] and len(bank) == 1
    assert bank.rows([0]).tolist() == [[True, True] + [False] * 6]


def float_routing(masks: torch.Tensor, active: torch.Tensor, queries: torch.Tensor):
    """The routing the bit-packed bank replaced: a float matmul, inactive edits at -1, and ties to the
    most recent edit (argmax over the reversed rows)."""
    scores = queries.float() @ masks.float().T
    scores[:, ~active] = -1.0
    rows = len(masks) - 1 - scores.flip(1).argmax(dim=1)
    return rows, scores.gather(1, rows.unsqueeze(1)).squeeze(1)


@pytest.mark.parametrize("d_ff", [8, 64, 70, 1531])
def test_packed_routing_equals_the_float_routing_on_random_banks_with_ties_and_inactive_edits(d_ff):
    generator = torch.Generator().manual_seed(d_ff)
    masks = torch.rand((300, d_ff), generator=generator) < 0.3
    masks[100:110] = masks[5]  # exact duplicates: ties, which go to the latest row
    queries = torch.rand((9, d_ff), generator=generator) < 0.3
    queries[0] = masks[5]
    active = torch.rand(300, generator=generator) < 0.8
    active[100:109], active[109] = True, False  # the latest duplicate is inactive: the tie goes to row 108
    bank = MaskBank(d_ff, masks, [f"e{i}" for i in range(300)], active)
    rows, counts = bank.best_match(queries)
    expected_rows, expected_counts = float_routing(masks, active, queries)
    assert torch.equal(rows, expected_rows) and torch.equal(counts, expected_counts)
    assert counts.dtype == torch.float32
    if d_ff >= 64:  # wide enough that no random mask holds all of edit 5's features
        assert rows[0] == 108
    assert torch.equal(bank.shared(queries), queries.float() @ masks.float().T)


def test_the_device_popcount_equals_numpys_on_random_words():
    generator = np.random.default_rng(0)
    words = generator.integers(0, 2**64, size=(5, 1000), dtype=np.uint64, endpoint=False)
    query = generator.integers(0, 2**64, size=5, dtype=np.uint64, endpoint=False)
    words[:, 0] = np.iinfo(np.uint64).max  # every bit set: the sign bit of each int64 word too
    query[:] = np.iinfo(np.uint64).max
    counts = popcount_and(torch.from_numpy(words.view(np.int64)), torch.from_numpy(query.view(np.int64)))
    expected = np.bitwise_count(words & query[:, None]).sum(axis=0)
    assert counts.tolist() == expected.tolist() and counts[0] == 320


def test_the_bank_keeps_bits_and_grows_geometrically_so_add_is_amortised_constant():
    d_ff, n = 1536, 3000
    bank = MaskBank(d_ff)
    mask = torch.zeros(d_ff, dtype=torch.bool)
    capacities = []
    for number in range(n):
        bank.add(f"e{number}", mask)
        capacities.append(bank._words.shape[1])
    regrowths = sum(1 for before, after in zip(capacities, capacities[1:]) if after != before)
    copied = sum(after for before, after in zip(capacities, capacities[1:]) if after != before)
    assert regrowths < 150 and copied < n / GROWTH * 2  # O(n) words copied in all, not O(n^2)
    packed_bytes = n * (d_ff // 8)
    assert packed_bytes <= bank.nbytes <= packed_bytes * (1 + GROWTH) * 1.05  # bits, not floats


def test_masks_survive_the_round_trip_through_the_file_layout_for_widths_not_divisible_by_eight():
    masks = torch.rand(5, 1531) > 0.5
    bank = MaskBank(1531, masks, [f"e{i}" for i in range(5)])
    packed = bank.packed()
    assert packed.dtype == torch.uint8 and packed.shape == (5, 192)
    assert torch.equal(packed, torch.from_numpy(np.packbits(masks.numpy(), axis=1)))
    again = MaskBank.from_packed(1531, packed.numpy(), bank.ids, bank.active)
    assert torch.equal(again.rows(range(5)), masks) and again.features_per_mask().tolist() == masks.sum(1).tolist()
    assert to_words(masks).shape == (5, 24)


def test_an_edit_id_is_added_once():
    bank = bank_of([[0]])
    with pytest.raises(ValueError, match="already in the bank"):
        bank.add("e0", queries_of([[1]])[0])


def test_the_device_path_counts_as_the_cpu_path_and_extends_its_copy_as_the_bank_grows():
    generator = torch.Generator().manual_seed(1)
    bank = MaskBank(200, torch.rand((40, 200), generator=generator) < 0.3, [f"e{i}" for i in range(40)])
    queries = torch.rand((3, 200), generator=generator) < 0.3
    # The path a CUDA query takes (bank copy on the device, SWAR popcount in torch), run on the CPU here.
    assert np.array_equal(bank._device_counts(to_words(queries), torch.device("cpu")), bank._counts(queries))
    for number in range(40, 100):
        bank.add(f"e{number}", torch.rand(200, generator=generator) < 0.3)
    device_counts = bank._device_counts(to_words(queries), torch.device("cpu"))
    assert device_counts.shape == (3, 100) and np.array_equal(device_counts, bank._counts(queries))


def keys_of(owners: list[int], rows: list[list[int]], d_ff: int = 8) -> KeyBank:
    keys = KeyBank(d_ff)
    for owner, features in zip(owners, rows):
        keys.add(owner, queries_of([features], d_ff))
    return keys


def test_a_key_leads_to_the_edit_that_owns_it():
    keys = keys_of([0, 0, 1], [[0, 1], [2, 3], [4, 5]])
    rows, counts = keys.best_match(queries_of([[2, 3], [4], [6, 7]]))
    assert rows.tolist() == [0, 1, 1] and counts.tolist() == [2.0, 1.0, 0.0]  # a tie: the most recent edit


def test_a_deactivated_edit_is_reached_by_none_of_its_keys():
    keys = keys_of([0, 1, 1], [[0, 1], [0, 1], [2, 3]])
    keys.deactivate(1)
    rows, counts = keys.best_match(queries_of([[0, 1], [2, 3]]))
    assert rows.tolist() == [0, 0] and counts.tolist() == [2.0, 0.0]
    assert keys.shared_per_edit(queries_of([[2, 3]]), edits=2).tolist() == [[0.0, 0.0]]


def test_shared_per_edit_is_the_best_over_each_edits_keys():
    keys = keys_of([0, 0, 2], [[0], [0, 1, 2], [1, 2]])
    assert keys.shared_per_edit(queries_of([[0, 1, 2]]), edits=3).tolist() == [[3.0, 0.0, 2.0]]


def test_keys_round_trip_through_their_packed_bytes_with_their_edits_active_flags():
    keys = keys_of(list(range(40)), [[i % 8, (i + 3) % 8] for i in range(40)])
    active = torch.ones(40, dtype=torch.bool)
    active[5] = False
    again = KeyBank.from_packed(8, keys.packed().numpy(), keys.owners.numpy(), active)
    assert torch.equal(again.packed(), keys.packed()) and torch.equal(again.owners, keys.owners)
    query = queries_of([[5, 0]])  # exactly keys 5, 13, 21, 29 and 37
    assert again.best_match(query)[0].tolist() == [37] and keys.best_match(query)[0].tolist() == [37]
    again.deactivate(37)
    assert again.best_match(query)[0].tolist() == [29]
    copied = again.copy()
    copied.add(3, query)
    assert len(copied) == 41 and len(again) == 40
    assert copied.best_match(query)[0].tolist() == [3] and again.best_match(query)[0].tolist() == [29]


@pytest.mark.cuda
def test_on_a_gpu_the_bank_and_its_keys_match_as_on_the_cpu():
    generator = torch.Generator().manual_seed(3)
    masks = torch.rand((300, 1536), generator=generator) < 0.29
    queries = torch.rand((5, 1536), generator=generator) < 0.29
    bank = MaskBank(1536, masks, [f"e{i}" for i in range(300)])
    keys = KeyBank(1536)
    keys.add(7, queries[:2])  # two queries' own masks become keys of edit 7
    for index in range(3):
        rows, counts = bank.best_match(queries.cuda())
        assert torch.equal(rows, bank.best_match(queries)[0]) and torch.equal(counts, bank.best_match(queries)[1])
        bank.add(f"new{index}", queries[4])  # the device copy is extended as the bank grows
    assert keys.best_match(queries.cuda())[0].tolist()[:2] == [7, 7]
