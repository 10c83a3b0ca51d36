"""What a server offers: its `model` ids and the pack versions behind them.

A `Lineup` is immutable. A reload or an admin call makes a new one, and the engine swaps it in
between batches, so a request runs from start to end on the versions it started on.

Model ids (what `/v1/models` lists and a request's `model` selects):
- `memoir`: the base model with every pack stacked (the default);
- each pack by its name: the base model with that pack alone;
- the base model's id: no pack.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BadInputError
from ..pack import Pack

STACKED = "memoir"


@dataclass(frozen=True)
class Lineup:
    """The packs a server attaches, in stacking order (a later pack wins ties), by served name."""

    base_id: str
    entries: tuple[tuple[str, Pack], ...]

    @classmethod
    def of(cls, base_id: str, packs: list[Pack]) -> Lineup:
        lineup = cls(base_id, ())
        for pack in packs:
            if pack.name in lineup.names:
                raise BadInputError(f"two packs are named {pack.name!r}: serve each pack folder once")
            lineup = lineup.with_pack(pack.name, pack)
        return lineup

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.entries]

    @property
    def packs(self) -> list[Pack]:
        return [pack for _, pack in self.entries]

    def model_ids(self) -> list[str]:
        return [STACKED, *self.names, self.base_id]

    def indices_for(self, model: str) -> tuple[int, ...] | None:
        """The packs (by attach index) that routing may pick for `model`; None for an unknown id."""
        if model == STACKED:
            return tuple(range(len(self.entries)))
        if model in self.names:
            return (self.names.index(model),)
        if model == self.base_id:
            return ()
        return None

    def versions(self) -> dict[str, int | None]:
        return {name: pack.version for name, pack in self.entries}

    def with_pack(self, name: str, pack: Pack) -> Lineup:
        """`pack` served as `name`: in its old place if the name is served, else stacked last."""
        if name in (STACKED, self.base_id):
            raise BadInputError(f"{name!r} is a reserved model id: name the pack otherwise")
        pack.label = name
        if name in self.names:
            entries = tuple((n, pack if n == name else p) for n, p in self.entries)
        else:
            entries = (*self.entries, (name, pack))
        return Lineup(self.base_id, entries)

    def without(self, name: str) -> Lineup:
        return Lineup(self.base_id, tuple((n, p) for n, p in self.entries if n != name))
