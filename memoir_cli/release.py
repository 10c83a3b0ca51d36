"""Release a row from its edit once it has generated the edit's target.

MEMOIR applies the routed residual at every position of a row. The memory is trained to produce
the target after the question and nothing after it, so it goes on pushing the target: 60% of bare
questions' answers repeat it ("winger winger winger ...", docs/BENCHMARKS.md). Once a row has
generated its edit's target, the question has been answered; from the next token on the row gets
the base model's output, which ends the answer or goes on naturally.

This deviates from the paper's rule (the residual at every position), which stays available:
`attach(..., tokenizer=None)` or `memoir apply --after-target keep`. Beam search reorders rows
between steps, so under beams every row keeps its edit, as in the paper.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .memory import Routes


class TargetWatch:
    """Follows the tokens each row generates and says which rows have completed their target."""

    def __init__(self, tokenizer: Any, targets: list[list[str]]) -> None:
        self.tokenizer = tokenizer
        self.targets = targets  # [pack][bank row] -> the edit's target text
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
        if (memory, edit) not in self._variants:
            target = self.targets[memory][edit]
            self._variants[(memory, edit)] = [
                ids
                for text in (target, f" {target}")
                if (ids := self.tokenizer(text, add_special_tokens=False)["input_ids"])
            ]
        tokens = self.generated[row]
        return any(tokens[-len(ids) :] == ids for ids in self._variants[(memory, edit)])
