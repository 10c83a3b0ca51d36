"""`memoir diff A B`: what changed between two packs or two versions of one pack.

Facts are matched by prompt among the active edits: added (only in B), removed (only in A),
retargeted (in both, with another target). A conflict is a pair of active edits whose masks overlap
at or above tau: a prompt of one may be routed to the other. Within B, every such pair is listed
(flagged `new` when A does not have it). When A and B are different packs, which `apply` would
stack, pairs across them are listed too; if the two packs hash differently (another seed or layer),
each prompt is hashed with the other pack's settings, which needs the base model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import SETTINGS, setting_value
from .errors import PackError
from .facts import Fact
from .history import weight_change
from .models import LoadedModel, fingerprints_match
from .pack import Pack
from .tophash import prompt_features

BLOCK = 1024  # bank rows compared at once


@dataclass
class Side:
    """One side of a diff: a pack and the label the user gave it."""

    label: str
    pack: Pack

    def active(self) -> list[tuple[int, Fact]]:
        return [
            (row, fact)
            for row, (fact, on) in enumerate(zip(self.pack.facts, self.pack.memory.bank.active.tolist()))
            if on
        ]


def diff(
    a: Side, b: Side, stacked: bool, force: bool = False, model_loader: Callable[[Pack], LoadedModel] | None = None
) -> dict:
    """Everything `memoir diff` reports, as JSON-ready data."""
    same_base = fingerprints_match(a.pack.manifest.base_model.fingerprint, b.pack.manifest.base_model.fingerprint)
    if not same_base and not force:
        raise PackError(
            f"{a.label} and {b.label} were made for different base models "
            f"({a.pack.base_model_id!r} and {b.pack.base_model_id!r})",
            option="force",
            remedy="to compare them anyway",
        )
    a_facts = {fact.prompt: fact for _, fact in a.active()}
    b_facts = {fact.prompt: fact for _, fact in b.active()}
    added = [f for p, f in b_facts.items() if p not in a_facts]
    removed = [f for p, f in a_facts.items() if p not in b_facts]
    retargeted = [(a_facts[p], f) for p, f in b_facts.items() if p in a_facts and a_facts[p].target != f.target]
    settings = [
        {"setting": label, "a": setting_value(a.pack.manifest, label), "b": setting_value(b.pack.manifest, label)}
        for label in SETTINGS
        if setting_value(a.pack.manifest, label) != setting_value(b.pack.manifest, label)
    ]
    a_shape, b_shape = a.pack.memory.weight.shape, b.pack.memory.weight.shape
    change = weight_change(a.pack.memory.weight, b.pack.memory.weight).to_json() if a_shape == b_shape else None
    a_pairs = {tuple(sorted((x["a"], x["b"]))) for x in _conflicts_within(a)}
    within = [dict(x, new=tuple(sorted((x["a"], x["b"]))) not in a_pairs) for x in _conflicts_within(b)]
    result = {
        "a": a.label,
        "b": b.label,
        "same_base_model": same_base,
        "stacked": stacked,
        "facts": {
            "added": [_fact(f) for f in added],
            "removed": [_fact(f) for f in removed],
            "retargeted": [
                {"prompt": old.prompt, "id_a": old.id, "id_b": new.id, "target_a": old.target, "target_b": new.target}
                for old, new in retargeted
            ],
        },
        "settings": settings,
        "memory": change,
        "conflicts": {"within_b": within, "across": _conflicts_across(a, b, model_loader) if stacked else []},
    }
    return result


def _fact(fact) -> dict:
    return {"id": fact.id, "prompt": fact.prompt, "target": fact.target}


def _conflicts_within(side: Side) -> list[dict]:
    rows = [row for row, _ in side.active()]
    if len(rows) < 2:
        return []
    memory, tau = side.pack.memory, side.pack.memory.threshold
    bank = memory.bank
    masks = bank.masks[rows].float()
    pairs = []
    for start in range(0, len(rows), BLOCK):  # a block of rows at a time: n x n overlaps may not fit in memory
        overlap = (masks[start : start + BLOCK] @ masks.T) / memory.k
        block_rows, columns = (overlap >= tau).nonzero(as_tuple=True)
        for i, j in zip((block_rows + start).tolist(), columns.tolist()):
            if i < j:
                pairs.append(
                    {"a": bank.ids[rows[i]], "b": bank.ids[rows[j]], "overlap": round(float(overlap[i - start, j]), 4)}
                )
    return pairs


def _conflicts_across(a: Side, b: Side, model_loader) -> list[dict]:
    """Pairs (edit of A, edit of B) that a stacked apply could confuse: overlap >= either pack's tau."""
    a_rows, b_rows = [r for r, _ in a.active()], [r for r, _ in b.active()]
    if not a_rows or not b_rows:
        return []
    tau = min(a.pack.memory.threshold, b.pack.memory.threshold)
    if _hash_alike(a.pack, b.pack):
        a_masks, b_masks = a.pack.memory.bank.masks[a_rows].float(), b.pack.memory.bank.masks[b_rows].float()
        overlap = (a_masks @ b_masks.T) / a.pack.memory.k
    else:  # masks from different hashes do not compare: hash A's prompts the way B routes them
        if model_loader is None:
            raise PackError(
                f"{a.label} and {b.label} hash prompts differently (seed, layer or k); "
                "finding conflicts across them needs the base model",
                option="model",
                remedy="to name it",
            )
        loaded = model_loader(a.pack)
        prompts = [f.prompt for _, f in a.active()]
        module = loaded.model.get_submodule(b.pack.manifest.layer.path)
        chat = b.pack.manifest.training.chat
        features = prompt_features(loaded.model, loaded.tokenizer, module, prompts, chat=chat)
        queries = b.pack.memory.query_masks(features).float()
        overlap = (queries.cpu() @ b.pack.memory.bank.masks[b_rows].float().T) / b.pack.memory.k
    pairs = (overlap >= tau).nonzero().tolist()
    return [
        {
            "a": a.pack.memory.bank.ids[a_rows[i]],
            "b": b.pack.memory.bank.ids[b_rows[j]],
            "overlap": round(float(overlap[i, j]), 4),
        }
        for i, j in pairs
    ]


def _hash_alike(a: Pack, b: Pack) -> bool:
    ma, mb = a.memory, b.memory
    return (
        ma.k == mb.k
        and ma.layer_path == mb.layer_path
        and torch.equal(ma.permutation, mb.permutation)
        and torch.equal(ma.background, mb.background)
    )
