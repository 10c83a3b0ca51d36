"""The mask bank: one TopHash mask per edit, and the best match for a batch of query masks.

The bank counts shared features (|m_q AND m_i|); dividing by k, the pack's setting, makes the
overlap routing compares with tau (memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MaskBank:
    """Masks [n, d_ff] (bool), their edit ids, and which edits routing may still select."""

    d_ff: int
    masks: torch.Tensor = None  # type: ignore[assignment]
    ids: list[str] = field(default_factory=list)
    active: torch.Tensor = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.masks is None:
            self.masks = torch.zeros((0, self.d_ff), dtype=torch.bool)
        if self.active is None:
            self.active = torch.ones(len(self.ids), dtype=torch.bool)
        self._float_cache: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, edit_id: str, mask: torch.Tensor) -> int:
        """Append an edit's mask; returns its row."""
        self.masks = torch.cat([self.masks, mask.reshape(1, -1).cpu().bool()])
        self.ids.append(edit_id)
        self.active = torch.cat([self.active, torch.ones(1, dtype=torch.bool)])
        self._float_cache = None
        return len(self.ids) - 1

    def deactivate(self, edit_id: str) -> None:
        """Routing never selects this edit again (its columns stay in the memory)."""
        self.active[self.ids.index(edit_id)] = False

    def shared(self, queries: torch.Tensor) -> torch.Tensor:
        """|m_q AND m_i| for every query row and bank row: [batch, n] in float32."""
        if self._float_cache is None or self._float_cache.device != queries.device:
            self._float_cache = self.masks.to(device=queries.device, dtype=torch.float32)
        return queries.float() @ self._float_cache.T

    def copy(self) -> MaskBank:
        return MaskBank(self.d_ff, self.masks.clone(), list(self.ids), self.active.clone())

    def best_match(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each query the best active edit's row (-1 if none) and its shared count (0 if none).

        Ties go to the most recent edit: a later fact is newer knowledge.
        """
        batch = queries.shape[0]
        if len(self) == 0 or not bool(self.active.any()):
            return torch.full((batch,), -1, dtype=torch.long), torch.zeros(batch)
        scores = self.shared(queries).cpu()
        scores[:, ~self.active] = -1.0
        reversed_best = scores.flip(1).argmax(dim=1)
        rows = len(self) - 1 - reversed_best
        return rows, scores.gather(1, rows.unsqueeze(1)).squeeze(1)
