"""The mask bank: shared-feature counts, the best active match, its tie-break, growth and copies."""

import torch

from memoir_cli.bank import MaskBank


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
    bank.best_match(queries_of([[0, 1]]))  # fills the float cache
    assert bank.add("late", queries_of([[0, 1]])[0]) == 1
    assert len(bank) == 2 and bank.ids == ["e0", "late"] and bank.active.tolist() == [True, True]
    assert bank.best_match(queries_of([[0, 1]]))[0].tolist() == [1]


def test_a_copy_does_not_share_state_with_the_bank():
    bank = bank_of([[0, 1]])
    copy = bank.copy()
    copy.deactivate("e0")
    copy.add("more", queries_of([[2]])[0])
    assert bank.active.tolist() == [True] and bank.ids == ["e0"] and len(bank.masks) == 1
