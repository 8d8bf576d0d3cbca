"""Helpers for the channel tests: fixture files, a recording handler, and a real aiohttp server (127.0.0.1)
that mounts a channel's routes like the service does."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.channel import IncomingMessage, InputChannel, MessageHandler, OutgoingMessage, OutputChannel

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def load_fixture(platform: str, name: str) -> Any:
    return json.loads((FIXTURES / platform / f"{name}.json").read_text(encoding="utf-8"))


class Recorder:
    """A MessageHandler that keeps what it got and, with ``echo``, answers each text with "echo: ..."."""

    def __init__(self, *, echo: bool = False) -> None:
        self.received: list[IncomingMessage] = []
        self.echo = echo

    async def __call__(self, message: IncomingMessage, output: OutputChannel) -> None:
        self.received.append(message)
        if self.echo:
            await output.send(message.sender_id, OutgoingMessage(text=f"echo: {message.text}"))

    def ids(self) -> list[str]:
        return [m.message_id for m in self.received]


@contextlib.asynccontextmanager
async def serve(
    channel: InputChannel, handler: MessageHandler, port: int, max_body: int = 1_048_576
) -> AsyncIterator[str]:
    """Mount ``channel`` on a real aiohttp app at 127.0.0.1:``port``, start it, yield the base URL."""
    app = web.Application(client_max_size=max_body)
    channel.add_routes(app, handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        await channel.start(handler)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            await channel.stop()
    finally:
        await runner.cleanup()
