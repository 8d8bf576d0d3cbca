"""Database operations of the dialogue layer (citizens, inbound log, conversations). Each takes the caller's
session so a whole turn commits or rolls back together."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from bot.channel import IncomingMessage, incoming_to_json
from dialogues.states import State
from tawasul.db.models import Citizen, Conversation, MessageDirection, MessageRecord, utcnow


def _insert(session: AsyncSession) -> Any:
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    return pg_insert if dialect == "postgresql" else sqlite_insert


def is_postgres(session: AsyncSession) -> bool:
    return session.bind is not None and session.bind.dialect.name == "postgresql"


async def upsert_citizen(session: AsyncSession, channel: str, channel_user_id: str) -> tuple[Citizen, bool]:
    """The citizen of a channel identity, created on first contact. Returns (citizen, created).
    Looked up first: every message but the first finds the row, and this saves a round trip."""
    query = select(Citizen).where(Citizen.channel == channel, Citizen.channel_user_id == channel_user_id)
    citizen = (await session.execute(query)).scalar_one_or_none()
    if citizen is not None:
        return citizen, False
    stmt = (
        _insert(session)(Citizen)
        .values(channel=channel, channel_user_id=channel_user_id, language_locked=False, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["channel", "channel_user_id"])
    )
    result = await session.execute(stmt)
    created = bool(getattr(result, "rowcount", 0))  # False: another worker created it just now
    return (await session.execute(query)).scalar_one(), created


async def insert_inbound(
    session: AsyncSession, citizen_id: int, msg: IncomingMessage, nlu: dict[str, Any] | None
) -> bool:
    """Log an inbound message; False when this platform message id was seen before (a re-delivery)."""
    kind = "button" if msg.button else "command" if msg.command else "media" if msg.attachments else (
        "location" if msg.location else "unsupported" if msg.unsupported else "text")
    stmt = (
        _insert(session)(MessageRecord)
        .values(
            citizen_id=citizen_id,
            direction=MessageDirection.IN,
            channel=msg.channel,
            platform_message_id=msg.message_id,
            kind=kind,
            text=msg.text,
            payload=incoming_to_json(msg),
            nlu=nlu,
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["channel", "platform_message_id"])
    )
    result = await session.execute(stmt)
    return bool(getattr(result, "rowcount", 0))


async def record_outbound(session: AsyncSession, citizen_id: int, channel: str, text: str,
                          payload: dict[str, Any], platform_message_id: str | None = None) -> None:
    session.add(
        MessageRecord(
            citizen_id=citizen_id, direction=MessageDirection.OUT, channel=channel, kind="text", text=text,
            payload=payload, platform_message_id=platform_message_id, processed_at=utcnow(),
        )
    )


async def lock_conversation(session: AsyncSession, citizen_id: int) -> Conversation:
    """The citizen's conversation row, locked for this transaction (PostgreSQL ``FOR UPDATE``; on SQLite
    the ``BEGIN IMMEDIATE`` write lock already serialises turns), created on the first turn."""
    query = select(Conversation).where(Conversation.citizen_id == citizen_id).execution_options(
        populate_existing=True
    )
    if is_postgres(session):
        query = query.with_for_update()
    conv = (await session.execute(query)).scalar_one_or_none()
    if conv is not None:
        return conv
    await session.execute(
        _insert(session)(Conversation)
        .values(citizen_id=citizen_id, state=State.IDLE, data={}, version=1, updated_at=utcnow(),
                last_activity_at=utcnow())
        .on_conflict_do_nothing(index_elements=["citizen_id"])
    )
    return (await session.execute(query)).scalar_one()


async def next_unprocessed(session: AsyncSession, citizen_id: int) -> MessageRecord | None:
    query = (
        select(MessageRecord)
        .where(
            MessageRecord.citizen_id == citizen_id,
            MessageRecord.direction == MessageDirection.IN,
            MessageRecord.processed_at.is_(None),
        )
        .order_by(MessageRecord.id)
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def unprocessed(session: AsyncSession, citizen_id: int, limit: int = 50) -> list[MessageRecord]:
    """The citizen's inbound messages not handled yet, oldest first."""
    query = (
        select(MessageRecord)
        .where(
            MessageRecord.citizen_id == citizen_id,
            MessageRecord.direction == MessageDirection.IN,
            MessageRecord.processed_at.is_(None),
        )
        .order_by(MessageRecord.id)
        .limit(limit)
    )
    return list((await session.execute(query)).scalars())


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
