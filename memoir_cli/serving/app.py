"""The HTTP application: OpenAI's endpoints over the engine, plus health, readiness, metrics and
vLLM-style admin endpoints to load and unload packs.

Every error is answered in OpenAI's JSON shape with a 4xx or 5xx status, never with a trace.
With an API key, every endpoint but `/health` needs `Authorization: Bearer KEY` (compared in
constant time); the admin endpoints exist only when a key is set.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import BadInputError, MemoirError, PackError
from .catalog import STACKED
from .engine import Engine, Job, Prompt, QueueFullError, Sampling
from .metrics import ServerMetrics
from .protocol import (
    OBJECTS,
    APIError,
    ChatRequest,
    CompletionRequest,
    chunk,
    new_id,
    parse,
    sse,
    usage,
)
from .reload import Reloader

log = logging.getLogger("memoir_cli.serve")


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    default_max_tokens: int = 256  # new tokens when a chat request does not say
    max_body_bytes: int = 1 << 20


class _LoadPack(BaseModel):
    model_config = ConfigDict(strict=True)
    name: str = Field(min_length=1, max_length=200)
    path: str = Field(min_length=1)


class _UnloadPack(BaseModel):
    model_config = ConfigDict(strict=True)
    name: str = Field(min_length=1)


def create_app(
    engine: Engine,
    reloader: Reloader,
    metrics: ServerMetrics,
    api_key: str | None = None,
    limits: Limits = Limits(),
) -> FastAPI:
    app = FastAPI(title="memoir", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.draining = False
    started = int(time.time())
    _handle_errors(app)

    def require_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise APIError(
                401,
                "a valid API key is needed (Authorization: Bearer KEY)",
                "authentication_error",
                code="invalid_api_key",
            )

    def refuse_while_draining() -> None:
        if app.state.draining:
            raise APIError(
                503, "the server is shutting down", "server_error", code="draining", headers={"Retry-After": "5"}
            )

    async def read_body(request: Request) -> bytes:
        too_large = APIError(413, f"the body is over {limits.max_body_bytes} bytes", code="body_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise too_large
        body = b""
        async for part in request.stream():  # a body without a length is counted as it comes
            body += part
            if len(body) > limits.max_body_bytes:
                raise too_large
        return body

    def served_model(name: str | None) -> str:
        model = name or STACKED
        if engine.settled().indices_for(model) is None:
            raise APIError(
                404,
                f"the model {model!r} does not exist (GET /v1/models lists them)",
                param="model",
                code="model_not_found",
            )
        return model

    def encode(build: Any, param: str) -> Prompt:
        try:
            return engine.encode(build)
        except MemoirError as error:
            raise APIError(400, error.message, param=param) from None

    def token_budget(prompt: Prompt, asked: int | None, param: str) -> int:
        room = None if engine.context is None else engine.context - len(prompt.ids)
        if room is not None and room < 1:
            raise APIError(
                400,
                f"the prompt's {len(prompt.ids)} tokens fill the model's context of {engine.context}",
                param=param,
                code="context_length_exceeded",
            )
        if asked is None:
            return limits.default_max_tokens if room is None else min(limits.default_max_tokens, room)
        if room is not None and asked > room:
            raise APIError(
                400,
                f"max_tokens {asked} plus the prompt's {len(prompt.ids)} tokens exceed the "
                f"model's context of {engine.context}",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return asked

    async def run(request: Request, kind: str, req: Any, model: str, prompts: list[Prompt], param: str) -> Response:
        if len(prompts) * req.n > engine.max_batch:
            raise APIError(
                400, f"n times the prompts must be at most {engine.max_batch} (the server's --max-batch)", param="n"
            )
        sampling = Sampling(req.temperature, req.top_p, req.seed)
        loop = asyncio.get_running_loop()
        jobs = [
            Job(p, model, sampling, token_budget(p, req.token_limit(), param), req.stops(), req.n, loop)
            for p in prompts
        ]
        for submitted, job in enumerate(jobs):
            try:
                engine.submit(job)
            except QueueFullError as error:
                for earlier in jobs[:submitted]:
                    earlier.cancel()
                raise APIError(
                    429, str(error), "rate_limit_error", code="queue_full", headers={"Retry-After": "1"}
                ) from None
        record = request.state.log = {"model": model, "prompt_tokens": sum(len(p.ids) for p in prompts)}
        request_id = new_id("chatcmpl" if kind == "chat" else "cmpl")
        if req.stream:
            options = (req.model_extra or {}).get("stream_options")
            with_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            events = _stream(kind, request_id, model, jobs, req.n, with_usage, record)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        choices = await _collect(request, jobs, req.n)
        _note(record, jobs, choices)
        body: dict[str, Any] = {
            "id": request_id,
            "object": OBJECTS[kind],
            "created": int(time.time()),
            "model": model,
            "choices": [
                (
                    {"index": c.index, "message": {"role": "assistant", "content": c.text}}
                    if kind == "chat"
                    else {"index": c.index, "text": c.text}
                )
                | {"logprobs": None, "finish_reason": c.finish, "memoir": c.route}
                for c in choices
            ],
            "usage": usage(record["prompt_tokens"], sum(job.completion_tokens for job in jobs)),
            "memoir": {"packs": jobs[0].versions},  # the versions that answered, routed or not
        }
        return JSONResponse(body)

    keyed = APIRouter(dependencies=[Depends(require_key)])

    @keyed.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        refuse_while_draining()
        req = parse(ChatRequest, await read_body(request))
        model = served_model(req.model)
        messages = [m.as_message() for m in req.messages]
        if messages[-1]["role"] != "user":
            raise APIError(400, "the last message must be the user's question", param="messages")
        prompt = encode(lambda tokenizer: Prompt.chat(tokenizer, messages), "messages")
        return await run(request, "chat", req, model, [prompt], "messages")

    @keyed.post("/v1/completions")
    async def completions(request: Request) -> Response:
        refuse_while_draining()
        req = parse(CompletionRequest, await read_body(request))
        model = served_model(req.model)
        texts = req.prompts()
        prompts = [encode(lambda tokenizer, t=t: Prompt.text(tokenizer, t), "prompt") for t in texts]
        return await run(request, "completion", req, model, prompts, "prompt")

    @keyed.get("/v1/models")
    async def models() -> dict:
        lineup = engine.settled()
        versions = lineup.versions()
        described = {STACKED: {"packs": versions}, lineup.base_id: {"packs": {}}}
        described.update({name: {"packs": {name: version}} for name, version in versions.items()})
        return {
            "object": "list",
            "data": [
                {"id": mid, "object": "model", "created": started, "owned_by": "memoir", "memoir": described[mid]}
                for mid in lineup.model_ids()
            ],
        }

    @keyed.get("/ready")
    async def ready() -> JSONResponse:
        lineup = engine.lineup
        body = {
            "ready": not app.state.draining,
            "base_model": lineup.base_id,
            "packs": lineup.versions(),
            "problems": reloader.problems(),
        }
        return JSONResponse(body, status_code=503 if app.state.draining else 200)

    @keyed.get("/metrics")
    async def prometheus() -> Response:
        metrics.show_lineup(engine.lineup)
        metrics.queue_rows.set(engine.queued_rows)
        metrics.reload_failures.set(len(reloader.problems()))
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @keyed.post("/v1/load_pack")
    async def load_pack(request: Request) -> dict:
        admin_only()
        body = parse(_LoadPack, await read_body(request))
        try:
            version = await asyncio.to_thread(reloader.add, body.name, body.path)
        except (BadInputError, PackError) as error:
            raise APIError(400, error.message, param="path") from None
        except MemoirError as error:
            raise APIError(502, error.message, "server_error") from None
        return {"name": body.name, "version": version, "status": "loaded"}

    @keyed.post("/v1/unload_pack")
    async def unload_pack(request: Request) -> dict:
        admin_only()
        body = parse(_UnloadPack, await read_body(request))
        if body.name not in engine.settled().names:
            raise APIError(404, f"no pack named {body.name!r} is served", param="name", code="pack_not_found")
        reloader.remove(body.name)
        return {"name": body.name, "status": "unloaded"}

    def admin_only() -> None:
        if api_key is None:
            raise APIError(403, "the admin endpoints need the server to run with --api-key", "permission_error")

    app.include_router(keyed)

    @app.get("/health")
    async def health() -> dict:
        problems = reloader.problems()
        return {
            "status": "degraded" if problems else "ok",
            "draining": app.state.draining,
            "packs": engine.lineup.versions(),
            "problems": problems,
        }

    app.add_middleware(
        _RequestLog, metrics=metrics, known={getattr(r, "path", "") for r in [*app.routes, *keyed.routes]}
    )
    return app


@dataclass
class _Choice:
    index: int
    text: str = ""
    finish: str | None = None
    route: dict | None = None


async def _collect(request: Request, jobs: list[Job], n: int) -> list[_Choice]:
    """Every job's choices, in order; a client that goes away cancels its jobs."""

    async def next_event(job: Job) -> tuple:
        while True:
            try:
                return await asyncio.wait_for(job.events.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    for gone in jobs:
                        gone.cancel()
                    raise APIError(499, "the client closed the request") from None

    choices: list[_Choice] = []
    async for _ in _updates(jobs, n, choices, next_event):
        pass
    return choices


async def _stream(
    kind: str, request_id: str, model: str, jobs: list[Job], n: int, with_usage: bool, record: dict
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk shapes, ending in [DONE]; a client that goes away
    (the generator is closed) cancels the jobs."""
    finished = False
    try:
        if kind == "chat":
            for index in range(n * len(jobs)):
                yield sse(chunk(kind, request_id, model, index, None))
        choices: list[_Choice] = []
        try:
            async for choice, text in _updates(jobs, n, choices, lambda job: job.events.get()):
                if text is not None:
                    yield sse(chunk(kind, request_id, model, choice.index, text))
                else:
                    yield sse(chunk(kind, request_id, model, choice.index, "", choice.finish, choice.route))
        except APIError as error:
            yield sse(error.body())
            finished = True
            return
        _note(record, jobs, choices)
        if with_usage:
            total = usage(record["prompt_tokens"], record["completion_tokens"])
            yield sse(dict(chunk(kind, request_id, model, 0, ""), choices=[], usage=total))
        yield sse("[DONE]")
        finished = True
    finally:
        if not finished:
            for job in jobs:
                job.cancel()


async def _updates(
    jobs: list[Job], n: int, choices: list[_Choice], next_event: Callable[[Job], Awaitable[tuple]]
) -> AsyncIterator[tuple[_Choice, str | None]]:
    """The engine's events of each job in turn, applied to its n choices (added to `choices`, in
    order): yields a choice with its new text, or with None once it has ended. A failed job is a 500."""
    for number, job in enumerate(jobs):
        own = [_Choice(number * n + i) for i in range(n)]
        choices.extend(own)
        while (event := await next_event(job))[0] != "done":
            if event[0] == "error":
                raise APIError(500, event[1], "server_error")
            choice = own[event[1]]
            if event[0] == "delta":
                choice.text += event[2]
                yield choice, event[2]
            else:
                choice.finish, choice.route = event[2], event[3]
                yield choice, None


def _note(record: dict, jobs: list[Job], choices: list[_Choice]) -> None:
    """What the request log line says of the answer."""
    record["completion_tokens"] = sum(job.completion_tokens for job in jobs)
    record["versions"] = jobs[0].versions
    record["routes"] = [
        {k: (c.route or {}).get(k) for k in ("pack", "version", "edit_id", "overlap")} | {"finish": c.finish}
        for c in choices
    ]


def _handle_errors(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_request: Request, error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = "no such endpoint" if error.status_code == 404 else str(error.detail)
        return JSONResponse(APIError(error.status_code, message).body(), status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(APIError(400, "the request is not valid").body(), status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, error: Exception) -> JSONResponse:
        log.error("unexpected error: %s: %s", type(error).__name__, error)
        return JSONResponse(APIError(500, "internal error", "server_error").body(), status_code=500)


class _RequestLog:
    """Pure ASGI middleware: one structured log line and the request metrics per HTTP request
    (it does not wrap the body, so streaming and disconnects pass through untouched)."""

    def __init__(self, app: Any, metrics: ServerMetrics, known: set[str]) -> None:
        self.app, self.metrics, self.known = app, metrics, known  # known: the app's paths, each its own label

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500
        scope.setdefault("state", {})

        async def watch(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            seconds = time.perf_counter() - started
            path = scope.get("path", "")
            endpoint = path if path in self.known else "other"  # a label per unknown path would grow without end
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.metrics.latency.labels(endpoint=endpoint).observe(seconds)
            record = scope["state"].get("log", {})
            if "prompt_tokens" in record:
                self.metrics.prompt_tokens.inc(record["prompt_tokens"])
            line = {
                "event": "request",
                "method": scope.get("method"),
                "path": path,
                "status": status,
                "seconds": round(seconds, 4),
                **record,
            }
            log.info(json.dumps(line))
