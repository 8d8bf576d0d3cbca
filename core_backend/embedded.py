"""Run the reference backend inside another process's event loop (``make run``, tests) or standalone."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from aiohttp import web

from config.settings import BackendSettings, Settings
from core_backend.api import PrivacyAccessLogger
from core_backend.app import backend_settings, create_app
from core_backend.service import Clock, utcnow

__all__ = ["EmbeddedBackend"]


class EmbeddedBackend:
    """``async with EmbeddedBackend(settings, port=0) as backend: ... backend.url ...``

    ``port``: None binds ``settings.backend.port`` (what ``settings.backend.url`` points at, so the staff
    CLI reaches it), 0 picks a free port. ``webhook_url`` overrides ``settings.backend.events_webhook_url``.
    """

    def __init__(
        self,
        settings: Settings | BackendSettings,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        webhook_url: str | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.settings = backend_settings(settings)
        self.host = host
        self.port = self.settings.port if port is None else port
        self._webhook_url = webhook_url
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self.app: web.Application | None = None

    @property
    def url(self) -> str:
        if self._runner is None:
            raise RuntimeError("the backend is not running; await start() first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Create the tables (on ``backend.database_url``), start webhook delivery and serve."""
        if self._runner is not None:
            return
        self.app = create_app(self.settings, webhook_url=self._webhook_url, clock=self._clock)
        runner = web.AppRunner(
            self.app, access_log_class=PrivacyAccessLogger, handle_signals=False, shutdown_timeout=5.0
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if self.port == 0:
            self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
