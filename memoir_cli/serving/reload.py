"""Hot reload: new versions of the served packs, verified before they are served.

A local pack is watched through its current version (the manifest that a commit swaps in
atomically). A Hub reference is polled every `--poll-hub` seconds. A new version is read in this
thread, its files checked against their checksums and the pack against the base model's
fingerprint; only then is it offered to the engine, which swaps it in between batches. A version
that fails is not served: the old one stays, and the failure is kept for `/health` and logged. It is
not retried until the pack's version changes again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import MemoirError
from ..history import open_pack
from ..pack import Pack
from ..refs import HubRef, PackRef, parse_ref
from ..store import head_version
from .engine import Engine

log = logging.getLogger("memoir_cli.serve")


@dataclass
class Source:
    """Where a served pack comes from: a local folder (watched unless pinned to `@N`) or the Hub."""

    name: str
    ref: PackRef | HubRef
    failed_version: int | None = None  # the newest version that failed verification
    problem: str | None = None

    @property
    def watched_path(self) -> Path | None:
        return self.ref.path if isinstance(self.ref, PackRef) and self.ref.version is None else None

    @property
    def polled_on_hub(self) -> bool:
        return isinstance(self.ref, HubRef) and self.ref.revision is None


class Reloader:
    """The thread that looks for new versions of the engine's packs."""

    def __init__(
        self,
        engine: Engine,
        sources: list[Source],
        interval: float = 1.0,
        hub_interval: float | None = None,
        token: str | None = None,
    ) -> None:
        self.engine, self.interval, self.hub_interval, self.token = engine, interval, hub_interval, token
        self.sources = {source.name: source for source in sources}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hub_checked = time.monotonic()

    def problems(self) -> list[dict]:
        with self._lock:
            return [{"pack": s.name, "problem": s.problem} for s in self.sources.values() if s.problem]

    def add(self, name: str, ref_text: str) -> int | None:
        """Serve the pack at `ref_text` as `name` (the admin `load_pack`): read and verified here,
        in the caller's thread; returns the version now offered."""
        ref = parse_ref(ref_text)
        pack = self._verified(ref)
        with self._lock:
            self.sources[name] = Source(name, ref)
        self.engine.update(lambda lineup: lineup.with_pack(name, pack))
        return pack.version

    def remove(self, name: str) -> None:
        with self._lock:
            self.sources.pop(name, None)
        self.engine.update(lambda lineup: lineup.without(name))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="memoir-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def check(self) -> None:
        """One look at every source (the watcher thread's step; tests call it directly)."""
        hub_due = self.hub_interval is not None and time.monotonic() - self._hub_checked >= self.hub_interval
        if hub_due:
            self._hub_checked = time.monotonic()
        with self._lock:
            sources = list(self.sources.values())
        for source in sources:
            if source.watched_path is not None:
                self._check_local(source, source.watched_path)
            elif hub_due and source.polled_on_hub:
                self._check(source, None)

    def _check_local(self, source: Source, path: Path) -> None:
        try:
            head = head_version(path)
        except MemoirError as error:
            self._fail(source, None, error.message)
            return
        if head in (self.engine.settled().versions().get(source.name), source.failed_version):
            return
        self._check(source, head)

    def _check(self, source: Source, head: int | None) -> None:
        try:
            pack = self._verified(source.ref)
        except MemoirError as error:
            self._fail(source, head, error.message)
            return
        if pack.version == self.engine.settled().versions().get(source.name):
            return
        with self._lock:
            if source.name not in self.sources:  # unloaded meanwhile
                return
            source.problem, source.failed_version = None, None
        log.info("pack %s: version %s verified, serving it from the next batch", source.name, pack.version)
        self.engine.update(lambda lineup: lineup.with_pack(source.name, pack))

    def _verified(self, ref: PackRef | HubRef) -> Pack:
        """The pack `ref` names, its files checked against their checksums (open_pack) and the pack
        against the served base model's fingerprint."""
        pack = open_pack(ref, token=self.token)
        pack.check_base(self.engine.loaded.model)
        return pack

    def _fail(self, source: Source, version: int | None, message: str) -> None:
        with self._lock:
            if source.failed_version == version and source.problem is not None:
                return
            source.failed_version = version
            source.problem = f"version {version}: {message}" if version is not None else message
        log.error("pack %s: %s; still serving the version before it", source.name, source.problem)
