"""The mask bank: one TopHash mask per edit, kept as bits, and the best match for a batch of queries.

A mask is 1 bit per feature per edit, in memory as on disk: a Llama-3-8B pack (d_ff 14336) with
100,000 edits holds 180 MB of bits, where a float copy of its masks took 5.7 GB. Matching counts
the features a query and an edit share, |m_q AND m_i|, as the popcount of their AND. The bits are
stored word-major, `[words, edits]` in 64-bit words, so that word w of every edit is one contiguous
run and each step of the count is one long vector loop (numpy's `bitwise_count` on CPU; a SWAR
popcount in torch on other devices). Dividing the count by k, the pack's setting, makes the
overlap routing compares with tau (memory.py).

The storage grows geometrically by 1/16, so `add` is amortised O(1) and the bank holds at most
about 6% more than its packed size.
"""

from __future__ import annotations

import numpy as np
import torch

GROWTH = 1 / 16  # spare capacity added when the bank is full, as a share of its size
CHUNK = 1 << 16  # bank columns a device popcount handles at once (bounds its scratch memory)
_M1, _M2, _M4, _H01 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101


def words_for(d_ff: int) -> int:
    """64-bit words per mask."""
    return (d_ff + 63) // 64


def to_words(masks: torch.Tensor | np.ndarray) -> np.ndarray:
    """Bool masks [n, d_ff] -> uint64 [n, words]: np.packbits' bytes (the on-disk layout), padded."""
    packed = np.packbits(np.asarray(masks, dtype=bool), axis=1)
    return packed_to_words(packed)


