"""The service: one aiohttp server for every webhook, health, metrics, the web chat and the staff console
(after python-telegram-bot's ``customwebhookbot.py``), plus the background loops (outbox, sweeper, backend
event poller). ``Service`` is also what the integration tests start, on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
from aiohttp import web

from bot.channel import InputChannel, OutputChannel
from config.settings import Settings
from tawasul.db import Database

log = logging.getLogger(__name__)

EVENTS_PATH = "/backend/events"
CURSOR_KEY = "backend_events_cursor"


class Service:
    """Everything one worker process runs. ``start``/``stop`` are idempotent in order; use ``async with``."""

    def __init__(
        self,
        settings: Settings,
        *,
        channels: Sequence[InputChannel] | None = None,
        nlu: Any | None = None,
        train_if_missing: bool = True,
        background: bool = True,
    ) -> None:
        self.settings = settings
        self._extra_channels = list(channels or [])
        self._nlu_override = nlu
        self._train_if_missing = train_if_missing
        self._background = background
        self.db = Database(settings.database.url, echo=settings.database.echo,
                           pool_size=settings.database.pool_size)
        self.http: aiohttp.ClientSession | None = None
        self.embedded_backend: Any | None = None
        self.channels: list[InputChannel] = []
        self.outputs: dict[str, OutputChannel] = {}
        self.engine: Any = None
        self.nlu: Any = None
        self.outbox: Any = None
        self.backend: Any = None
        self.runner: web.AppRunner | None = None
        self.url = ""
        self._stop = asyncio.Event()
        self._backend_port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.app: web.Application | None = None
        from tawasul.metrics import Metrics

        self.metrics = Metrics()

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ start-up
    async def start(self) -> None:
        from tawasul.db.migrate import upgrade_async

        settings = self.settings
        await upgrade_async(settings.database.url)
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        self.nlu = self._nlu_override or await self._load_nlu()

        # The web server first (port 0 picks a free port), so the embedded backend knows where to push events.
        self.app = web.Application(client_max_size=settings.server.max_body_bytes)
        worker = os.environ.get("TAWASUL_WORKER_ID")
        if worker is not None:  # several workers behind one port: say which one answered (debugging, tests)
            self.app.on_response_prepare.append(_worker_header(worker))
        self.runner = web.AppRunner(self.app, access_log=None)
        await self._build_app()
        await self.runner.setup()
        # reuse_port: several worker processes bind the same port (SO_REUSEPORT; `tawasul run --workers`).
        site = web.TCPSite(self.runner, settings.server.host, settings.server.port,
                           reuse_port=settings.server.reuse_port)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://{_host_for_url(settings.server.host)}:{port}"

        if settings.backend.mode == "embedded":
            from core_backend.embedded import EmbeddedBackend

            self.embedded_backend = EmbeddedBackend(settings, port=self._backend_port,
                                                    webhook_url=f"{self.url}{EVENTS_PATH}")
            await self.embedded_backend.start()
        for channel in self.channels:
            await channel.start(self.engine.handle)
        if self._background:
            self._tasks = [
                asyncio.create_task(self.outbox.run_forever(self._stop), name="outbox"),
                asyncio.create_task(self.engine.run_sweeper(self._stop), name="sweeper"),
                asyncio.create_task(self._poll_events(), name="event-poller"),
            ]
        log.info("service listening on %s", self.url)

    async def _load_nlu(self) -> Any:
        from nlu.service import build_nlu, ensure_model

        if self._train_if_missing and self.settings.nlu.train_if_missing:
            info = await asyncio.to_thread(ensure_model, self.settings)
            log.info("NLU model %s", info.version)
        return build_nlu(self.settings, on_fallback=self.metrics.nlu_fallback)

    async def _build_app(self) -> None:
        from backend_client.client import BackendClient
        from backend_client.webhooks import make_event_handler
        from config.agencies import load_agencies
        from dialogues.agencies import CatalogAgencies
        from dialogues.cases import CaseService
        from dialogues.engine import DbEventLedger, DialogueEngine
        from dialogues.i18n import Catalog
        from dialogues.policy import Policy
        from tawasul.metrics import metrics_handler
        from tawasul.outbox import Outbox

        settings = self.settings
        assert self.app is not None and self.http is not None
        backend_url = settings.backend.url
        if settings.backend.mode == "embedded":
            # Started after our server is up (it pushes events to it); its port is fixed now so the
            # client, the staff CLI and the banner all know where it is.
            self._backend_port = settings.backend.port or _free_port()
            backend_url = f"http://127.0.0.1:{self._backend_port}"
        self.backend = BackendClient.from_settings(settings.backend, base_url=backend_url, session=self.http)
        status_backend = BackendClient(backend_url, settings.backend.service_token.get_secret_value(),
                                       session=self.http, timeout_s=min(3.0, settings.backend.timeout_s),
                                       retries=0)
        texts = Catalog.load()
        agencies = CatalogAgencies(load_agencies())
        metrics = self.metrics
        self.outbox = Outbox(self.db, settings.outbox)
        cases = CaseService(self.db, self.backend, texts, agencies, settings.nlu, self.outputs,
                            settings.dialogue.call_centre, metrics=metrics)
        policy = Policy(texts, agencies, settings.dialogue, settings.nlu)
        self.engine = DialogueEngine(settings, self.db, _MeasuredParser(self.nlu, metrics), policy, cases,
                                     self.outbox, status_backend, metrics=metrics)
        self.ledger = DbEventLedger(self.db)

        app = self.app
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", metrics_handler(self))
        app.router.add_post(EVENTS_PATH, make_event_handler(
            settings.backend.webhook_secret.get_secret_value(), settings.backend.webhook_max_age_s,
            self.engine.on_backend_event, self.ledger))

        # Channels: the web chat always (it needs no token), the platforms when configured, test extras.
        from bot.webchat import WebChatChannel

        channels: list[InputChannel] = [WebChatChannel(self.db)]  # its pending replies are shared in the DB
        from bot.factory import build_channels, describe_disabled
        from tawasul.channel_state import DbWindowTracker, DeliveryLog

        receipts = DeliveryLog(self.db)
        channels.extend(build_channels(settings, self.http, db=self.db, window_tracker=DbWindowTracker(self.db),
                                       on_status=receipts.on_status, on_sent=receipts.on_sent,
                                       on_throttled=metrics.throttled))
        for line in describe_disabled(settings):
            log.info("%s", line)
        channels.extend(self._extra_channels)
        self.channels = channels
        for channel in channels:
            self.outputs[channel.name] = channel.output_channel()
            channel.add_routes(app, self.engine.handle)

        from staff_console import StaffDeps, create_app

        deps = StaffDeps(settings=settings, sessionmaker=self.db.sessions, nlu_reload=self._reload_nlu,
                         registry_dir=settings.nlu.model_dir)
        app.router.add_get("/staff", _redirect_to("/staff/"))
        app.router.add_get("/", _redirect_to("/chat"))
        app.add_subapp("/staff", create_app(deps))

    async def _reload_nlu(self) -> None:
        reload: Callable[[], Awaitable[None] | None] | None = getattr(self.nlu, "reload", None)
        if reload is not None:
            result = reload()
            if asyncio.iscoroutine(result):
                await result

    # ------------------------------------------------------------------ endpoints
    async def _healthz(self, request: web.Request) -> web.Response:
        # Which process answered: behind one port with several workers, this tells them apart.
        return web.json_response({"status": "ok", "worker": os.environ.get("TAWASUL_WORKER_ID"),
                                  "pid": os.getpid()})

    async def _readyz(self, request: web.Request) -> web.Response:
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(self.db.ping(), 2)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            await asyncio.wait_for(self.backend.health(), 3)
            checks["backend"] = "ok"
        except Exception as exc:
            checks["backend"] = f"error: {type(exc).__name__}"
        try:
            await asyncio.wait_for(self.nlu.parse("ping"), 3)
            checks["nlu"] = "ok"
        except Exception as exc:
            checks["nlu"] = f"error: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return web.json_response({"status": "ready" if ok else "not ready", "checks": checks},
                                 status=200 if ok else 503)

    # ------------------------------------------------------------------ background
    async def _poll_events(self) -> None:
        """Catch up on status events a lost webhook did not bring (duplicates are skipped by event id)."""
        interval = self.settings.backend.poll_interval_s
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=interval)
            if self._stop.is_set():
                return
            await self.poll_once()

    async def poll_once(self) -> None:
        from backend_client.webhooks import poll_events

        try:
            after = await self._cursor()
            while True:
                cursor = await poll_events(self.backend, after, self.engine.on_backend_event, self.ledger)
                if cursor > after:
                    await self._set_cursor(cursor)
                if cursor <= after:
                    return
                after = cursor
        except Exception as exc:
            log.warning("polling backend events failed: %s", type(exc).__name__)
            from backend_client.errors import BackendError
            from dialogues.cases import backend_error_kind

            if isinstance(exc, BackendError):
                self.metrics.backend_error("events", backend_error_kind(exc))

    async def _cursor(self) -> int:
        from sqlalchemy import select

        from tawasul.db.models import KeyValue

        async with self.db.session() as session:
            value = (await session.execute(select(KeyValue.value).where(KeyValue.key == CURSOR_KEY))).scalar()
        return int(value) if value else 0

    async def _set_cursor(self, cursor: int) -> None:
        from dialogues.store import _insert
        from tawasul.db.models import KeyValue, utcnow

        async with self.db.session() as session:
            stmt = _insert(session)(KeyValue).values(key=CURSOR_KEY, value=str(cursor), updated_at=utcnow())
            await session.execute(stmt.on_conflict_do_update(
                index_elements=["key"], set_={"value": str(cursor), "updated_at": utcnow()}))

    # ------------------------------------------------------------------ shutdown
    async def stop(self) -> None:
        # Let the background loops finish the job in hand (a message the platform already accepted must be
        # marked done, or it is sent again after a restart); cancel only what is still running after that.
        self._stop.set()
        if self.outbox is not None:
            self.outbox.wake()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)
        for task in self._tasks:
            if not task.done():
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self.engine is not None:
            await self.engine.close()
        for channel in self.channels:
            with contextlib.suppress(Exception):
                await channel.stop()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.embedded_backend is not None:
            await self.embedded_backend.stop()
            self.embedded_backend = None
        close = getattr(self.nlu, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
        if self.http is not None:
            await self.http.close()
            self.http = None
        await self.db.close()


class _MeasuredParser:
    """Times every NLU call for /metrics without the engine knowing about Prometheus."""

    def __init__(self, inner: Any, metrics: Any) -> None:
        self.inner = inner
        self.metrics = metrics

    async def parse(self, text: str) -> Any:
        loop = asyncio.get_running_loop()
        start = loop.time()
        result = await self.inner.parse(text)
        self.metrics.nlu(result.engine, loop.time() - start)
        return result


def _worker_header(worker: str) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    async def add(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Tawasul-Worker"] = worker

    return add


def _redirect_to(location: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(location)

    return handler


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _host_for_url(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


async def run_service(settings: Settings, *, shell: bool = True, force_terminal: bool = False) -> int:
    """`tawasul run`: serve until interrupted; with no platform tokens, attach the terminal chat."""
    from tawasul.logging import setup_logging

    setup_logging(settings.logging)
    terminal = None
    telegram_on = settings.telegram.bot_token is not None
    whatsapp_on = settings.whatsapp.access_token is not None and settings.whatsapp.phone_number_id
    use_terminal = force_terminal or (shell and not telegram_on and not whatsapp_on)
    channels: list[InputChannel] = []
    if use_terminal:
        from bot.terminal import TerminalChannel

        terminal = TerminalChannel()
        channels.append(terminal)
    service = Service(settings, channels=channels)
    print("Tawasul Bot is starting (training the NLU model on first run takes a few seconds)…", file=sys.stderr)
    try:
        await service.start()
    except BaseException:
        await service.stop()
        raise
    worker = os.environ.get("TAWASUL_WORKER_ID")
    if worker in (None, "0"):
        _print_banner(service, settings, terminal is not None)
    else:  # one banner per supervisor is enough
        print(f"worker {worker} (pid {os.getpid()}) is running on {service.url}", file=sys.stderr, flush=True)
    try:
        if terminal is not None:
            await terminal.finished.wait()
        else:
            await _wait_for_signal(watch_parent=worker is not None)
    finally:
        await service.stop()
    return 0


async def _wait_for_signal(*, watch_parent: bool = False) -> None:
    """Until SIGINT/SIGTERM; a supervised worker also stops when its supervisor is gone (killed with
    SIGKILL it cannot forward a signal, and an orphan would keep serving the shared port)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not available on Windows event loops; there Ctrl-C still raises KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0 if watch_parent else None)
        if watch_parent and os.getppid() != parent:
            log.warning("the supervisor (pid %d) is gone: stopping", parent)
            return


def _print_banner(service: Service, settings: Settings, terminal: bool) -> None:
    lines = [
        f"Tawasul Bot is running on {service.url}",
        f"  web chat:       {service.url}/chat",
        f"  staff console:  {service.url}/staff   (add a user: tawasul staff add NAME --role admin)",
        f"  health:         {service.url}/healthz  ·  {service.url}/readyz  ·  {service.url}/metrics",
        f"  core backend:   {service.backend.base_url if service.backend else '-'} ({settings.backend.mode})",
    ]
    from bot.factory import describe_disabled

    lines.extend(f"  {line}" for line in describe_disabled(settings))
    if terminal:
        lines.append("Terminal chat: type a message (Arabic or English); numbers press buttons; Ctrl-D quits.")
    print("\n".join(lines), file=sys.stderr, flush=True)


__all__ = ["Service", "run_service"]
