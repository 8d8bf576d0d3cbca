"""Transactional outbox: side effects (replies, notifications, case filings, backend calls) are written in the
same transaction as the state change that causes them, then delivered at least once by any worker.

* Enqueue is idempotent on ``dedup_key`` (the same notice or filing is never queued twice).
* Items that share an ``ordering_key`` (one citizen's messages) are delivered strictly in id order: an item is
  claimable only when no earlier pending item with the same key exists.
* A worker claims an item with a conditional UPDATE (a lease in ``locked_until``); on PostgreSQL the candidate
  scan uses ``FOR UPDATE SKIP LOCKED`` so workers do not queue behind each other's rows. A crashed worker's
  lease expires and another worker retries the item.
* Failures back off exponentially with jitter; after ``max_attempts`` the item is ``dead`` (visible to staff,
  retryable with ``retry_dead``).

Hand-written rather than a job-queue library: the guarantee we need is "committed with the state change",
which needs the queue inside our own database transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, exists, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from config.settings import OutboxSettings
from tawasul.db import Database
from tawasul.db.models import OutboxItem, OutboxStatus, utcnow
from tawasul.db.raw import RawPostgres
from tawasul.db.statements import insert_ignoring_conflict

log = logging.getLogger(__name__)
# Core statements on the table, not the ORM entity: the queue is on every message's hot path and the ORM's
# bulk-statement machinery costs more than the statement itself.
_T = cast(Table, OutboxItem.__table__)


class RetryLater(Exception):
    """Temporary failure; retry after ``delay_s`` (or the computed backoff when None)."""

    def __init__(self, reason: str, delay_s: float | None = None) -> None:
        super().__init__(reason)
        self.delay_s = delay_s


class PermanentFailure(Exception):
    """Retrying cannot help (e.g. the citizen blocked the bot); the item goes to ``dead`` at once."""


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Row:
    """A row to insert once the job is marked done; rows of one table from jobs finished together go in
    one statement."""

    table: Table
    values: dict[str, Any]


# What a job records once it is marked done (e.g. the outbound message log).
Recorder = Row
JobHandler = Callable[[Job], Awaitable[Recorder | None]]
DeadHandler = Callable[[Job, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Done:
    job: Job
    record: Recorder | None


def _job(row: Any) -> Job:
    return Job(id=row[0], kind=row[1], payload=row[2], attempts=row[3], created_at=row[4])


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to queue (see ``enqueue``)."""

    kind: str
    payload: Mapping[str, Any]
    dedup_key: str
    ordering_key: str | None = None
    delay_s: float = 0.0


async def enqueue(
    session: AsyncSession,
    kind: str,
    payload: Mapping[str, Any],
    *,
    dedup_key: str,
    ordering_key: str | None = None,
    delay_s: float = 0.0,
) -> None:
    """Queue a job in the caller's transaction; a second job with the same dedup_key is ignored."""
    await enqueue_many(session, [NewJob(kind, payload, dedup_key, ordering_key, delay_s)])


async def enqueue_many(session: AsyncSession, jobs: Sequence[NewJob]) -> None:
    """Queue several jobs in one round trip (a turn's replies), in the order given."""
    if not jobs:
        return
    now = utcnow()
    rows = [
        {"kind": job.kind, "payload": dict(job.payload), "dedup_key": job.dedup_key,
         "ordering_key": job.ordering_key, "status": OutboxStatus.PENDING, "attempts": 0,
         "next_attempt_at": now + dt.timedelta(seconds=job.delay_s), "created_at": now, "updated_at": now}
        for job in jobs
    ]
    statement = insert_ignoring_conflict(_T, tuple(rows[0]), ("dedup_key",))
    await session.execute(statement, rows if len(rows) > 1 else rows[0])


def _columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    return tuple(sorted({name for row in rows for name in row}))


@cache
def _insert_rows_sql(table: str, columns: tuple[str, ...], param: int = 1) -> str:
    """Insert rows given as one json array (``$param``); columns left out take their defaults. Table and
    column names come from our own ``Row`` tables, never from input."""
    cols = ", ".join(columns)
    return f"INSERT INTO {table} ({cols}) SELECT {cols} FROM json_populate_recordset(NULL::{table}, ${param}::json)"


