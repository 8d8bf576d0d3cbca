"""The reference backend as an aiohttp application: API, its own database, webhook delivery.

``create_app`` wires everything; the database tables are created and the webhook sender started when
the application starts (``cleanup_ctx``), and both are released when it stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from config.settings import BackendSettings, Settings
from core_backend import api
from core_backend.db import Database
from core_backend.delivery import DeliveryPolicy, WebhookSender
from core_backend.service import CaseService, Clock, utcnow

__all__ = ["DB_KEY", "SENDER_KEY", "backend_settings", "create_app"]

DB_KEY = web.AppKey("core_db", Database)
SENDER_KEY = web.AppKey("core_sender", WebhookSender)


def backend_settings(settings: Settings | BackendSettings) -> BackendSettings:
    return settings.backend if isinstance(settings, Settings) else settings


def create_app(
    settings: Settings | BackendSettings,
    *,
    webhook_url: str | None = None,
    clock: Clock = utcnow,
) -> web.Application:
    """The reference backend. ``webhook_url`` overrides ``backend.events_webhook_url`` (where status
    events are pushed; when both are None, events are only served by ``GET /events``). ``clock`` lets
    tests fix "now" (references and ``expected_response_by`` depend on the date)."""
    cfg = backend_settings(settings)
    url = webhook_url or cfg.events_webhook_url
    db = Database(cfg.database_url)
    sender = None
    if url:
        policy = DeliveryPolicy(
            timeout_s=cfg.webhook_timeout_s,
            retry_base_s=cfg.webhook_retry_base_s,
            retry_max_s=cfg.webhook_retry_max_s,
        )
        sender = WebhookSender(db, url, cfg.webhook_secret, policy)
    service = CaseService(
        db, cfg, clock=clock, push=sender is not None, on_event=sender.wake if sender else _nothing
    )
    # Bodies are read through ``api.read_body`` with their own limits; this is aiohttp's outer bound.
    app = web.Application(client_max_size=cfg.max_attachment_bytes + 65536)
    api.install(app, service, cfg)
    app[DB_KEY] = db
    if sender is not None:
        app[SENDER_KEY] = sender

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        try:
            await db.create_tables()
        except BaseException:
            await db.close()  # aiohttp does not run the cleanup half of a context that failed to start
            raise
        if sender is not None:
            await sender.start()
        try:
            yield
        finally:
            if sender is not None:
                await sender.stop()
            await db.close()

    app.cleanup_ctx.append(lifecycle)
    return app


def _nothing() -> None:
    return None
