"""Prometheus metrics (prometheus-client). One registry per service instance, so several services in one
test process do not collide; gauges that need the database (outbox depth and age) are read at scrape time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import logging

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


log = logging.getLogger(__name__)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.updates_in = Counter("tawasul_updates_in_total", "Inbound updates by channel and outcome",
                                  ["channel", "outcome"], registry=r)
        self.replies_out = Counter("tawasul_replies_out_total", "Messages delivered by channel", ["channel"],
                                   registry=r)
        self.nlu_latency = Histogram("tawasul_nlu_latency_seconds", "NLU parse latency", ["engine"],
                                     buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 2.0), registry=r)
        self.backend_errors = Counter("tawasul_backend_errors_total", "Failed calls to the core backend",
                                      ["kind"], registry=r)
        self.platform_429 = Counter("tawasul_platform_throttled_total", "429/throttling answers by channel",
                                    ["channel"], registry=r)
        self.outbox_depth = Gauge("tawasul_outbox_items", "Outbox items by status", ["status"], registry=r)
        self.outbox_age = Gauge("tawasul_outbox_oldest_pending_seconds", "Age of the oldest pending item",
                                registry=r)

    # Engine hooks -----------------------------------------------------------------------------------
    def turn(self, channel: str, outcome: str) -> None:
        self.updates_in.labels(channel=channel, outcome=outcome).inc()

    def nlu(self, engine: str, seconds: float) -> None:
        self.nlu_latency.labels(engine=engine).observe(seconds)

    def delivered(self, channel: str) -> None:
        self.replies_out.labels(channel=channel).inc()


def metrics_handler(service: Any) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        metrics: Metrics = service.metrics
        try:
            stats = await service.outbox.stats()
            for status in ("pending", "done", "dead"):
                metrics.outbox_depth.labels(status=status).set(stats.get(status, 0))
            metrics.outbox_age.set(stats.get("oldest_pending_age_s", 0.0))
        except Exception as exc:  # the database is down: still expose the counters (the gauges keep old values)
            log.warning("outbox gauges not refreshed: %s", type(exc).__name__)
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle
