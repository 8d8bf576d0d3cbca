"""Which platform channels this process runs, built from settings.

``build_channels(settings, session)`` returns the Telegram channel when ``TELEGRAM_BOT_TOKEN`` is set and the
WhatsApp channel when ``WHATSAPP_ACCESS_TOKEN`` and ``WHATSAPP_PHONE_NUMBER_ID`` are set. Pass ``db`` to
share the platforms' send budgets across worker processes (``SharedRateLimiter`` on ``rate_buckets``);
without it each process keeps its own. ``describe_disabled(settings)`` says, one line per channel that is
off, which variables turn it on.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import aiohttp

from bot.channel import InputChannel
from bot.ratelimit import RateLimiter, SharedRateLimiter
from config.settings import Settings

if TYPE_CHECKING:
    from bot.whatsapp import SentHook, StatusHook
    from bot.whatsapp_window import WindowTracker
    from tawasul.db import Database


def build_channels(
    settings: Settings,
    session: aiohttp.ClientSession,
    *,
    db: Database | None = None,
    window_tracker: WindowTracker | None = None,
    on_status: StatusHook | None = None,
    on_sent: SentHook | None = None,
    on_throttled: Callable[[str], None] | None = None,
) -> list[InputChannel]:
    """``on_throttled(channel)`` is called for every rate-limit answer a platform gives (for /metrics)."""
    channels: list[InputChannel] = []
    if settings.telegram.enabled:
        from bot.telegram import TelegramInput

        telegram_limiter: RateLimiter | None = None
        if db is not None:
            telegram_limiter = SharedRateLimiter(db, settings.telegram.global_rate_per_s)
        channels.append(TelegramInput(settings.telegram, settings.server, global_limiter=telegram_limiter,
                                      on_throttled=on_throttled and partial(on_throttled, "telegram")))
    if settings.whatsapp.enabled:
        from bot.whatsapp import WhatsAppInput

        whatsapp_limiter: RateLimiter | None = None
        if db is not None:
            whatsapp_limiter = SharedRateLimiter(db, settings.whatsapp.rate_per_s)
        channels.append(
            WhatsAppInput(
                settings.whatsapp,
                settings.server,
                session,
                limiter=whatsapp_limiter,
                window_tracker=window_tracker,
                on_status=on_status,
                on_sent=on_sent,
                on_throttled=on_throttled and partial(on_throttled, "whatsapp"),
            )
        )
    return channels


def describe_disabled(settings: Settings) -> list[str]:
    lines: list[str] = []
    if not settings.telegram.enabled:
        lines.append(
            "Telegram is off: set TELEGRAM_BOT_TOKEN to turn it on (polling by default; "
            "a webhook when TAWASUL_PUBLIC_URL is set)."
        )
    wa = settings.whatsapp
    if not wa.enabled:
        missing = [
            name
            for name, value in (
                ("WHATSAPP_ACCESS_TOKEN", wa.access_token),
                ("WHATSAPP_PHONE_NUMBER_ID", wa.phone_number_id),
            )
            if not value
        ]
        lines.append(
            f"WhatsApp is off: set {' and '.join(missing)} to turn it on "
            "(and WHATSAPP_APP_SECRET + WHATSAPP_VERIFY_TOKEN to receive its webhook)."
        )
    elif not wa.webhook_enabled:
        lines.append(
            "WhatsApp sends but does not receive: set WHATSAPP_APP_SECRET and WHATSAPP_VERIFY_TOKEN "
            f"for the webhook at {wa.webhook_path}."
        )
    return lines
