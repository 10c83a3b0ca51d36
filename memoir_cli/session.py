"""A model with packs attached, answering and scoring prompts: what `memoir apply` and `memoir eval` use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .batching import pad_left
from .chat import Asking, ChatMode, chat_inputs, conversation, has_chat_template, require_chat_template
from .errors import BadInputError, ModelError
from .evaluate import EvalReport, Progress, Scorer, evaluate
from .facts import Fact
from .history import open_pack
from .hub import remember_scores
from .memory import attach, find_wrapper
from .models import LoadedModel, input_device, load_model
from .pack import Pack
from .refs import PackRef, parse_ref
from .release import watch_for
from .wild import Judge
from .workflows import model_spec_for

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 32,
    batch_size: int = 8,
    asking: Asking | None = None,
) -> list[str]:
    """Greedy continuations of `prompts`, batched with left padding (continuation text only).

    With `asking.chat`, each prompt is a question asked through the chat template (with the
    system prompt, if any), and routing reads the question's own tokens."""
    device = input_device(model)
    attached = find_wrapper(model) is not None
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        if asking is not None and asking.chat:
            batch = chat_inputs(tokenizer, [conversation(p, asking.system) for p in chunk], device)
            if not attached:
                del batch["routing_mask"]
        else:
            batch = pad_left([tokenizer(p)["input_ids"] for p in chunk], tokenizer.pad_token_id, device)
            del batch["position_ids"]
        generated = model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            top_p=None,
            top_k=None,
            temperature=None,
        )
        width = batch["input_ids"].shape[1]
        outputs.extend(tokenizer.decode(row[width:], skip_special_tokens=True) for row in generated)
    return outputs


@dataclass
class Answer:
    prompt: str
    output: str
    pack: str | None
    edit_id: str | None
    overlap: float
    base_output: str | None = None

    def to_json(self) -> dict:
        record = {
            "prompt": self.prompt,
            "output": self.output,
            "pack": self.pack,
            "edit_id": self.edit_id,
            "overlap": self.overlap,
        }
        if self.base_output is not None:
            record["base_output"] = self.base_output
        return record


def open_packs(
    pack_refs: Sequence[str | Path | PackRef],
    model_spec: str | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    token: str | None = None,
    device_map: str | None = None,
) -> tuple[list[Pack], LoadedModel]:
    """The packs `pack_refs` name and the base model they are used with: `model_spec`, else the
    model the first pack was made for (loaded once, also to replay a version whose files are not kept)."""
    if not pack_refs:
        raise BadInputError("name at least one pack")
    loaded: LoadedModel | None = None

    def model_for(pack: Pack) -> LoadedModel:
        nonlocal loaded
        if loaded is None:
            loaded = load_model(model_spec or model_spec_for(pack), device, dtype, device_map)
        return loaded

    packs = [open_pack(ref, model_for, token) for ref in pack_refs]
    return packs, model_for(packs[0])


class Session:
    """A model with packs attached, answering prompts (used by `memoir apply`)."""

    def __init__(
        self,
        pack_refs: Sequence[str | Path | PackRef],
        model_spec: str | None = None,
        device: str = "cpu",
        dtype: str = "auto",
        token: str | None = None,
        after_target: str = "auto",
        device_map: str | None = None,
    ) -> None:
        """`after_target`: what a row does once it has generated its edit's target, "auto",
        "release" or "keep" (release.watch_for)."""
        self.packs, self.loaded = open_packs(pack_refs, model_spec, device, dtype, token, device_map)
        watch = watch_for(self.loaded.tokenizer, self.packs, after_target)
        self.wrapper = attach(self.loaded.model, *self.packs, watch=watch)

    def asking(self, chat: ChatMode | str = ChatMode.auto, system: str | None = None) -> Asking:
        """How to ask: through the chat template or not, or auto: through it when an attached pack
        was trained in chat form and the tokenizer has a template."""
        mode = ChatMode(chat)
        if mode is ChatMode.on:
            require_chat_template(self.loaded.tokenizer)
        trained_in_chat = any(p.manifest.training.chat for p in self.packs)
        wanted = mode is ChatMode.on or (
            mode is ChatMode.auto and has_chat_template(self.loaded.tokenizer) and trained_in_chat
        )
        if system and not wanted:
            raise BadInputError("a system prompt needs the chat template", option="chat", remedy="on")
        return Asking(wanted, system)

    def answer(
        self,
        prompts: list[str],
        max_new_tokens: int = 32,
        compare: bool = False,
        batch_size: int = 8,
        asking: Asking | None = None,
    ) -> list[Answer]:
        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        answers: list[Answer] = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            outputs = generate(model, tokenizer, chunk, max_new_tokens, batch_size, asking)
            routes = self.wrapper.describe_routes()
            base = self._base_outputs(chunk, max_new_tokens, batch_size, asking) if compare else [None] * len(chunk)
            answers.extend(
                Answer(p, o, r["pack"], r["edit_id"], r["overlap"], b)
                for p, o, r, b in zip(chunk, outputs, routes, base)
            )
        return answers

    def _base_outputs(
        self, prompts: list[str], max_new_tokens: int, batch_size: int, asking: Asking | None = None
    ) -> list[str]:
        with self.wrapper.bypassed():
            return generate(self.loaded.model, self.loaded.tokenizer, prompts, max_new_tokens, batch_size, asking)

    def evaluate(
        self,
        facts: list[Fact],
        check_generation: bool = False,
        baseline: bool = False,
        batch_size: int = 16,
        on_progress: Progress | None = None,
        wild_contexts: Sequence[str] = (),
        judge: Judge | None = None,
    ) -> EvalReport:
        """The paper's Rel / Gen / Loc for `facts`, with routing statistics (see evaluate.py), and
        the WILD protocol's scores in each of `wild_contexts` ("question", "chat"; wild.py)."""
        if "chat" in wild_contexts and not has_chat_template(self.loaded.tokenizer):
            raise ModelError("this model's tokenizer has no chat template", option="context", remedy="question")

        def generate_fn(prompts: list[str], max_new_tokens: int, edited: bool, asking: Asking | None) -> list[str]:
            if edited:
                return generate(self.loaded.model, self.loaded.tokenizer, prompts, max_new_tokens, batch_size, asking)
            return self._base_outputs(prompts, max_new_tokens, batch_size, asking)

        scorer = Scorer(self.loaded.model, self.loaded.tokenizer, self.wrapper, batch_size)
        edit_targets = {(pack.name, f.id): f.target for pack in self.packs for f in pack.facts}
        return evaluate(
            scorer, facts, generate_fn, check_generation, baseline, on_progress, edit_targets, wild_contexts, judge
        )

    def remember_scores(self, refs: list[str], report: EvalReport, data: str | None) -> None:
        """One local pack at its current version: keep the scores for its model card (memoir push)."""
        ref = parse_ref(refs[0])
        version = self.packs[0].version
        if len(refs) == 1 and isinstance(ref, PackRef) and ref.version is None and self.packs[0].path == ref.path:
            if version is not None:
                remember_scores(ref.path, version, report.summary(), data)

    def pack_facts(self) -> list[Fact]:
        """Every active fact of the attached packs, in order (what `memoir eval` scores by default)."""
        return [f for pack in self.packs for f in pack.active_facts()]
