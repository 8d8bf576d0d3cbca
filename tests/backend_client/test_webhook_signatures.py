"""The bot's webhook handler over real HTTP: good, bad, stale and replayed signatures, malformed bodies,
and a failing handler (not marked, so the redelivery is handled)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from backend_client import CaseEvent, MemoryEventLedger, make_event_handler, sign, verify
from backend_client.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureError

SECRET = "whsec-test"


def event_body(**overrides: Any) -> bytes:
    payload: dict[str, Any] = {
        "event_id": uuid.uuid4().hex,
        "sequence": 7,
        "reference": "TWS-2026-000042",
        "status": "answered",
        "previous_status": "in_progress",
        "agency": "moh",
        "previous_agency": None,
        "public_note": "تم إصلاح الطريق",
        "question": None,
        "channel": "telegram",
        "channel_user_id": "100200300",
        "language": "ar",
        "occurred_at": "2026-03-05T10:00:00Z",
    }
    payload.update(overrides)
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


class Bot:
    def __init__(self) -> None:
        self.received: list[CaseEvent] = []
        self.fail_next = 0
        self.ledger = MemoryEventLedger()
        self.url = ""

    async def on_event(self, event: CaseEvent) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("database is down")
        self.received.append(event)

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.url, data=body, headers=headers) as r,
        ):
            return r.status, await r.json()


@pytest.fixture
async def bot() -> AsyncIterator[Bot]:
    state = Bot()
    app = web.Application()
    app.router.add_post("/backend/events", make_event_handler(SECRET, 300, state.on_event, state.ledger))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}/backend/events"
    yield state
    await runner.cleanup()


def signed(body: bytes, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    ts = int(time.time() if at is None else at)
    return {
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: sign(secret, ts, body),
        "Content-Type": "application/json",
    }


def test_signature_format_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"a":1}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k", 1700000000, body) == "sha256=" + expected
    verify("k", "1700000000", "sha256=" + expected, body, max_age_s=300, now=1700000100)
    with pytest.raises(SignatureError):
        verify("k", "1700000000", "sha256=" + expected, body + b" ", max_age_s=300, now=1700000100)
    with pytest.raises(SignatureError):  # the timestamp is signed too
        verify("k", "1700000001", "sha256=" + expected, body, max_age_s=300, now=1700000100)
    with pytest.raises(SignatureError) as info:
        verify("k", "1700000000", "sha256=" + expected, body, max_age_s=300, now=1700000301)
    assert info.value.code == "stale_timestamp"


async def test_good_signature_is_handled(bot: Bot) -> None:
    body = event_body()
    status, answer = await bot.post(body, signed(body))
    assert (status, answer["status"]) == (200, "handled")
    assert len(bot.received) == 1
    event = bot.received[0]
    assert (event.reference, event.status, event.public_note) == (
        "TWS-2026-000042",
        "answered",
        "تم إصلاح الطريق",
    )
    assert event.occurred_at == dt.datetime(2026, 3, 5, 10, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "tamper",
    ["wrong_secret", "changed_body", "missing_signature", "missing_timestamp", "garbage_signature", "bad_ts"],
)
async def test_bad_signature_is_401(bot: Bot, tamper: str) -> None:
    body = event_body()
    headers = signed(body, secret="another-secret" if tamper == "wrong_secret" else SECRET)
    if tamper == "changed_body":
        body = body.replace(b"answered", b"closed")
    elif tamper == "missing_signature":
        del headers[SIGNATURE_HEADER]
    elif tamper == "missing_timestamp":
        del headers[TIMESTAMP_HEADER]
    elif tamper == "garbage_signature":
        headers[SIGNATURE_HEADER] = "sha256=نعم"
    elif tamper == "bad_ts":
        headers[TIMESTAMP_HEADER] = "yesterday"
    status, answer = await bot.post(body, headers)
    assert status == 401
    assert answer["error"]["code"] == "bad_signature" and answer["error"]["message"]
    assert bot.received == []


@pytest.mark.parametrize("offset_s", [-301, -3600, 301])
async def test_stale_or_future_timestamp_is_401(bot: Bot, offset_s: int) -> None:
    body = event_body()
    status, answer = await bot.post(body, signed(body, at=time.time() + offset_s))
    assert (status, answer["error"]["code"]) == (401, "stale_timestamp")
    assert bot.received == []


async def test_replayed_event_is_acknowledged_but_not_handled_again(bot: Bot) -> None:
    body = event_body()
    assert (await bot.post(body, signed(body)))[0] == 200
    # The same request again (a captured replay within the window) and a fresh redelivery of the event.
    status, answer = await bot.post(body, signed(body))
    assert (status, answer["status"]) == (200, "duplicate")
    assert len(bot.received) == 1


async def test_malformed_body_with_valid_signature_is_400(bot: Bot) -> None:
    for body in (b"not json", event_body(status="lost"), b"[]", event_body(sequence="7")):
        status, answer = await bot.post(body, signed(body))
        assert (status, answer["error"]["code"]) == (400, "invalid_event")
    assert bot.received == []


async def test_failing_handler_is_503_and_the_retry_is_handled(bot: Bot) -> None:
    body = event_body()
    bot.fail_next = 1
    status, answer = await bot.post(body, signed(body))
    assert (status, answer["error"]["code"]) == (503, "handler_failed")
    assert bot.received == []
    status, answer = await bot.post(body, signed(body))
    assert (status, answer["status"]) == (200, "handled")
    assert len(bot.received) == 1
