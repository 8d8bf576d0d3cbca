"""Database operations of the dialogue layer (citizens, inbound log, conversations). Each takes the caller's
session so a whole turn commits or rolls back together."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from bot.channel import IncomingMessage, incoming_to_json
from dialogues.states import State
from tawasul.db.models import Citizen, Conversation, MessageDirection, MessageRecord, utcnow
from tawasul.db.statements import insert_ignoring_conflict
from tawasul.outbox import Row


# Statements of every turn, built once: building a statement costs about as much as running it. The message
# log is written through the table (Core), not the ORM unit of work, for the same reason.
_MESSAGES = cast(Table, MessageRecord.__table__)
_INBOUND_KEY = ("channel", "platform_message_id")  # a platform's re-delivery of a message is a conflict
_CITIZEN_BY_IDENTITY = select(Citizen).where(Citizen.channel == bindparam("channel"),
                                             Citizen.channel_user_id == bindparam("user"))
_CONVERSATION = select(Conversation).where(Conversation.citizen_id == bindparam("citizen")).execution_options(
    populate_existing=True)
_CONVERSATION_LOCKED = _CONVERSATION.with_for_update()
_CITIZEN_AND_CONVERSATION = (
    select(Citizen, Conversation).join(Conversation, Conversation.citizen_id == Citizen.id)
    .where(Citizen.channel == bindparam("channel"), Citizen.channel_user_id == bindparam("user"))
    .execution_options(populate_existing=True)
)
_CITIZEN_AND_CONVERSATION_LOCKED = _CITIZEN_AND_CONVERSATION.with_for_update(of=Conversation)
_UNPROCESSED = (
    select(MessageRecord)
    .where(MessageRecord.citizen_id == bindparam("citizen"), MessageRecord.direction == MessageDirection.IN,
           MessageRecord.processed_at.is_(None))
    .order_by(MessageRecord.id)
    .limit(bindparam("limit"))
)
_INBOUND_SINCE = select(func.count()).select_from(_MESSAGES).where(
    _MESSAGES.c.citizen_id == bindparam("citizen"), _MESSAGES.c.direction == MessageDirection.IN,
    _MESSAGES.c.created_at >= bindparam("since"), _MESSAGES.c.id <= bindparam("upto"))

_INBOUND_COUNTS = select(
    func.count().filter(_MESSAGES.c.created_at >= bindparam("since")),
    func.count().filter(_MESSAGES.c.processed_at.is_(None)),
).where(_MESSAGES.c.citizen_id == bindparam("citizen"), _MESSAGES.c.direction == MessageDirection.IN,
        (_MESSAGES.c.created_at >= bindparam("since")) | _MESSAGES.c.processed_at.is_(None))


def _insert(session: AsyncSession) -> Any:
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    return pg_insert if dialect == "postgresql" else sqlite_insert


def is_postgres(session: AsyncSession) -> bool:
    return session.bind is not None and session.bind.dialect.name == "postgresql"


async def upsert_citizen(session: AsyncSession, channel: str, channel_user_id: str) -> tuple[Citizen, bool]:
    """The citizen of a channel identity, created on first contact. Returns (citizen, created).
    Looked up first: every message but the first finds the row, and this saves a round trip."""
    params = {"channel": channel, "user": channel_user_id}
    citizen = (await session.execute(_CITIZEN_BY_IDENTITY, params)).scalar_one_or_none()
    if citizen is not None:
        return citizen, False
    stmt = (
        _insert(session)(Citizen)
        .values(channel=channel, channel_user_id=channel_user_id, language_locked=False, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["channel", "channel_user_id"])
    )
    result = await session.execute(stmt)
    created = bool(getattr(result, "rowcount", 0))  # False: another worker created it just now
    return (await session.execute(_CITIZEN_BY_IDENTITY, params)).scalar_one(), created


async def citizen_and_conversation(session: AsyncSession, channel: str,
                                   channel_user_id: str) -> tuple[Citizen, Conversation]:
    """The citizen and their conversation row, locked as ``lock_conversation`` does, both created on first
    contact. One round trip for everyone who has written before."""
    query = _CITIZEN_AND_CONVERSATION_LOCKED if is_postgres(session) else _CITIZEN_AND_CONVERSATION
    row = (await session.execute(query, {"channel": channel, "user": channel_user_id})).first()
    if row is not None:
        return row[0], row[1]
    citizen, _ = await upsert_citizen(session, channel, channel_user_id)
    return citizen, await lock_conversation(session, citizen.id)


def inbound_values(citizen_id: int, msg: IncomingMessage, nlu: dict[str, Any] | None) -> dict[str, Any]:
    kind = "button" if msg.button else "command" if msg.command else "media" if msg.attachments else (
        "location" if msg.location else "unsupported" if msg.unsupported else "text")
    return {"citizen_id": citizen_id, "direction": MessageDirection.IN, "channel": msg.channel,
            "platform_message_id": msg.message_id, "kind": kind, "text": msg.text,
            "payload": incoming_to_json(msg), "nlu": nlu, "created_at": utcnow()}


async def insert_inbound(
    session: AsyncSession, citizen_id: int, msg: IncomingMessage, nlu: dict[str, Any] | None
) -> bool:
    """Log an inbound message; False when this platform message id was seen before (a re-delivery)."""
    values = inbound_values(citizen_id, msg, nlu)
    stmt = insert_ignoring_conflict(_MESSAGES, tuple(values), _INBOUND_KEY, returning="id")
    return (await session.execute(stmt, values)).first() is not None


async def insert_inbound_handled(
    session: AsyncSession, citizen_id: int, msg: IncomingMessage, nlu: dict[str, Any] | None, now: dt.datetime
) -> MessageRecord | None:
    """Log an inbound message that this transaction handles (stored already marked processed: the turn
    commits with it, or neither does). Returns it as a detached record, or None for a re-delivery."""
    values = {**inbound_values(citizen_id, msg, nlu), "processed_at": now}
    stmt = insert_ignoring_conflict(_MESSAGES, tuple(values), _INBOUND_KEY, returning="id")
    new_id = (await session.execute(stmt, values)).scalar_one_or_none()
    return None if new_id is None else MessageRecord(id=new_id, **values)


async def inbound_counts(session: AsyncSession, citizen_id: int, since: dt.datetime) -> tuple[int, int]:
    """(messages the citizen sent since ``since``, messages of theirs not handled yet): the flood check
    and the "anything left over?" check of a turn in one round trip."""
    recent, waiting = (await session.execute(_INBOUND_COUNTS, {"citizen": citizen_id, "since": since})).one()
    return int(recent or 0), int(waiting or 0)


def outbound_row(citizen_id: int, channel: str, text: str, payload: dict[str, Any],
                 platform_message_id: str | None = None) -> Row:
    """The log line of a message delivered to the citizen (written by the outbox when it marks it done)."""
    now = utcnow()
    return Row(_MESSAGES, {"citizen_id": citizen_id, "direction": MessageDirection.OUT, "channel": channel,
                           "kind": "text", "text": text, "payload": payload,
                           "platform_message_id": platform_message_id, "processed_at": now, "created_at": now})


async def lock_conversation(session: AsyncSession, citizen_id: int) -> Conversation:
    """The citizen's conversation row, locked for this transaction (PostgreSQL ``FOR UPDATE``; on SQLite
    the ``BEGIN IMMEDIATE`` write lock already serialises turns), created on the first turn."""
    query = _CONVERSATION_LOCKED if is_postgres(session) else _CONVERSATION
    params = {"citizen": citizen_id}
    conv = (await session.execute(query, params)).scalar_one_or_none()
    if conv is not None:
        return conv
    await session.execute(
        _insert(session)(Conversation)
        .values(citizen_id=citizen_id, state=State.IDLE, data={}, version=1, updated_at=utcnow(),
                last_activity_at=utcnow())
        .on_conflict_do_nothing(index_elements=["citizen_id"])
    )
    return (await session.execute(query, params)).scalar_one()


async def inbound_since(session: AsyncSession, citizen_id: int, since: dt.datetime, upto_id: int) -> int:
    """How many messages the citizen sent since ``since``, up to and including message ``upto_id``."""
    params = {"citizen": citizen_id, "since": since, "upto": upto_id}
    return int((await session.execute(_INBOUND_SINCE, params)).scalar_one())


async def next_unprocessed(session: AsyncSession, citizen_id: int) -> MessageRecord | None:
    records = await unprocessed(session, citizen_id, limit=1)
    return records[0] if records else None


async def unprocessed(session: AsyncSession, citizen_id: int, limit: int = 50) -> list[MessageRecord]:
    """The citizen's inbound messages not handled yet, oldest first."""
    return list((await session.execute(_UNPROCESSED, {"citizen": citizen_id, "limit": limit})).scalars())


async def citizens_with_unprocessed(session: AsyncSession, older_than: dt.datetime, limit: int = 100) -> list[int]:
    query = (
        select(MessageRecord.citizen_id)
        .where(
            MessageRecord.direction == MessageDirection.IN,
            MessageRecord.processed_at.is_(None),
            MessageRecord.created_at < older_than,
        )
        .distinct()
        .limit(limit)
    )
    return list((await session.execute(query)).scalars())
