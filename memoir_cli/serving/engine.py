"""The serving engine: one worker thread owns the model and generates for queued requests.

Requests wait in a bounded queue. Between batches the worker swaps in a new `Lineup` if one is
offered (catalog.py), then takes the oldest request and every queued request that can share its
`generate` call (same model id, same sampling), up to `max_batch` rows. Rows are left-padded and
routed one by one (memory.py), each from its own question.

Per row, a stopping criterion follows the new tokens: it streams text as it is decoded, ends a row
at an end token, a stop string or its `max_tokens`, and ends the rows of a client that has gone,
so `generate` stops as soon as no row is left that anyone waits for.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..batching import pad_left
from ..chat import Message, chat_prompt
from ..memory import MemoirLinear, attach, detach
from ..models import LoadedModel, input_device
from ..release import watch_for
from .catalog import Lineup

log = logging.getLogger("memoir_cli.serve")


class QueueFullError(Exception):
    """The queue holds `max_queue` rows already: the client should retry later (HTTP 429)."""


@dataclass(frozen=True)
class Prompt:
    """Token ids the model reads, and 1 on the tokens routing reads (the user's question in a chat)."""

    ids: list[int]
    routing: list[int]

    @classmethod
    def chat(cls, tokenizer: Any, messages: Sequence[Message]) -> Prompt:
        rendered = chat_prompt(tokenizer, messages)
        return cls(rendered.ids, rendered.route_mask())

    @classmethod
    def text(cls, tokenizer: Any, text: str) -> Prompt:
        ids = tokenizer(text)["input_ids"]
        return cls(ids, [1] * len(ids))


@dataclass(frozen=True)
class Sampling:
    """How tokens are picked: greedy at temperature 0, else sampled (with a seed, reproducibly)."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def batch_key(self) -> tuple:
        """Requests with equal keys can share one `generate` call."""
        return ("greedy",) if self.temperature == 0 else (self.temperature, self.top_p, self.seed)

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature == 0:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": None}


@dataclass
class Job:
    """One request: n rows of one prompt. Its events go to the client's event loop:
    ("delta", index, text), ("end", index, finish_reason, route), ("done",) or ("error", message)."""

    prompt: Prompt
    model: str
    sampling: Sampling
    max_tokens: int
    stop: tuple[str, ...] = ()
    n: int = 1
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    versions: dict[str, int | None] = field(default_factory=dict)  # of the packs it was answered with
    completion_tokens: int = 0

    def emit(self, *event: Any) -> None:
        if self.loop is None:
            self.events.put_nowait(event)
        else:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def cancel(self) -> None:
        """The client has gone: its rows stop costing compute at the next token."""
        self.cancelled.set()


class Row:
    """One choice of a job while it is generated: its tokens, the text sent so far, how it ended."""

    def __init__(self, job: Job, index: int, decode: Callable[[list[int]], str]) -> None:
        self.job, self.index, self.decode = job, index, decode
        self.tokens: list[int] = []
        self.sent = 0
        self.finish: str | None = None
        self.route: dict[str, Any] = {}
        self._hold = max((len(s) for s in job.stop), default=1) - 1  # a stop string may be half written

    def add(self, token: int) -> None:
        self.tokens.append(token)
        text = self.decode(self.tokens)
        cut = self._stop_at(text)
        if cut >= 0:
            self.close("stop", text[:cut])
        elif len(self.tokens) >= self.job.max_tokens:
            self.close("length", text)
        else:
            safe = text[: len(text) - self._hold] if self._hold else text
            self._send(safe.rstrip("\ufffd"))  # an unfinished UTF-8 character waits for its next token

    def close(self, reason: str, text: str | None = None) -> None:
        if text is None:
            text = self.decode(self.tokens)
            cut = self._stop_at(text)
            text = text if cut < 0 else text[:cut]
        self._send(text)
        self.finish = reason
        self.job.completion_tokens += len(self.tokens)
        self.job.emit("end", self.index, reason, self.route)

    def _stop_at(self, text: str) -> int:
        """Where the first stop string starts in `text`, or -1."""
        return min((i for i in (text.find(s) for s in self.job.stop) if i >= 0), default=-1)

    def _send(self, text: str) -> None:
        if len(text) > self.sent:
            self.job.emit("delta", self.index, text[self.sent :])
            self.sent = len(text)


class RowControl(StoppingCriteria):
    """Follows each row's new token during `generate` (transformers' per-row stopping contract:
    one bool per row, True where the row is done)."""

    def __init__(self, rows: list[Row], end_ids: set[int], wrapper: MemoirLinear, versions: dict) -> None:
        self.rows, self.end_ids, self.wrapper, self.versions = rows, end_ids, wrapper, versions
        self._routed = False

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        if not self._routed:
            self._routed = True
            for row, route in zip(self.rows, self.wrapper.describe_routes()):
                row.route = dict(route, version=self.versions.get(route["pack"]), routed=route["pack"] is not None)
        for row, token in zip(self.rows, input_ids[:, -1].tolist()):
            if row.finish is not None:
                continue
            if row.job.cancelled.is_set():
                row.finish = "cancelled"
            elif token in self.end_ids:
                row.close("stop")
            else:
                row.add(token)
        done = [row.finish is not None for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


BatchObserver = Callable[[list[Row]], None]  # each batch's rows once they are done


class Engine:
    """The worker thread, its bounded queue and the model with the current lineup attached."""

    def __init__(
        self,
        loaded: LoadedModel,
        lineup: Lineup,
        after_target: str = "auto",
        max_batch: int = 8,
        max_queue: int = 64,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.loaded, self.after_target = loaded, after_target
        self.max_batch, self.max_queue, self.on_batch = max_batch, max_queue, on_batch
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._pending: Lineup | None = None
        self._running = False
        self._thread: threading.Thread | None = None
        self.lineup = lineup
        self.tokenizer_lock = threading.Lock()  # fast tokenizers must not be used from two threads at once
        self.wrapper = self._attach(lineup)
        tokenizer = loaded.tokenizer
        configured = getattr(loaded.model.generation_config, "eos_token_id", None)
        ends = [tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]
        self.end_ids = {i for i in ends if isinstance(i, int)}
        self.context = int(getattr(loaded.model.config, "max_position_embeddings", 0) or 0) or None

    def _attach(self, lineup: Lineup) -> MemoirLinear:
        detach(self.loaded.model)
        watch = watch_for(self.loaded.tokenizer, lineup.packs, self.after_target, self.tokenizer_lock)
        return attach(self.loaded.model, *lineup.packs, watch=watch)

    def encode(self, build: Callable[[Any], Prompt]) -> Prompt:
        """`build(tokenizer)`, with the tokenizer to itself (requests are tokenised outside the worker)."""
        with self.tokenizer_lock:
            return build(self.loaded.tokenizer)

    def _decode(self, tokens: list[int]) -> str:
        with self.tokenizer_lock:
            return self.loaded.tokenizer.decode(tokens, skip_special_tokens=True)

    @property
    def queued_rows(self) -> int:
        return sum(job.n for job in self._queue)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self.queued_rows + job.n > self.max_queue:
                raise QueueFullError(f"the queue is full ({self.max_queue} rows)")
            self._queue.append(job)
            self._cond.notify()

    def update(self, change: Callable[[Lineup], Lineup]) -> None:
        """Serve `change(lineup)` from the next batch on (a batch in flight finishes on the old one).
        Changes from several threads (reloads, admin calls) apply one after another."""
        with self._cond:
            self._pending = change(self._pending or self.lineup)
            self._cond.notify()

    def settled(self) -> Lineup:
        """The lineup that new requests get: an offered one once the worker has swapped it in."""
        with self._cond:
            return self._pending or self.lineup

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._work, name="memoir-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the batch in flight, fail what is still queued, and end the worker."""
        with self._cond:
            self._running = False
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        for job in self._queue:
            job.emit("error", "the server is shutting down")
        self._queue.clear()

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._running and not self._queue and self._pending is None:
                    self._cond.wait()
                if not self._running:
                    return
                previous = self.lineup
                if self._pending is not None:
                    self.lineup, self._pending = self._pending, None
                batch = self._take()
            if self.lineup is not previous:
                self._swap(previous)
            if batch:
                self._run(batch)

    def _swap(self, previous: Lineup) -> None:
        try:
            self.wrapper = self._attach(self.lineup)
            versions = self.lineup.versions().items()
            log.info("serving %s", ", ".join(f"{n}@{v}" for n, v in versions) or "the base model")
        except Exception as error:  # noqa: BLE001  # a lineup that cannot attach must not stop the server
            log.error("could not serve the new lineup (%s); keeping the old one", error)
            with self._cond:
                self.lineup = previous
            self.wrapper = self._attach(previous)

    def _take(self) -> list[Job]:
        """The oldest live job and the queued jobs that can share its `generate` call."""
        while self._queue and self._queue[0].cancelled.is_set():
            self._queue.popleft()
        if not self._queue:
            return []
        first = self._queue[0]
        key = (first.model, first.sampling.batch_key())
        batch, rows = [], 0
        for job in list(self._queue):
            if job.cancelled.is_set():
                self._queue.remove(job)
            elif (job.model, job.sampling.batch_key()) == key and rows + job.n <= self.max_batch:
                batch.append(job)
                rows += job.n
                self._queue.remove(job)
        return batch

    @torch.no_grad()
    def _run(self, jobs: list[Job]) -> None:
        lineup, tokenizer, model = self.lineup, self.loaded.tokenizer, self.loaded.model
        indices = lineup.indices_for(jobs[0].model)
        if indices is None:
            for job in jobs:
                job.emit("error", f"the model {job.model!r} is no longer served")
            return
        versions = lineup.versions()
        for job in jobs:
            job.versions = {name: versions[name] for name in (lineup.names[i] for i in indices)}
        rows = [Row(job, index, self._decode) for job in jobs for index in range(job.n)]
        device = input_device(model)
        batch = pad_left([row.job.prompt.ids for row in rows], tokenizer.pad_token_id, device)
        routing = pad_left([row.job.prompt.routing for row in rows], 0, device)["input_ids"]
        control = RowControl(rows, self.end_ids, self.wrapper, versions)
        sampling = jobs[0].sampling
        try:
            with self.wrapper.limited_to(indices) if indices != tuple(range(len(lineup.entries))) else nullcontext():
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                model.generate(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    routing_mask=routing,
                    max_new_tokens=max(job.max_tokens for job in jobs),
                    stopping_criteria=StoppingCriteriaList([control]),
                    pad_token_id=tokenizer.pad_token_id,
                    **sampling.generate_kwargs(),
                )
        except Exception as error:  # noqa: BLE001  # one failed batch answers its clients, the server goes on
            log.exception("generation failed")
            for job in jobs:
                job.emit("error", f"generation failed: {type(error).__name__}")
            return
        for row in rows:
            if row.finish is None:
                row.close("length")
        for job in jobs:
            job.emit("done")
        if self.on_batch is not None:
            self.on_batch(rows)
