"""Prometheus metrics (prometheus-client).

One registry per service instance, so several services in one test process do not collide. Under
`tawasul run --workers N` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR``: every worker then writes its
samples to files there (prometheus-client's multiprocess mode) and ``/metrics``, whichever worker answers,
aggregates all of them with ``MultiProcessCollector``. The outbox figures come from the shared database at
scrape time, so they are the same whichever worker is asked and need no aggregation.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The shared samples directory when this process is one of several workers, else None."""
    return os.environ.get(MULTIPROC_ENV) or None


class OutboxCollector(Collector):
    """Outbox depth and age, read from the database when /metrics is scraped (the last good reading is kept
    while the database is down)."""

    def __init__(self) -> None:
        self.stats: Mapping[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("tawasul_outbox_items", "Outbox items by status", labels=["status"])
        for status in ("pending", "done", "dead"):
            depth.add_metric([status], float(self.stats.get(status, 0)))
        yield depth
        yield GaugeMetricFamily("tawasul_outbox_oldest_pending_seconds", "Age of the oldest pending item",
                                value=float(self.stats.get("oldest_pending_age_s", 0.0)))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.updates_in = Counter("tawasul_updates_in_total", "Inbound updates by channel and outcome",
                                  ["channel", "outcome"], registry=r)
        self.replies_out = Counter("tawasul_replies_out_total", "Messages delivered by channel", ["channel"],
                                   registry=r)
        self.nlu_latency = Histogram("tawasul_nlu_latency_seconds", "NLU parse latency by the engine that answered",
                                     ["engine"], buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 2.0),
                                     registry=r)
        self.nlu_fallbacks = Counter("tawasul_nlu_fallback_total",
                                     "Messages answered by the fallback NLU engine because the primary was unavailable",
                                     ["primary", "fallback"], registry=r)
        self.backend_errors = Counter("tawasul_backend_errors_total",
                                      "Failed calls to the core backend by call and error kind",
                                      ["kind", "error"], registry=r)
        self.platform_429 = Counter("tawasul_platform_throttled_total", "429/throttling answers by channel",
                                    ["channel"], registry=r)
        # One series per live worker (labelled pid in multiprocess mode): restarts show as new start times.
        self.worker_start = Gauge("tawasul_worker_start_time_seconds", "Start time of each live worker process",
                                  registry=r, multiprocess_mode="liveall")
        self.worker_start.set(time.time())
        self.outbox = OutboxCollector()
        r.register(self.outbox)

    # Hooks (the engine, the case jobs, the channels and the NLU call these) --------------------------
    def turn(self, channel: str, outcome: str) -> None:
        self.updates_in.labels(channel=channel, outcome=outcome).inc()

    def nlu(self, engine: str, seconds: float) -> None:
        self.nlu_latency.labels(engine=engine).observe(seconds)

    def nlu_fallback(self, primary: str, fallback: str) -> None:
        self.nlu_fallbacks.labels(primary=primary, fallback=fallback).inc()

    def delivered(self, channel: str) -> None:
        self.replies_out.labels(channel=channel).inc()

    def backend_error(self, kind: str, error: str) -> None:
        self.backend_errors.labels(kind=kind, error=error).inc()

    def throttled(self, channel: str) -> None:
        self.platform_429.labels(channel=channel).inc()

    def exposition(self) -> bytes:
        """The text exposition: this instance's registry, or every worker's samples in multiprocess mode."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
        registry.register(self.outbox)
        return generate_latest(registry)


def metrics_handler(service: Any) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        metrics: Metrics = service.metrics
        try:
            metrics.outbox.stats = await service.outbox.stats()
        except Exception as exc:  # the database is down: still expose the counters (the gauges keep old values)
            log.warning("outbox gauges not refreshed: %s", type(exc).__name__)
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle
