"""The client's one error boundary and its retry policy, against small real servers on 127.0.0.1 that
misbehave on purpose (slow, failing, off-contract) and a port nobody listens on."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Self

import pytest
from aiohttp import web

from backend_client import (
    BackendClient,
    BackendProtocolError,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    CaseStatus,
    InvalidRequest,
)
from tests.core_backend.backend_harness import new_case
from tests.fakes import wait_until

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Misbehaving:
    """A server whose every request goes to ``handler``; counts requests per path."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls: list[str] = []
        self.idempotency_keys: list[str | None] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.calls.append(f"{request.method} {request.path}")
        self.idempotency_keys.append(request.headers.get("Idempotency-Key"))
        return await self.handler(request)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def fails_then(times: int, status: int, final: Handler) -> Handler:
    count = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        if count <= times:
            return web.json_response({"error": {"code": "busy", "message": "try later"}}, status=status)
        return await final(request)

    return handler


async def health_ok(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok", "database": "ok"})


def client_for(url: str, **kwargs: float) -> BackendClient:
    options = {"retries": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05, **kwargs}
    return BackendClient(url, "token", staff_token="staff", **options)  # type: ignore[arg-type]


@pytest.fixture
async def closed_port() -> AsyncIterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]  # bound but not listening: connections are refused


async def test_connection_refused_is_unavailable(closed_port: int) -> None:
    async with client_for(f"http://127.0.0.1:{closed_port}") as client:
        with pytest.raises(BackendUnavailable) as info:
            await client.health()
    assert not isinstance(info.value, BackendTimeout)
    assert isinstance(info.value.__cause__, OSError)  # the aiohttp error is kept as the cause


async def test_slow_answer_is_timeout_after_retries() -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.json_response({})

    async with Misbehaving(slow) as server, client_for(server.url, timeout_s=0.2, retries=1) as client:
        with pytest.raises(BackendTimeout, match="no answer within 0.2 s"):
            await client.get_case("TWS-2026-000001")
        # On a loaded machine the retry can time out before the server's handler has recorded it.
        await wait_until(lambda: len(server.calls) >= 2, what="the retried request")
    assert server.calls == ["GET /cases/TWS-2026-000001"] * 2


async def test_safe_call_retried_through_5xx_and_429() -> None:
    async with Misbehaving(fails_then(2, 503, health_ok)) as server, client_for(server.url) as client:
        assert (await client.health()).status == "ok"
    assert len(server.calls) == 3
    async with Misbehaving(fails_then(1, 429, health_ok)) as server, client_for(server.url) as client:
        assert (await client.health()).status == "ok"
    assert len(server.calls) == 2


async def test_persistent_5xx_is_unavailable_after_retries() -> None:
    async with (
        Misbehaving(fails_then(99, 502, health_ok)) as server,
        client_for(server.url, retries=2) as client,
    ):
        with pytest.raises(BackendUnavailable, match="answered 502"):
            await client.health()
    assert len(server.calls) == 3


async def test_unsafe_call_is_not_retried() -> None:
    async with Misbehaving(fails_then(99, 503, health_ok)) as server, client_for(server.url) as client:
        with pytest.raises(BackendUnavailable):
            await client.add_reply("TWS-2026-000001", "hello")
        with pytest.raises(BackendUnavailable):
            await client.set_status("TWS-2026-000001", CaseStatus.UNDER_REVIEW)
    assert server.calls == ["POST /cases/TWS-2026-000001/replies", "POST /cases/TWS-2026-000001/status"]


async def test_create_retried_with_the_same_idempotency_key() -> None:
    async def garbage(request: web.Request) -> web.StreamResponse:
        return web.json_response({"not": "a case"}, status=201)

    async with Misbehaving(fails_then(2, 500, garbage)) as server, client_for(server.url) as client:
        with pytest.raises(BackendProtocolError):
            await client.create_case(new_case(), "retry-key-0001")
    assert len(server.calls) == 3
    assert set(server.idempotency_keys) == {"retry-key-0001"}


async def test_off_contract_answers_are_protocol_errors() -> None:
    async def not_json(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>proxy page</html>", content_type="text/html")

    async with Misbehaving(not_json) as server, client_for(server.url) as client:
        with pytest.raises(BackendProtocolError, match="GET /healthz"):
            await client.health()


async def test_rejection_without_json_body_still_typed() -> None:
    async def teapot(request: web.Request) -> web.StreamResponse:
        return web.Response(status=418, text="I'm a teapot")

    async def bad(request: web.Request) -> web.StreamResponse:
        return web.Response(status=400, text="")

    async with Misbehaving(teapot) as server, client_for(server.url) as client:
        with pytest.raises(BackendRejected) as info:
            await client.health()
    assert (info.value.status, info.value.code, info.value.message) == (418, "http_418", "I'm a teapot")
    async with Misbehaving(bad) as server, client_for(server.url) as client:
        with pytest.raises(InvalidRequest) as info2:
            await client.health()
    assert info2.value.message == "(no body)"


async def test_invalid_arguments_refused_before_sending() -> None:
    async with Misbehaving(health_ok) as server, client_for(server.url) as client:
        with pytest.raises(InvalidRequest, match="idempotency_key"):
            await client.create_case(new_case(), "short")
        with pytest.raises(InvalidRequest, match="note"):
            await client.set_status("TWS-2026-000001", "answered", "   ")
        with pytest.raises(InvalidRequest, match="status: Input should be 'submitted'"):
            await client.set_status("TWS-2026-000001", "lost")
        with pytest.raises(InvalidRequest, match="not a MIME type"):
            await client.upload_attachment(b"x", "image/png\r\nX-Evil: 1")
    assert server.calls == []
