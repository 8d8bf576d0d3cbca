"""A web chat channel: a small page at ``/chat`` and a JSON API, needing no platform token.

It is the "simulate a conversation" surface for newcomers and staff, and the web access of ``make run``.
Replies wait per sender in the ``web_chat_replies`` table and are returned by the request that caused them
(or by a poll, for status notices pushed later). The table, not a worker's memory, because with several
workers the outbox loop of one may deliver a reply whose page polls another. A notice for a sender whose page
is closed waits there, bounded per sender and purged after ``REPLY_TTL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlalchemy import delete, insert, select

from bot.channel import Button, IncomingMessage, InputChannel, MessageHandler, OutgoingMessage, OutputChannel
from tawasul.db.engine import database_unavailable
from tawasul.db.models import WebChatReply, utcnow

if TYPE_CHECKING:
    from tawasul.db import Database

log = logging.getLogger(__name__)

PAGE = Path(__file__).resolve().parent / "static" / "webchat.html"
SENDER_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
MAX_QUEUED = 200  # per sender; beyond it the oldest replies are dropped (a page closed for a long time)
REPLY_TTL = dt.timedelta(hours=24)  # replies of abandoned senders are purged after this
PURGE_INTERVAL_S = 3600.0


class WebChatOutput(OutputChannel):
    name = "web"

    def __init__(self, db: Database) -> None:
        self.db = db

    async def send_text(self, recipient_id: str, text: str, *, language: str = "ar") -> None:
        await self.send(recipient_id, OutgoingMessage(text=text, language=language))

    async def send_buttons(self, recipient_id: str, text: str, buttons: Sequence[Button], *,
                           language: str = "ar") -> None:
        await self.send(recipient_id, OutgoingMessage(text=text, buttons=tuple(buttons), language=language))

    async def send(self, recipient_id: str, message: OutgoingMessage) -> None:
        payload = {
            "text": message.text,
            "language": message.language,
            "dir": "rtl" if message.language == "ar" else "ltr",
            "buttons": [{"title": b.title, "payload": b.payload} for b in message.buttons],
        }
        async with self.db.session() as session:
            await session.execute(insert(WebChatReply).values(sender=recipient_id, payload=payload,
                                                              created_at=utcnow()))
        # The bound, in a transaction of its own after the insert committed: it then sees every reply
        # committed before it, so whichever of two concurrent sends trims last leaves at most MAX_QUEUED.
        # Dropping the oldest (as the former in-memory deque did): a page closed that long has lost track.
        newest_dropped = (
            select(WebChatReply.id).where(WebChatReply.sender == recipient_id)
            .order_by(WebChatReply.id.desc()).offset(MAX_QUEUED).limit(1).scalar_subquery()
        )
        async with self.db.session() as session:
            await session.execute(delete(WebChatReply).where(WebChatReply.sender == recipient_id,
                                                             WebChatReply.id <= newest_dropped))

    async def drain(self, recipient_id: str) -> list[dict[str, Any]]:
        """Take the sender's waiting replies, oldest first. One DELETE … RETURNING (PostgreSQL, SQLite
        ≥ 3.35): of two concurrent drains each row goes to exactly one (the later DELETE skips the rows the
        earlier one removed)."""
        async with self.db.session() as session:
            rows = (await session.execute(
                delete(WebChatReply).where(WebChatReply.sender == recipient_id)
                .returning(WebChatReply.id, WebChatReply.payload)
            )).all()
        return [payload for _, payload in sorted(rows, key=lambda row: row[0])]

    async def purge(self, older_than: dt.timedelta = REPLY_TTL) -> int:
        """Remove replies nobody fetched in time (pages closed for good); returns how many."""
        async with self.db.session() as session:
            result = await session.execute(
                delete(WebChatReply).where(WebChatReply.created_at < utcnow() - older_than))
        return int(getattr(result, "rowcount", 0) or 0)


class WebChatChannel(InputChannel):
    name = "web"

    def __init__(self, db: Database, prefix: str = "/chat") -> None:
        self.prefix = prefix
        self.output = WebChatOutput(db)
        self._purger: asyncio.Task[None] | None = None

    def output_channel(self) -> OutputChannel:
        return self.output

    async def start(self, handler: MessageHandler) -> None:
        self._purger = asyncio.create_task(self._purge_forever(), name="webchat-purge")

    async def stop(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
            self._purger = None

    async def _purge_forever(self) -> None:
        # Every worker runs this; the DELETE is idempotent, so they need not agree on who does it.
        while True:
            try:
                purged = await self.output.purge()
                if purged:
                    log.info("purged %d web chat replies nobody fetched within %s", purged, REPLY_TTL)
            except Exception as exc:  # a background loop must outlive a database restart
                log.warning("purging old web chat replies failed: %s", type(exc).__name__)
            await asyncio.sleep(PURGE_INTERVAL_S)

    def add_routes(self, app: Any, handler: MessageHandler) -> None:
        async def page(request: web.Request) -> web.Response:
            return web.Response(text=PAGE.read_text(encoding="utf-8"), content_type="text/html",
                                headers={"Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                                                    "script-src 'unsafe-inline'"})

        async def send(request: web.Request) -> web.Response:
            try:
                body = await request.json()
            except ValueError:
                return _error(400, "body must be JSON")
            if not isinstance(body, dict):
                return _error(400, "body must be a JSON object")
            sender = body.get("sender")
            text, button = body.get("text"), body.get("button")
            if not isinstance(sender, str) or not SENDER_RE.match(sender):
                return _error(400, "sender must be 8-64 letters, digits, '-' or '_'")
            if not (isinstance(text, str) and text.strip()) and not (isinstance(button, str) and button):
                return _error(400, "send a non-empty 'text' or a 'button' payload")
            command = None
            if isinstance(text, str) and text.startswith("/") and " " not in text.strip():
                command, text = text.strip()[1:], None
            message = IncomingMessage(
                channel=self.name, sender_id=sender, message_id=f"web:{body.get('id') or uuid.uuid4().hex}",
                text=text if isinstance(text, str) else None, button=button if isinstance(button, str) else None,
                command=command,
            )
            await asyncio.shield(handler(message, self.output))
            # The replies delivered by now (usually all the turn produced); later ones wait for a poll.
            return web.json_response({"messages": await self.output.drain(sender)})

        async def poll(request: web.Request) -> web.Response:
            sender = request.query.get("sender", "")
            if not SENDER_RE.match(sender):
                return _error(400, "sender must be 8-64 letters, digits, '-' or '_'")
            try:
                messages = await self.output.drain(sender)
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                # The page polls again in a few seconds; the replies stay queued meanwhile.
                log.warning("web chat poll failed: %s", type(exc).__name__)
                return _error(503, "temporarily unavailable, try again")
            return web.json_response({"messages": messages})

        app.router.add_get(self.prefix, page)
        app.router.add_post(f"{self.prefix}/api/send", send)
        app.router.add_get(f"{self.prefix}/api/poll", poll)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)
