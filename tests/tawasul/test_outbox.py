"""The transactional outbox: dedup, per-key ordering, retries, dead letters, and no double delivery when
two workers drain the same queue (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from sqlalchemy import select

from config.settings import OutboxSettings
from tawasul.db import Database
from tawasul.db.migrate import upgrade_async
from tawasul.db.models import OutboxItem, OutboxStatus, utcnow
from tawasul.outbox import Job, JobHandler, Outbox, PermanentFailure, Recorder, RetryLater, Row, enqueue

FAST = OutboxSettings(poll_interval_s=0.05, max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.02)


@pytest.fixture
async def db(db_url: str):  # type: ignore[no-untyped-def]
    await upgrade_async(db_url)
    database = Database(db_url)
    yield database
    await database.close()


async def test_enqueue_is_idempotent_on_dedup_key(db: Database) -> None:
    for _ in range(3):
        async with db.session() as s:
            await enqueue(s, "send", {"n": 1}, dedup_key="k1")
    async with db.session() as s:
        rows = (await s.execute(select(OutboxItem))).scalars().all()
    assert len(rows) == 1


def failing_once(*numbers: int) -> tuple[list[int], JobHandler]:
    """A handler that fails the jobs ``numbers`` once (retry at once) and notes the rest in order."""
    seen: list[int] = []
    fail = set(numbers)

    async def handler(job: Job) -> None:
        n = job.payload["n"]
        if n in fail:
            fail.discard(n)
            raise RetryLater("platform busy", delay_s=0)
        seen.append(n)

    return seen, handler


async def three_in_one_key(db: Database, handler: JobHandler) -> Outbox:
    box = Outbox(db, FAST)
    box.register("send", handler)
    async with db.session() as s:
        for n in (1, 2, 3):
            await enqueue(s, "send", {"n": n}, dedup_key=f"k{n}", ordering_key="c:1")
    return box


async def test_items_of_one_key_run_in_order_even_when_the_first_fails(db: Database) -> None:
    seen, handler = failing_once(1)
    box = await three_in_one_key(db, handler)
    # First round: 1 fails, 2 and 3 are blocked behind it; nothing delivered out of order.
    await box.run_due(ordering_key="c:1", max_rounds=1)
    assert seen == []
    await box.run_due(ordering_key="c:1")
    assert seen == [1, 2, 3]


async def test_permanent_failure_goes_dead_and_can_be_retried(db: Database) -> None:
    attempts = Counter[int]()
    dead: list[str] = []
    healthy = False

    async def handler(job: Job) -> None:
        attempts[job.id] += 1
        if not healthy:
            raise PermanentFailure("citizen blocked the bot")

    async def on_dead(job: Job, error: str) -> None:
        dead.append(error)

    box = Outbox(db, FAST)
    box.register("send", handler, on_dead=on_dead)
    async with db.session() as s:
        await enqueue(s, "send", {}, dedup_key="x")
    await box.run_due()
    assert dead == ["citizen blocked the bot"]
    assert (await box.stats())["dead"] == 1
    healthy = True
    assert await box.retry_dead() == 1
    await box.run_due()
    stats = await box.stats()
    assert stats["dead"] == 0 and stats["done"] == 1


async def test_retries_stop_after_max_attempts(db: Database) -> None:
    box = Outbox(db, FAST)

    async def handler(job: Job) -> None:
        raise RuntimeError("boom")

    box.register("send", handler)
    async with db.session() as s:
        await enqueue(s, "send", {}, dedup_key="y")
    for _ in range(20):
        await box.run_due()
        if (await box.stats())["dead"]:
            break
        await asyncio.sleep(0.03)
    async with db.session() as s:
        item = (await s.execute(select(OutboxItem))).scalar_one()
    assert item.status == OutboxStatus.DEAD and item.attempts == FAST.max_attempts
    assert "boom" in (item.last_error or "")


async def test_two_workers_never_deliver_an_item_twice(db: Database) -> None:
    delivered = Counter[int]()

    async def handler(job: Job) -> None:
        await asyncio.sleep(0)
        delivered[job.payload["n"]] += 1

    boxes = []
    for _ in range(2):
        box = Outbox(Database(db.url), FAST)
        box.register("send", handler)
        boxes.append(box)
    async with db.session() as s:
        for n in range(60):
            await enqueue(s, "send", {"n": n}, dedup_key=f"n{n}", ordering_key=f"c:{n % 7}")
    await asyncio.gather(*(b.run_due(limit=10) for b in boxes for _ in range(2)))
    await boxes[0].run_due()
    for box in boxes:
        await box.db.close()
    assert sorted(delivered) == list(range(60))
    assert set(delivered.values()) == {1}


async def test_claim_in_a_transaction_takes_the_free_front_of_one_key_and_runs_it_in_order(db: Database) -> None:
    """The engine leases a citizen's replies in the turn's own commit (``claim``) and sends them one after
    another (``run_in_order``); what a job records is written once it is marked done."""
    seen: list[int] = []

    async def handler(job: Job) -> Recorder:
        seen.append(job.payload["n"])
        now = utcnow()
        return Row(OutboxItem.__table__, {  # type: ignore[arg-type]
            "kind": "log", "payload": {"sent": job.payload["n"]}, "dedup_key": f"log{job.payload['n']}",
            "status": OutboxStatus.DONE, "attempts": 0, "next_attempt_at": now, "created_at": now,
            "updated_at": now})

    box = Outbox(db, FAST)
    box.register("send", handler)
    async with db.session() as s:
        for n in (1, 2, 3):
            await enqueue(s, "send", {"n": n}, dedup_key=f"k{n}", ordering_key="c:1")
        await enqueue(s, "send", {"n": 9}, dedup_key="other", ordering_key="c:2")
        jobs = await box.claim(s, "c:1")
    assert [j.payload["n"] for j in jobs] == [1, 2, 3]  # the whole front of c:1, nothing of c:2
    async with db.session() as s:  # leased: another claim (another worker) gets none of them
        assert await box.claim(s, "c:1") == []
    assert await box.run_in_order(jobs) == 3
    assert seen == [1, 2, 3]
    async with db.session() as s:
        rows = {r.dedup_key: r for r in (await s.execute(select(OutboxItem))).scalars()}
    assert all(rows[f"k{n}"].status == OutboxStatus.DONE for n in (1, 2, 3))
    assert {"log1", "log2", "log3"} <= set(rows) and rows["other"].status == OutboxStatus.PENDING


async def test_claim_stops_behind_an_item_that_is_backing_off_or_held(db: Database) -> None:
    box = Outbox(db, FAST)
    box.register("send", lambda job: asyncio.sleep(0))
    async with db.session() as s:
        await enqueue(s, "send", {"n": 1}, dedup_key="k1", ordering_key="c:1", delay_s=60)  # backing off
        await enqueue(s, "send", {"n": 2}, dedup_key="k2", ordering_key="c:1")
        assert await box.claim(s, "c:1") == []  # 2 may not overtake 1
    async with db.session() as s:
        await enqueue(s, "send", {"n": 3}, dedup_key="k3", ordering_key="c:3")
        await enqueue(s, "send", {"n": 4}, dedup_key="k4", ordering_key="c:3")
    first = await box._claim_batch(10, "c:3")  # another worker holds the head of c:3
    assert [j.payload["n"] for j in first] == [3]
    async with db.session() as s:
        assert await box.claim(s, "c:3") == []


async def test_run_in_order_stops_at_a_failure_and_gives_the_rest_back_in_order(db: Database) -> None:
    seen, handler = failing_once(2)
    box = await three_in_one_key(db, handler)
    async with db.session() as s:
        jobs = await box.claim(s, "c:1")
    assert await box.run_in_order(jobs) == 1
    assert seen == [1]
    async with db.session() as s:
        third = (await s.execute(select(OutboxItem).where(OutboxItem.dedup_key == "k3"))).scalar_one()
    assert third.status == OutboxStatus.PENDING and third.locked_until is None and third.attempts == 0
    await box.run_due(ordering_key="c:1")
    assert seen == [1, 2, 3]


async def test_a_backlog_claim_probes_the_pending_key_index(pg_url: str) -> None:
    """With thousands of pending items (a platform outage, a burst of status events) a claim checks each
    candidate's "earlier item of this key pending?" with one probe of the partial index, not a scan of every
    pending row (that made a claim O(n^2)); the plan is read on statistics that do not know the backlog yet,
    as right after the burst."""
    from sqlalchemy import text

    await upgrade_async(pg_url)
    db = Database(pg_url, pool_size=2)
    try:
        async with db.session() as session:
            await session.execute(text(
                "INSERT INTO outbox (kind, dedup_key, ordering_key, payload, status, attempts, next_attempt_at, "
                "created_at, updated_at) SELECT 'send', 'd' || g, 'citizen:' || (g % 3000), '{}'::json, "
                "CASE WHEN g <= 1000 THEN 'done' ELSE 'pending' END, 0, now(), now(), now() "
                "FROM generate_series(1, 7000) g"))
        outbox = Outbox(db, OutboxSettings())
        statement = outbox._claim_statement(50, False, prefix=False)
        compiled = statement.compile(dialect=db.engine.dialect)
        params = {**compiled.params, **outbox._claim_params(None)}
        async with db.session() as session:
            raw = (await (await session.connection()).get_raw_connection()).driver_connection
            plan = "\n".join(r[0] for r in await raw.fetch(
                "EXPLAIN " + str(compiled), *[params[name] for name in compiled.positiontup]))
            claimed = (await session.execute(statement, outbox._claim_params(None))).all()
        subplan = plan[plan.index("SubPlan"):]
        assert "ix_outbox_pending_key" in subplan and "ix_outbox_due" not in subplan, plan
        # Heads of their keys only, one per key, oldest first.
        assert len(claimed) == 50 and len({r.id for r in claimed}) == 50
    finally:
        await db.close()
