"""`memoir serve` as a library call: load the model and packs, start the engine and the reloader,
and run uvicorn until SIGTERM or SIGINT, draining what is in flight before it returns."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from ..errors import MemoirError
from ..models import LoadedModel
from ..pack import Pack
from ..refs import PackRef, parse_ref
from .app import Limits, create_app
from .catalog import Lineup
from .engine import Engine
from .metrics import ServerMetrics
from .reload import Reloader, Source

log = logging.getLogger("memoir_cli.serve")
Opened = tuple[list[Pack], LoadedModel]


@dataclass(frozen=True)
class ServeOptions:
    """How the server listens, batches and watches its packs."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int = 8
    max_queue: int = 64
    limits: Limits = Limits()
    reload_interval: float = 1.0  # seconds between looks at the local packs' versions
    poll_hub: float | None = None  # seconds between looks at Hub references; None: never
    drain_timeout: float = 30.0
    after_target: str = "auto"
    token: str | None = None


class MemoirServer:
    """The model with its packs, the engine, the reloader and the HTTP app, ready to run."""

    def __init__(
        self, pack_refs: Sequence[str | Path | PackRef], opened: Opened, options: ServeOptions = ServeOptions()
    ) -> None:
        """`opened`: the packs `pack_refs` name and their base model (session.open_packs)."""
        self.options = options
        packs, self.loaded = opened
        lineup = Lineup.of(self.loaded.model_id, packs)
        self.metrics = ServerMetrics()
        self.engine = Engine(
            self.loaded, lineup, options.after_target, options.max_batch, options.max_queue, self.metrics.observe_batch
        )
        sources = [Source(pack.name, parse_ref(ref)) for ref, pack in zip(pack_refs, packs)]
        self.reloader = Reloader(self.engine, sources, options.reload_interval, options.poll_hub, options.token)
        self.app = create_app(self.engine, self.reloader, self.metrics, options.api_key, options.limits)
        self.socket = socket.socket(socket.AF_INET6 if ":" in options.host else socket.AF_INET)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((options.host, options.port))
        self.socket.listen(2048)  # connections wait in the backlog until uvicorn accepts them
        self._server: _DrainingServer | None = None

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT; in-flight requests finish first (up to `drain_timeout`)."""
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(self.options.drain_timeout),
            lifespan="off",
        )
        self._server = _DrainingServer(config, on_exit=self._drain)
        self.engine.start()
        self.reloader.start()
        in_main = threading.current_thread() is threading.main_thread()  # signals reach the main thread only
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN) if in_main else None  # uvicorn re-raises it
        try:
            self._server.run(sockets=[self.socket])
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)
            self.reloader.stop()
            self.engine.stop()
            log.info("stopped")

    @contextmanager
    def in_background(self, timeout: float = 60.0) -> Iterator[MemoirServer]:
        """Run in a thread (a notebook, a test, a benchmark) until the block ends, then drain and stop."""
        thread = threading.Thread(target=self.run, name="memoir-serve", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while self._server is None or not self._server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ServeError(f"the server at {self.url} did not start")
            time.sleep(0.02)
        try:
            yield self
        finally:
            self.stop()
            thread.join(timeout)
            if thread.is_alive():
                raise ServeError(f"the server at {self.url} did not stop within {timeout:.0f} s")

    def stop(self) -> None:
        """What SIGTERM does, for a server run in another thread: drain, then return from run()."""
        if self._server is not None:
            self._server.handle_exit(signal.SIGTERM, None)

    def _drain(self) -> None:
        self.app.state.draining = True
        log.info("draining: finishing requests in flight, refusing new ones")


class ServeError(MemoirError):
    """The server could not start."""


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app when a signal starts the graceful shutdown."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)
