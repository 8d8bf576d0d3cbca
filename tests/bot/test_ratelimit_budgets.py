"""Rate limiter semantics, on a simulated clock (no real waiting): the in-process GCRA and the GCRA slot
schedule shared through the ``rate_buckets`` table on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import bisect
import heapq
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest
from sqlalchemy import select

from bot.ratelimit import InProcessRateLimiter, KeyedLocks, SharedRateLimiter, backoff_delay
from tawasul.db import Database
from tawasul.db.migrate import upgrade_async
from tawasul.db.models import RateBucket
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


class SimTime:
    """Virtual time for several simulated workers running at once (one task each): a sleeping worker wakes
    at its time; the clock jumps to the next wake-up only when every worker sleeps or is done (never while
    one is busy, e.g. in the database). ``stall`` (optional, per worker) makes a worker wake up late."""

    def __init__(self) -> None:
        self.now = START
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._busy = 0
        self._idle = asyncio.Event()

    def clock(self) -> float:
        return self.now

    def sleeper(self, stall: Callable[[], float] = lambda: 0.0) -> Callable[[float], Awaitable[None]]:
        async def sleep(seconds: float) -> None:
            future = asyncio.get_running_loop().create_future()
            heapq.heappush(self._sleepers, (self.now + max(0.0, seconds) + stall(), id(future), future))
            self._set_busy(-1)
            await future

        return sleep

    async def run(self, *workers: Coroutine[Any, Any, None]) -> None:
        self._busy = len(workers)
        tasks = [asyncio.create_task(self._worker(w)) for w in workers]
        while self._busy or self._sleepers:
            await asyncio.wait_for(self._idle.wait(), timeout=30)
            self._idle.clear()
            if not self._sleepers:
                break
            wake, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake)
            self._busy += 1
            future.set_result(None)
        await asyncio.gather(*tasks)

    async def _worker(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        finally:
            self._set_busy(-1)

    def _set_busy(self, change: int) -> None:
        self._busy += change
        if self._busy == 0:
            self._idle.set()


def most_in_one_second(times: list[float]) -> int:
    """Most sends in any sliding window ``(t - 1, t]`` (the fake Bot API's count); 1 us spare at the open end
    for float timestamps near 1.7e9."""
    times = sorted(times)
    return max((i + 1 - bisect.bisect_right(times, t - 1.0 + 1e-6) for i, t in enumerate(times)), default=0)


async def test_shared_budget_is_one_budget_for_two_workers(db: Database) -> None:
    """Two workers asking at once share one slot sequence: sends 0.1 s apart whichever worker makes them."""
    sim = SimTime()
    workers = [SharedRateLimiter(db, 10.0, lease=2, clock=sim.clock, sleep=sim.sleeper()) for _ in range(2)]
    sends: list[tuple[float, int]] = []

    async def worker(n: int) -> None:
        for _ in range(10):
            await workers[n].acquire("telegram:global")
            sends.append((sim.now - START, n))

    await sim.run(worker(0), worker(1))
    assert sorted(t for t, _ in sends) == pytest.approx([i * 0.1 for i in range(20)])
    # The two took turns two slots at a time (one lease each; whichever reached the row first began).
    order = [n for _, n in sorted(sends)]
    first = order[0]
    assert order == [first, first, 1 - first, 1 - first] * 5
    assert [w.round_trips for w in workers] == [5, 5]
    assert sum(w.late_slots for w in workers) == 0


async def test_shared_pause_reaches_the_other_worker(db: Database) -> None:
    time = FakeTime()
    a = SharedRateLimiter(db, 10.0, lease=2, clock=time.clock, sleep=time.sleep)
    b = SharedRateLimiter(db, 10.0, lease=2, clock=time.clock, sleep=time.sleep)
    await a.acquire("whatsapp:1")  # A holds slots 0.0 (spent) and 0.1
    await a.pause("whatsapp:1", 3.0)  # worker A got a 429 with retry_after 3
    await b.acquire("whatsapp:1")
    assert time.elapsed == pytest.approx(3.0)  # B's first slot is the pause's end (B holds 3.0 and 3.1)
    await a.acquire("whatsapp:1")
    assert time.elapsed == pytest.approx(3.2)  # A's slot 0.1 went with the pause; its next ones follow B's
    assert a.round_trips == 2


async def test_shared_pause_voids_own_slots_inside_it(db: Database) -> None:
    time = FakeTime()
    limiter = SharedRateLimiter(db, 10.0, lease=5, clock=time.clock, sleep=time.sleep)
    await limiter.acquire("k")  # holds 0.1 ... 0.4 now
    await limiter.pause("k", 0.25)
    await limiter.acquire("k")
    assert time.elapsed == pytest.approx(0.3)  # 0.1 and 0.2 fell inside the pause; 0.3 is after it
    assert limiter.round_trips == 1 and limiter.late_slots == 0


async def test_shared_keys_are_independent(db: Database) -> None:
    time = FakeTime()
    limiter = SharedRateLimiter(db, 1.0, clock=time.clock, sleep=time.sleep)
    await limiter.acquire("k1")
    await limiter.acquire("k2")
    assert time.elapsed == 0
    await limiter.acquire("k1")
    assert time.elapsed == pytest.approx(1.0)


async def test_shared_lease_saves_round_trips(db: Database) -> None:
    time = FakeTime()
    limiter = SharedRateLimiter(db, 100.0, lease=10, clock=time.clock, sleep=time.sleep)
    for _ in range(30):
        await limiter.acquire("k")
    assert limiter.round_trips == 3
    assert time.elapsed == pytest.approx(0.29)  # 30 slots 10 ms apart, the first one at once
    assert SharedRateLimiter(db, 48.5)._lease == 5  # the default: about a tenth of a second's slots


async def test_shared_late_slot_is_discarded(db: Database) -> None:
    time = FakeTime()
    limiter = SharedRateLimiter(db, 10.0, lease=4, clock=time.clock, sleep=time.sleep)  # slack 0.05 s
    await limiter.acquire("k")  # slots 0.0 (spent), 0.1, 0.2, 0.3
    time.now += 0.17  # a stall: 0.07 s late for slot 0.1
    await limiter.acquire("k")
    assert time.elapsed == pytest.approx(0.2)  # slot 0.1 dropped, slot 0.2 waited for
    assert limiter.late_slots == 1
    time.now += 0.14  # 0.04 s late for slot 0.3: within the slack, used at once
    await limiter.acquire("k")
    assert time.elapsed == pytest.approx(0.34)
    assert (limiter.late_slots, limiter.round_trips) == (1, 1)


async def test_shared_late_wake_up_is_discarded(db: Database) -> None:
    """Late out of the limiter's own sleep (a busy event loop) counts too."""
    time = FakeTime()
    lags = [0.06, 0.06]  # the next two wake-ups 0.06 s late, over the 0.05 s slack; then on time

    async def laggy_sleep(seconds: float) -> None:
        await time.sleep(seconds + (lags.pop(0) if lags else 0.0))

    limiter = SharedRateLimiter(db, 10.0, lease=3, clock=time.clock, sleep=laggy_sleep)
    await limiter.acquire("k")  # slot 0.0
    await limiter.acquire("k")  # waits for 0.1, wakes at 0.16: too late; for 0.2, wakes at 0.26: too late;
    assert time.elapsed == pytest.approx(0.3)  # a new lease follows the last: 0.3, on time
    assert (limiter.late_slots, limiter.round_trips) == (2, 2)


async def test_shared_workers_never_get_the_same_slot(db: Database) -> None:
    """Eight workers (separate connections) reserve at the same moment with the clock stopped: the row lock
    hands each its own slot, and the row ends one slot past the last."""
    frozen = FakeTime()
    blocked = asyncio.Event()
    wakes: list[float] = []

    async def never(seconds: float) -> None:
        wakes.append(frozen.elapsed + seconds)
        await blocked.wait()

    workers = [SharedRateLimiter(db, 10.0, lease=1, clock=frozen.clock, sleep=never) for _ in range(8)]
    granted = 0

    async def request(limiter: SharedRateLimiter) -> None:
        nonlocal granted
        await limiter.acquire("global")
        granted += 1

    tasks = [asyncio.create_task(request(w)) for w in workers]
    await wait_until(lambda: granted + len(wakes) == 8, what="every worker served or waiting")
    await asyncio.sleep(0.2)  # nothing wrongly granted shows up late
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert granted == 1  # slot 0.0
    assert sorted(wakes) == pytest.approx([0.1 * i for i in range(1, 8)])  # each its own later slot
    async with db.session() as session:
        row = (await session.execute(select(RateBucket).where(RateBucket.key == "global"))).scalar_one()
    assert row.tokens - START == pytest.approx(0.8)  # the TAT, in epoch seconds


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_shared_sliding_second_stays_under_the_bound(db: Database, seed: int) -> None:
    """Two simulated workers sharing a key, with random stalls (late wake-ups, gaps between sends, idle
    spells): no sliding second ever holds more than ceil(r * (1 + slack)) sends, yet the stalls did make
    slots late and most of the budget is still used."""
    rate, lease, seconds = 20.0, 2, 15.0
    slack = 0.5 / rate
    bound = math.ceil(rate * (1 + slack))  # 21
    rng = random.Random(seed)
    sim = SimTime()

    def stall() -> float:  # event-loop lag on waking up: often none, sometimes well past the slack
        return rng.choice([0.0, 0.0, 0.0, rng.uniform(0.0, 0.02), rng.uniform(0.0, 0.3)])

    workers = [
        SharedRateLimiter(db, rate, lease=lease, clock=sim.clock, sleep=sim.sleeper(stall)) for _ in range(2)
    ]
    sends: list[float] = []

    async def worker(limiter: SharedRateLimiter) -> None:
        gap = sim.sleeper()
        while sim.now - START < seconds:
            await limiter.acquire("telegram:global")
            sends.append(sim.now)
            if rng.random() < 0.02:
                await gap(rng.uniform(0.2, 1.0))  # no work for a while
            elif rng.random() < 0.3:
                await gap(rng.uniform(0.0, 0.08))  # time spent sending

    await sim.run(*(worker(w) for w in workers))
    assert most_in_one_second(sends) <= bound
    assert sum(w.late_slots for w in workers) > 0  # the stalls did hit the late path
    assert len(sends) >= 0.6 * rate * seconds


async def test_shared_arguments_are_checked(db: Database) -> None:
    with pytest.raises(ValueError):
        SharedRateLimiter(db, 0)
    with pytest.raises(ValueError):
        SharedRateLimiter(db, 10.0, lease=0)
    with pytest.raises(ValueError):
        SharedRateLimiter(db, 10.0, slack_s=-0.1)


async def test_shared_default_lease_books_only_what_is_wanted(db: Database) -> None:
    """Without an explicit lease a lone caller reserves one slot per round trip (booking more would make the
    other workers' sends wait behind slots nobody uses); many waiting callers get up to a lease at once."""
    time = FakeTime()
    limiter = SharedRateLimiter(db, 100.0, clock=time.clock, sleep=time.sleep)  # lease up to 10
    await limiter.acquire("k")
    await limiter.acquire("k")
    assert limiter.round_trips == 2 and time.elapsed == pytest.approx(0.01)
    other = SharedRateLimiter(db, 100.0, clock=time.clock, sleep=time.sleep)
    await other.acquire("k")  # right after the lone caller's slots, not behind a booked lease
    assert time.elapsed == pytest.approx(0.02)
    await asyncio.gather(*(limiter.acquire("k") for _ in range(25)))
    # The first caller finds itself alone (the others have not queued yet), then leases of 10, 10, 4.
    assert limiter.round_trips - 2 == 4
