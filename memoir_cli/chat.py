"""Questions in a chat: the model's chat template around them, and which tokens are the question.

Instruct models are asked through their chat template. Routing must read the question itself, the
content of the last user message, and none of the template's tokens, a system prompt or earlier
turns: those are the same for every question, or chosen by the caller, and would otherwise decide
which edit a question reaches. A `ChatPrompt` carries the token ids the model reads and, beside
them, the span routing reads.

Character offsets (a fast tokenizer's `offset_mapping`) locate the question inside the rendered
template, so this works for any template that writes the message's text unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import torch

from .errors import BadInputError, ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, str]


class ChatMode(str, Enum):
    """Whether to train (edit) or ask (apply, eval) through the chat template; auto decides from
    the tokenizer and, for an existing pack, from how the pack was trained."""

    auto = "auto"
    on = "on"
    off = "off"


@dataclass(frozen=True)
class Asking:
    """How questions are put to the model: bare, or through its chat template with a system prompt."""

    chat: bool = False
    system: str | None = None


@dataclass(frozen=True)
class ChatPrompt:
    """Token ids of a rendered conversation, ending with the generation prompt, and the half-open
    token span [start, end) of its last user message's content."""

    ids: list[int]
    question: tuple[int, int]

    def route_mask(self) -> list[int]:
        """1 on the question's tokens, 0 elsewhere: what routing reads."""
        start, end = self.question
        return [0] * start + [1] * (end - start) + [0] * (len(self.ids) - end)


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def require_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    if not has_chat_template(tokenizer):
        raise ModelError("this model's tokenizer has no chat template", option="chat", remedy="off to ask bare")


def conversation(question: str, system: str | None = None, history: Sequence[Message] = ()) -> list[Message]:
    """The messages of one question: an optional system prompt, earlier turns, then the question."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + list(history) + [{"role": "user", "content": question}]


def chat_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> ChatPrompt:
    """`messages` rendered with the chat template and its generation prompt, tokenised, with the
    span of the last user message's content."""
    require_chat_template(tokenizer)
    users = [m for m in messages if m.get("role") == "user"]
    if not users or not str(users[-1].get("content", "")).strip():
        raise BadInputError("a chat needs a last user message with some text")
    question = str(users[-1]["content"]).strip()
    text = _render(tokenizer, messages, generation_prompt=True)
    where = text.rfind(question)
    if where < 0:
        raise ModelError("the chat template rewrites the question's text, so routing cannot find it")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    inside = [n for n, (a, b) in enumerate(offsets) if b > where and a < where + len(question)]
    return ChatPrompt(ids, (inside[0], inside[-1] + 1))


def chat_answer_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], answer: str) -> list[int]:
    """The tokens the assistant turn holds after the generation prompt: `answer`, then the model's
    end-of-turn token (what a trained answer must end with, so that generation stops there)."""
    prompt = _render(tokenizer, messages, generation_prompt=True)
    full = _render(tokenizer, [*messages, {"role": "assistant", "content": answer}], generation_prompt=False)
    if not full.startswith(prompt) or answer not in full[len(prompt) :]:
        raise ModelError("the chat template does not write an assistant answer after its generation prompt")
    rest = full[len(prompt) :]
    answer_end = rest.index(answer) + len(answer)
    ids = tokenizer(rest[:answer_end], add_special_tokens=False)["input_ids"]
    tail = tokenizer(rest[answer_end:], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    end_of_turn = next((token for token in tail if token in special), tokenizer.eos_token_id)
    if end_of_turn is None:
        raise ModelError("the chat template ends an answer with no special token, and there is no EOS token")
    return [*ids, end_of_turn]


def chat_inputs(
    tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Sequence[Message]], device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Model inputs for a batch of conversations, left-padded, with the `routing_mask` that an
    attached model's `generate` reads (memory.py): `model.generate(**chat_inputs(...))`."""
    from .batching import pad_left

    prompts = [chat_prompt(tokenizer, messages) for messages in conversations]
    batch = pad_left([p.ids for p in prompts], tokenizer.pad_token_id, torch.device(device))
    routing = pad_left([p.route_mask() for p in prompts], 0, torch.device(device))["input_ids"]
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "routing_mask": routing}


def _render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], generation_prompt: bool) -> str:
    text: Any = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)
    return str(text)
