"""Rate limiter semantics, on a simulated clock (no real waiting): the in-process GCRA and the token bucket
shared through the ``rate_buckets`` table on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot.ratelimit import InProcessRateLimiter, KeyedLocks, SharedRateLimiter, backoff_delay
from tawasul.db import Database
from tawasul.db.migrate import upgrade_async
from tests.fakes import wait_until

START = 1_767_250_800.0


class FakeTime:
    """A clock that only moves when someone sleeps; every sleep is recorded."""

    def __init__(self) -> None:
        self.now = START
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    @property
    def elapsed(self) -> float:
        return self.now - START


# ---------------------------------------------------------------------------------------------- in-process


async def test_in_process_burst_then_spacing() -> None:
    time = FakeTime()
    limiter = InProcessRateLimiter(2.0, burst=3, clock=time.clock, sleep=time.sleep)
    starts = []
    for _ in range(6):
        await limiter.acquire("chat:1")
        starts.append(time.elapsed)
    assert starts == pytest.approx([0, 0, 0, 0.5, 1.0, 1.5])


async def test_in_process_keys_are_independent() -> None:
    time = FakeTime()
    limiter = InProcessRateLimiter(1.0, clock=time.clock, sleep=time.sleep)
    await limiter.acquire("chat:1")
    await limiter.acquire("chat:2")
    assert time.elapsed == 0
    await limiter.acquire("chat:1")
    assert time.elapsed == pytest.approx(1.0)


async def test_in_process_pause_holds_requests_already_waiting() -> None:
    time = FakeTime()
    limiter = InProcessRateLimiter(1.0, clock=time.clock, sleep=time.sleep)
    await limiter.acquire("g")
    await limiter.pause("g", 5.0)
    await limiter.acquire("g")
    assert time.elapsed == pytest.approx(5.0)  # not the 1 s the spacing alone would need


async def test_in_process_concurrent_waiters_are_spaced() -> None:
    limiter = InProcessRateLimiter(50.0)  # real clock, 20 ms apart; only the order is asserted
    order: list[int] = []

    async def one(i: int) -> None:
        await limiter.acquire("k")
        order.append(i)

    await asyncio.gather(*(one(i) for i in range(5)))
    assert sorted(order) == list(range(5))


def test_limiter_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        InProcessRateLimiter(0)
    with pytest.raises(ValueError):
        InProcessRateLimiter(1.0, burst=0)


def test_backoff_grows_and_is_capped() -> None:
    for attempt, cap in [(0, 1.0), (1, 2.0), (2, 4.0), (10, 30.0)]:
        delay = backoff_delay(attempt, 1.0, 30.0)
        assert cap / 2 <= delay <= cap


async def test_keyed_locks_serialise_one_key_and_forget_it() -> None:
    locks = KeyedLocks()
    events: list[str] = []

    async def work(key: str, name: str) -> None:
        async with locks.hold(key):
            events.append(f"{name}+")
            await asyncio.sleep(0.01)
            events.append(f"{name}-")

    await asyncio.gather(work("a", "1"), work("a", "2"), work("b", "3"))
    assert events.index("1-") < events.index("2+")  # same key: one after the other
    assert events.index("3+") < events.index("1-")  # other key: in parallel
    assert len(locks) == 0


# ---------------------------------------------------------------------------------------------- shared


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    await upgrade_async(db_url)
    database = Database(db_url)
    try:
        yield database
    finally:
        await database.close()


async def test_shared_budget_is_one_budget_for_two_workers(db: Database) -> None:
    time = FakeTime()
    a = SharedRateLimiter(db, 10.0, burst=5, lease=1, clock=time.clock, sleep=time.sleep)
    b = SharedRateLimiter(db, 10.0, burst=5, lease=1, clock=time.clock, sleep=time.sleep)
    for limiter in (a, b, a, b, a):
        await limiter.acquire("telegram:global")
    assert time.elapsed == 0  # the burst of 5, split over two workers
    await b.acquire("telegram:global")
    assert time.elapsed == pytest.approx(0.1)  # the sixth waits for a token, whichever worker asks
    for limiter in (a, b) * 7:
        await limiter.acquire("telegram:global")
    assert time.elapsed == pytest.approx(1.5)  # 20 requests = 5 burst + 15 at 10/s


async def test_shared_pause_reaches_the_other_worker(db: Database) -> None:
    time = FakeTime()
    a = SharedRateLimiter(db, 10.0, burst=5, lease=1, clock=time.clock, sleep=time.sleep)
    b = SharedRateLimiter(db, 10.0, burst=5, lease=1, clock=time.clock, sleep=time.sleep)
    await a.acquire("whatsapp:1")
    await a.pause("whatsapp:1", 3.0)  # worker A got a 429 with retry_after 3
    await b.acquire("whatsapp:1")
    # Nothing before the pause ends, then the bucket refills from empty: one token after 0.1 s.
    assert time.elapsed == pytest.approx(3.1)


async def test_shared_keys_are_independent(db: Database) -> None:
    time = FakeTime()
    limiter = SharedRateLimiter(db, 1.0, burst=1, clock=time.clock, sleep=time.sleep)
    await limiter.acquire("k1")
    await limiter.acquire("k2")
    assert time.elapsed == 0


async def test_shared_lease_saves_round_trips(db: Database) -> None:
    time = FakeTime()
    limiter = SharedRateLimiter(db, 100.0, burst=100, lease=10, clock=time.clock, sleep=time.sleep)
    for _ in range(30):
        await limiter.acquire("k")
    assert limiter.round_trips == 3
    assert time.elapsed == 0


async def test_shared_unused_lease_expires(db: Database) -> None:
    time = FakeTime()
    limiter = SharedRateLimiter(
        db, 10.0, burst=10, lease=5, lease_ttl_s=1.0, clock=time.clock, sleep=time.sleep
    )
    await limiter.acquire("k")  # takes 5, spends 1
    time.now += 2.0  # the other 4 are stale now
    await limiter.acquire("k")
    assert limiter.round_trips == 2


async def test_shared_budget_holds_under_concurrency(db: Database) -> None:
    """Many concurrent requests from two workers (separate connections) with the clock stopped: exactly the
    burst gets through - the row lock never lets two workers take the same tokens."""
    frozen = FakeTime()
    blocked = asyncio.Event()

    async def never(_: float) -> None:
        await blocked.wait()

    workers = [
        SharedRateLimiter(db, 10.0, burst=5, lease=1, clock=frozen.clock, sleep=never) for _ in range(2)
    ]
    granted = 0

    async def request(limiter: SharedRateLimiter) -> None:
        nonlocal granted
        await limiter.acquire("global")
        granted += 1

    tasks = [asyncio.create_task(request(workers[i % 2])) for i in range(12)]
    await wait_until(lambda: granted >= 5, what="the burst")
    # Both workers reached the database and were refused (each holds one request asleep)...
    await wait_until(lambda: all(w.round_trips > 0 for w in workers), what="both workers asking")
    await asyncio.sleep(0.3)  # ...and no wrongly granted request shows up late.
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert granted == 5
