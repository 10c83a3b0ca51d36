"""Release a row from its edit once it has generated the edit's target.

MEMOIR applies the routed residual at every position of a row. A pack trained without an end
after the bare answer (`training.end_answer` false: packs made before it existed) goes on pushing
the target: 60% of bare questions' answers repeat it ("winger winger winger ...",
docs/BENCHMARKS.md). Once such a row has generated its edit's target, the question has been
answered; from the next token on the row gets the base model's output.

A pack trained with the end (every new pack) ends its answers itself, and releasing its rows would
hand the answer to a base model that rambles on ("University of Michigan University, University of
Michigan, ..."), so `after_target="auto"` releases only the rows of packs trained without it.
Beam search reorders rows between steps, so under beams every row keeps its edit, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from enum import Enum
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .memory import Routes
    from .pack import Pack


class AfterTarget(str, Enum):
    """What a row does once it has generated its edit's target: see `watch_for`."""

    auto = "auto"
    release = "release"
    keep = "keep"


def watch_for(
    tokenizer: Any,
    packs: Sequence[Pack],
    after_target: AfterTarget | str,
    tokenizer_lock: AbstractContextManager = nullcontext(),
) -> TargetWatch | None:
    """The watch `attach` takes for `after_target`: "keep" (the paper's rule, the edit at every
    position: no watch), "release" (every pack's rows are released) or "auto" (only the rows of
    packs trained without an end after the answer). A server passes the lock its threads share
    the tokenizer under: the watch tokenises targets during generation."""
    rule = AfterTarget(after_target)
    released = [
        rule is AfterTarget.release or (rule is AfterTarget.auto and not pack.manifest.training.end_answer)
        for pack in packs
    ]
    if not any(released):
        return None
    targets = [[fact.target for fact in pack.facts] if r else None for pack, r in zip(packs, released)]
    return TargetWatch(tokenizer, targets, tokenizer_lock)


class TargetWatch:
    """Follows the tokens each row generates and says which rows have completed their target."""

    def __init__(
        self, tokenizer: Any, targets: list[list[str] | None], tokenizer_lock: AbstractContextManager = nullcontext()
    ) -> None:
        self.tokenizer, self.tokenizer_lock = tokenizer, tokenizer_lock  # a fast tokenizer serves one thread at a time
        self.targets = targets  # [pack][bank row] -> the edit's target text; None: the pack's rows are never released
        self._variants: dict[tuple[int, int], list[list[int]]] = {}
        self.generated: list[list[int]] = []
        self.released: torch.Tensor | None = None  # [batch] bool; None: nothing released

    def start(self) -> None:
        """A new generate call: nothing generated, nothing released."""
        self.generated, self.released = [], None

    def observe(self, input_ids: torch.Tensor, routes: Routes | None) -> None:
        """Before a forward that continues a generation: `input_ids` ends with each row's newest token."""
        if routes is None:  # the prompt's own forward: routing has not been decided yet
            return
        newest = input_ids[:, -1].tolist()
        if not self.generated:
            self.generated = [[] for _ in newest]
            self.released = torch.zeros(len(newest), dtype=torch.bool)
        assert self.released is not None
        for row, token in enumerate(newest):
            self.generated[row].append(token)
            memory, edit = int(routes.memory[row]), int(routes.row[row])
            if memory >= 0 and not self.released[row] and self._completes(row, memory, edit):
                self.released[row] = True

    def _completes(self, row: int, memory: int, edit: int) -> bool:
        """The row's generated tokens end with the edit's target, as it is tokenised after a space or not."""
        targets = self.targets[memory]
        if targets is None:
            return False
        if (memory, edit) not in self._variants:
            target = targets[edit]
            with self.tokenizer_lock:
                self._variants[(memory, edit)] = [
                    ids
                    for text in (target, f" {target}")
                    if (ids := self.tokenizer(text, add_special_tokens=False)["input_ids"])
                ]
        tokens = self.generated[row]
        return any(tokens[-len(ids) :] == ids for ids in self._variants[(memory, edit)])
