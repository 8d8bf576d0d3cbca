"""Reads of the bot's own database after a fault: every inbound message stored once and processed, and the
outbox drained with nothing dead."""

from __future__ import annotations

import asyncio
from collections import Counter

from sqlalchemy import func, select

from tawasul.db import Database
from tawasul.db.models import Citizen, MessageDirection, MessageRecord, OutboxItem, OutboxStatus
from tests.faults.harness import WAIT_S


async def inbound_per_chat(db: Database, channel: str) -> Counter[str]:
    """Stored inbound messages per channel identity."""
    async with db.session() as session:
        rows = (
            await session.execute(
                select(Citizen.channel_user_id, func.count())
                .join(MessageRecord, MessageRecord.citizen_id == Citizen.id)
                .where(Citizen.channel == channel, MessageRecord.direction == MessageDirection.IN)
                .group_by(Citizen.channel_user_id)
            )
        ).all()
    return Counter({str(user): int(count) for user, count in rows})


async def unprocessed_or_failed(db: Database) -> list[tuple[str | None, str | None]]:
    """Inbound messages never processed, or processed as a failed turn: (platform id, error)."""
    async with db.session() as session:
        rows = (
            await session.execute(
                select(MessageRecord.platform_message_id, MessageRecord.error).where(
                    MessageRecord.direction == MessageDirection.IN,
                    (MessageRecord.processed_at.is_(None)) | (MessageRecord.error.is_not(None)),
                )
            )
        ).all()
    return [(r[0], r[1]) for r in rows]


async def outbox_settled(db: Database) -> dict[str, int]:
    """Wait until nothing is pending in the outbox; the count per status."""

    async def counts() -> dict[str, int]:
        async with db.session() as session:
            rows = (
                await session.execute(select(OutboxItem.status, func.count()).group_by(OutboxItem.status))
            ).all()
        return {str(status): int(count) for status, count in rows}

    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while (current := await counts()).get(OutboxStatus.PENDING, 0):
        assert loop.time() < deadline, f"the outbox did not settle: {current}"
        await asyncio.sleep(0.2)
    return current
