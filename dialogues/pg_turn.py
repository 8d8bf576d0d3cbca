"""The usual turn on PostgreSQL in two statements: hand-written SQL over asyncpg (``tawasul.db.raw``).

Written by hand because no library gives this: the ORM path (``dialogues.store`` and the engine's locked
turn) costs a dozen round trips and, per statement, more CPU in SQLAlchemy than in the database; these are
two round trips, each one statement and atomic on its own.

``store``: stores the inbound message (deduplicated on the platform's message id; committed before the
webhook is acknowledged), notes the citizen's latest message (WhatsApp's 24-hour window, at most once a
minute) and reads back the citizen, their conversation and the two counts a turn needs. Nothing is locked:
the policy then runs with no transaction open.

``commit``: applies the turn only if the conversation is still at the version ``store`` read (optimistic
versioning, as the issue asks for one of): it locks the conversation row, marks the message handled,
writes the new state (and language), files the case if the turn files one (the case mirror, its FILE_CASE
job, perhaps a review item), and queues the replies in the outbox, leased to this worker when none
of the citizen's earlier items is still pending (else they wait their turn in the outbox). When another
worker's turn came in between, nothing is applied and the engine takes the locked path, which handles the
citizen's unhandled messages in order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from bot.channel import IncomingMessage
from dialogues.cases import FilingRows
from dialogues.states import State
from dialogues.store import inbound_values
from tawasul.db.raw import RawPostgres
from tawasul.outbox import Job, NewJob

# $1 channel, $2 channel user id, $3..$9 the message, $10 the flood window's start.
_STORE = """
WITH c AS (
    SELECT ci.id, ci.language, ci.language_locked, co.state, co.data, co.version, co.last_activity_at
    FROM citizens ci JOIN conversations co ON co.citizen_id = ci.id
    WHERE ci.channel = $1 AND ci.channel_user_id = $2
), ins AS (
    INSERT INTO messages (citizen_id, direction, channel, platform_message_id, kind, text, payload, nlu,
                          created_at)
    SELECT c.id, $3::varchar, $1::varchar, $4::varchar, $5::varchar, $6::text, $7::json, $8::json,
           $9::timestamptz
    FROM c
    ON CONFLICT (channel, platform_message_id) DO NOTHING
    RETURNING id, citizen_id
), seen AS (
    UPDATE citizens SET last_inbound_at = $9::timestamptz
    WHERE id = (SELECT citizen_id FROM ins)
      AND (last_inbound_at IS NULL OR last_inbound_at <= $9::timestamptz - interval '60 seconds'
           OR last_inbound_at > $9::timestamptz)
)
SELECT c.id, c.language, c.language_locked, c.state, c.data, c.version, c.last_activity_at,
       (SELECT id FROM ins) AS message_id,
       (SELECT count(*) FROM messages m
        WHERE m.citizen_id = c.id AND m.direction = $3 AND m.created_at >= $10) AS recent,
       (SELECT count(*) FROM messages m
        WHERE m.citizen_id = c.id AND m.direction = $3 AND m.processed_at IS NULL) AS waiting
