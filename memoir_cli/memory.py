"""The residual memory at the edit layer: `W0 x + W_m (m * x)`, routed once per row.

`MemoirLinear` wraps the base down-projection the way a PEFT tuner layer does: the base module is
kept untouched as `.base` and the memory's delta is added in `forward`. A row with no match gets
exactly the base output.

When routing is decided, without depending on what `generate` passes to `forward` (those keyword
names change between transformers releases):
- `attach` wraps the model's `generate`, as PEFT's model wrapper does. One call is one scope: the
  decision is taken at the scope's first forward pass, from each row's prompt tokens (the padding
  given by the call's own `attention_mask`, or inferred from the pad token as `generate` does), and
  kept for every decoding step, with or without a KV cache. Rows that `generate` expands
  (`num_return_sequences`, beams) inherit their prompt's decision. A `routing_mask` keyword
  (chat.py: 1 on the question's own tokens) narrows the tokens the decision reads.
- Any other top-level forward (teacher forcing, a user's own loop) decides afresh, from the
  `attention_mask` it is given.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch
from torch import nn

from .bank import KeyBank, MaskBank
from .config import Manifest
from .errors import MemoirError, PackError
from .release import TargetWatch
from .tophash import pool, tophash


@dataclass
class ResidualMemory:
    """One pack's memory: the residual weight [d_out, d_ff], its mask bank (each edit's trained
    mask, which is also its first routing key), its further routing keys and TopHash data.

    k, tau and the edited layer are settings: they are read from the pack's manifest, the one
    place they are kept.
    """

    weight: torch.Tensor
    bank: MaskBank
    permutation: torch.Tensor
    background: torch.Tensor
    manifest: Manifest
    keys: KeyBank = None  # type: ignore[assignment]  # None: no further keys (set in __post_init__)

    def __post_init__(self) -> None:
        if self.keys is None:
            self.keys = KeyBank(self.bank.d_ff)

    @property
    def k(self) -> int:
        return self.manifest.tophash.k

    @property
    def aggregation(self) -> str:
        return self.manifest.tophash.aggregation

    @property
    def threshold(self) -> float:
        return self.manifest.routing.threshold

    @property
    def layer_path(self) -> str:
        return self.manifest.layer.path

    def query_masks(self, features: torch.Tensor) -> torch.Tensor:
        return tophash(features, self.background, self.k, self.permutation)

    def overlaps(self, queries: torch.Tensor) -> torch.Tensor:
        """|m_q AND m_i| / k for every query mask and trained mask: [batch, n] (which columns two
        edits share; routing reads `routing_overlaps`)."""
        return self.bank.shared(queries) / self.k

    def routing_overlaps(self, queries: torch.Tensor) -> torch.Tensor:
        """Each query's overlap with each edit as routing sees it, the best over the edit's keys
        (its trained mask and its further keys): [batch, n]."""
        return torch.maximum(self.bank.shared(queries), self.keys.shared_per_edit(queries, len(self.bank))) / self.k

    def edit_overlaps(self, queries: torch.Tensor, row: int) -> torch.Tensor:
        """Each query's overlap with the edit at bank row `row` alone, the best over its keys: [batch]
        (routing_overlaps' column for it, without comparing the query with every other edit)."""
        keys = torch.cat([self.bank.rows([row]), self.keys.masks_of(row)])  # [1 + its keys, d_ff]
        return mask_overlaps(queries, keys, self.k).amax(dim=1)

    def best_match(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each query's best active edit (bank row, -1 if none) over all its keys, and the overlap.
        Ties go to the most recent edit."""
        rows, shared = self.bank.best_match(queries)
        if len(self.keys):
            key_rows, key_shared = self.keys.best_match(queries)
            better = (key_rows >= 0) & ((key_shared > shared) | ((key_shared == shared) & (key_rows > rows)))
            rows, shared = torch.where(better, key_rows, rows), torch.where(better, key_shared, shared)
        return rows, shared / self.k

    def deactivate(self, edit_id: str) -> None:
        """Routing never selects this edit again, by any of its keys."""
        self.bank.deactivate(edit_id)
        self.keys.deactivate(self.bank.row_of(edit_id))

    def copy(self, manifest: Manifest | None = None) -> ResidualMemory:
        """An independent copy of the weights, masks and keys (under `manifest`, else this one's)."""
        return ResidualMemory(
            self.weight.clone(),
            self.bank.copy(),
            self.permutation,
            self.background,
            manifest or self.manifest,
            self.keys.copy(),
        )


class HasMemory(Protocol):
    """What attach() needs of a pack: its memory, the name routes report, and the base check."""

    memory: ResidualMemory

    @property
    def name(self) -> str: ...

    def check_base(self, model: nn.Module) -> None: ...


@dataclass
class Routes:
    """The routing decision for each row of the current call."""

    memory: torch.Tensor  # [batch] index into the wrapper's packs, -1 = no edit
    row: torch.Tensor  # [batch] row in that pack's bank, -1 = no edit
    overlap: torch.Tensor  # [batch] best overlap seen (even below the threshold)
    placed: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """pack index -> (its rows, their masks) on the model's device (MemoirLinear._placed)."""

    def describe(self, packs: list[HasMemory]) -> list[dict]:
        """Per row: the pack and edit routed to (None when the base model answers) and the overlap."""
        rows = []
        for m, r, o in zip(self.memory.tolist(), self.row.tolist(), self.overlap.tolist()):
            routed = m >= 0
            rows.append(
                {
                    "pack": packs[m].name if routed else None,
                    "edit_id": packs[m].memory.bank.ids[r] if routed else None,
                    "overlap": round(float(o), 4),
                }
            )
        return rows


@dataclass
class TrainingState:
    """While editing a fact: the trainable columns of W_m and, when earlier edits are rehearsed,
    each row's own mask (the rest of W_m is then applied frozen)."""

    columns: torch.Tensor  # [k] the fact's mask, as column indices
    weight: torch.Tensor  # [d_out, k] trainable copy of W_m[:, columns]
    row_masks: torch.Tensor | None = None  # [batch, d_ff] 0/1 per row; None: every row uses `columns`
    frozen: torch.Tensor | None = None  # [d_out, d_ff] W_m with `columns` zeroed

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        trained = x[..., self.columns]
        if self.row_masks is None:
            return trained @ self.weight.T.to(x.dtype)
        masks = self.row_masks.to(x.dtype).unsqueeze(1)
        own = (trained * masks[..., self.columns]) @ self.weight.T.to(x.dtype)
        assert self.frozen is not None, "row_masks come with the frozen rest of W_m"
        return own + (x * masks) @ self.frozen.T.to(x.dtype)


class MemoirLinear(nn.Module):
    """A Linear layer plus routed residual memories (one per attached pack)."""

    def __init__(self, base: nn.Linear, packs: list[HasMemory]) -> None:
        super().__init__()
        self.base = base
        self.packs = packs
        self.routes: Routes | None = None  # None: the next forward decides
        self._span: torch.Tensor | None = None  # [batch, seq] 1 on the tokens routing reads; None: all
        self._generating = False
        self._training: TrainingState | None = None
        self._prompt_mask: torch.Tensor | None = None
        self._weights: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}
        self._detach: Callable[[], None] | None = None  # undoes what attach() added to the model
        self.watch: TargetWatch | None = None  # release.py: rows that generated their target go back to the base
        self._watching = False
        self._allowed: frozenset[int] | None = None  # indices of the packs routing may pick; None: all

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self._training is not None:
            return out + self._training.delta(x).to(out.dtype)
        if self.routes is None:
            span = self._prompt_mask if self._prompt_mask is not None else self._span
            self.routes = self._decide(x, _fit_span(span, x))
        elif self.routes.memory.shape[0] != x.shape[0]:
            raise MemoirError("batch size changed inside one generation; routing cannot follow it")
        return self._add_delta(x, out)

    def new_call(self, attention_mask: torch.Tensor | None) -> None:
        """A top-level forward outside `generate`: decide afresh from its own padding."""
        if not self._generating:
            self.routes, self._span = None, attention_mask

    @contextmanager
    def generation(self, attention_mask: torch.Tensor | None) -> Iterator[None]:
        """One `generate` call: one decision per row at its first forward, kept until it returns."""
        self.routes, self._span, self._generating = None, attention_mask, True
        if self.watch is not None:
            self.watch.start()
        try:
            yield
        finally:
            self._generating = False

    @torch.no_grad()
    def _decide(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> Routes:
        batch = x.shape[0]
        best_memory = torch.full((batch,), -1, dtype=torch.long)
        best_row = torch.full((batch,), -1, dtype=torch.long)
        best_routed = torch.full((batch,), -1.0)
        seen = torch.zeros(batch)
        if not self.packs:
            return Routes(best_memory, best_row, seen)
        features: dict[str, torch.Tensor] = {}  # aggregation -> [batch, d_ff]: once per pooling the packs use
        for index, pack in enumerate(self.packs):
            if self._allowed is not None and index not in self._allowed:
                continue
            memory = pack.memory
            if memory.aggregation not in features:
                features[memory.aggregation] = pool(x, attention_mask, memory.aggregation)
            rows, overlap = memory.best_match(memory.query_masks(features[memory.aggregation]))
            seen = torch.maximum(seen, overlap)
            # A later pack wins ties: stacking order says which knowledge is newer.
            wins = (rows >= 0) & (overlap >= memory.threshold) & (overlap >= best_routed)
            best_memory[wins], best_row[wins], best_routed[wins] = index, rows[wins], overlap[wins]
        return Routes(best_memory, best_row, seen)

    def _add_delta(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        assert self.routes is not None
        released = self.watch.released if self._watching and self.watch is not None else None
        for index in self.routes.memory.unique().tolist():
            if index < 0:
                continue
            batch_rows, masks = self._placed(index, x)
            if released is not None and bool(released.any()):
                kept = ~released.to(batch_rows.device)[batch_rows]
                batch_rows, masks = batch_rows[kept], masks[kept]
            delta = (x[batch_rows] * masks.unsqueeze(1)) @ self._weight(index, x).T
            out = out.index_add(0, batch_rows.to(out.device), delta.to(out.dtype))
        return out

    def _placed(self, index: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of this call routed to pack `index` and their edits' masks, on x's device and in
        its dtype: unpacked from the bank once per routing decision, not at every decoding step."""
        assert self.routes is not None
        placed = self.routes.placed.get(index)
        if placed is None or placed[1].device != x.device or placed[1].dtype != x.dtype:
            batch_rows = (self.routes.memory == index).nonzero().squeeze(1)
            masks = self.packs[index].memory.bank.rows(self.routes.row[batch_rows])
            placed = (batch_rows.to(x.device), masks.to(device=x.device, dtype=x.dtype))
            self.routes.placed[index] = placed
        return placed

    def _weight(self, index: int, x: torch.Tensor) -> torch.Tensor:
        key = (index, x.device, x.dtype)
        if key not in self._weights:
            self._weights[key] = self.packs[index].memory.weight.to(device=x.device, dtype=x.dtype)
        return self._weights[key]

    def refresh(self) -> None:
        """Forget device copies of the memory weights (call after the weights change)."""
        self._weights.clear()

    @contextmanager
    def fitting(self, state: TrainingState) -> Iterator[None]:
        """While editing: the memory's output comes from `state` instead of routing."""
        self._training = state
        try:
            yield
        finally:
            self._training = None

    @contextmanager
    def routing_from(self, prompt_mask: torch.Tensor) -> Iterator[None]:
        """Route from the positions in `prompt_mask` [batch, seq] only: teacher-forced scoring
        feeds prompt + target, and the target must not influence which edit is chosen."""
        self._prompt_mask = prompt_mask
        try:
            yield
        finally:
            self._prompt_mask = None

    @contextmanager
    def limited_to(self, indices: Iterable[int]) -> Iterator[None]:
        """Route only to the packs at `indices` (a server's `model` field picks one pack, or none)
        without detaching: pack indices, and so routes and the target watch, stay as they are."""
        allowed, self._allowed = self._allowed, frozenset(indices)
        try:
            yield
        finally:
            self._allowed = allowed

    def bypassed(self) -> AbstractContextManager[None]:
        """Answer as the base model (for side-by-side comparisons) without detaching."""
        return self.limited_to(())

    def describe_routes(self) -> list[dict]:
        """The current decision of each row: pack, edit id and overlap (see Routes.describe)."""
        assert self.routes is not None, "no forward pass has routed yet"
        return self.routes.describe(self.packs)


def mask_overlaps(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """|m_a AND m_b| / k for every mask of `a` [n, d_ff] against every mask of `b` [m, d_ff]: [n, m]
    (masks not, or not yet, in a bank: a pack's bank answers with `overlaps`)."""
    return (a.float() @ b.float().T) / k


def _forward_hook(wrapper: MemoirLinear, model: nn.Module):
    """Before each top-level forward: its attention mask, however it was passed, starts a new call."""
    signature = inspect.signature(model.forward)

    def hook(_module, args, kwargs):
        try:
            bound = signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            bound = kwargs
        wrapper.new_call(bound.get("attention_mask"))
        input_ids = bound.get("input_ids")
        if wrapper._watching and wrapper.watch is not None and isinstance(input_ids, torch.Tensor):
            wrapper.watch.observe(input_ids, wrapper.routes)

    return hook


def _scoped_generate(wrapper: MemoirLinear, model: nn.Module) -> Callable[..., Any]:
    """`model.generate`, with each call one routing scope (see the module docstring)."""
    original = cast(Callable[..., Any], model.generate)

    @functools.wraps(original)
    def generate(*args, **kwargs):
        config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
        if getattr(config, "prefill_chunk_size", None) or kwargs.get("prefill_chunk_size"):
            raise MemoirError(
                "chunked prefill splits the prompt, so routing cannot see it whole; "
                "generate with prefill_chunk_size=None when packs are attached"
            )
        routing = kwargs.pop("routing_mask", None)  # chat.chat_inputs: the question's own tokens
        beams = kwargs.get("num_beams") or getattr(config, "num_beams", 1) or 1
        wrapper._watching = wrapper.watch is not None and beams == 1  # beam search reorders rows
        try:
            with wrapper.generation(routing if routing is not None else prompt_attention_mask(config, args, kwargs)):
                return original(*args, **kwargs)
        finally:
            wrapper._watching = False

    return generate


def prompt_attention_mask(config, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The padding of a `generate` call's prompt: its `attention_mask`, else (as `generate` infers
    it) the positions that are not the pad token, when the pad token is not also end-of-sequence."""
    if kwargs.get("attention_mask") is not None:
        return kwargs["attention_mask"]
    input_ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        return None
    pad = kwargs.get("pad_token_id", getattr(config, "pad_token_id", None))
    eos = kwargs.get("eos_token_id", getattr(config, "eos_token_id", None))
    eos_ids = eos if isinstance(eos, (list, tuple)) else [eos]
    if pad is None or pad in eos_ids or not bool((input_ids == pad).any()):
        return None
    return (input_ids != pad).long()


def _fit_span(span: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """The routing span for this forward's x [batch, seq, d]: its last `seq` columns (a call that
    continues a cache feeds only the new tokens), repeated for rows `generate` expanded."""
    if span is None:
        return None
    batch, seq = x.shape[:2]
    span = span[:, -seq:]
    if span.shape[0] != batch:
        if batch % span.shape[0]:
            raise MemoirError(f"cannot match {batch} rows to a prompt batch of {span.shape[0]}")
        span = span.repeat_interleave(batch // span.shape[0], dim=0)
    return span


def find_wrapper(model: nn.Module) -> MemoirLinear | None:
    """The attached memory layer of `model`, if any."""
    return next((m for m in model.modules() if isinstance(m, MemoirLinear)), None)


def attach(model: nn.Module, *packs: HasMemory, watch: TargetWatch | None = None) -> MemoirLinear:
    """Add the packs' memories to `model` in place (stacked: routing picks the best edit across all).

    Every pack must be made for this base model (checked by fingerprint) and edit the same layer.
    Given a `watch` (release.watch_for), a row that has generated its edit's target gets the base
    model's output from then on; without it, the paper's rule: the edit at every position.
    """
    if find_wrapper(model) is not None:
        raise MemoirError("this model already has packs attached; detach(model) first")
    paths = {pack.memory.layer_path for pack in packs}
    if len(paths) > 1:
        raise PackError(f"stacked packs must edit the same layer; these edit {', '.join(sorted(paths))}")
    for pack in packs:
        pack.check_base(model)
    if not paths:
        from .models import find_edit_layer

        paths = {find_edit_layer(model).path}
    path = paths.pop()
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    base = getattr(parent, name)
    wrapper = MemoirLinear(base, list(packs))
    wrapper.watch = watch
    setattr(parent, name, wrapper)
    handle = model.register_forward_pre_hook(_forward_hook(wrapper, model), with_kwargs=True)
    has_generate = callable(getattr(model, "generate", None))
    if has_generate:
        model.generate = _scoped_generate(wrapper, model)  # type: ignore[assignment]  # over the class's method

    def undo() -> None:
        handle.remove()
        if has_generate:
            del model.generate  # the instance attribute: the class's generate shows through again

    wrapper._detach = undo
    return wrapper


def detach(model: nn.Module) -> nn.Module:
    """Remove every attached memory, restoring the original module objects exactly."""
    for name, module in list(model.named_modules()):
        if isinstance(module, MemoirLinear):
            if module._detach is not None:
                module._detach()
            parent_path, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_path), attr, module.base)
    return model