def packed_to_words(packed: np.ndarray) -> np.ndarray:
    """uint8 [n, ceil(d_ff / 8)] (pack.py's file layout) -> uint64 [n, words], without unpacking bits."""
    n, nbytes = packed.shape
    padded = np.zeros((n, -(-nbytes // 8) * 8), dtype=np.uint8)
    padded[:, :nbytes] = packed
    return padded.view(np.uint64)


def popcount_and(words: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """|query AND column| for each column of `words` [W, n] (int64 bit patterns) and a query [W]:
    [n] int64. Plain torch ops, so it runs on any device; the bank uses it off the CPU."""
    x = words & query.unsqueeze(1)
    x = x - ((x >> 1) & _M1)  # 2-bit counts (the masks after each shift clear the sign's copies)
    x = (x & _M2) + ((x >> 2) & _M2)  # 4-bit counts
    x = (x + (x >> 4)) & _M4  # 8-bit counts
    return ((x * _H01) >> 56).sum(dim=0)  # the top byte sums the eight


class MaskBank:
    """Masks [n, d_ff] as bits, their edit ids, and which edits routing may still select."""

    def __init__(
        self,
        d_ff: int,
        masks: torch.Tensor | None = None,
        ids: list[str] | None = None,
        active: torch.Tensor | None = None,
    ) -> None:
        rows = to_words(masks) if masks is not None else np.zeros((0, words_for(d_ff)), dtype=np.uint64)
        self._init(d_ff, rows, ids or [], active)

    @classmethod
    def from_packed(
        cls, d_ff: int, packed: torch.Tensor | np.ndarray, ids: list[str], active: torch.Tensor | None = None
    ) -> MaskBank:
        """A bank from pack.py's bit-packed bytes [n, ceil(d_ff / 8)], never unpacked."""
        bank = cls.__new__(cls)
        bank._init(d_ff, packed_to_words(np.asarray(packed, dtype=np.uint8)), ids, active)
        return bank

    def _init(self, d_ff: int, rows: np.ndarray, ids: list[str], active: torch.Tensor | None) -> None:
        if rows.shape != (len(ids), words_for(d_ff)):
            raise ValueError(f"{rows.shape[0]} masks for {len(ids)} edit ids of width {d_ff}")
        self.d_ff = d_ff
        self.ids = list(ids)
        self._row = {edit_id: row for row, edit_id in enumerate(self.ids)}
        self._words = np.array(rows.T, dtype=np.uint64, order="C")  # [W, capacity]: a copy, never shared
        self._active = np.ones(len(self.ids), dtype=bool) if active is None else active.numpy().astype(bool)
        self._on_device: dict[torch.device, tuple[torch.Tensor, int]] = {}  # device copy, columns filled

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def active(self) -> torch.Tensor:
        """[n] bool: which edits routing may select (a view: writing it deactivates)."""
        return torch.from_numpy(self._active[: len(self)])

    @property
    def nbytes(self) -> int:
        """What the bank holds in memory: its bits (with their spare capacity) and active flags."""
        return self._words.nbytes + self._active.nbytes

    def add(self, edit_id: str, mask: torch.Tensor) -> int:
        """Append an edit's mask; returns its row. Amortised O(1): the storage grows geometrically."""
        if edit_id in self._row:
            raise ValueError(f"edit id {edit_id!r} is already in the bank")
        row = len(self)
        if row == self._words.shape[1]:
            capacity = row + max(1, int(row * GROWTH))
            self._words = _grown(self._words, capacity)
            self._active = np.concatenate([self._active, np.zeros(capacity - row, dtype=bool)])
        self._words[:, row] = to_words(mask.reshape(1, -1).cpu())[0]
        self._active[row] = True
        self.ids.append(edit_id)
        self._row[edit_id] = row
        return row

    def deactivate(self, edit_id: str) -> None:
        """Routing never selects this edit again (its columns stay in the memory)."""
        self._active[self._row[edit_id]] = False

    def row_of(self, edit_id: str) -> int:
        return self._row[edit_id]

    def is_active(self, edit_id: str) -> bool:
        return bool(self._active[self._row[edit_id]])

    def rows(self, indices: list[int] | torch.Tensor) -> torch.Tensor:
        """The masks of these rows, unpacked: bool [len(indices), d_ff]."""
        index = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64)
        chosen = np.ascontiguousarray(self._words[:, index].T)
        return torch.from_numpy(np.unpackbits(chosen.view(np.uint8), axis=1, count=self.d_ff).astype(bool))

    def packed(self) -> torch.Tensor:
        """uint8 [n, ceil(d_ff / 8)]: np.packbits of every mask, pack.py's file layout."""
        rows = np.ascontiguousarray(self._words[:, : len(self)].T)
        return torch.from_numpy(rows.view(np.uint8)[:, : (self.d_ff + 7) // 8].copy())

    def features_per_mask(self) -> np.ndarray:
        """[n] how many features each mask selects (pack.py checks that each is k)."""
        return np.bitwise_count(self._words[:, : len(self)]).sum(axis=0, dtype=np.int64)

    def copy(self) -> MaskBank:
        bank = MaskBank.__new__(MaskBank)
        bank._init(self.d_ff, self._words[:, : len(self)].T, self.ids, self.active.clone())
        return bank

    def shared(self, queries: torch.Tensor) -> torch.Tensor:
        """|m_q AND m_i| for every query row [batch, d_ff] and bank row: [batch, n] in float32."""
        return torch.from_numpy(self._counts(queries).astype(np.float32))

    def best_match(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each query the best active edit's row (-1 if none) and its shared count (0 if none).

        Ties go to the most recent edit: a later fact is newer knowledge.
        """
        batch, n = queries.shape[0], len(self)
        if n == 0 or not self._active[:n].any():
            return torch.full((batch,), -1, dtype=torch.long), torch.zeros(batch)
        counts = self._counts(queries)
        scores = (counts + 1) * self._active[:n]  # an inactive edit scores 0, below every active one
        rows = n - 1 - scores[:, ::-1].argmax(axis=1)
        best = counts[np.arange(batch), rows]
        return torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(best.astype(np.float32))

    def _counts(self, queries: torch.Tensor) -> np.ndarray:
        """Shared-feature counts [batch, n] (unsigned, or int32 from a device): on the queries' device,
        returned on the CPU."""
        n = len(self)
        query_words = to_words(queries.detach().cpu())
        if queries.device.type != "cpu":
            return self._device_counts(query_words, queries.device)
        counted = np.dtype(np.uint16 if self.d_ff < 2**16 - 1 else np.uint32)
        counts = np.zeros((len(query_words), n), dtype=counted)
        scratch, bits, group = np.empty(n, dtype=np.uint64), np.empty(n, dtype=np.uint8), np.empty(n, dtype=np.uint8)
        words = self._words[:, :n]
        for total, query in zip(counts, query_words):
            # Three words' counts (at most 192) add up in bytes, the cheapest lanes, before they join the total.
            for start in range(0, len(query), 3):
                np.bitwise_count(np.bitwise_and(words[start], query[start], out=scratch), out=group)
                for w in range(start + 1, min(start + 3, len(query))):
                    np.add(
                        group, np.bitwise_count(np.bitwise_and(words[w], query[w], out=scratch), out=bits), out=group
                    )
                np.add(total, group, out=total)
        return counts

    def _device_counts(self, query_words: np.ndarray, device: torch.device) -> np.ndarray:
        bank = self._device_words(device)
        queries = torch.from_numpy(query_words.view(np.int64)).to(device)
        counts = torch.zeros((len(queries), bank.shape[1]), dtype=torch.int32, device=device)
        for counted, query in zip(counts, queries):
            for start in range(0, bank.shape[1], CHUNK):
                counted[start : start + CHUNK] = popcount_and(bank[:, start : start + CHUNK], query)
        return counts.cpu().numpy()

    def _device_words(self, device: torch.device) -> torch.Tensor:
        """The bits as int64 [W, n] on `device`, kept there and extended by what was added since."""
        n = len(self)
        held, filled = self._on_device.get(device, (torch.zeros((self._words.shape[0], 0), dtype=torch.int64), 0))
        if held.shape[1] < n:
            grown = torch.empty((held.shape[0], self._words.shape[1]), dtype=torch.int64, device=device)
            grown[:, :filled] = held[:, :filled]
            held = grown
        if filled < n:
            held[:, filled:n] = torch.from_numpy(self._words[:, filled:n].view(np.int64)).to(device)
        self._on_device[device] = (held, n)
        return held[:, :n]


def _grown(words: np.ndarray, capacity: int) -> np.ndarray:
    grown = np.zeros((words.shape[0], capacity), dtype=np.uint64)
    grown[:, : words.shape[1]] = words
    return grown


class KeyBank:
    """Routing keys besides each edit's trained mask: more masks that lead to an edit's bank row.

    MEMOIR keys an edit on the one mask it trains. A question asked another way (bare where the
    edit was trained in chat, or after a system prompt) reads other features and can miss that key
    (docs/BENCHMARKS.md, "Routing variants"). Its own mask, kept here, lets it reach the edit; the
    residual it gets is still the edit's trained one. A key is active while its edit is.
    """

    def __init__(self, d_ff: int) -> None:
        self._masks = MaskBank(d_ff)
        self._owners = np.zeros(0, dtype=np.int64)

    @classmethod
    def from_packed(cls, d_ff: int, packed: np.ndarray, owners: np.ndarray, edits_active: torch.Tensor) -> KeyBank:
        """Keys from pack.py's bit-packed bytes [m, ceil(d_ff / 8)] and their edits' bank rows [m]."""
        keys = cls(d_ff)
        keys._owners = np.asarray(owners, dtype=np.int64).copy()
        active = edits_active[torch.from_numpy(keys._owners)] if len(owners) else torch.zeros(0, dtype=torch.bool)
        keys._masks = MaskBank.from_packed(d_ff, packed, [str(row) for row in range(len(owners))], active)
        return keys

    def __len__(self) -> int:
        return len(self._masks)

    @property
    def owners(self) -> torch.Tensor:
        """[m] the bank row of the edit each key leads to."""
        return torch.from_numpy(self._owners[: len(self)].copy())

    def add(self, owner: int, masks: torch.Tensor) -> None:
        """Keys [m, d_ff] for the edit at bank row `owner` (amortised O(m), as MaskBank.add)."""
        start, end = len(self), len(self) + len(masks)
        if end > len(self._owners):
            self._owners = np.concatenate(
                [self._owners, np.zeros(max(end, int(end * (1 + GROWTH))) - len(self._owners), dtype=np.int64)]
            )
        for mask in masks:
            self._masks.add(str(len(self)), mask)
        self._owners[start:end] = owner

    def deactivate(self, owner: int) -> None:
        for row in self._rows_of(owner).tolist():
            self._masks.deactivate(str(row))

    def masks_of(self, owner: int) -> torch.Tensor:
        """The keys of the edit at bank row `owner`, unpacked: bool [its keys, d_ff]."""
        return self._masks.rows(self._rows_of(owner).tolist())

    def _rows_of(self, owner: int) -> np.ndarray:
        return np.flatnonzero(self._owners[: len(self)] == owner)

    def packed(self) -> torch.Tensor:
        return self._masks.packed()

    def features_per_mask(self) -> np.ndarray:
        return self._masks.features_per_mask()

    def copy(self) -> KeyBank:
        keys = KeyBank(self._masks.d_ff)
        keys._masks, keys._owners = self._masks.copy(), self._owners[: len(self)].copy()
        return keys

    def best_match(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each query the bank row of the edit whose key matches best (-1 if none) and the
        shared count. Keys are added in edit order, so a tie goes to the most recent edit here too."""
        rows, shared = self._masks.best_match(queries)
        owners = torch.from_numpy(self._owners[: len(self)])
        return torch.where(rows >= 0, owners[rows.clamp_min(0)], rows) if len(self) else rows, shared

    def shared_per_edit(self, queries: torch.Tensor, edits: int) -> torch.Tensor:
        """|m_q AND key| maximised over each edit's active keys: [batch, edits] (0 where none)."""
        counts = self._masks.shared(queries) * self._masks.active.float()  # [batch, m]
        best = torch.zeros((len(queries), edits))
        if len(self):
            best.scatter_reduce_(1, self.owners.expand(len(queries), -1), counts, reduce="amax")
        return best
