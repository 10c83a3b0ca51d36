"""What `/metrics` exposes, in Prometheus' text format (prometheus_client), one registry per server."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .catalog import Lineup
from .engine import Row


class ServerMetrics:
    """Requests, latency, tokens, the share of rows an edit answered, and the pack versions served."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "memoir_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "memoir_request_seconds",
            "Time from a request's arrival to its last byte",
            ["endpoint"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.prompt_tokens = Counter("memoir_prompt_tokens", "Prompt tokens read", registry=self.registry)
        self.completion_tokens = Counter("memoir_completion_tokens", "Tokens generated", registry=self.registry)
        self.rows = Counter(
            "memoir_rows", "Generated rows, by whether an edit answered them", ["routed"], registry=self.registry
        )
        self.batch_rows = Histogram(
            "memoir_batch_rows", "Rows per generate call", buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry
        )
        self.queue_rows = Gauge("memoir_queue_rows", "Rows waiting in the queue", registry=self.registry)
        self.pack_version = Gauge(
            "memoir_pack_version", "Version of each served pack", ["pack"], registry=self.registry
        )
        self.reload_failures = Gauge(
            "memoir_reload_failures", "Packs whose newest version failed verification", registry=self.registry
        )

    def observe_batch(self, rows: list[Row]) -> None:
        self.batch_rows.observe(len(rows))
        for row in rows:
            self.rows.labels(routed=str(bool(row.route.get("routed"))).lower()).inc()
            self.completion_tokens.inc(len(row.tokens))

    def show_lineup(self, lineup: Lineup) -> None:
        self.pack_version.clear()
        for name, version in lineup.versions().items():
            self.pack_version.labels(pack=name).set(version or 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
