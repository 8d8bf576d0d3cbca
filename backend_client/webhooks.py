"""Status-change events from the core backend: webhook signing, the bot's webhook handler, and polling.

Signature (see ``openapi.yaml`` > webhooks)::

    X-Tawasul-Timestamp: <unix seconds>
    X-Tawasul-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>

The handler answers 401 for a missing/bad signature and for a timestamp more than ``max_age_s`` away
from now (replays of captured requests), 400 for a body that is not a ``StatusEvent``, and 200 for an
event handled now or already handled before (webhook retries and the poller deliver the same
``event_id``; ``EventLedger.seen_before`` decides, and ``on_event`` is not called again). If
``on_event`` fails, the event is not marked and 503 tells the backend to retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from aiohttp import web
from pydantic import SecretStr, ValidationError

from backend_client.models import StatusEvent

if TYPE_CHECKING:
    from backend_client.client import BackendClient

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "EventHandler",
    "EventLedger",
    "InMemoryEventLedger",
    "MemoryEventLedger",
    "SignatureError",
    "dispatch_event",
    "make_event_handler",
    "poll_events",
    "sign",
    "signed_headers",
    "verify",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Tawasul-Signature"
TIMESTAMP_HEADER = "X-Tawasul-Timestamp"
_SCHEME = "sha256="

Secret = str | bytes | SecretStr
# The return value is ignored (handlers may report what they did).
EventHandler = Callable[[StatusEvent], Awaitable[object]]


class SignatureError(Exception):
    """The webhook's signature is missing, malformed, wrong or too old; the message says which and
    ``code`` is ``bad_signature`` or ``stale_timestamp``."""

    def __init__(self, message: str, code: str = "bad_signature") -> None:
        super().__init__(message)
        self.code = code


def _key(secret: Secret) -> bytes:
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign(secret: Secret, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` over ``b"<timestamp>." + body``."""
    mac = hmac.new(_key(secret), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return _SCHEME + mac.hexdigest()


def signed_headers(secret: Secret, body: bytes, *, now: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        "Content-Type": "application/json",
    }


def verify(
    secret: Secret,
    timestamp_header: str | None,
    signature_header: str | None,
    body: bytes,
    *,
    max_age_s: float,
    now: float | None = None,
) -> None:
    """Raise ``SignatureError`` unless the signature is right and the timestamp within ``max_age_s``."""
    if not timestamp_header or not signature_header:
        raise SignatureError(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header")
    if not timestamp_header.isascii() or not timestamp_header.isdigit() or len(timestamp_header) > 12:
        raise SignatureError(f"{TIMESTAMP_HEADER} must be unix seconds")
    timestamp = int(timestamp_header)
    current = time.time() if now is None else now
    # Checked before the HMAC so a captured request cannot be replayed later; the window is symmetric to
    # tolerate modest clock skew between the two machines.
    if abs(current - timestamp) > max_age_s:
        raise SignatureError(
            f"timestamp is more than {max_age_s:g} s away from now (stale or replayed)", "stale_timestamp"
        )
    expected = sign(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode("ascii"), signature_header.strip().encode("utf-8", "replace")):
        raise SignatureError("signature does not match")


class EventLedger(Protocol):
    """Remembers which events were handled. The app implements it with its database (a unique key on
    ``event_id``); ``mark`` is called only after ``on_event`` succeeded, so a failed event is retried."""

    async def seen_before(self, event_id: str) -> bool: ...

    async def mark(self, event_id: str) -> None: ...


class MemoryEventLedger:
    """An ``EventLedger`` for tests and single-process use; keeps the newest ``capacity`` ids."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    async def seen_before(self, event_id: str) -> bool:
        return event_id in self._seen

    async def mark(self, event_id: str) -> None:
        self._seen[event_id] = None
        self._seen.move_to_end(event_id)
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._seen

    def __len__(self) -> int:
        return len(self._seen)


InMemoryEventLedger = MemoryEventLedger  # earlier name

# A webhook retry and the poller may deliver one event at the same moment; in one process this lock
# makes the second wait and then see it as handled. (Across processes the ledger's unique key and the
# handler's own dedup on event_id take over.)
_in_flight: dict[str, tuple[asyncio.Lock, int]] = {}


async def dispatch_event(event: StatusEvent, on_event: EventHandler, seen: EventLedger) -> bool:
    """Hand ``event`` to ``on_event`` unless it was handled before. True when handled now.

    An exception from ``on_event`` propagates and the event is not marked, so a retry handles it.
    """
    key = event.event_id
    lock, users = _in_flight.get(key, (asyncio.Lock(), 0))
    _in_flight[key] = (lock, users + 1)
    try:
        async with lock:
            if await seen.seen_before(key):
                return False
            await on_event(event)
            await seen.mark(key)
            return True
    finally:
        lock, users = _in_flight[key]
        if users == 1:
            del _in_flight[key]
        else:
            _in_flight[key] = (lock, users - 1)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, "details": []}}, status=status)


def make_event_handler(
    secret: Secret,
    max_age_s: float,
    on_event: EventHandler,
    seen: EventLedger,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler for ``POST /backend/events`` on the bot's server."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(
                secret,
                request.headers.get(TIMESTAMP_HEADER),
                request.headers.get(SIGNATURE_HEADER),
                body,
                max_age_s=max_age_s,
            )
        except SignatureError as exc:
            log.warning("rejected backend event: %s", exc)
            return _error(401, exc.code, str(exc))
        try:
            event = StatusEvent.model_validate_json(body, strict=True)
        except ValidationError as exc:
            return _error(400, "invalid_event", f"body is not a status event ({exc.error_count()} errors)")
        try:
            handled = await dispatch_event(event, on_event, seen)
        except Exception:
            log.exception("handling backend event %s failed; the backend will retry", event.event_id)
            return _error(503, "handler_failed", "event could not be handled now; retry later")
        return web.json_response(
            {"status": "handled" if handled else "duplicate", "event_id": event.event_id}, status=200
        )

    return handle


async def poll_events(
    client: BackendClient,
    after: int,
    on_event: EventHandler,
    seen: EventLedger,
    *,
    limit: int = 100,
    max_pages: int = 50,
) -> int:
    """Fetch the events after ``after``, page by page until caught up (at most ``max_pages``), and
    dispatch them in order; return the cursor to store (``after`` when there was nothing new).

    A failing ``on_event`` propagates: the caller keeps its old cursor and the next poll retries (events
    handled before the failure are skipped as duplicates).
    """
    cursor = after
    for _ in range(max_pages):
        page = await client.events_after(cursor, limit=limit)
        for event in page.events:
            await dispatch_event(event, on_event, seen)
        cursor = page.next_after
        if len(page.events) < limit:
            break
    return cursor
