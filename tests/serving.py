"""Running a `memoir serve` server inside a test, and raw HTTP requests to it (loopback only)."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from memoir_cli.serving.server import MemoirServer, ServeOptions
from memoir_cli.session import open_packs


@contextmanager
def running(packs, options: ServeOptions, model=None) -> Iterator[MemoirServer]:
    """A server on 127.0.0.1 and a free port, in a thread, stopped (drained) on exit."""
    server = MemoirServer(packs, open_packs(packs, str(model) if model else None), options)
    with server.in_background() as started:
        yield started


@contextmanager
def serve_process(*args, env: dict) -> Iterator[tuple[subprocess.Popen, str]]:
    """`memoir serve ARGS... --port 0` in a process of its own: (the process, its base URL). The
    process is killed on exit if it still runs; a hung server fails the test after two minutes."""
    command = [sys.executable, "-m", "memoir_cli", "serve", *map(str, args), "--port", "0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    try:
        line = ""
        while " at http" not in line:
            line = process.stderr.readline()
            assert line or process.poll() is None, "the server exited before it started"
        yield process, line.rsplit(" at ", 1)[1].strip().removesuffix("/v1")
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()


def request(url: str, method: str, path: str, body=None, key: str | None = None, headers=None):
    """(status, parsed JSON or text, headers by lower-case name) of one request; `body` bytes go as they are."""
    where = urlparse(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    connection.request(method, path, body=body, headers=sent)
    response = connection.getresponse()
    raw = response.read().decode()
    connection.close()
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        parsed = raw
    return response.status, parsed, {name.lower(): value for name, value in response.getheaders()}
