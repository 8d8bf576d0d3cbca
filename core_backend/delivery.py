"""Webhook delivery of status events, retried with backoff until the bot acknowledges (any 2xx).

``core_events`` is the outbox: an event row written with ``next_attempt_at`` set is due for delivery,
``delivered_at`` marks the acknowledgement. Because the state lives in the database, a restarted backend
resumes where it stopped. Events of one case go out in sequence order (a later event waits for an
earlier undelivered one), so the bot never sees a case move backwards; different cases do not block each
other. There is no give-up: an unreachable bot is retried every ``webhook_retry_max_s`` at most, and the
bot's poller (``GET /events``) covers the gap meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import SecretStr
from sqlalchemy import func, select, update
from sqlalchemy.orm import aliased

from backend_client.webhooks import signed_headers
from core_backend.db import Database, EventRow

log = logging.getLogger(__name__)

EVENT_ID_HEADER = "X-Tawasul-Event-Id"
# Longest sleep when nothing is due: also picks up events another process wrote to the same database.
IDLE_WAIT_S = 5.0


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class DeliveryPolicy:
    timeout_s: float = 10.0
    retry_base_s: float = 1.0
    retry_max_s: float = 300.0
    batch: int = 50
    concurrency: int = 4

    def delay(self, attempts: int) -> float:
        """Seconds before the next try after ``attempts`` failures: exponential, capped, half jittered
        (never zero, so a failing bot is not hammered; spread, so a recovering bot is not stampeded)."""
        ceiling = min(self.retry_max_s, self.retry_base_s * 2 ** min(attempts - 1, 30))
        return random.uniform(ceiling / 2, ceiling)


class WebhookSender:
    """Delivers due events to ``url``; ``wake()`` after a commit that wrote events.

    ``stop()`` never interrupts a database statement (a cancelled SQLite transaction could keep its write
    lock past the engine's disposal): it cancels only pending HTTP posts and waits, and the loop exits
    between passes.
    """

    def __init__(self, db: Database, url: str, secret: SecretStr | str, policy: DeliveryPolicy) -> None:
        self._db = db
        self.url = url
        self._secret = secret
        self._policy = policy
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._posts: set[asyncio.Task[str | None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._policy.timeout_s))
            self._task = asyncio.create_task(self._run(), name="core-backend-webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            for post in self._posts:
                post.cancel()
            await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                sent = await self.deliver_due()
                wait = 0.0 if sent else await self._seconds_until_due()
            except Exception:
                # The database may be briefly unavailable; the loop must survive it.
                log.exception("webhook delivery pass failed; retrying shortly")
                wait = IDLE_WAIT_S
            if wait > 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):  # woken by a new event, or the next retry is due
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def deliver_due(self) -> int:
        """One pass: try every due event once (the first undelivered one of each case). Returns how
        many were attempted."""
        query = (
            select(EventRow.sequence, EventRow.event_id, EventRow.payload, EventRow.attempts)
            .where(_deliverable(), EventRow.next_attempt_at <= utcnow())
            .order_by(EventRow.sequence)
            .limit(self._policy.batch)
        )
        async with self._db.sessions() as session, session.begin():
            due = (await session.execute(query)).all()
        if not due:
            return 0
        limit = asyncio.Semaphore(self._policy.concurrency)

        async def one(sequence: int, event_id: str, payload: dict[str, Any], attempts: int) -> None:
            async with limit:
                if not self._stopping:
                    await self._deliver(sequence, event_id, payload, attempts)

        await asyncio.gather(*(one(*row) for row in due))
        return len(due)

    async def _post(self, event_id: str, payload: dict[str, Any]) -> str | None:
        """POST one signed event; None when acknowledged, else why not."""
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        # Signed per attempt: the receiver rejects timestamps older than its window.
        headers = {**signed_headers(self._secret, body), EVENT_ID_HEADER: event_id}
        assert self._session is not None
        try:
            async with self._session.post(
                self.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                await resp.read()
                return None if 200 <= resp.status < 300 else f"receiver answered {resp.status}"
        except TimeoutError:
            return f"no answer within {self._policy.timeout_s:g} s"
        except aiohttp.ClientError as exc:
            return f"{type(exc).__name__}: {exc}"[:500]

    async def _deliver(self, sequence: int, event_id: str, payload: dict[str, Any], attempts: int) -> None:
        post = asyncio.create_task(self._post(event_id, payload))
        self._posts.add(post)
        try:
            error = await post
        except asyncio.CancelledError:
            if self._stopping:  # shutting down: this attempt does not count; it is retried after a restart
                return
            raise
        finally:
            self._posts.discard(post)
        now = utcnow()
        values: dict[str, Any] = {"attempts": EventRow.attempts + 1}
        if error is None:
            values["delivered_at"] = now
            values["last_error"] = None
        else:
            delay = self._policy.delay(attempts + 1)
            values["next_attempt_at"] = now + dt.timedelta(seconds=delay)
            values["last_error"] = error
            log.info(
                "webhook event #%s not acknowledged (%s); retry %d in %.1f s",
                sequence,
                error,
                attempts + 1,
                delay,
            )
        async with self._db.sessions() as session, session.begin():
            await session.execute(update(EventRow).where(EventRow.sequence == sequence).values(**values))

    async def _seconds_until_due(self) -> float:
        query = select(func.min(EventRow.next_attempt_at)).where(_deliverable())
        async with self._db.sessions() as session, session.begin():
            earliest = await session.scalar(query)
        if earliest is None:
            return IDLE_WAIT_S
        if earliest.tzinfo is None:  # func.min bypasses the UTC column type on SQLite
            earliest = dt.datetime.fromisoformat(str(earliest)).replace(tzinfo=dt.UTC)
        return max(0.0, min(IDLE_WAIT_S, (earliest - utcnow()).total_seconds()))


def _deliverable() -> Any:
    """Undelivered push events not waiting behind an earlier undelivered event of the same case."""
    earlier = aliased(EventRow)
    blocked = (
        select(earlier.sequence)
        .where(
            earlier.case_id == EventRow.case_id,
            earlier.delivered_at.is_(None),
            earlier.next_attempt_at.is_not(None),
            earlier.sequence < EventRow.sequence,
        )
        .exists()
    )
    return (EventRow.delivered_at.is_(None)) & (EventRow.next_attempt_at.is_not(None)) & ~blocked
