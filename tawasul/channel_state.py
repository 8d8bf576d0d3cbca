"""Channel state kept in the shared database, so every worker sees the same (WhatsApp's 24-hour window,
delivery receipts). The channels define the protocols; this module implements them on our tables."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from tawasul.db import Database
from tawasul.db.models import Citizen, MessageDirection, MessageRecord, utcnow


class DbWindowTracker:
    """``bot.whatsapp_window.WindowTracker`` over ``citizens.last_inbound_at`` (set by the dialogue engine
    when it stores an inbound message, in the same transaction)."""

    def __init__(self, db: Database, channel: str = "whatsapp") -> None:
        self.db = db
        self.channel = channel

    async def last_inbound(self, wa_id: str) -> dt.datetime | None:
        async with self.db.session() as session:
            value = (await session.execute(select(Citizen.last_inbound_at).where(
                Citizen.channel == self.channel, Citizen.channel_user_id == wa_id))).scalar()
        if value is None:
            return None
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)

    async def record_inbound(self, wa_id: str, at: dt.datetime) -> None:
        return None  # the engine records it with the message itself


class DeliveryLog:
    """Receives ``on_sent`` and ``on_status`` from channels: outbound platform ids and their receipts."""

    def __init__(self, db: Database, channel: str = "whatsapp") -> None:
        self.db = db
        self.channel = channel

    async def on_sent(self, sent: Any) -> None:
        async with self.db.session() as session:
            citizen_id = (await session.execute(select(Citizen.id).where(
                Citizen.channel == self.channel, Citizen.channel_user_id == sent.recipient_id))).scalar()
            if citizen_id is None:
                return
            session.add(MessageRecord(citizen_id=citizen_id, direction=MessageDirection.OUT, channel=self.channel,
                                      platform_message_id=sent.message_id, kind="template" if sent.template
                                      else "sent", payload={}, delivery_status="sent", processed_at=utcnow()))

    async def on_status(self, status: Any) -> None:
        # Receipts can arrive out of order (read before delivered); a status only ever moves forward.
        new = str(status.status)[:16]
        async with self.db.session() as session:
            rows = (await session.execute(select(MessageRecord).where(
                MessageRecord.channel == self.channel, MessageRecord.platform_message_id == status.message_id,
                MessageRecord.direction == MessageDirection.OUT))).scalars()
            for row in rows:
                if _RANK.get(new, 0) > _RANK.get(row.delivery_status or "", 0):
                    row.delivery_status = new


_RANK = {"sent": 1, "delivered": 2, "read": 3, "failed": 4}
