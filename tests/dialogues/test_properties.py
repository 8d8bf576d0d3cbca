"""Property test: random sequences of texts, button presses (fresh and stale), media, commands and backend
status events never crash a conversation, never lose a draft, and never file a case twice."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from backend_client.errors import BackendRejected
from dialogues.model import ConversationData
from dialogues.states import DRAFT_STATES, State
from tawasul.app import Service
from tawasul.db.models import CaseRecord, Citizen, Conversation, MessageDirection, MessageRecord
from tests.dialogues.harness import Harness, Person, StoryChannel
from tests.support import settings_for

TEXTS = [
    "الشارع اللي جدام بيتنا في سترة مليان حفر",
    "I want to renew my passport, what documents do I need?",
    "ليش ما تسوون مواقف زيادة عند المركز الصحي؟",
    "el kahraba maqtoo3a 3indna fi 3ali",
    "مرحبا", "hi", "yes", "لا", "الغاء", "شكرا", "help", "EWA", "البلدية",
    "وين وصلت شكواي TWS-2026-000001", "TWS-2026-999999",
]
COMMANDS = ["start", "new", "status", "cases", "help", "cancel", "language", "nonsense"]
STALE = ["confirm", "chtype", "chag", "cancel", "skip", "send", "rskip", "resume", "discard", "asis",
         "type:complaint", "ag:ewa", "ag:other", "agp:2", "agp:99", "menu:new", "menu:status", "lang:en",
         "rate:TWS-2026-000001:5", "info:TWS-2026-000001", "st:TWS-2026-000001", "bogus", "ag:nope"]
STATUSES = ["under_review", "in_progress", "answered", "closed", "more_info_requested", "reopened"]

action = st.one_of(
    st.tuples(st.just("text"), st.sampled_from(TEXTS)),
    st.tuples(st.just("text"), st.text(min_size=0, max_size=60)),
    st.tuples(st.just("press"), st.integers(min_value=0, max_value=9)),
    st.tuples(st.just("press"), st.integers(min_value=0, max_value=9)),
    st.tuples(st.just("stale"), st.sampled_from(STALE)),
    st.tuples(st.just("command"), st.sampled_from(COMMANDS)),
    st.tuples(st.just("photo"), st.none()),
    st.tuples(st.just("location"), st.none()),
    st.tuples(st.just("event"), st.sampled_from(STATUSES)),
)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, trained_nlu_dir: Path) -> Iterator[tuple[Any, Harness]]:
    tmp = tmp_path_factory.mktemp("prop")
    loop = asyncio.new_event_loop()
    settings = settings_for(f"sqlite+aiosqlite:///{tmp / 'bot.db'}", tmp)
    channel = StoryChannel()
    service = Service(settings, channels=[channel])
    loop.run_until_complete(service.start())
    try:
        yield loop, Harness(service, channel)
    finally:
        loop.run_until_complete(service.stop())
        loop.close()


async def _play(h: Harness, person: Person, actions: list[tuple[str, Any]]) -> None:
    refs: list[str] = []
    for kind, value in actions:
        if kind == "text":
            await person.send(text=value)
        elif kind == "press":
            buttons = person.last_buttons()
            if buttons:
                await person.send(button=buttons[value % len(buttons)].payload)
        elif kind == "stale":
            await person.send(button=value)
        elif kind == "command":
            await person.send(command=value)
        elif kind == "photo":
            await person.photo()
        elif kind == "location":
            await person.location(26.2, 50.6)
        elif kind == "event":
            async with h.service.db.session() as s:
                citizen_id = (await s.execute(select(Citizen.id).where(
                    Citizen.channel_user_id == person.sender_id))).scalar()
                refs = [r for r in (await s.execute(select(CaseRecord.reference).where(
                    CaseRecord.citizen_id == citizen_id))).scalars() if r]
            if refs:
                with contextlib.suppress(BackendRejected):  # an illegal transition is refused: fine
                    if value == "more_info_requested":
                        await h.staff.request_info(refs[-1], "Which block?")
                    else:
                        await h.staff.set_status(refs[-1], value)
                await h.service.poll_once()
    await h.service.outbox.run_due()


async def _check(h: Harness, person: Person) -> None:
    # Filings and notices may still be in flight in the background worker: let the outbox settle.
    for _ in range(100):
        stats = await h.service.outbox.stats()
        if not stats["pending"]:
            break
        await h.service.outbox.run_due()
        await asyncio.sleep(0.05)
    async with h.service.db.session() as s:
        citizen = (await s.execute(select(Citizen).where(Citizen.channel_user_id == person.sender_id))).scalar()
        if citizen is None:
            return
        inbound = (await s.execute(select(MessageRecord).where(
            MessageRecord.citizen_id == citizen.id, MessageRecord.direction == MessageDirection.IN))).scalars().all()
        conv = (await s.execute(select(Conversation).where(Conversation.citizen_id == citizen.id))).scalar()
        records = (await s.execute(select(CaseRecord).where(CaseRecord.citizen_id == citizen.id))).scalars().all()
    # Never crashed: every message handled, none by the error path.
    assert all(m.processed_at is not None for m in inbound)
    assert [m.error for m in inbound if m.error] == []
    # Never lost a draft: a drafting state always has its draft.
    if conv is not None and State(conv.state) in DRAFT_STATES:
        assert ConversationData.from_json(conv.data).draft is not None, conv.state
    # Never filed twice: one backend case per local filing, each with its own reference.
    backend_cases = await h.staff.list_cases("story", person.sender_id)
    assert len(backend_cases) == len(records)
    refs = [r.reference for r in records]
    assert len(set(refs)) == len(refs)
    filed_notices = [m for m in person.all() if "TWS-" in m.text and ("✅" in m.text)]
    assert len(filed_notices) == len(records)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(action, min_size=1, max_size=25))
def test_random_conversations_keep_their_invariants(running: tuple[Any, Harness],
                                                    actions: list[tuple[str, Any]]) -> None:
    loop, h = running
    person = h.person(f"prop-{uuid.uuid4().hex[:12]}")
    loop.run_until_complete(_play(h, person, actions))
    loop.run_until_complete(_check(h, person))
