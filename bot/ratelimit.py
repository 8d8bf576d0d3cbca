"""Outbound rate budgets for the platform channels.

The API is one small protocol, ``RateLimiter``:

* ``await limiter.acquire(key)`` waits until ``key`` (a chat, a phone number, ``"telegram:global"``) may make
  one more request and takes that slot;
* ``await limiter.pause(key, seconds)`` holds every request on ``key`` for ``seconds`` (the platform said
  "retry after").

Two implementations:

* ``InProcessRateLimiter``: GCRA per key, in memory, for budgets one process owns (a Telegram chat's
  1 message/s: one citizen's messages are sent in order by one worker at a time anyway).
* ``SharedRateLimiter``: a GCRA slot schedule per key in the ``rate_buckets`` table, so every worker
  process on the same database shares one budget (Telegram's 30/s per bot, WhatsApp's 80/s per number):
  one database round trip reserves a few consecutive send slots, ``1 / rate`` apart across all processes,
  that the process then hands out locally, each at its time (a slot it is too late for is skipped).

Plus ``KeyedLocks`` (one FIFO lock per key) and ``backoff_delay`` (exponential back-off with jitter).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from sqlalchemy import Table, bindparam, func, update

from tawasul.db.models import RateBucket
from tawasul.db.statements import insert_ignoring_conflict

if TYPE_CHECKING:
    from tawasul.db import Database

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
_EPSILON = 1e-6  # a wake-up this early counts as on time (float timestamps near 1.7e9 are not exact)


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


class SharedRateLimiter:
    """A GCRA slot scheduler per key in the ``rate_buckets`` table, shared by every process on the database.

    Slots. A key's budget is one sequence of slots ``1 / rate_per_s`` apart, whichever process uses them. The
    key's row keeps the theoretical arrival time (TAT) of the next free slot in ``tokens``, as epoch seconds
    (``updated_at`` says when it last moved; values left by the token bucket this replaced are small numbers,
    read as "long ago", so no migration). A round trip is one statement, ``UPDATE ... SET tokens =
    max(tokens, now) + lease / rate RETURNING tokens`` (its row lock serialises the processes; no transaction
    around it), which reserves the next ``lease`` consecutive slots: ``start = max(now, TAT)``, slots
    ``start + i / rate``. There is no burst tolerance: after an idle spell the first slot is "now",
    the next one ``1 / rate`` later. The process hands its slots out locally: ``acquire`` takes the next one
    and sleeps until its time. Callers of one key in one process queue FIFO behind one lock, so only one of
    them talks to the database at a time. ``lease`` defaults to about ``rate / 10`` and, unless given, a round
    trip takes only as many slots as callers are waiting: at saturation each process makes one round trip per
    ~0.1 s, at light load it books no slot it will not use.

    Lateness. A process that wakes up late for a slot (a busy event loop, a stall) would send right behind
    the next slot, perhaps another worker's, which is on time. So a slot more than ``slack_s`` late (default
    half a slot, ``0.5 / rate``, and at least 2 ms) is discarded and the next one taken; when none are left, a
    new round trip. ``late_slots`` counts them. A process whose every wake-up came later than ``slack_s`` (an event loop
    that is never free on time) would get no slot at all: lateness costs its throughput, never the limit.

    Bound. Every send happens at its slot time ``t`` or at most ``slack_s`` after it, and a key's slots are at
    least ``1 / r`` apart across all processes. A send in a sliding second ``(a, a + 1]`` therefore has its
    slot in ``(a - slack_s, a + 1]``, a half-open span of ``1 + slack_s`` seconds, which holds at most
    ``ceil(r * (1 + slack_s))`` slots: any sliding second holds at most ``ceil(r * (1 + slack_s))`` sends
    (<= ``r * (1 + slack_s) + 1``), however many processes share the key and however they stall. With the
    default slack that is ``ceil(r + 0.5)``: 29 for the default ``telegram.global_rate_per_s`` of 28
    (Telegram allows ~30/s), 77 for the default ``whatsapp.rate_per_s`` of 76 (80/s). The bound holds where
    ``acquire`` returns; what the platform counts adds the spread of the request's way there (``r * jitter``
    sends at worst), which the headroom between the configured rate and the platform limit must cover.
    Processes compare wall clocks (``time.time``): hosts must be NTP-synced (a skew between hosts adds
    ``r * skew``).

    Costs. Slots reserved and never used (a process running out of work, slots discarded as late) cost
    throughput, never the limit: nobody else gets them. A pause sets the TAT to at least its end, so every
    process's next reservation starts after it, and drops this process's slots inside it; another process
    still spends the slots it holds already (at most ``lease``, all due within about ``processes * lease /
    rate`` seconds) before its next round trip meets the pause.
    """

    def __init__(
        self,
        db: Database,
        rate_per_s: float,
        *,
        lease: int | None = None,
        slack_s: float | None = None,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")
        self._db = db
        self._interval = 1.0 / rate_per_s
        self._lease = lease if lease is not None else max(1, round(rate_per_s / 10))
        # Without an explicit lease, a round trip reserves as many slots as callers of the key are waiting in
        # this process (up to the lease): at light load one slot, so no process books slots it does not use
        # and makes another process's reply wait behind them; under load a full lease per round trip.
        self._by_demand = lease is None
        # Half a slot, but at least 2 ms: at very high rates (a benchmark's "unlimited" budget) half a slot is
        # shorter than an event loop's wake-up jitter and every slot would be discarded as late.
        self._slack = slack_s if slack_s is not None else max(0.5 * self._interval, 0.002)
        if self._lease < 1 or self._slack < 0:
            raise ValueError("lease must be >= 1 and slack_s >= 0")
        # The TAT lives in ``tokens`` as epoch seconds (double precision: sub-microsecond at today's epoch).
        later = func.greatest if db.dialect == "postgresql" else func.max  # SQLite's two-argument max()
        self._advance_statement = (
            update(_BUCKETS).where(_BUCKETS.c.key == bindparam("b_key"))
            .values(tokens=later(_BUCKETS.c.tokens, bindparam("now")) + bindparam("span"),
                    updated_at=bindparam("stamp"))
            .returning(_BUCKETS.c.tokens)
        )
        self._clock = clock  # wall clock: slot times are compared across processes
        self._sleep = sleep
        self._locks = KeyedLocks()
        self._slots: dict[str, deque[float]] = {}  # this process's reserved slots per key, earliest first
        self._paused_until: dict[str, float] = {}
        self.round_trips = 0  # reservations made (observability and tests)
        self.late_slots = 0  # slots discarded because this process was more than slack_s late for them

    async def acquire(self, key: str) -> None:
        async with self._locks.hold(key):
            while True:
                now = self._clock()
                until = self._paused_until.get(key, 0.0)
                if until > now:
                    await self._sleep(until - now)
                    continue
                slots = self._slots.get(key)
                if not slots:
                    reserved = await self._reserve(key)
                    # A pause made here during the round trip voids the slots before its end.
                    until = self._paused_until.get(key, 0.0)
                    self._slots[key] = deque(slot for slot in reserved if slot >= until)
                    continue  # the round trip took time: read the clock again
                if now > slots[0] + self._slack:  # late for these: drop every one of them at once
                    while slots and now > slots[0] + self._slack:
                        slots.popleft()
                        self.late_slots += 1
                    continue
                slot = slots[0]
                if slot > now + _EPSILON:
                    # Sleep holding the slot (it stays first in line), then look again: the wake-up may be
                    # late, or a pause may have dropped the slot meanwhile.
                    await self._sleep(slot - now)
                    continue
                slots.popleft()
                return

    async def pause(self, key: str, seconds: float) -> None:
        until = max(self._clock() + max(0.0, seconds), self._paused_until.get(key, 0.0))
        self._paused_until[key] = until
        slots = self._slots.get(key)
        if slots:
            # Slots after the pause stay valid: the TAT is past them already, so nobody else gets them.
            self._slots[key] = deque(slot for slot in slots if slot >= until)
        await self._advance(key, until, 0.0)

    async def _reserve(self, key: str) -> list[float]:
        """Reserve the key's next slots (``lease``, or as many as are wanted now); return their times."""
        self.round_trips += 1
        count = min(self._lease, max(1, self._locks.waiting(key))) if self._by_demand else self._lease
        span = count * self._interval
        start = await self._advance(key, self._clock(), span) - span
        return [start + i * self._interval for i in range(count)]

    async def _advance(self, key: str, now: float, span: float) -> float:
        """``TAT := max(TAT, now) + span`` in one statement (the row lock of the UPDATE serialises the
        processes; no transaction around it); returns the new TAT."""
        if self._db.raw is not None:  # PostgreSQL: the same two statements straight through asyncpg
            async with self._db.raw.relaxed() as conn:
                value = await conn.fetchval(_ADVANCE_SQL, key, now, span, _datetime(now))
                if value is None:
                    await conn.execute(_CREATE_SQL, key, 0.0, _EPOCH)
                    value = await conn.fetchval(_ADVANCE_SQL, key, now, span, _datetime(now))
            return float(value)
        params = {"b_key": key, "now": now, "span": span, "stamp": _datetime(now)}
        async with self._db.autocommit() as session:
            tat = (await session.execute(self._advance_statement, params)).scalar_one_or_none()
            if tat is None:  # the key's first use; of two concurrent creators one inserts
                await session.execute(_CREATE, {"key": key, "tokens": 0.0, "updated_at": _EPOCH})
                tat = (await session.execute(self._advance_statement, params)).scalar_one()
        return float(tat)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_BUCKETS = cast(Table, RateBucket.__table__)
_CREATE = insert_ignoring_conflict(_BUCKETS, ("key", "tokens", "updated_at"), ("key",))
# One round trip per reservation, on every send: plain SQL on PostgreSQL's asyncpg pool (``tawasul.db.raw``).
_ADVANCE_SQL = ("UPDATE rate_buckets SET tokens = greatest(tokens, $2::float8) + $3::float8, updated_at = $4 "
                "WHERE key = $1 RETURNING tokens")
_CREATE_SQL = "INSERT INTO rate_buckets (key, tokens, updated_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING"


def _datetime(seconds: float) -> dt.datetime:
    # The column keeps microseconds: a stored TAT moves a slot by half a microsecond at most.
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


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

    def waiting(self, key: str) -> int:
        """Callers holding or queued for ``key``."""
        entry = self._entries.get(key)
        return entry.users if entry is not None else 0

    def __len__(self) -> int:
        return len(self._entries)


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential back-off with "equal jitter": half fixed, half random, so retries do not align."""
    delay = min(max_s, base_s * 2.0**attempt)
    return delay / 2 + random.uniform(0, delay / 2)
