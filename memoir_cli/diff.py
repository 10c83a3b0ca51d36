"""`memoir diff A B`: what changed between two packs or two versions of one pack.

Facts are matched by prompt among the active edits: added (only in B), removed (only in A),
retargeted (in both, with another target). A conflict is a pair of active edits whose masks overlap
at or above tau: a prompt of one may be routed to the other. Within B, the pairs that are not
a conflict in A are listed (new conflicts: found at a cost linear in the pack's size, see
_new_conflicts_within). When A and B are different packs, which `apply` would stack, pairs across
them are listed too; if the two packs hash differently (another seed or layer),
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

BLOCK = 64  # edits compared with the whole bank at once ([BLOCK, n] overlaps in memory)


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
    within = _new_conflicts_within(b, a)
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


def _new_conflicts_within(b: Side, a: Side) -> list[dict]:
    """Pairs of B's active edits that overlap at or above B's tau and are not a conflict in A.

    Only the edits A does not have are compared with the whole bank, one pass each, so a diff of
    two versions costs the pack's size times what changed, never its size squared. When B routes
    differently from A (another hash, or a lower tau), pairs of edits both have can be new too:
    then every active edit of B is compared, and a pair of two shared edits is kept if A's own
    masks did not reach A's tau.
    """
    memory, bank = b.pack.memory, b.pack.memory.bank
    rows = [row for row, _ in b.active()]
    in_a = {fact.id: row for row, fact in a.active()}
    rescan = not _hash_alike(a.pack, b.pack) or memory.threshold < a.pack.memory.threshold
    checked = rows if rescan else [row for row in rows if bank.ids[row] not in in_a]
    active = torch.zeros(len(bank), dtype=torch.bool)
    active[rows] = True
    pairs: dict[tuple[int, int], float] = {}
    for start in range(0, len(checked), BLOCK):
        block = checked[start : start + BLOCK]
        overlap = bank.shared(bank.rows(block)) / memory.k  # [block, n]
        overlap[:, ~active] = -1.0
        for i, j in (overlap >= memory.threshold).nonzero().tolist():
            if j != block[i]:
                pairs[(min(block[i], j), max(block[i], j))] = round(float(overlap[i, j]), 4)
    new = [(x, y) for x, y in sorted(pairs) if not _conflict_in(a, in_a.get(bank.ids[x]), in_a.get(bank.ids[y]))]
    return [{"a": bank.ids[x], "b": bank.ids[y], "overlap": pairs[(x, y)]} for x, y in new]


def _conflict_in(side: Side, x: int | None, y: int | None) -> bool:
    """Whether rows x and y of `side`'s bank (None: not there) overlap at or above its tau."""
    if x is None or y is None:
        return False
    memory = side.pack.memory
    return float(memory.overlaps(memory.bank.rows([x]))[0, y]) >= memory.threshold


def _conflicts_across(a: Side, b: Side, model_loader) -> list[dict]:
    """Pairs (edit of A, edit of B) that a stacked apply could confuse: overlap >= either pack's tau."""
    a_rows, b_rows = [r for r, _ in a.active()], [r for r, _ in b.active()]
    if not a_rows or not b_rows:
        return []
    tau = min(a.pack.memory.threshold, b.pack.memory.threshold)
    if _hash_alike(a.pack, b.pack):
        queries = a.pack.memory.bank.rows(a_rows)
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
        aggregation = b.pack.memory.aggregation
        features = prompt_features(loaded.model, loaded.tokenizer, module, prompts, chat=chat, aggregation=aggregation)
        queries = b.pack.memory.query_masks(features).cpu()
    pairs = []
    for start in range(0, len(a_rows), BLOCK):
        overlap = b.pack.memory.overlaps(queries[start : start + BLOCK])[:, b_rows]
        for i, j in (overlap >= tau).nonzero().tolist():
            pairs.append(
                {
                    "a": a.pack.memory.bank.ids[a_rows[start + i]],
                    "b": b.pack.memory.bank.ids[b_rows[j]],
                    "overlap": round(float(overlap[i, j]), 4),
                }
            )
    return pairs


def _hash_alike(a: Pack, b: Pack) -> bool:
    ma, mb = a.memory, b.memory
    return (
        ma.k == mb.k
        and ma.aggregation == mb.aggregation
        and ma.layer_path == mb.layer_path
        and torch.equal(ma.permutation, mb.permutation)
        and torch.equal(ma.background, mb.background)
    )
