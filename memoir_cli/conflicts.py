"""Conflicts at edit time: a new fact that is, for the router, the same question as an active edit
(or an earlier fact of the same input) but gives another answer.

The router cannot tell two prompts apart when their masks overlap at or above tau: a question
asking either reaches whichever edit overlaps most, so one of the two answers is lost. `memoir
edit` finds these pairs before it trains anything and does what `--on-conflict` says:
- keep-both (the default): edit both and report the pairs;
- replace: the new fact replaces the edit it conflicts with (an earlier fact of the same input is
  not trained at all);
- fail: stop with ConflictError, naming both facts of each pair; the pack is left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from .errors import MemoirError
from .facts import Fact
from .memory import ResidualMemory, mask_overlaps


class OnConflict(str, Enum):
    """What `memoir edit` does with a conflicting fact."""

    keep_both = "keep-both"
    replace_old = "replace"
    fail = "fail"


class ConflictError(MemoirError):
    """A new fact conflicts with an edit and the run was told to fail. Nothing was written."""

    exit_code = 8


@dataclass(frozen=True)
class Conflict:
    """`new` (a fact being added) and `existing` overlap at or above tau with different targets."""

    new: Fact
    existing: Fact
    overlap: float
    existing_in: str  # "pack": an active edit; "input": an earlier fact of the same run

    def to_json(self) -> dict:
        return {
            "new": self.new.id,
            "new_target": self.new.target,
            "existing": self.existing.id,
            "existing_target": self.existing.target,
            "existing_in": self.existing_in,
            "overlap": round(self.overlap, 4),
        }

    def describe(self) -> str:
        where = "the pack's edit" if self.existing_in == "pack" else "the earlier fact"
        return (
            f"{self.new.id} ({self.new.prompt!r} -> {self.new.target!r}) conflicts with {where} "
            f"{self.existing.id} ({self.existing.prompt!r} -> {self.existing.target!r}): mask overlap "
            f"{self.overlap:.2f}"
        )


def same_answer(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


CHUNK = 512  # new facts compared at a time: their overlaps [CHUNK, pack + input] stay small at any size


def find_conflicts(
    memory: ResidualMemory,
    pack_facts: list[Fact],
    new_facts: list[Fact],
    new_masks: torch.Tensor,
    replaces: dict[str, str],
) -> list[Conflict]:
    """The pairs (new fact, active edit or earlier new fact) whose masks [m, d_ff] overlap at or
    above the pack's tau and whose targets differ. An edit a new fact already replaces (the same
    prompt, planned by plan_edits) is not a conflict.

    Why in chunks: a nightly run of 20,000 facts into a pack of 100,000 would otherwise hold
    [20,000, 100,000] overlaps at once (8 GB); only pairs at or above tau become Python objects."""
    conflicts: list[Conflict] = []
    tau, active = memory.threshold, memory.bank.active
    for start in range(0, len(new_facts), CHUNK):
        masks = new_masks[start : start + CHUNK]
        in_pack = memory.routing_overlaps(masks) if len(memory.bank) else torch.zeros((len(masks), 0))  # [c, n]
        in_pack[:, ~active] = -1.0
        among = mask_overlaps(masks, new_masks[: start + len(masks)], memory.k)  # [c, the new facts up to these]
        before = torch.arange(among.shape[1]) < torch.arange(start, start + len(masks)).unsqueeze(1)  # [c, same]
        among[~before] = -1.0  # each fact against the new facts before it only
        for offset, fact in enumerate(new_facts[start : start + len(masks)]):
            for j in (in_pack[offset] >= tau).nonzero().flatten().tolist():
                existing = pack_facts[j]
                if existing.id != replaces.get(fact.id) and not same_answer(existing.target, fact.target):
                    conflicts.append(Conflict(fact, existing, float(in_pack[offset, j]), "pack"))
            for j in (among[offset] >= tau).nonzero().flatten().tolist():
                if not same_answer(new_facts[j].target, fact.target):
                    conflicts.append(Conflict(fact, new_facts[j], float(among[offset, j]), "input"))
    return conflicts


def resolve(
    conflicts: list[Conflict], policy: OnConflict, add: list[Fact], replaces: dict[str, str], superseded: list[str]
) -> dict[str, list[str]]:
    """Apply `policy` to a planned run (workflows.EditPlan's lists, changed in place); returns the
    active edits each new fact displaces (new id -> edit ids deactivated before it is trained).

    With replace, an earlier fact of the input that a later one conflicts with is superseded (never
    trained), and what it would have replaced or displaced passes to the later fact.
    """
    displaced: dict[str, list[str]] = {}
    if policy is OnConflict.fail and conflicts:
        raise ConflictError(
            f"{len(conflicts)} conflict(s) between new facts and what the router already answers; "
            f"nothing was written. {conflicts[0].describe()}",
            details=[c.describe() for c in conflicts[1:]],
            option="on_conflict",
            remedy="replace or keep-both to edit them anyway",
        )
    if policy is not OnConflict.replace_old:
        return displaced
    for conflict in conflicts:
        new, old = conflict.new.id, conflict.existing
        if conflict.existing_in == "pack":
            displaced.setdefault(new, []).append(old.id)
        elif old in add:
            add.remove(old)
            superseded.append(old.id)
            inherited = displaced.pop(old.id, []) + ([replaces.pop(old.id)] if old.id in replaces else [])
            displaced.setdefault(new, []).extend(inherited)
    return displaced
