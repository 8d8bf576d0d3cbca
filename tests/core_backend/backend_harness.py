"""Test helpers shared by tests/core_backend and tests/backend_client: settings, a webhook receiver on
127.0.0.1 that verifies signatures with the bot's real handler, and the standalone backend as a
subprocess (``tawasul backend serve``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from backend_client.models import CaseCreate, StatusEvent
from backend_client.webhooks import MemoryEventLedger, make_event_handler
from config.settings import BackendSettings

PROJECT = Path(__file__).resolve().parents[2]
SERVICE_TOKEN = "test-service-token-0123456789"
STAFF_TOKEN = "test-staff-token-0123456789"
WEBHOOK_SECRET = "test-webhook-secret"


def backend_settings(database_url: str, **overrides: Any) -> BackendSettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "service_token": SecretStr(SERVICE_TOKEN),
        "staff_token": SecretStr(STAFF_TOKEN),
        "webhook_secret": SecretStr(WEBHOOK_SECRET),
        "events_webhook_url": None,
        "webhook_retry_base_s": 0.05,
        "webhook_retry_max_s": 0.2,
        "webhook_timeout_s": 5.0,
        "public_holidays": [],
    }
    values.update(overrides)
    return BackendSettings(**values)


def new_case(**overrides: Any) -> CaseCreate:
    values: dict[str, Any] = {
        "type": "complaint",
        "agency": "works",
        "description": "حفرة كبيرة في الشارع أمام المدرسة",
        "language": "ar",
        "channel": "telegram",
        "channel_user_id": "100200300",
    }
    values.update(overrides)
    return CaseCreate(**values)


class Receiver:
    """The bot's side of the webhooks, on 127.0.0.1: signatures checked by ``make_event_handler``.

    ``fail_first``: answer 503 to the first N deliveries of each event before letting the real handler
    see it (a bot that is briefly down). ``down``: answer 503 to everything.
    """

    def __init__(self, secret: str = WEBHOOK_SECRET, *, fail_first: int = 0, max_age_s: int = 300) -> None:
        self.fail_first = fail_first
        self.down = False
        self.attempts: dict[str, int] = {}
        self.handled: list[StatusEvent] = []
        self.handled_at: list[float] = []  # time.perf_counter() when each was handled
        self.ledger = MemoryEventLedger()
        self._handler = make_event_handler(secret, max_age_s, self._on_event, self.ledger)
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.changed = asyncio.Event()

    async def _on_event(self, event: StatusEvent) -> None:
        self.handled.append(event)
        self.handled_at.append(time.perf_counter())
        self.changed.set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        event_id = request.headers.get("X-Tawasul-Event-Id", "?")
        self.attempts[event_id] = self.attempts.get(event_id, 0) + 1
        if self.down or self.attempts[event_id] <= self.fail_first:
            self.changed.set()
            return web.json_response({"error": {"code": "down", "message": "try again later"}}, status=503)
        return await self._handler(request)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/backend/events", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{bound}/backend/events"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[StatusEvent]:
        """Wait until ``count`` events were handled (the deadline only stops a hung test)."""
        deadline = time.monotonic() + timeout
        while len(self.handled) < count:
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"only {len(self.handled)} of {count} events arrived; attempts {self.attempts}"
                )
            with contextlib.suppress(TimeoutError):  # the loop re-checks and gives up at the deadline
                await asyncio.wait_for(self.changed.wait(), remaining)
        return self.handled


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAWASUL_")}
    env.update(
        {
            "TAWASUL_BACKEND__SERVICE_TOKEN": SERVICE_TOKEN,
            "TAWASUL_BACKEND_STAFF_TOKEN": STAFF_TOKEN,
            "TAWASUL_BACKEND_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "TAWASUL_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(PROJECT),
            "PYTHONIOENCODING": "utf-8",
        }
    )
    env.update(extra)
    return env


def run_tawasul(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tawasul.cli", *args],
        check=False,
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
    )


@contextmanager
def standalone_backend(database_url: str, port: int, log_path: Path, *extra_args: str) -> Iterator[str]:
    """``tawasul backend serve`` in a subprocess; yields its URL once it listens. Its stderr goes to
    ``log_path`` (a pipe nobody reads could fill up and stall the server)."""
    env = cli_env(TAWASUL_BACKEND__DATABASE_URL=database_url)
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tawasul.cli", "backend", "serve", "--port", str(port), *extra_args],
            cwd=PROJECT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            encoding="utf-8",
        )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if not first.startswith("core backend listening on "):
            proc.wait(timeout=30)
            raise AssertionError(f"backend did not start: {first!r} {log_path.read_text()[-2000:]}")
        yield first.rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
