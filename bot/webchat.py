"""A web chat channel: a small page at ``/chat`` and a JSON API, needing no platform token.

It is the "simulate a conversation" surface for newcomers and staff, and the web access of ``make run``.
Replies are queued per sender in memory and returned by the request that caused them (or by a poll, for
status notices pushed later). A notice for a sender whose page is closed waits in that queue, bounded.
"""

from __future__ import annotations

import asyncio
import collections
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.channel import Button, IncomingMessage, InputChannel, MessageHandler, OutgoingMessage, OutputChannel

PAGE = Path(__file__).resolve().parent / "static" / "webchat.html"
SENDER_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
MAX_QUEUED = 200


class WebChatOutput(OutputChannel):
    name = "web"

    def __init__(self) -> None:
        self.queues: dict[str, collections.deque[dict[str, Any]]] = collections.defaultdict(
            lambda: collections.deque(maxlen=MAX_QUEUED))

    async def send_text(self, recipient_id: str, text: str, *, language: str = "ar") -> None:
        await self.send(recipient_id, OutgoingMessage(text=text, language=language))

    async def send_buttons(self, recipient_id: str, text: str, buttons: Sequence[Button], *,
                           language: str = "ar") -> None:
        await self.send(recipient_id, OutgoingMessage(text=text, buttons=tuple(buttons), language=language))

    async def send(self, recipient_id: str, message: OutgoingMessage) -> None:
        self.queues[recipient_id].append({
            "text": message.text,
            "language": message.language,
            "dir": "rtl" if message.language == "ar" else "ltr",
            "buttons": [{"title": b.title, "payload": b.payload} for b in message.buttons],
        })

    def drain(self, recipient_id: str) -> list[dict[str, Any]]:
        queue = self.queues.pop(recipient_id, None)
        return list(queue) if queue else []


class WebChatChannel(InputChannel):
    name = "web"

    def __init__(self, prefix: str = "/chat") -> None:
        self.prefix = prefix
        self.output = WebChatOutput()

    def output_channel(self) -> OutputChannel:
        return self.output

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
            return web.json_response({"messages": self.output.drain(sender)})

        async def poll(request: web.Request) -> web.Response:
            sender = request.query.get("sender", "")
            if not SENDER_RE.match(sender):
                return _error(400, "sender must be 8-64 letters, digits, '-' or '_'")
            return web.json_response({"messages": self.output.drain(sender)})

        app.router.add_get(self.prefix, page)
        app.router.add_post(f"{self.prefix}/api/send", send)
        app.router.add_get(f"{self.prefix}/api/poll", poll)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)
