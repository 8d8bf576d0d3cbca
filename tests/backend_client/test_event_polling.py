"""Polling catch-up: ``poll_events`` against the reference backend over HTTP."""

from __future__ import annotations

import pytest

from backend_client import BackendClient, CaseEvent, CaseStatus, MemoryEventLedger, poll_events
from tests.core_backend.backend_harness import new_case


async def _make_events(client: BackendClient, cases: int, batch: str = "a") -> list[str]:
    """Two events per case (under_review, more_info_requested)."""
    refs = []
    for i in range(cases):
        case = await client.create_case(new_case(channel_user_id=f"citizen-{i}"), f"poll-key-{batch}-{i:04d}")
        await client.set_status(case.reference, CaseStatus.UNDER_REVIEW)
        await client.request_info(case.reference, "Which street?")
        refs.append(case.reference)
    return refs


async def test_poll_catches_up_across_pages_in_order(client: BackendClient) -> None:
    await _make_events(client, 4)  # 8 events
    handled: list[CaseEvent] = []

    async def on_event(event: CaseEvent) -> None:
        handled.append(event)

    ledger = MemoryEventLedger()
    cursor = await poll_events(client, 0, on_event, ledger, limit=3)  # three pages
    assert [e.sequence for e in handled] == list(range(1, 9))
    assert cursor == 8
    # Nothing new: same cursor, nothing handled again.
    assert await poll_events(client, cursor, on_event, ledger, limit=3) == 8
    assert len(handled) == 8

    # Later changes are picked up from the cursor.
    refs = await _make_events(client, 1, batch="b")
    await client.add_reply(refs[0], "Road 12")
    assert await poll_events(client, cursor, on_event, ledger) == 11
    assert [e.status for e in handled[8:]] == [
        CaseStatus.UNDER_REVIEW,
        CaseStatus.MORE_INFO_REQUESTED,
        CaseStatus.IN_PROGRESS,
    ]


async def test_events_already_seen_by_webhook_are_skipped(client: BackendClient) -> None:
    await _make_events(client, 2)
    ledger = MemoryEventLedger()
    page = await client.events_after(0)
    await ledger.mark(page.events[0].event_id)  # delivered by webhook before the poll
    await ledger.mark(page.events[2].event_id)
    handled: list[int] = []

    async def on_event(event: CaseEvent) -> None:
        handled.append(event.sequence)

    assert await poll_events(client, 0, on_event, ledger) == 4
    assert handled == [2, 4]


async def test_failing_handler_keeps_the_cursor_and_the_next_poll_retries(client: BackendClient) -> None:
    await _make_events(client, 2)
    ledger = MemoryEventLedger()
    handled: list[int] = []
    fail_on = {3}

    async def on_event(event: CaseEvent) -> None:
        if event.sequence in fail_on:
            raise RuntimeError("bot database is down")
        handled.append(event.sequence)

    cursor = 0
    with pytest.raises(RuntimeError):
        cursor = await poll_events(client, cursor, on_event, ledger)
    assert cursor == 0 and handled == [1, 2]
    fail_on.clear()
    cursor = await poll_events(client, cursor, on_event, ledger)
    assert cursor == 4 and handled == [1, 2, 3, 4]  # 1 and 2 were not handled twice
