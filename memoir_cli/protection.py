"""Protecting every earlier edit while a new one is fitted: each optimiser step is damped along the
directions in which earlier edits read the residual memory.

Why: an earlier edit i answers from `W_m[:, m_i] x[m_i]` at the positions of its question. A new
edit changes the columns C of its mask by D [d_out, |C|], which moves edit i's output there by
`D (x ⊙ m_i)[C]`. Summed over the earlier edits and their positions, the squared movement is
tr(D S[C, C] D^T) with

    S = sum_i mean_p (x_ip ⊙ m_i)(x_ip ⊙ m_i)^T        [d_ff, d_ff]

Rehearsal (editor.py) keeps the 8 nearest earlier edits' answers exactly; at T = 998 edits were
still forgotten with age, a little by each of hundreds of later edits (docs/BENCHMARKS.md). With
`training.protect` = lambda > 0, every step's change u of the trained columns becomes
u (I + lambda S[C, C] / e)^-1, e the mean energy one edit reads with (trace(S) / edits): a direction
that one edit reads with all its energy moves at 1 / (1 + lambda) of the pace, one that many edits
read barely moves, one that none reads moves freely. Dividing by e makes lambda mean the same on
any model, whatever the size of its activations; lambda -> infinity projects onto S's null space.
A penalty lambda tr(D S D^T) in the loss asks for the same, but its stiffness made the clipped
first-order steps oscillate: on a tiny model it barely moved earlier edits' outputs less.

S depends only on the base model and the active facts (the edit layer's input does not depend on
the memory), so it is no part of a version: it is summed from each fact's activations, one fact at a
time and in bank order, so that a replayed version computes the very same matrix. Summing it costs
one forward pass per active edit, about 3 minutes at T = 1000 on SmolLM2 with 2 CPU threads, as
long as 25 edits take (docs/BENCHMARKS.md). So an edit run leaves S in the pack's cache folder
(`save`), and the next run starts from it (`load`) when the cache summed the first of today's
active edits, in order, and this model still gives the last of them the very same inputs. Anything
else (an edit deactivated since, another model, a damaged file) and S is summed again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .batching import pad_left
from .cache import load_tensors, save_tensors
from .models import input_of


class Protection:
    """S over a pack's active edits, grown as edits are added (see the module docstring)."""

    def __init__(self, d_ff: int) -> None:
        self.matrix = torch.zeros(d_ff, d_ff)  # [d_ff, d_ff], float32 on the CPU
        self.edits = 0
        self.rows = hashlib.sha256()  # the signatures of the edits summed, in order (edit_signature)
        self.probe = ""  # inputs_digest of the last edit summed

    def add_edit(self, inputs: Sequence[torch.Tensor], mask: torch.Tensor, signature: bytes) -> None:
        """`add`, and remember which edit it was and the inputs it had, for the cache (see `save`)."""
        self.add(inputs, mask)
        self.rows.update(signature)
        self.probe = inputs_digest(inputs)

    def add(self, inputs: Sequence[torch.Tensor], mask: torch.Tensor) -> None:
        """Add one edit's `share`."""
        self.matrix += share(inputs, mask)
        self.edits += 1

    def damping(
        self, columns: torch.Tensor, strength: float, device: torch.device, without: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(I + strength S[C, C] / e)^-1 [|C|, |C|] for the trained `columns` C, on `device`: a
        step's change u [d_out, |C|] becomes u @ damping. `without`: the `share` of one edit summed
        in S to leave out (an edit being refitted is not held where it is)."""
        eye = torch.eye(len(columns), dtype=torch.float64)
        matrix, edits = (self.matrix, self.edits) if without is None else (self.matrix - without, self.edits - 1)
        if edits == 0:
            return eye.float().to(device)
        energy = matrix.trace().double() / edits  # e: what one edit reads with, on average
        block = matrix[columns.cpu()][:, columns.cpu()].double() / energy  # [|C|, |C|]
        return torch.linalg.inv(eye + strength * block).float().to(device)

    def save(self, path: Path) -> None:
        """Write S and what it was summed from, atomically (a reader sees the old file or the new)."""
        metadata = {"edits": str(self.edits), "rows": self.rows.hexdigest(), "probe": self.probe}
        save_tensors(path, {"matrix": self.matrix}, metadata)

    @classmethod
    def load(cls, path: Path, signatures: Sequence[bytes]) -> Protection | None:
        """S from `path` if it summed exactly the first of these edits' `signatures`, in order;
        None if it did not, or the file is missing or damaged. The caller checks the probe."""
        cached = load_tensors(path)
        if cached is None:
            return None
        tensors, metadata = cached
        try:
            matrix, edits = tensors["matrix"], int(metadata["edits"])
        except (KeyError, ValueError):
            return None
        d_ff = len(matrix)
        if not 0 < edits <= len(signatures) or matrix.shape != (d_ff, d_ff) or matrix.dtype != torch.float32:
            return None
        protection = cls(d_ff)
        for signature in signatures[:edits]:
            protection.rows.update(signature)
        if protection.rows.hexdigest() != metadata.get("rows"):
            return None
        protection.matrix, protection.edits, protection.probe = matrix, edits, metadata.get("probe", "")
        return protection


def share(inputs: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """One edit's term of S [d_ff, d_ff]: `inputs` the edit layer's inputs [seq, d_ff] of each of
    its rows, `mask` its trained mask [d_ff] (bool)."""
    x = torch.cat(list(inputs)).float() * mask.float()  # [positions, d_ff]
    return x.T @ x / x.shape[0]


def edit_signature(fact_id: str, prompt: str, target: str, mask: torch.Tensor) -> bytes:
    """What makes one edit's share of S, the model aside: its fact and its mask."""
    digest = hashlib.sha256()
    for text in (fact_id, prompt, target):
        digest.update(text.encode() + b"\0")
    digest.update(mask.to(torch.bool).cpu().numpy().tobytes())
    return digest.digest()


def inputs_digest(inputs: Sequence[torch.Tensor]) -> str:
    """The exact bits of one edit's inputs to the edit layer: equal only if the model, its dtype,
    the tokenizer and the device computed them the same way."""
    digest = hashlib.sha256()
    for tensor in inputs:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def damped_step(optimiser: torch.optim.Optimizer, weight: torch.Tensor, damping: torch.Tensor) -> None:
    """One optimiser step whose change u of `weight` [d_out, |C|] becomes u @ `damping`."""
    before = weight.detach().clone()
    optimiser.step()
    with torch.no_grad():
        weight.copy_(before + (weight - before) @ damping)


def layer_inputs(
    model: nn.Module, layer: nn.Module, rows: Sequence[list[int]], device: torch.device
) -> list[torch.Tensor]:
    """The input of `layer` at every position but the last of each of one edit's rows (the
    positions whose output predicts a token): [len(row) - 1, d_in] per row, on the CPU. The rows
    go as one left-padded batch, which depends on this edit alone (replays compute the same)."""
    batch = pad_left(list(rows), pad_id=0, device=device)
    inputs = input_of(model, layer, batch).float().cpu()  # [rows, width, d_in]
    width = inputs.shape[1]
    return [inputs[i, width - len(ids) : width - 1] for i, ids in enumerate(rows)]
