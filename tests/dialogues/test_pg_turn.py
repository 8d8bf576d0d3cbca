"""The quick turn on PostgreSQL (``dialogues.pg_turn``): two statements instead of the locked transaction.
It must answer exactly as the locked path does, apply nothing when another turn came in between, and leave
replies queued behind the citizen's earlier pending items."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from bot.channel import IncomingMessage
from dialogues.cases import FILE_CASE, SEND, ordering_key
from dialogues.pg_turn import PgTurns
from tawasul.db.models import CaseRecord, Citizen, Conversation, MessageDirection, MessageRecord, OutboxItem, utcnow
from tawasul.outbox import NewJob, enqueue
from tests.dialogues.harness import Harness, Person
from tests.support import settings_for


def _settings(pg_url: str, tmp_path: Path, quick: bool) -> Any:
    return settings_for(pg_url, tmp_path, database={"quick_turns": quick}, dialogue={"default_language": "en"})


@pytest.fixture
async def harness(tmp_path: Path, trained_nlu_dir: Path, pg_url: str) -> AsyncIterator[Harness]:
    async with Harness.running(_settings(pg_url, tmp_path, True)) as harness:
        yield harness


def _turns(harness: Harness) -> PgTurns:
    turns = harness.service.engine.turns
    assert turns is not None, "PostgreSQL runs quick turns by default"
    return turns


async def _script(person: Person) -> list[str]:
    """A whole conversation: greet, file a case (confirm, skip location and photo), thank, ask for help."""
    said: list[str] = []
    for text in ("hello", "The street light on my road in Riffa has been broken for two weeks"):
        said += [m.text for m in await person.say(text)]
    for _ in range(4):
        payloads = [b.payload for b in person.last_buttons()]
        choice = next((p for p in ("confirm", "skip", "send") if p in payloads), None)
        if choice is None:
            break
        said += [m.text for m in await person.press(choice)]
    said += [m.text for m in await person.wait()] if not any("TWS-" in t for t in said) else []
    for text in ("thank you", "/help", "/language"):
        said += [m.text for m in await person.say(text)]
    return said


def _counting(turns: PgTurns) -> list[int]:
    """Count the calls of ``turns.commit`` (turns that took the quick path)."""
    calls = [0]
    commit = turns.commit

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await commit(*args, **kwargs)

    turns.commit = counted  # type: ignore[method-assign]
    return calls


async def test_quick_and_locked_turns_answer_alike(tmp_path: Path, trained_nlu_dir: Path) -> None:
    from tests.conftest import create_pg_database, drop_pg_database

    transcripts: dict[bool, list[str]] = {}
    commits: dict[bool, int] = {}
    for quick in (True, False):
        url = await asyncio.to_thread(create_pg_database)
        try:
            folder = tmp_path / str(quick)
            folder.mkdir()
            async with Harness.running(_settings(url, folder, quick)) as harness:
                turns = harness.service.engine.turns
                assert (turns is not None) == quick
                calls = _counting(turns) if turns is not None else [0]
                transcripts[quick] = await _script(harness.person("same-1"))
                commits[quick] = calls[0]
                async with harness.service.db.session() as session:
                    unhandled = await session.scalar(select(func.count()).select_from(MessageRecord).where(
                        MessageRecord.direction == MessageDirection.IN, MessageRecord.processed_at.is_(None)))
                    cases = (await session.execute(select(CaseRecord))).scalars().all()
                    filings = (await session.execute(select(OutboxItem).where(OutboxItem.kind == FILE_CASE))
                               ).scalars().all()
                assert unhandled == 0
                assert len(cases) == 1 and cases[0].reference is not None and cases[0].status != "pending"
                assert [(f.status, f.payload["case_id"]) for f in filings] == [("done", cases[0].id)]
        finally:
            await asyncio.to_thread(drop_pg_database, url)
    assert commits[True] >= 4 and commits[False] == 0  # most turns took the quick path
    assert any(re.search(r"TWS-\d{4}-\d{6}", t) for t in transcripts[True]), transcripts[True]
    assert transcripts[True] == transcripts[False]


async def _citizen_state(harness: Harness, sender: str) -> tuple[int, int, str]:
    async with harness.service.db.session() as session:
        row = (await session.execute(
            select(Citizen.id, Conversation.version, Conversation.state)
            .join(Conversation, Conversation.citizen_id == Citizen.id)
            .where(Citizen.channel == "story", Citizen.channel_user_id == sender))).one()
    return int(row[0]), int(row[1]), str(row[2])


async def test_store_dedups_and_counts(harness: Harness) -> None:
    person = harness.person("store-1")
    await person.say("hello")  # first contact: the locked path creates the citizen and the conversation
    turns = _turns(harness)
    now = utcnow()
    msg = IncomingMessage(channel="story", sender_id="store-1", message_id="story:store-1:x", text="hi")
    first = await turns.store(msg, None, now, now - dt.timedelta(minutes=1))
    assert first is not None and first.message_id is not None
    assert (first.recent, first.waiting) == (1, 0)  # "hello" is in the window and handled
    again = await turns.store(msg, None, now, now - dt.timedelta(minutes=1))
    assert again is not None and again.message_id is None  # a re-delivery stores nothing
    later = IncomingMessage(channel="story", sender_id="store-1", message_id="story:store-1:y", text="hey")
    second = await turns.store(later, None, now, now - dt.timedelta(minutes=1))
    assert second is not None and (second.recent, second.waiting) == (2, 1)  # "hi" is still unhandled
    stranger = IncomingMessage(channel="story", sender_id="new-1", message_id="story:new-1:1", text="hi")
    fresh = await turns.store(stranger, None, now, now)  # first contact: citizen and conversation created
    assert fresh is not None and fresh.message_id is not None and (fresh.recent, fresh.waiting) == (0, 0)
    assert (fresh.state, fresh.version, fresh.data, fresh.language) == ("idle", 1, {}, None)
    assert fresh.citizen_id != first.citizen_id


async def test_a_turn_in_between_applies_nothing(harness: Harness) -> None:
    person = harness.person("race-1")
    await person.say("hello")
    turns = _turns(harness)
    now = utcnow()
    msg = IncomingMessage(channel="story", sender_id="race-1", message_id="story:race-1:x", text="help")
    stored = await turns.store(msg, None, now, now - dt.timedelta(minutes=1))
    assert stored is not None and stored.message_id is not None
    citizen_id, version, _ = await _citizen_state(harness, "race-1")
    async with harness.service.db.session() as session:  # another worker's turn commits meanwhile
        await session.execute(update(Conversation).where(Conversation.citizen_id == citizen_id)
                              .values(version=Conversation.version + 1, state="idle"))
    reply = NewJob(SEND, {"channel": "story", "recipient": "race-1", "citizen_id": citizen_id,
                          "message": {"text": "x"}}, f"out:{stored.message_id}:0", ordering_key(citizen_id))
    applied = await turns.commit(stored, now=now, state="await_description", data={"x": 1}, language="ar",
                                 language_locked=True, ordering_key=ordering_key(citizen_id), replies=[reply])
    assert applied is None
    _, after, state = await _citizen_state(harness, "race-1")
    assert (after, state) == (version + 1, "idle")  # the other turn's state stands
    async with harness.service.db.session() as session:
        record = (await session.execute(select(MessageRecord).where(MessageRecord.id == stored.message_id))).scalar_one()
        queued = await session.scalar(select(func.count()).select_from(OutboxItem)
                                      .where(OutboxItem.dedup_key == f"out:{stored.message_id}:0"))
        language = await session.scalar(select(Citizen.language).where(Citizen.id == citizen_id))
    assert record.processed_at is None and queued == 0 and language != "ar"
    # The engine then takes the locked path: the message is handled once, in order.
    assert await harness.service.engine.process_citizen(citizen_id) == 1


async def test_replies_wait_behind_an_earlier_pending_item(harness: Harness) -> None:
    person = harness.person("queue-1")
    await person.say("hello")
    turns = _turns(harness)
    citizen_id, _, _ = await _citizen_state(harness, "queue-1")
    async with harness.service.db.session() as session:  # an earlier reply still backing off
        await enqueue(session, SEND, {"channel": "story", "recipient": "queue-1", "citizen_id": citizen_id,
                                      "message": {"text": "earlier"}},
                      dedup_key="earlier-1", ordering_key=ordering_key(citizen_id), delay_s=3600)
    now = utcnow()
    msg = IncomingMessage(channel="story", sender_id="queue-1", message_id="story:queue-1:x", text="help")
    stored = await turns.store(msg, None, now, now - dt.timedelta(minutes=1))
    assert stored is not None
    replies = [NewJob(SEND, {"channel": "story", "recipient": "queue-1", "citizen_id": citizen_id,
                             "message": {"text": f"r{i}"}}, f"out:{stored.message_id}:{i}", ordering_key(citizen_id))
               for i in range(2)]
    applied = await turns.commit(stored, now=now, state="idle", data={}, language=None, language_locked=False,
                                 ordering_key=ordering_key(citizen_id), replies=replies)
    assert applied is not None and applied.queued == 2 and applied.leased == []
    async with harness.service.db.session() as session:
        items = (await session.execute(select(OutboxItem).where(OutboxItem.dedup_key.like(f"out:{stored.message_id}:%"))
                                       .order_by(OutboxItem.id))).scalars().all()
    assert [i.payload["message"]["text"] for i in items] == ["r0", "r1"]  # queued in order
    assert all(i.locked_until is None and i.attempts == 0 for i in items)


async def test_a_draft_filed_twice_is_filed_once(harness: Harness) -> None:
    """The quick turn files in its commit; the same draft again (a double tap on two workers) writes nothing."""
    from dialogues.model import CitizenView, Draft

    person = harness.person("twice-1")
    await person.say("hello")
    turns = _turns(harness)
    citizen_id, _, _ = await _citizen_state(harness, "twice-1")
    view = CitizenView(id=citizen_id, channel="story", channel_user_id="twice-1", language="en",
                       language_locked=False, first_contact=False)
    draft = Draft(id="d-1", text="The bus stop roof in Sitra is broken, call 33334444", type="complaint",
                  agency="transportation", language="en")
    for n in (1, 2):
        now = utcnow()
        msg = IncomingMessage(channel="story", sender_id="twice-1", message_id=f"story:twice-1:{n}", button="send")
        stored = await turns.store(msg, None, now, now - dt.timedelta(minutes=1))
        assert stored is not None
        filing = harness.service.engine.cases.filing_rows(view, draft, "en")
        applied = await turns.commit(stored, now=now, state="idle", data={}, language=None, language_locked=False,
                                     ordering_key=ordering_key(citizen_id), replies=[], filing=filing)
        assert applied is not None and applied.filed
    async with harness.service.db.session() as session:
        cases = (await session.execute(select(CaseRecord).where(CaseRecord.citizen_id == citizen_id))).scalars().all()
        jobs = (await session.execute(select(OutboxItem).where(OutboxItem.kind == FILE_CASE,
                                                               OutboxItem.ordering_key == f"file:{citizen_id}"))
                ).scalars().all()
    assert len(cases) == 1 and len(jobs) == 1
    assert jobs[0].payload["case_id"] == cases[0].id and jobs[0].payload["draft"]["id"] == "d-1"
    assert cases[0].description is not None and "33334444" not in cases[0].description  # redacted