@cache
def _finish_sql(table: str | None, columns: tuple[str, ...]) -> str:
    """Mark items ``$1`` done at ``$2`` and, with a table, insert its rows ``$3`` in the same statement."""
    mark = (f"UPDATE outbox SET status = '{OutboxStatus.DONE.value}', locked_until = NULL, last_error = NULL, "
            "updated_at = $2 WHERE id = ANY($1::bigint[])")
    if table is None:
        return mark
    return f"WITH done AS ({mark}) {_insert_rows_sql(table, columns, 3)}"


class Outbox:
    def __init__(self, db: Database, settings: OutboxSettings) -> None:
        self.db = db
        self.settings = settings
        self.handlers: dict[str, JobHandler] = {}
        self.on_dead: dict[str, DeadHandler] = {}
        self._wakeup = asyncio.Event()
        self._statements: dict[tuple[int, bool, bool], Any] = {}

    def register(self, kind: str, handler: JobHandler, on_dead: DeadHandler | None = None) -> None:
        self.handlers[kind] = handler
        if on_dead is not None:
            self.on_dead[kind] = on_dead

    def wake(self) -> None:
        """New work was committed: let the background loop look now instead of at its next tick."""
        self._wakeup.set()

    # -- claiming -------------------------------------------------------------------------------------
    def _claim_statement(self, limit: int, keyed: bool, *, prefix: bool) -> Any:
        """One ``UPDATE ... WHERE id IN (candidates) RETURNING``: leases due items in a single round trip.

        ``prefix=False`` (the general drain) takes at most the head of each ordering key, so a batch can run
        concurrently. ``prefix=True`` (one key, run in order by ``run_in_order``) takes the run of items at
        the front of that key's queue that are all free and due, so one citizen's several replies go out
        in one claim. Built once per shape with bound parameters (building it is most of its cost)."""
        shape = (limit, keyed, prefix)
        cached = self._statements.get(shape)
        if cached is not None:
            return cached
        now = bindparam("p_now", type_=_T.c.next_attempt_at.type)
        table = _T
        cand = table.alias("cand")
        earlier = table.alias("earlier")
        blocking = earlier.c.status == OutboxStatus.PENDING
        if prefix:  # an earlier item in someone's hands or backing off holds the rest back
            blocking = blocking & (((earlier.c.locked_until.is_not(None)) & (earlier.c.locked_until >= now))
                                   | (earlier.c.next_attempt_at > now))
        blocked = (
            exists().where(and_(earlier.c.ordering_key == cand.c.ordering_key, earlier.c.id < cand.c.id, blocking))
            .correlate(cand)
        )
        free = (cand.c.locked_until.is_(None)) | (cand.c.locked_until < now)
        candidates = (
            select(cand.c.id)
            .where(cand.c.status == OutboxStatus.PENDING, cand.c.next_attempt_at <= now, free,
                   (cand.c.ordering_key.is_(None)) | ~blocked)
            .order_by(cand.c.id)
            .limit(limit)
        )
        if keyed:
            candidates = candidates.where(cand.c.ordering_key == bindparam("p_key"))
        if self.db.dialect == "postgresql":  # other workers' candidates are skipped, not waited for
            candidates = candidates.with_for_update(skip_locked=True, of=cand)
        # The conditional UPDATE is what makes a claim exclusive (SQLite has no SKIP LOCKED).
        item_free = (table.c.locked_until.is_(None)) | (table.c.locked_until < now)
        statement = (
            update(table)
            .where(table.c.id.in_(candidates.scalar_subquery()), table.c.status == OutboxStatus.PENDING,
                   item_free)
            .values(locked_until=bindparam("p_lease"), attempts=table.c.attempts + 1, updated_at=now)
            .returning(table.c.id, table.c.kind, table.c.payload, table.c.attempts, table.c.created_at)
        )
        self._statements[shape] = statement
        return statement

    def _claim_params(self, ordering_key: str | None) -> dict[str, Any]:
        now = utcnow()
        params: dict[str, Any] = {"p_now": now, "p_lease": now + dt.timedelta(seconds=self.settings.lease_s)}
        if ordering_key is not None:
            params["p_key"] = ordering_key
        return params

    async def claim(self, session: AsyncSession, ordering_key: str, *, limit: int = 20) -> list[Job]:
        """Lease, in the caller's transaction, the items at the front of ``ordering_key``'s queue. The
        dialogue engine claims a citizen's replies in the same commit as the turn that queued them (no
        extra transaction), then hands them to ``run_in_order`` after the commit."""
        statement = self._claim_statement(limit, True, prefix=True)
        rows = await session.execute(statement, self._claim_params(ordering_key))
        return sorted((_job(r) for r in rows), key=lambda j: j.id)

    async def _claim_batch(self, limit: int, ordering_key: str | None, *, prefix: bool = False) -> list[Job]:
        """Lease up to ``limit`` due items (the head of each key, or with ``prefix`` the run of free items at
        the front of ``ordering_key``) in one statement."""
        async with self.db.autocommit() as session:  # one statement: atomic on its own
            statement = self._claim_statement(limit, ordering_key is not None, prefix=prefix)
            rows = await session.execute(statement, self._claim_params(ordering_key))
            jobs = [_job(r) for r in rows]
        return sorted(jobs, key=lambda j: j.id)

    # -- running --------------------------------------------------------------------------------------
    async def run_due(self, *, limit: int = 50, ordering_key: str | None = None, max_rounds: int = 100) -> int:
        """Deliver what is due now (optionally only one ordering key); return how many were handled.

        Runs rounds until nothing is claimable, so a citizen's queued replies go out in one call. For one key,
        a round claims the free run at the front of its queue and runs it in order; another round follows only
        when that claim was full: an inline delivery after a turn costs one claim, not a second one that finds
        nothing. What is queued meanwhile is delivered by whoever queued it; an item another worker queued
        behind these while they were being sent (it could not claim it) waits for a loop's next poll.
        """
        handled = 0
        for _ in range(max_rounds):
            if ordering_key is not None:
                jobs = await self._claim_batch(limit, ordering_key, prefix=True)
                if jobs:
                    await self.run_in_order(jobs)
                    handled += len(jobs)
                if len(jobs) < limit:
                    break
                continue
            jobs = await self._claim_batch(limit, None)
            if not jobs:
                break
            # A batch never holds two items of one ordering key (the later one is blocked), so the
            # jobs are independent and can run concurrently.
            results = await asyncio.gather(*(self._execute(job) for job in jobs))
            await self._finish([r for r in results if r is not None])
            handled += len(jobs)
        return handled

    async def run_in_order(self, jobs: list[Job]) -> int:
        """Run claimed items of one ordering key one after another; the first failure stops the run and
        the items after it are released (still in order) for the background loop. Returns how many ran."""
        done: list[_Done] = []
        for index, job in enumerate(jobs):
            result = await self._execute(job)
            if result is None:
                await self._release(jobs[index + 1:])
                break
            done.append(result)
        await self._finish(done)
        return len(done)

    async def _execute(self, job: Job) -> _Done | None:
        """Run one job; its success (with what the handler asks to record) or None when it failed (already
        rescheduled or dead)."""
        handler = self.handlers.get(job.kind)
        try:
            if handler is None:
                raise PermanentFailure(f"no handler for outbox kind {job.kind!r}")
            record = await handler(job)
        except RetryLater as exc:
            await self._reschedule(job, str(exc), exc.delay_s)
        except PermanentFailure as exc:
            await self._dead(job, str(exc))
        except Exception as exc:
            log.warning("outbox job %s (%s) failed: %s", job.id, job.kind, type(exc).__name__, exc_info=True)
            await self._reschedule(job, f"{type(exc).__name__}: {exc}", None)
        else:
            return _Done(job, record)
        return None

    async def _finish(self, done: list[_Done]) -> None:
        """Mark jobs done, then write what their handlers record about them (the outbound message log): one
        statement for the marks however many were delivered together."""
        if not done:
            return
        if self.db.raw is not None:
            await self._finish_raw(self.db.raw, done)
            return
        # Not one transaction (that would cost BEGIN and COMMIT round trips): the mark first, then the log, so
        # a crash in between loses a log line, never sends a message twice.
        async with self.db.autocommit() as session:
            await session.execute(
                update(_T)
                .where(_T.c.id.in_([item.job.id for item in done]))
                .values(status=OutboxStatus.DONE, locked_until=None, last_error=None, updated_at=utcnow())
            )
            rows: dict[Table, list[dict[str, Any]]] = {}
            for item in done:
                if item.record is not None:
                    rows.setdefault(item.record.table, []).append(item.record.values)
            for table, values in rows.items():
                await session.execute(insert(table), values)

    async def _finish_raw(self, raw: RawPostgres, done: list[_Done]) -> None:
        """``_finish`` on PostgreSQL: the marks and the log rows in one statement (``tawasul.db.raw``)."""
        ids = [item.job.id for item in done]
        rows: dict[str, list[dict[str, Any]]] = {}
        for item in done:
            if item.record is not None:
                rows.setdefault(item.record.table.name, []).append(item.record.values)
        tables = list(rows.items())
        async with raw.relaxed() as conn:
            if not tables:
                await conn.execute(_finish_sql(None, ()), ids, utcnow())
                return
            name, values = tables[0]
            await conn.execute(_finish_sql(name, _columns(values)), ids, utcnow(), values)
            for name, values in tables[1:]:
                await conn.execute(_insert_rows_sql(name, _columns(values)), values)

    async def _release(self, jobs: list[Job]) -> None:
        """Give claimed but unattempted items back (their attempt does not count)."""
        if not jobs:
            return
        async with self.db.autocommit() as session:
            await session.execute(
                update(_T)
                .where(_T.c.id.in_([job.id for job in jobs]), _T.c.status == OutboxStatus.PENDING)
                .values(locked_until=None, attempts=_T.c.attempts - 1, updated_at=utcnow())
            )

    def backoff(self, attempts: int) -> float:
        base = self.settings.backoff_base_s * (2 ** max(0, attempts - 1))
        return float(min(self.settings.backoff_max_s, base) * random.uniform(0.5, 1.0))

    async def _reschedule(self, job: Job, error: str, delay_s: float | None) -> None:
        if job.attempts >= self.settings.max_attempts:
            await self._dead(job, error)
            return
        delay = self.backoff(job.attempts) if delay_s is None else delay_s
        async with self.db.autocommit() as session:
            await session.execute(
                update(_T)
                .where(_T.c.id == job.id)
                .values(
                    locked_until=None,
                    last_error=error[:2000],
                    next_attempt_at=utcnow() + dt.timedelta(seconds=delay),
                    updated_at=utcnow(),
                )
            )

    async def _dead(self, job: Job, error: str) -> None:
        log.error("outbox job %s (%s) is dead after %d attempts: %s", job.id, job.kind, job.attempts, error)
        async with self.db.session() as session:
            await session.execute(
                update(_T)
                .where(_T.c.id == job.id)
                .values(status=OutboxStatus.DEAD, locked_until=None, last_error=error[:2000], updated_at=utcnow())
            )
        on_dead = self.on_dead.get(job.kind)
        if on_dead is not None:
            try:
                await on_dead(job, error)
            except Exception:
                log.exception("dead-letter hook for %s failed", job.kind)

    async def run_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_due()
            except Exception:
                log.exception("outbox loop error; retrying")
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):  # woken early by new work, or the poll interval passed
                await asyncio.wait_for(self._wakeup.wait(), timeout=self.settings.poll_interval_s)

    # -- operations -----------------------------------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        async with self.db.session() as session:
            rows = (
                await session.execute(
                    select(OutboxItem.status, func.count(), func.min(OutboxItem.created_at)).group_by(
                        OutboxItem.status
                    )
                )
            ).all()
        out: dict[str, Any] = {"pending": 0, "dead": 0, "done": 0, "oldest_pending_age_s": 0.0}
        for status, count, oldest in rows:
            out[str(status)] = int(count)
            if status == OutboxStatus.PENDING and oldest is not None:
                if oldest.tzinfo is None:
                    oldest = oldest.replace(tzinfo=dt.UTC)
                out["oldest_pending_age_s"] = (utcnow() - oldest).total_seconds()
        return out

    async def retry_dead(self, item_id: int | None = None) -> int:
        """Put dead items back in the queue (staff action)."""
        async with self.db.session() as session:
            stmt = update(OutboxItem).where(OutboxItem.status == OutboxStatus.DEAD)
            if item_id is not None:
                stmt = stmt.where(OutboxItem.id == item_id)
            result = await session.execute(
                stmt.values(status=OutboxStatus.PENDING, attempts=0, next_attempt_at=utcnow(), locked_until=None)
            )
        self.wake()
        return int(getattr(result, "rowcount", 0) or 0)
