"""The OpenAI API's shapes as memoir serves them: requests (validated strictly: a wrong type is an
error, not a guess), response bodies and stream chunks, and the error body.

Each choice carries an extension field, `memoir`, with what a user needs to trust the answer: the
pack, its version, the edit and the overlap it was routed on, or `routed: false` when no edit
answered.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")  # OpenAI clients send fields memoir ignores

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise APIError(400, "stop takes up to 4 non-empty strings", param="stop")
        return tuple(stops)


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def as_message(self) -> dict[str, str]:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Request):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # the completions API's own default

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not prompts or any(not p for p in prompts):
            raise APIError(400, "prompt must be a non-empty string or list of non-empty strings", param="prompt")
        return prompts

    def token_limit(self) -> int | None:
        return self.max_tokens


def parse(model: type[BaseModel], raw: bytes) -> Any:
    """The request in `raw`, or a 400 that names the first bad field."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise APIError(400, f"the body is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if not str(part).startswith("function-"))
        raise APIError(400, f"{where}: {first['msg']}", param=where or None) from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def chunk(
    kind: str, request_id: str, model: str, index: int, text: str | None, finish: str | None = None, route=None
) -> dict:
    """One streamed chunk of choice `index`: `text` as a chat delta or completion text (a chat
    stream's first chunk per choice carries the role instead: `text=None`)."""
    choice: dict[str, Any] = {"index": index, "logprobs": None, "finish_reason": finish}
    if kind == "chat":
        choice["delta"] = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
    else:
        choice["text"] = text or ""
    if route is not None:
        choice["memoir"] = route
    return {
        "id": request_id,
        "object": OBJECTS[kind] + ".chunk" * (kind == "chat"),
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }


OBJECTS = {"chat": "chat.completion", "completion": "text_completion"}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(payload: dict | str) -> str:
    """One server-sent event."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"
