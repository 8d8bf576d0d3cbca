"""The engine's one-transaction turn, on SQLite and PostgreSQL: a re-delivered message is handled once, the
per-citizen flood limit keeps every message but answers the excess with one notice, and messages left
unprocessed (a crash, a database outage) are handled before a new one, in order."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from bot.channel import IncomingMessage, incoming_to_json
from dialogues.store import upsert_citizen
from tawasul.app import Service
from tawasul.db.models import Citizen, MessageDirection, MessageRecord, utcnow
from tests.dialogues.harness import Harness
from tests.support import settings_for

FLOOD_LIMIT = 3


@pytest.fixture
async def harness(tmp_path: Path, trained_nlu_dir: Path, db_url: str) -> AsyncIterator[Harness]:
    settings = settings_for(db_url, tmp_path, dialogue={"flood_limit_per_minute": FLOOD_LIMIT,
                                                         "default_language": "en"})
    async with Harness.running(settings) as harness:
        yield harness


async def inbound(service: Service, sender: str) -> list[MessageRecord]:
    async with service.db.session() as session:
        rows = await session.execute(
            select(MessageRecord).join(Citizen, Citizen.id == MessageRecord.citizen_id)
            .where(Citizen.channel_user_id == sender, MessageRecord.direction == MessageDirection.IN)
            .order_by(MessageRecord.id))
        return list(rows.scalars())


async def test_a_redelivered_message_is_handled_once(harness: Harness) -> None:
    citizen = harness.person("dup-1")
    first = await citizen.send(text="hello", message_id="story:dup-1:1")
    assert first, "the first delivery is answered"
    assert await citizen.send(text="hello", message_id="story:dup-1:1") == []
    records = await inbound(harness.service, "dup-1")
    assert len(records) == 1 and records[0].processed_at is not None


async def test_flood_limit_keeps_every_message_and_answers_the_excess_once(harness: Harness) -> None:
    citizen = harness.person("flood-1")
    answers = [await citizen.say(text) for text in ("hello", "help", "thanks", "hi", "help", "ok")]
    flood = "many messages from you within a minute"
    assert all(reply and flood not in reply[0].text for reply in answers[:FLOOD_LIMIT])
    excess = [m.text for reply in answers[FLOOD_LIMIT:] for m in reply]
    assert sum(flood in text for text in excess) == 1, excess  # one notice, not one per message
    assert all(flood in text for text in excess), "nothing past the limit is processed as a turn"
    records = await inbound(harness.service, "flood-1")
    assert len(records) == 6 and all(r.processed_at is not None for r in records)  # all kept


async def test_messages_left_unprocessed_are_handled_first_in_order(harness: Harness) -> None:
    service = harness.service
    citizen = harness.person("left-1")
    # A message stored but never handled (the worker died before its turn).
    left = IncomingMessage(channel="story", sender_id="left-1", message_id="story:left-1:0", command="help")
    async with service.db.session() as session:
        row, _ = await upsert_citizen(session, "story", "left-1")
        await session.execute(insert(MessageRecord).values(
            citizen_id=row.id, direction=MessageDirection.IN, channel="story", kind="command",
            platform_message_id=left.message_id, payload=incoming_to_json(left),
            created_at=utcnow() - dt.timedelta(seconds=30)))
    replies = await citizen.say("/language")
    help_text = service.engine.policy.t("en", "help").splitlines()[0]
    texts = [m.text for m in replies]
    assert texts and help_text in texts[0], texts  # the left-over /help is answered first
    assert len(texts) >= 2 and help_text not in texts[-1]  # then the new message
    records = await inbound(service, "left-1")
    assert records[0].platform_message_id == "story:left-1:0"
    assert all(r.processed_at is not None for r in records)
    async with service.db.session() as session:
        waiting = (await session.execute(select(func.count()).select_from(MessageRecord).where(
            MessageRecord.processed_at.is_(None)))).scalar_one()
    assert waiting == 0


async def test_background_deliveries_are_bounded_and_finished_on_close(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status notices are delivered beside the webhook answer in at most ``BACKGROUND_DELIVERIES`` tasks; past
    that the caller waits for a free slot (backpressure on the backend's sender), and ``close`` waits for the
    tasks in hand and leaves later ones to the outbox loop."""
    import asyncio

    from dialogues import engine as engine_module

    monkeypatch.setattr(engine_module, "BACKGROUND_DELIVERIES", 2)
    engine = type(harness.service.engine)(  # a fresh engine: its slots are sized at construction
        harness.service.settings, harness.service.db, harness.service.engine.nlu, harness.service.engine.policy,
        harness.service.engine.cases, harness.service.engine.outbox, None)
    release = asyncio.Event()
    delivered: list[int] = []
    woken: list[bool] = []

    async def slow_deliver(citizen_id: int, *, replies: bool = True) -> None:
        await release.wait()
        delivered.append(citizen_id)

    monkeypatch.setattr(engine, "deliver", slow_deliver)
    monkeypatch.setattr(engine.outbox, "wake", lambda: woken.append(True))
    await engine.deliver_soon(1)
    await engine.deliver_soon(2)  # both answered at once
    third = asyncio.create_task(engine.deliver_soon(3))
    await asyncio.sleep(0.05)
    assert not third.done(), "the third waits for a free slot"
    release.set()
    await third  # a slot freed: it runs in the background too
    await engine.close(timeout_s=5)
    assert sorted(delivered) == [1, 2, 3] and woken == []
    await engine.deliver_soon(4)  # after close: the outbox loop's
    assert woken == [True] and sorted(delivered) == [1, 2, 3]
