"""Outbound rate budgets for the platform channels.

The API is one small protocol, ``RateLimiter``:

* ``await limiter.acquire(key)`` waits until ``key`` (a chat, a phone number, ``"telegram:global"``) may make
  one more request and takes that slot;
* ``await limiter.pause(key, seconds)`` holds every request on ``key`` for ``seconds`` (the platform said
  "retry after").

Two implementations:

* ``InProcessRateLimiter``: GCRA per key, in memory, for budgets one process owns (a Telegram chat's
  1 message/s: one citizen's messages are sent in order by one worker at a time anyway).
* ``SharedRateLimiter``: a token bucket per key in the ``rate_buckets`` table, so every worker process
  on the same database shares one budget (Telegram's 30/s per bot, WhatsApp's 80/s per number). Its fast
  path: one database round trip takes a small lease of tokens that the process then hands out locally.

Plus ``KeyedLocks`` (one FIFO lock per key) and ``backoff_delay`` (exponential back-off with jitter).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from tawasul.db.models import RateBucket

if TYPE_CHECKING:
    from tawasul.db import Database

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
_EPSILON = 1e-6
_MIN_WAIT = 0.001


class RateLimiter(Protocol):
    """A rate budget per key (a chat, a phone number, "global")."""

    async def acquire(self, key: str) -> None:
        """Wait until ``key`` may make one more request, and take that slot."""

    async def pause(self, key: str, seconds: float) -> None:
        """Hold every request on ``key`` for ``seconds`` (a platform said "retry after")."""


class InProcessRateLimiter:
    """GCRA (the "virtual scheduling" form of a leaky bucket) per key, for one process.

    Hand-written rather than ``aiolimiter``: it needs a pause that reschedules waiters (retry_after) and an
    injectable clock so tests are deterministic. Requests for one key are spaced ``1 / rate_per_s`` apart,
    after an initial burst of ``burst``.
    """

    def __init__(
        self,
        rate_per_s: float,
        *,
        burst: int = 1,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        max_keys: int = 10_000,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self._interval = 1.0 / rate_per_s
        self._tolerance = (burst - 1) * self._interval
        self._clock = clock
        self._sleep = sleep
        self._max_keys = max_keys
        self._tat: dict[str, float] = {}  # theoretical arrival time of the next request, per key
        self._paused_until: dict[str, float] = {}
        self._epoch: dict[str, int] = {}  # bumped by pause(): reservations made before it are void

    async def acquire(self, key: str) -> None:
        while True:
            now = self._clock()
            until = self._paused_until.get(key, 0.0)
            if until > now:
                await self._sleep(until - now)
                continue
            epoch = self._epoch.get(key, 0)
            tat = max(self._tat.get(key, now), now)
            start = max(now, tat - self._tolerance)
            # Reserve the slot before awaiting: nothing else runs between the read and this write.
            self._tat[key] = tat + self._interval
            self._forget_idle(now)
            if start > now:
                await self._sleep(start - now)
            if self._epoch.get(key, 0) == epoch:
                return
            # Paused while waiting: queue again behind the pause instead of firing into it.

    async def pause(self, key: str, seconds: float) -> None:
        until = self._clock() + max(0.0, seconds)
        until = max(until, self._paused_until.get(key, 0.0))
        self._paused_until[key] = until
        self._tat[key] = until
        self._epoch[key] = self._epoch.get(key, 0) + 1

    def _forget_idle(self, now: float) -> None:
        if len(self._tat) <= self._max_keys:
            return
        for key, tat in list(self._tat.items()):
            if tat < now and self._paused_until.get(key, 0.0) < now:
                del self._tat[key]
                self._paused_until.pop(key, None)
                self._epoch.pop(key, None)


@dataclass(slots=True)
class _Lease:
    tokens: int
    expires_at: float


class SharedRateLimiter:
    """A token bucket per key in the ``rate_buckets`` table, shared by every process using the database.

    The row holds the tokens left at ``updated_at``; a reader refills ``rate_per_s`` tokens per second up
    to ``burst`` and takes what it needs under a row lock (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite
    transactions here are ``BEGIN IMMEDIATE``, which serialises writers). A pause moves ``updated_at`` into
    the future: nothing refills and nobody takes a token until then.

    Fast path: each round trip takes up to ``lease`` tokens; the process spends them locally for at most
    ``lease_ttl_s`` (unused ones are dropped, which costs throughput, never the limit). Within a process,
    callers of one key queue FIFO behind one lock, so only one of them talks to the database at a time.
    A pause by another process reaches this one at its next round trip (at most one lease later).
    """

    def __init__(
        self,
        db: Database,
        rate_per_s: float,
        *,
        burst: float | None = None,
        lease: int | None = None,
        lease_ttl_s: float = 1.0,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")
        self._db = db
        self._rate = rate_per_s
        self._lease = max(1, lease if lease is not None else int(rate_per_s // 10))
        # A small bucket (one lease, a tenth of a second's worth): a full second's burst on top of the steady
        # rate would put 2x the limit into one second and earn 429s that pause every send.
        self._burst = float(burst if burst is not None else self._lease)
        if self._burst < 1:
            raise ValueError("burst must be >= 1")
        self._lease_ttl = lease_ttl_s
        self._clock = clock  # wall clock: it is compared across processes
        self._sleep = sleep
        self._locks = KeyedLocks()
        self._leases: dict[str, _Lease] = {}
        self._paused_until: dict[str, float] = {}
        self.round_trips = 0  # observability and tests

    async def acquire(self, key: str) -> None:
        async with self._locks.hold(key):
            while True:
                now = self._clock()
                until = self._paused_until.get(key, 0.0)
                if until > now:
                    await self._sleep(until - now)
                    continue
                lease = self._leases.get(key)
                if lease is not None and lease.tokens > 0 and lease.expires_at > now:
                    lease.tokens -= 1
                    return
                granted, wait = await self._take(key, self._lease, now)
                if granted:
                    self._leases[key] = _Lease(granted - 1, now + self._lease_ttl)
                    return
                self._leases.pop(key, None)
                await self._sleep(wait)

    async def pause(self, key: str, seconds: float) -> None:
        now = self._clock()
        until = now + max(0.0, seconds)
        self._paused_until[key] = max(until, self._paused_until.get(key, 0.0))
        self._leases.pop(key, None)
        async with self._db.session() as session:
            row = await self._locked_row(session, key, now)
            if _seconds(row.updated_at) < until:
                row.updated_at = _datetime(until)
                row.tokens = 0.0

    async def _take(self, key: str, want: int, now: float) -> tuple[int, float]:
        """Take up to ``want`` tokens; return (tokens taken, seconds until one is available if none)."""
        self.round_trips += 1
        async with self._db.session() as session:
            row = await self._locked_row(session, key, now)
            last = _seconds(row.updated_at)
            if last > now:  # paused (by any process) until ``last``
                return 0, last - now
            tokens = min(self._burst, row.tokens + (now - last) * self._rate)
            # Wall-clock seconds near 1.7e9 and microsecond timestamps are not exact: a token that is
            # "0.9999999 there" counts, and waits are at least a millisecond so the clock can move.
            granted = min(want, math.floor(tokens + _EPSILON))
            row.tokens = max(0.0, tokens - granted)
            row.updated_at = _datetime(now)
            return granted, 0.0 if granted else max(_MIN_WAIT, (1.0 - row.tokens) / self._rate)

    async def _locked_row(self, session: AsyncSession, key: str, now: float) -> RateBucket:
        insert = pg_insert if self._db.dialect == "postgresql" else sqlite_insert
        await session.execute(
            insert(RateBucket)
            .values(key=key, tokens=self._burst, updated_at=_datetime(now))
            .on_conflict_do_nothing(index_elements=["key"])
        )
        result = await session.execute(
            select(RateBucket)
            .where(RateBucket.key == key)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return result.scalar_one()


def _datetime(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _seconds(value: dt.datetime) -> float:
    # SQLite hands back naive datetimes; everything stored here is UTC.
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


@dataclass(slots=True)
class _LockEntry:
    lock: asyncio.Lock
    users: int = 0


class KeyedLocks:
    """One FIFO lock per key, dropped when unused: work of one key runs in order, other keys in parallel."""

    def __init__(self) -> None:
        self._entries: dict[str, _LockEntry] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _LockEntry(asyncio.Lock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential back-off with "equal jitter": half fixed, half random, so retries do not align."""
    delay = min(max_s, base_s * 2.0**attempt)
    return delay / 2 + random.uniform(0, delay / 2)
