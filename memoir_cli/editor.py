"""Editing facts into a residual memory (MEMOIR's sequential editing, one fact or a batch at a time).

For each fact: compute its TopHash mask from the prompt, build the augmented batch (the prompt
and its copies behind `training.prefixed` of the pack's 10 self-generated prefixes; all 10 is the
paper's batch, a new pack uses 2), and fit only the k memory columns the mask selects
on the target tokens' cross-entropy, with the paper's SGD or (a new pack) Adam. A batch of facts
(`edit_batch`) trains the union of their masks' columns, each row under its own fact's mask.

Rehearsal (our addition; `rehearse=0` is the reference procedure): masks share columns (similar
prompts most of them, any two about k/d_ff of them), so fitting a fact overwrites part of earlier
edits. The batch therefore also carries the bare prompt and target of the `rehearse` earlier active
edits whose masks overlap this fact's most (at least `rehearse_overlap`), each under its own stored
mask. Only this fact's columns are trained; the rehearsed rows make the optimiser fit the new fact
without undoing the edits it shares columns with. Protection (`training.protect`, protection.py)
reaches every other earlier edit too: each step is damped along the directions they read.

Why it is fast: nothing below the edit layer depends on the memory, so one no-grad pass records
the hidden state entering the edit layer's block and the arguments each upper block receives;
every optimisation step then replays only the blocks from the edit layer up (`fast=True`).
`fast=False` is the straightforward procedure (the full model forward and backward at every step),
kept as the reference the benchmark and tests compare against. A pack with `training.mixed_precision`
bf16 runs both under a bfloat16 autocast, which halves the multiplications' cost where the hardware
has bf16 (docs/BENCHMARKS.md, "Faster edits: bf16 training passes").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .batching import pad_left, prompt_target_ids
from .chat import chat_answer_ids, chat_prompt, conversation
from .config import TrainingConfig
from .facts import Fact
from .memory import MemoirLinear, TrainingState, attach, detach, mask_overlaps
from .models import LoadedModel, decoder_layers, final_norm, input_device
from .pack import Pack
from .protection import Protection, damped_step, edit_signature, inputs_digest, layer_inputs, share
from .tophash import prompt_features

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PREFIX_STARTS = ("The", "Therefore", "Because", "I", "You")
PREFIX_LENGTHS = (5, 10)
KEY_SYSTEMS = 2  # training system prompts whose chat question becomes a routing key (routing.extra_keys)


@dataclass
class EditResult:
    edit_id: str
    loss: float
    steps: int
    converged: bool
    seconds: float
    rehearsed: int = 0


@torch.no_grad()
def generate_prefixes(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, seed: int) -> list[str]:
    """Ten short random contexts written by the unedited model itself (5 of 5, 5 of 10 tokens)."""
    device = input_device(model)
    prefixes = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for length in PREFIX_LENGTHS:
            for start in PREFIX_STARTS:
                inputs = tokenizer(start, return_tensors="pt").to(device)
                output = model.generate(
                    **inputs,
                    do_sample=True,
                    top_k=5,
                    max_new_tokens=length,
                    min_new_tokens=length,
                    pad_token_id=tokenizer.pad_token_id,
                )
                text = tokenizer.decode(output[0], skip_special_tokens=True)
                prefixes.append(" ".join(text.replace("{", " ").replace("}", " ").split()))
    return prefixes


@contextmanager
def editing(
    loaded: LoadedModel, pack: Pack, fast: bool = True, protection_cache: Path | None = None
) -> Iterator[Editor]:
    """An Editor for `pack` on the loaded model, with the pack attached while it is used."""
    wrapper = attach(loaded.model, pack)
    try:
        yield Editor(loaded.model, loaded.tokenizer, wrapper, pack, fast, protection_cache)
    finally:
        detach(loaded.model)


class Editor:
    """Writes facts into a pack (its memory, its bank and its facts, one per bank row) through the
    wrapped edit layer, with the pack's own training settings. With a `protection_cache` file it
    starts from the protection matrix an earlier run left there, where that still holds."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        wrapper: MemoirLinear,
        pack: Pack,
        fast: bool = True,
        protection_cache: Path | None = None,
    ) -> None:
        self.model, self.tokenizer, self.wrapper, self.pack = model, tokenizer, wrapper, pack
        self.memory, self.facts = pack.memory, pack.facts
        self.fast = fast
        self.device = input_device(model)  # where the batch goes
        self.layer_device = wrapper.base.weight.device  # where the memory trains (a device map may differ)
        self.protection_cache = protection_cache
        self._protection: Protection | None = None
        self._protected: list[int] = []  # the bank rows in self._protection, in bank order
        self._bf16: dict[nn.Module, dict[str, torch.Tensor]] = {}  # bf16_weights, per replayed module

    @property
    def settings(self) -> TrainingConfig:
        return self.pack.manifest.training

    @property
    def in_bf16(self) -> bool:
        return self.settings.mixed_precision == MixedPrecision.bf16

    def precision(self) -> torch.autocast:
        """Where the training passes run in bfloat16 (`training.mixed_precision`): an autocast on the
        edit layer's device, disabled for a pack that trains in the model's dtype."""
        return torch.autocast(self.layer_device.type, dtype=torch.bfloat16, enabled=self.in_bf16)

    def bf16_weights(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """bfloat16 copies of the weights of `module`'s linear layers, made once per editor (the base
        model does not change while it edits). Autocast casts the very same weights the same way at
        every step, which took a tenth of each bf16 step on a CPU; a replay with these copies computes
        the same bits."""
        if module not in self._bf16:
            self._bf16[module] = {
                f"{name}.weight".lstrip("."): layer.weight.detach().to(torch.bfloat16)
                for name, layer in module.named_modules()
                if isinstance(layer, nn.Linear)
            }
        return self._bf16[module]

    def _replayed(self, module: nn.Module, *args, **kwargs):
        """`module(*args, **kwargs)` in a replay step: with its bf16 weights when the pack trains in bf16."""
        if not self.in_bf16:
            return module(*args, **kwargs)
        return torch.func.functional_call(module, self.bf16_weights(module), args, kwargs)

    @property
    def layer_index(self) -> int:
        return self.pack.manifest.layer.index

    @property
    def prefixes(self) -> list[str]:
        return self.pack.manifest.prefixes

    def prefix_roles(self) -> tuple[list[str], list[str]]:
        """The prefixes a fact is trained behind (`training.prefixed` of them): those that go before
        the bare question, and those that a chat pack uses as system prompts (from the second half)."""
        bare, systems = self.all_prefix_roles()
        used = len(self.prefixes) if self.settings.prefixed is None else self.settings.prefixed
        if not self.settings.chat:
            return bare[:used], []
        return bare[: (used + 1) // 2], systems[: used // 2]

    def all_prefix_roles(self) -> tuple[list[str], list[str]]:
        """Every prefix in its role: before the bare question, or (the second half, in a chat pack)
        as a system prompt, trained or not; the routing keys come from the latter."""
        if not self.settings.chat:
            return self.prefixes, []
        half = (len(self.prefixes) + 1) // 2
        return self.prefixes[:half], self.prefixes[half:]

    def mask_for(self, prompt: str) -> torch.Tensor:
        """The fact's TopHash mask, from the prompt's own tokens as routing will see them: the bare
        prompt, or for a chat pack the question asked through the chat template (whose masks
        bare, system-prompted and multi-turn askings all overlap best: docs/BENCHMARKS.md)."""
        return self.masks_for([prompt])[0]

    def masks_for(self, prompts: list[str]) -> torch.Tensor:
        """mask_for of each prompt, batched: [len(prompts), d_ff]."""
        if not prompts:
            return torch.zeros((0, self.memory.bank.d_ff), dtype=torch.bool)
        return self.memory.query_masks(self.features(prompts, chat=self.settings.chat))

    def features(self, prompts: list[str], chat: bool = False, system: str | None = None) -> torch.Tensor:
        """The prompts' features as this pack pools them (tophash.prompt_features): [len(prompts), d_ff]."""
        aggregation = self.pack.manifest.tophash.aggregation
        return prompt_features(
            self.model, self.tokenizer, self.wrapper, prompts, chat=chat, system=system, aggregation=aggregation
        )

    def key_masks(self, prompt: str) -> torch.Tensor:
        """A fact's further routing keys [m, d_ff] (routing.extra_keys; only in a chat pack): its bare
        question and its chat question after each of the first KEY_SYSTEMS system-prompt prefixes
        (whether `training.prefixed` trains behind them or not). Its trained mask comes from the chat
        question with no system prompt; these reach the same edit when it is asked another way
        (docs/BENCHMARKS.md, "Routing variants")."""
        if not (self.pack.manifest.routing.extra_keys and self.settings.chat):
            return torch.zeros((0, self.memory.bank.d_ff), dtype=torch.bool)
        features = [self.features([prompt])]
        features += [
            self.features([prompt], chat=True, system=system) for system in self.all_prefix_roles()[1][:KEY_SYSTEMS]
        ]
        return self.memory.query_masks(torch.cat(features))

    def neighbours(self, mask: torch.Tensor, other_than: int | None = None) -> list[int]:
        """Bank rows of the earlier active edits this fact's columns overlap most, most similar first
        (never bank row `other_than`: the edit being refitted)."""
        bank = self.memory.bank
        if self.settings.rehearse <= 0 or len(bank) == 0:
            return []
        overlap = self.memory.overlaps(mask.unsqueeze(0))[0].cpu()
        overlap[~bank.active] = -1.0
        if other_than is not None:
            overlap[other_than] = -1.0
        floor = self.memory.threshold if self.settings.rehearse_overlap is None else self.settings.rehearse_overlap
        candidates = (overlap >= floor).nonzero().squeeze(1)
        ranked = candidates[overlap[candidates].argsort(descending=True, stable=True)]
        return ranked[: self.settings.rehearse].tolist()

    def training_batch(self, facts: Sequence[Fact], rehearsed: Sequence[Fact] = ()) -> list[RowGroup]:
        """The edit's rows, left-padded in groups, with labels that mark only the answer's tokens.

        Row order: each fact's own rows, fact after fact (`own_rows` of them each): the bare prompt
        and its prefixed copies, or, for a chat pack, the bare prompt and half of them, then the
        chat question with no system prompt and with each other prefix as one. The rehearsed facts
        follow, `rows_per_rehearsed` rows each. One group holds every row, or, with
        `training.pad_by_form`, one holds the bare rows and one the chat rows: a bare question is
        a third as long as a chat one, and padded to it, most of a bare row was padding."""
        rows = [row for fact in facts for row in self._own_rows(fact)]
        rows += [row for other in rehearsed for row in self._rehearsal_rows(other)]
        if self.settings.pad_by_form:
            forms = [[i for i, row in enumerate(rows) if row.chat == chat] for chat in (False, True)]
        else:
            forms = [list(range(len(rows)))]
        return [self._row_group([rows[i] for i in form], form) for form in forms if form]

    def _row_group(self, rows: list[_Row], numbers: list[int]) -> RowGroup:
        batch = pad_left([row.ids for row in rows], self.tokenizer.pad_token_id, self.device)
        labels = pad_left([row.labels for row in rows], -100, self.device)["input_ids"]
        return RowGroup(batch, labels, numbers)

    def _own_rows(self, fact: Fact) -> list[_Row]:
        bare, systems = self.prefix_roles()
        chat = [None, *systems] if self.settings.chat else []
        rows = [self._bare_row(fact.prompt, fact.target)]
        rows += [self._bare_row(f"{prefix}. {fact.prompt}", fact.target) for prefix in bare]
        rows += [self._chat_row(conversation(fact.prompt, system), fact.target) for system in chat]
        return rows

    def own_rows(self) -> int:
        """How many rows of a training batch are the fact's own (the rest are rehearsal)."""
        bare, systems = self.prefix_roles()
        return 1 + len(bare) + len(systems) + (1 if self.settings.chat else 0)

    def rows_per_rehearsed(self) -> int:
        """A rehearsed fact's rows: its bare question, and in a chat pack that rehearses chat its
        chat question (no system prompt) too."""
        return 2 if self.settings.chat and self.settings.rehearse_chat else 1

    def _rehearsal_rows(self, fact: Fact) -> list[_Row]:
        rows = [self._bare_row(fact.prompt, fact.target)]
        if self.rows_per_rehearsed() == 2:
            rows.append(self._chat_row(conversation(fact.prompt), fact.target))
        return rows

    def _bare_row(self, context: str, target: str) -> _Row:
        """A bare row ends with the end-of-sequence token when the pack says so (rehearsed ones too)."""
        ids, n_context = prompt_target_ids(self.tokenizer, context, target)
        if self.settings.end_answer and self.tokenizer.eos_token_id is not None:
            ids = [*ids, self.tokenizer.eos_token_id]
        return _Row(ids, [-100] * n_context + ids[n_context:], chat=False)

    def _chat_row(self, messages: list[dict[str, str]], target: str) -> _Row:
        prompt = chat_prompt(self.tokenizer, messages).ids
        answer = chat_answer_ids(self.tokenizer, messages, target)
        return _Row(prompt + answer, [-100] * len(prompt) + answer, chat=True)

    def edit(self, fact: Fact, on_step: Callable[[int, float], None] | None = None) -> EditResult:
        """Fit `fact` into the memory; the memory's weight and bank and `facts` grow in place."""
        return self.edit_batch([fact], on_step)[0]

    def edit_batch(
        self, facts: Sequence[Fact], on_step: Callable[[int, float], None] | None = None
    ) -> list[EditResult]:
        """Fit `facts` in one optimisation, each under its own mask, then add them in order.

        Why: a batch's rows share every step's pass through the upper blocks, which a GPU runs for
        several facts at the cost of one. The trained columns are the union of the facts' masks,
        and each row reaches only its own fact's columns (rehearsed rows: their stored masks), as
        routing will at inference. Facts whose masks the router cannot tell apart must not share
        a batch (`edit_batches` decides): sequential editing lets the later one win, a batch
        would average them. A batch of one is `edit`, step for step."""
        start = time.perf_counter()
        masks = self.masks_for([fact.prompt for fact in facts])  # [facts, d_ff]
        fit = self._fit(facts, masks, on_step)
        for fact, mask in zip(facts, masks):
            row = self.memory.bank.add(fact.id, mask)
            self.memory.keys.add(row, self.key_masks(fact.prompt))
            self.facts.append(fact)
            if self._protection is not None:
                self._protect(row)
        self.wrapper.refresh()
        seconds = (time.perf_counter() - start) / len(facts)  # the batch's time, shared
        return [EditResult(f.id, fit.loss, fit.steps, fit.converged, seconds, fit.rehearsed) for f in facts]

    def refit(self, edit_id: str, on_step: Callable[[int, float], None] | None = None) -> EditResult:
        """Fit an active edit's fact again, under its stored mask, as if it were edited now.

        Why: later edits that share its columns can move its answer (docs/BENCHMARKS.md, "Why edits
        are forgotten"); `memoir repair` refits those whose own question no longer gets their
        answer. The batch and the steps are an edit's, with the edit itself left out of the
        rehearsed neighbours and of the protection (it must not be held where it is). Its bank
        row, keys and fact stay; only the memory's columns of its mask change."""
        start = time.perf_counter()
        row = self.memory.bank.row_of(edit_id)
        fit = self._fit([self.facts[row]], self.memory.bank.rows([row]), on_step, refitting=row)
        self.wrapper.refresh()
        return EditResult(edit_id, fit.loss, fit.steps, fit.converged, time.perf_counter() - start, fit.rehearsed)

    def _fit(
        self,
        facts: Sequence[Fact],
        masks: torch.Tensor,
        on_step: Callable[[int, float], None] | None,
        refitting: int | None = None,
    ) -> _Fit:
        """Train the memory's columns of `masks` [facts, d_ff] on `facts`' rows and their nearest
        earlier edits' (not bank row `refitting`), until the stop rule or the last step."""
        columns = masks.any(dim=0).nonzero().squeeze(1).to(self.layer_device)  # [union of the masks' columns]
        neighbours = list(dict.fromkeys(row for mask in masks for row in self.neighbours(mask, refitting)))
        groups = self.training_batch(facts, [self.facts[row] for row in neighbours])
        weight = self.memory.weight[:, columns.cpu()].to(self.layer_device).clone().requires_grad_(True)
        state = TrainingState(columns, weight)
        row_masks = None
        if neighbours or len(facts) > 1:
            own = masks.repeat_interleave(self.own_rows(), dim=0)  # [facts * own_rows, d_ff]
            rehearsed = self.memory.bank.rows(neighbours).repeat_interleave(self.rows_per_rehearsed(), dim=0)
            row_masks = torch.cat([own, rehearsed]).to(self.layer_device)  # [rows, d_ff]
            state.frozen = self.memory.weight.to(self.layer_device).clone()
            state.frozen[:, columns] = 0.0
        optimiser = make_optimiser(self.settings, weight)
        loss_fn = self._batch_loss(groups, state, row_masks)
        damping = self._damping(columns, refitting)
        previous, converged, step = None, False, 0
        with self.wrapper.fitting(state):
            for step in range(1, self.settings.steps + 1):
                optimiser.zero_grad()
                loss = loss_fn()
                value = loss.item()
                if on_step:
                    on_step(step, value)
                if (
                    value <= self.settings.stop_loss
                    and previous is not None
                    and abs(previous - value) <= self.settings.stop_delta
                ):
                    converged = True
                    break
                loss.backward()
                torch.nn.utils.clip_grad_norm_([weight], self.settings.clip)
                if damping is None:
                    optimiser.step()
                else:
                    damped_step(optimiser, weight, damping)
                previous = value
        final = value if converged else self._final_loss(loss_fn, state)
        self.memory.weight[:, columns.cpu()] = weight.detach().to(self.memory.weight.device, self.memory.weight.dtype)
        return _Fit(final, step, converged, len(neighbours))

    def _damping(self, columns: torch.Tensor, refitting: int | None) -> torch.Tensor | None:
        """Protection's damping for the trained `columns`, without the share of the edit being refitted."""
        protection = self.protection()
        if protection is None:
            return None
        without = None if refitting is None else share(self._protection_inputs(refitting), self._mask(refitting))
        return protection.damping(columns, self.settings.protect, self.layer_device, without)

    def protection(self) -> Protection | None:
        """The interference matrix over the active edits (protection.py), or None when the pack does
        not protect. Built on first use from every active edit in bank order (or from the cache),
        rebuilt the same way when an edit was deactivated since, so that a replay computes the same
        matrix."""
        if self.settings.protect <= 0:
            return None
        active = self.memory.bank.active.nonzero().squeeze(1).tolist()
        if self._protection is None or active[: len(self._protected)] != self._protected:
            self._protection, self._protected = self._cached_protection(active)
        for row in active[len(self._protected) :]:
            self._protect(row)
        return self._protection

    def save_protection(self) -> None:
        """Leave the matrix in the protection cache for the pack's next run (protection.py)."""
        if self.protection_cache is not None and self._protection is not None and self._protected:
            self._protection.save(self.protection_cache)

    def _cached_protection(self, active: list[int]) -> tuple[Protection, list[int]]:
        """The cached matrix and the bank rows it sums, if it summed the first of the `active` rows
        and the last of those still has the inputs it had then; else an empty matrix."""
        empty: tuple[Protection, list[int]] = (Protection(self.memory.bank.d_ff), [])
        if self.protection_cache is None or not active:
            return empty
        cached = Protection.load(self.protection_cache, [self._signature(row) for row in active])
        if cached is None or len(cached.matrix) != self.memory.bank.d_ff:
            return empty
        if inputs_digest(self._protection_inputs(active[cached.edits - 1])) != cached.probe:
            return empty
        return cached, active[: cached.edits]

    def _protect(self, row: int) -> None:
        """Add bank row `row`'s edit to the matrix: its rehearsal rows' inputs under its mask."""
        assert self._protection is not None
        inputs = self._protection_inputs(row)
        self._protection.add_edit(inputs, self._mask(row), self._signature(row))
        self._protected.append(row)

    def _protection_inputs(self, row: int) -> list[torch.Tensor]:
        ids = [r.ids for r in self._rehearsal_rows(self.facts[row])]
        return layer_inputs(self.model, self.wrapper, ids, self.device)

    def _mask(self, row: int) -> torch.Tensor:
        return self.memory.bank.rows([row])[0]

    def _signature(self, row: int) -> bytes:
        fact = self.facts[row]
        return edit_signature(fact.id, fact.prompt, fact.target, self._mask(row))

    @torch.no_grad()
    def _final_loss(self, loss_fn, state: TrainingState) -> float:
        with self.wrapper.fitting(state):
            return loss_fn().item()

    def _batch_loss(
        self, groups: list[RowGroup], state: TrainingState, row_masks: torch.Tensor | None
    ) -> Callable[[], torch.Tensor]:
        """The loss over every row (each row's mean over its target tokens, then the mean over
        rows): each group's loss weighted by its share of the rows, each under its rows' masks."""
        group_losses = [
            self._replay_loss(g.batch, g.labels) if self.fast else self._full_loss(g.batch, g.labels) for g in groups
        ]
        if len(groups) == 1:
            state.row_masks = row_masks
            return group_losses[0]
        total = sum(len(g.rows) for g in groups)
        group_masks = [None if row_masks is None else row_masks[g.rows] for g in groups]  # once, not every step

        def loss() -> torch.Tensor:
            parts = []
            for group, group_loss, masks in zip(groups, group_losses, group_masks):
                state.row_masks = masks
                parts.append(group_loss() * (len(group.rows) / total))
            return torch.stack(parts).sum()

        return loss

    def _full_loss(self, batch, labels) -> Callable[[], torch.Tensor]:
        """The reference procedure: the whole model, forward and backward, at every step."""

        def loss() -> torch.Tensor:
            with self.precision():
                logits = self.model(**batch, use_cache=False).logits
            return target_loss(logits, labels)

        return loss

    def _replay_loss(self, batch, labels) -> Callable[[], torch.Tensor]:
        """Record the edit block's input and every upper block's arguments once, then replay."""
        layers = decoder_layers(self.model)
        upper = list(range(self.layer_index, len(layers)))
        calls: dict[int, tuple[tuple, dict]] = {}

        def recorder(index):
            def hook(_module, args, kwargs):
                calls[index] = (args, kwargs)
                if index == upper[-1]:
                    raise _Recorded  # the last block, the norm and the vocabulary-wide head are not needed

            return hook

        handles = [layers[i].register_forward_pre_hook(recorder(i), with_kwargs=True) for i in upper]
        try:
            with torch.no_grad(), self.precision():
                self.model(**batch, use_cache=False)
        except _Recorded:
            pass
        finally:
            for handle in handles:
                handle.remove()
        hidden_in = _hidden_arg(*calls[self.layer_index])
        norm, head = final_norm(self.model), self.model.get_output_embeddings()
        # Only positions that predict a target token need the (vocabulary-wide) output head.
        predicting = (labels[:, 1:] != -100).to(head.weight.device)  # with a device map: where the head is
        rows, positions = predicting.nonzero(as_tuple=True)
        targets = labels[:, 1:].to(head.weight.device)[rows, positions]
        softcap = getattr(self.model.config, "final_logit_softcapping", None)

        def loss() -> torch.Tensor:
            hidden = hidden_in
            with self.precision():
                for i in upper:
                    args, kwargs = calls[i]
                    hidden = _layer_output(self._replayed(layers[i], hidden, *args[1:], **_without_hidden(kwargs)))
                logits = self._replayed(head, norm(hidden.to(head.weight.device))[rows, positions])
            if softcap is not None:
                logits = torch.tanh(logits / softcap) * softcap
            per_token = F.cross_entropy(logits.float(), targets, reduction="none")
            per_row = torch.zeros(labels.shape[0], device=per_token.device).index_add(0, rows, per_token)
            return (per_row / predicting.sum(dim=1).clamp_min(1)).mean()

        return loss


class _Fit(NamedTuple):
    """How one optimisation ended: its last loss, its steps, whether it met the stop rule, and how
    many earlier edits it rehearsed."""

    loss: float
    steps: int
    converged: bool
    rehearsed: int


class _Row(NamedTuple):
    """One row of an edit's training batch: its tokens, its labels (-100 outside the answer), and
    whether it is a chat turn."""

    ids: list[int]
    labels: list[int]
    chat: bool


@dataclass
class RowGroup:
    """Rows of an edit's training batch that are padded together."""

    batch: dict[str, torch.Tensor]  # left-padded input_ids, attention_mask, position_ids
    labels: torch.Tensor  # [rows, seq], -100 outside the answers
    rows: list[int]  # their numbers in the edit's row order (training_batch)


def edit_batches(masks: torch.Tensor, size: int, threshold: float, k: int) -> list[list[int]]:
    """Facts (by their masks [n, d_ff], in order) cut into consecutive batches of at most `size`
    for Editor.edit_batch. A fact whose mask overlaps a batch member's at `threshold` or more
    starts the next batch: the router cannot tell the two apart, and only sequential editing lets
    the later fact win."""
    batches: list[list[int]] = []
    for number in range(len(masks)):
        current = batches[-1] if batches else []
        fits = 0 < len(current) < size and not (mask_overlaps(masks[current], masks[[number]], k) >= threshold).any()
        if fits:
            current.append(number)
        else:
            batches.append([number])
    return batches


class MixedPrecision(str, Enum):
    """TrainingConfig.mixed_precision, and `memoir edit --mixed-precision` (auto: resolved for the
    machine when a pack is made, models.native_bf16)."""

    auto = "auto"
    no = "no"
    bf16 = "bf16"


class Optimizer(str, Enum):
    """TrainingConfig.optimizer: what fits a fact's columns."""

    sgd = "sgd"
    adam = "adam"


def make_optimiser(settings: TrainingConfig, weight: torch.Tensor) -> torch.optim.Optimizer:
    """The pack's optimiser over the trainable columns.

    Why Adam for new packs: SGD at a rate that keeps the few large-activation columns stable crawls
    along the rest and runs all 30 steps; Adam meets the stop rule in about 10. Why its epsilon is
    1e-3: with the usual 1e-8 every column of the mask moves about as far, including those that
    barely serve this fact and carry an earlier edit, and a late edit overwrote a dozen earlier
    ones (WILD Rel 0.80 at T = 100); a large epsilon keeps small-gradient columns nearly still
    (docs/BENCHMARKS.md, "Faster edits")."""
    if settings.optimizer == Optimizer.adam:
        return torch.optim.Adam([weight], lr=settings.lr, eps=settings.adam_eps, weight_decay=settings.weight_decay)
    return torch.optim.SGD([weight], lr=settings.lr, weight_decay=settings.weight_decay)


def target_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on target tokens only, averaged per sequence, then over the batch."""
    shifted_logits, shifted_labels = logits[:, :-1].float(), labels[:, 1:]
    per_token = F.cross_entropy(shifted_logits.transpose(1, 2), shifted_labels, reduction="none", ignore_index=-100)
    counts = (shifted_labels != -100).sum(dim=1).clamp_min(1)
    return (per_token.sum(dim=1) / counts).mean()


class _Recorded(Exception):
    """Raised from the last block's pre-hook: the recording pass has every block's arguments."""


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _without_hidden(kwargs: dict) -> dict:
    return {key: value for key, value in kwargs.items() if key != "hidden_states"}


def _layer_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output
