"""python-telegram-bot's aiohttp transport against a real aiohttp server on 127.0.0.1: JSON and multipart
bodies arrive as the Bot API reads them, and transport failures come out as PTB's own errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from telegram import InputFile
from telegram.error import NetworkError, TimedOut
from telegram.request import RequestData
from telegram.request._requestparameter import RequestParameter

from bot.telegram_request import AiohttpRequest


@pytest.fixture
async def server(unused_port: int) -> AsyncIterator[tuple[str, list[dict[str, object]]]]:
    seen: list[dict[str, object]] = []

    async def echo(request: web.Request) -> web.Response:
        if request.content_type.startswith("multipart/"):
            parts: dict[str, object] = {}
            async for part in await request.multipart():
                parts[part.name or ""] = (part.filename, await part.read())  # type: ignore[union-attr]
            seen.append(parts)
        else:
            assert request.content_type == "application/json"
            seen.append(await request.json())
        return web.json_response({"ok": True, "result": True})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_post("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_port).start()
    try:
        yield f"http://127.0.0.1:{unused_port}", seen
    finally:
        await runner.cleanup()


async def test_json_and_multipart_bodies_arrive(server: tuple[str, list[dict[str, object]]]) -> None:
    base, seen = server
    request = AiohttpRequest()
    await request.initialize()
    try:
        markup = {"inline_keyboard": [[{"text": "نعم", "callback_data": "yes"}]]}
        data = RequestData([RequestParameter("chat_id", 42, None), RequestParameter("text", "مرحبا", None),
                            RequestParameter("reply_markup", markup, None)])
        status, body = await request.do_request(f"{base}/echo", "POST", data)
        assert status == 200 and b'"ok": true' in body
        # Nested markup arrives as an object, not as a JSON string inside JSON.
        assert seen[-1] == {"chat_id": 42, "text": "مرحبا", "reply_markup": markup}
        document = InputFile(b"%PDF-1.4", "a.pdf", attach=True)
        upload = RequestData([RequestParameter("chat_id", 42, None),
                              RequestParameter("document", "attach://doc", [document])])
        status, _ = await request.do_request(f"{base}/echo", "POST", upload)
        assert status == 200
        parts = seen[-1]
        assert parts["chat_id"] == (None, b"42")
        assert any(v == ("a.pdf", b"%PDF-1.4") for v in parts.values()), parts
    finally:
        await request.shutdown()
        await request.shutdown()  # twice is fine (PTB may call it again)


async def test_timeouts_and_refused_connections_become_ptb_errors(
    server: tuple[str, list[dict[str, object]]]
) -> None:
    base, _ = server
    request = AiohttpRequest(read_timeout=0.2)
    await request.initialize()
    try:
        with pytest.raises(TimedOut):
            await request.do_request(f"{base}/slow", "POST", RequestData([]))
        with pytest.raises(NetworkError):
            await request.do_request("http://127.0.0.1:9/echo", "POST", RequestData([]))  # discard port: refused
    finally:
        await request.shutdown()
    with pytest.raises(RuntimeError):
        await request.do_request(f"{base}/echo", "POST", RequestData([]))
