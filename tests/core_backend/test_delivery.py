"""Webhook delivery from the reference backend to a receiver on 127.0.0.1 that checks signatures with the
bot's real handler: retries until acknowledged, order per case, and resumption after a restart."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from backend_client import BackendClient, CaseStatus
from core_backend.app import DB_KEY, SENDER_KEY
from core_backend.db import EventRow
from core_backend.embedded import EmbeddedBackend
from tests.core_backend.backend_harness import (
    SERVICE_TOKEN,
    STAFF_TOKEN,
    Receiver,
    backend_settings,
    new_case,
)


async def _event_rows(backend: EmbeddedBackend) -> list[EventRow]:
    assert backend.app is not None
    async with backend.app[DB_KEY].sessions() as session:
        return list((await session.scalars(select(EventRow).order_by(EventRow.sequence))).all())


async def _delivered_rows(backend: EmbeddedBackend, count: int) -> list[EventRow]:
    """The event rows once ``count`` of them are marked delivered (the receiver handles an event a moment
    before the sender records the acknowledgement)."""
    for _ in range(1500):
        rows = await _event_rows(backend)
        if sum(r.delivered_at is not None for r in rows) >= count:
            return rows
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"events not marked delivered: {[(r.sequence, r.attempts, r.last_error) for r in rows]}"
    )


async def test_delivery_retries_until_the_receiver_acknowledges(sqlite_url: str) -> None:
    receiver = Receiver(fail_first=2)  # the bot answers 503 twice, then accepts
    await receiver.start()
    try:
        async with (
            EmbeddedBackend(backend_settings(sqlite_url), port=0, webhook_url=receiver.url) as backend,
            BackendClient(backend.url, SERVICE_TOKEN, staff_token=STAFF_TOKEN) as client,
        ):
            case = await client.create_case(new_case(), "deliver-key-0001")
            await client.set_status(case.reference, CaseStatus.UNDER_REVIEW)
            [event] = await receiver.wait_for(1)
            assert (event.reference, event.previous_status, event.status) == (
                case.reference,
                CaseStatus.SUBMITTED,
                CaseStatus.UNDER_REVIEW,
            )
            assert receiver.attempts == {event.event_id: 3}
            [row] = await _delivered_rows(backend, 1)
            assert row.delivered_at is not None and row.attempts == 3
            assert row.last_error is None
    finally:
        await receiver.stop()


async def test_events_of_a_case_arrive_in_order_once_each(sqlite_url: str, receiver: Receiver) -> None:
    receiver.fail_first = 1  # every first attempt fails: a later event must not overtake an earlier one
    async with (
        EmbeddedBackend(backend_settings(sqlite_url, events_webhook_url=receiver.url), port=0) as backend,
        BackendClient(backend.url, SERVICE_TOKEN, staff_token=STAFF_TOKEN) as client,
    ):
        one = await client.create_case(new_case(), "order-key-0001")
        two = await client.create_case(new_case(channel_user_id="someone-else"), "order-key-0002")
        for ref in (one.reference, two.reference):
            await client.set_status(ref, CaseStatus.UNDER_REVIEW)
        await client.request_info(one.reference, "Which road?")
        await client.add_reply(one.reference, "Road 12")
        await client.transfer(two.reference, "moh", "health matter")
        events = await receiver.wait_for(5)

        per_case = {
            ref: [(e.previous_status, e.status) for e in events if e.reference == ref]
            for ref in (one.reference, two.reference)
        }
        assert per_case[one.reference] == [
            (CaseStatus.SUBMITTED, CaseStatus.UNDER_REVIEW),
            (CaseStatus.UNDER_REVIEW, CaseStatus.MORE_INFO_REQUESTED),
            (CaseStatus.MORE_INFO_REQUESTED, CaseStatus.IN_PROGRESS),
        ]
        assert per_case[two.reference] == [
            (CaseStatus.SUBMITTED, CaseStatus.UNDER_REVIEW),
            (CaseStatus.UNDER_REVIEW, CaseStatus.TRANSFERRED),
        ]
        assert len({e.event_id for e in events}) == 5
        [transfer] = [e for e in events if e.status is CaseStatus.TRANSFERRED]
        assert (transfer.agency, transfer.previous_agency, transfer.public_note) == (
            "moh",
            "works",
            "health matter",
        )
        # The webhook carries exactly what GET /events serves.
        polled = (await client.events_after(0)).events
        assert sorted(polled, key=lambda e: e.sequence) == sorted(events, key=lambda e: e.sequence)


async def test_restart_resumes_delivery(sqlite_url: str, receiver: Receiver) -> None:
    receiver.down = True
    settings = backend_settings(sqlite_url, events_webhook_url=receiver.url)
    async with (
        EmbeddedBackend(settings, port=0) as backend,
        BackendClient(backend.url, SERVICE_TOKEN, staff_token=STAFF_TOKEN) as client,
    ):
        case = await client.create_case(new_case(), "restart-key-0001")
        await client.set_status(case.reference, CaseStatus.UNDER_REVIEW)
        # Wait until a failed attempt is recorded, so the retry state is in the database.
        for _ in range(1500):
            [row] = await _event_rows(backend)
            if row.attempts:
                break
            await asyncio.sleep(0.02)
        assert row.delivered_at is None and row.attempts >= 1 and row.last_error == "receiver answered 503"

    assert receiver.handled == []
    receiver.down = False
    async with EmbeddedBackend(settings, port=0) as restarted:  # same database, a new process in effect
        [event] = await receiver.wait_for(1)
        assert event.reference == case.reference and event.status is CaseStatus.UNDER_REVIEW
        [row] = await _delivered_rows(restarted, 1)
        assert row.attempts >= 2


async def test_no_webhook_url_means_poll_only(sqlite_url: str, receiver: Receiver) -> None:
    async with (
        EmbeddedBackend(backend_settings(sqlite_url), port=0) as backend,
        BackendClient(backend.url, SERVICE_TOKEN, staff_token=STAFF_TOKEN) as client,
    ):
        assert backend.app is not None and SENDER_KEY not in backend.app
        case = await client.create_case(new_case(), "poll-only-key-1")
        await client.set_status(case.reference, CaseStatus.UNDER_REVIEW)
        [row] = await _event_rows(backend)
        assert row.next_attempt_at is None and row.delivered_at is None
        assert [e.event_id for e in (await client.events_after(0)).events] == [row.event_id]