FROM c
"""

# A first contact: the citizen and an empty conversation ($1 channel, $2 channel user id, $3 now). The
# citizen may exist already (another worker, or a row without a conversation): then only the conversation.
_CREATE = """
WITH ins AS (
    INSERT INTO citizens (channel, channel_user_id, language_locked, created_at) VALUES ($1, $2, false, $3)
    ON CONFLICT (channel, channel_user_id) DO NOTHING
    RETURNING id
), citizen AS (
    SELECT id FROM ins UNION ALL SELECT id FROM citizens WHERE channel = $1 AND channel_user_id = $2
)
INSERT INTO conversations (citizen_id, state, data, version, updated_at, last_activity_at)
SELECT id, $4, '{}'::json, 1, $3, $3 FROM citizen LIMIT 1
ON CONFLICT (citizen_id) DO NOTHING
"""

# $1 citizen, $2 version read, $3 message, $4 now, $5 state, $6 data, $7 language (NULL: unchanged),
# $8 language locked, $9 ordering key, $10 lease end, $11 the replies (json array of outbox rows).
_COMMIT = """
WITH locked AS (
    SELECT citizen_id FROM conversations WHERE citizen_id = $1 AND version = $2 FOR UPDATE
), msg AS (
    UPDATE messages SET processed_at = $4
    WHERE id = $3 AND processed_at IS NULL AND EXISTS (SELECT 1 FROM locked)
    RETURNING id
), conv AS (
    UPDATE conversations SET state = $5, data = $6, version = version + 1, last_activity_at = $4,
                             updated_at = $4
    WHERE citizen_id = $1 AND EXISTS (SELECT 1 FROM msg)
    RETURNING citizen_id
), lang AS (
    UPDATE citizens SET language = $7::varchar, language_locked = language_locked OR $8
    WHERE id = $1 AND $7::varchar IS NOT NULL AND EXISTS (SELECT 1 FROM msg)
), busy AS (
    SELECT EXISTS (SELECT 1 FROM outbox WHERE ordering_key = $9 AND status = 'pending') AS busy
), queued AS (
    INSERT INTO outbox (kind, dedup_key, ordering_key, payload, status, attempts, next_attempt_at,
                        locked_until, created_at, updated_at)
    SELECT j.kind, j.dedup_key, $9, j.payload, 'pending', CASE WHEN busy.busy THEN 0 ELSE 1 END, $4,
           CASE WHEN busy.busy THEN NULL ELSE $10::timestamptz END, $4, $4
    FROM json_populate_recordset(NULL::outbox, $11::json) WITH ORDINALITY AS j, busy
    WHERE EXISTS (SELECT 1 FROM msg)
    ORDER BY j.ordinality
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING id, kind, payload, attempts, created_at, locked_until IS NOT NULL AS leased
)
{filing}
SELECT (SELECT count(*) FROM conv) AS applied, q.id, q.kind, q.payload, q.attempts, q.created_at, q.leased
FROM (SELECT 1) AS one LEFT JOIN queued q ON true
ORDER BY q.id
"""

# A filing in the same statement: $12 the case row, $13-$16 its FILE_CASE job (the payload gets the case id),
# $17 the review item. A case with this idempotency key already (the same draft sent twice) writes nothing.
_FILED = """, filed AS (
    INSERT INTO cases ({case_columns})
    SELECT {case_columns} FROM json_populate_record(NULL::cases, $12::json)
    WHERE EXISTS (SELECT 1 FROM msg)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
), file_job AS (
    INSERT INTO outbox (kind, dedup_key, ordering_key, payload, status, attempts, next_attempt_at, created_at,
                        updated_at)
    SELECT $13, $14, $15, (($16::json)::jsonb || jsonb_build_object('case_id', filed.id))::json, 'pending', 0,
           $4, $4, $4
    FROM filed
    ON CONFLICT (dedup_key) DO NOTHING
)"""
_REVIEW = """, review AS (
    INSERT INTO review_items ({review_columns})
    SELECT {review_columns} FROM json_populate_record(NULL::review_items, $17::json), filed
)"""


@cache
def _commit_sql(case_columns: tuple[str, ...] | None, review_columns: tuple[str, ...] | None) -> str:
    """The commit statement, with a filing (and its review item) when given their columns. Column names come
    from ``CaseService.filing_rows``, never from input."""
    filing = ""
    if case_columns is not None:
        filing = _FILED.format(case_columns=", ".join(case_columns))
        if review_columns is not None:
            filing += _REVIEW.format(review_columns=", ".join(review_columns))
    return _COMMIT.replace("{filing}", filing)


@dataclass(frozen=True, slots=True)
class Stored:
    """What ``store`` found: the citizen and conversation as they were, and the new message's id."""

    citizen_id: int
    language: str | None
    language_locked: bool
    state: str
    data: dict[str, Any]
    version: int
    last_activity_at: dt.datetime | None
    message_id: int | None  # None: the platform delivered this message before
    recent: int  # the citizen's messages in the flood window, before this one
    waiting: int  # the citizen's messages not handled yet, before this one


@dataclass(frozen=True, slots=True)
class Applied:
    """What ``commit`` queued and leased: run ``leased`` now, in order; the rest are in the outbox."""

    leased: list[Job]
    queued: int
    filed: bool = False  # a filing was given (its FILE_CASE job is queued unless the draft was filed before)


class PgTurns:
    def __init__(self, raw: RawPostgres, lease_s: float) -> None:
        self.raw = raw
        self.lease_s = lease_s

    async def store(self, msg: IncomingMessage, nlu: dict[str, Any] | None, now: dt.datetime,
                    flood_since: dt.datetime) -> Stored | None:
        """Store the message, creating the citizen and their conversation on first contact (one more round
        trip, once per citizen); None only when they could not be created (then nothing was stored)."""
        v = inbound_values(0, msg, nlu)
        args = (msg.channel, msg.sender_id, str(v["direction"]), v["platform_message_id"], v["kind"], v["text"],
                v["payload"], v["nlu"], now, flood_since)
        async with self.raw.durable() as conn:
            row = await conn.fetchrow(_STORE, *args)
            if row is None:
                await conn.execute(_CREATE, msg.channel, msg.sender_id, now, str(State.IDLE))
                row = await conn.fetchrow(_STORE, *args)
        if row is None:
            return None
        return Stored(citizen_id=row[0], language=row[1], language_locked=row[2], state=row[3],
                      data=row[4] or {}, version=row[5], last_activity_at=row[6], message_id=row[7],
                      recent=int(row[8]), waiting=int(row[9]))

    async def commit(self, stored: Stored, *, now: dt.datetime, state: str, data: dict[str, Any],
                     language: str | None, language_locked: bool, ordering_key: str,
                     replies: Sequence[NewJob], filing: FilingRows | None = None) -> Applied | None:
        """Apply the turn; None when the conversation moved on since ``store`` (nothing was applied)."""
        jobs = [{"kind": j.kind, "dedup_key": j.dedup_key, "payload": dict(j.payload)} for j in replies]
        lease = now + dt.timedelta(seconds=self.lease_s)
        args: list[Any] = [stored.citizen_id, stored.version, stored.message_id, now, state, data, language,
                           language_locked, ordering_key, lease, jobs]
        sql = _commit_sql(None, None)
        if filing is not None:
            job = filing.job
            args += [filing.case, job.kind, job.dedup_key, job.ordering_key, dict(job.payload)]
            review_columns = None
            if filing.review is not None:
                args.append(filing.review)
                review_columns = tuple(sorted(filing.review))
            sql = _commit_sql(tuple(sorted(filing.case)), review_columns)
        async with self.raw.durable() as conn:
            rows = await conn.fetch(sql, *args)
        if not rows or rows[0][0] == 0:
            return None
        queued = [r for r in rows if r[1] is not None]
        leased = [Job(id=r[1], kind=r[2], payload=r[3], attempts=r[4], created_at=r[5]) for r in queued if r[6]]
        return Applied(leased=leased, queued=len(queued), filed=filing is not None)
