"""Synthetic packs for the scale benchmarks: a real pack for the real model (create_pack: its layer,
background and permutation), filled with random k-feature masks and random memory columns instead
of trained facts. They measure routing, storage, loading and generation cost, never quality."""

from __future__ import annotations

import torch

from memoir_cli.facts import Fact
from memoir_cli.models import LoadedModel
from memoir_cli.pack import Pack
from memoir_cli.workflows import EditOptions, create_pack


def random_masks(count: int, d_ff: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """`count` masks of exactly k features, drawn uniformly."""
    masks = torch.zeros((count, d_ff), dtype=torch.bool)
    masks.scatter_(1, torch.rand((count, d_ff), generator=generator).topk(k, dim=1).indices, True)
    return masks


def fill(pack: Pack, edits: int, seed: int = 0) -> Pack:
    """Add `edits` synthetic edits to `pack`: masks, memory columns and facts."""
    memory, generator = pack.memory, torch.Generator().manual_seed(seed)
    memory.weight.copy_(torch.randn(memory.weight.shape, generator=generator) * 0.01)
    start = len(memory.bank)
    for offset in range(0, edits, 1000):
        for row, mask in enumerate(random_masks(min(1000, edits - offset), memory.bank.d_ff, memory.k, generator)):
            number = start + offset + row
            memory.bank.add(f"synthetic-{number}", mask)
            pack.facts.append(Fact(f"Synthetic question number {number}?", f"answer {number}", f"synthetic-{number}"))
    return pack


def synthetic_pack(loaded: LoadedModel, edits: int, seed: int = 0) -> Pack:
    return fill(create_pack(loaded, EditOptions()), edits, seed)
