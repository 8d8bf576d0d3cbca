"""Every client call against the reference backend over real HTTP on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import hashlib
import re

import pytest

from backend_client import (
    BackendClient,
    BackendError,
    CaseStatus,
    CaseType,
    Conflict,
    Forbidden,
    InvalidRequest,
    Location,
    NLUInfo,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from core_backend.embedded import EmbeddedBackend
from tests.core_backend.backend_harness import SERVICE_TOKEN, STAFF_TOKEN, backend_settings, new_case


async def test_health(client: BackendClient) -> None:
    health = await client.health()
    assert (health.status, health.database) == ("ok", "ok")


async def test_create_case_returns_the_full_case(client: BackendClient) -> None:
    nlu = NLUInfo(
        type=CaseType.COMPLAINT,
        type_confidence=0.91,
        agency="works",
        agency_confidence=0.77,
        model_version="m1",
    )
    data = new_case(
        location=Location(latitude=26.2235, longitude=50.5876, text="Road 12, Block 338"), nlu=nlu
    )
    case = await client.create_case(data, "create-key-0001")

    assert re.fullmatch(r"TWS-20[0-9]{2}-000001", case.reference)
    assert case.status is CaseStatus.SUBMITTED
    assert (case.type, case.agency, case.description) == ("complaint", "works", data.description)
    assert (case.channel, case.channel_user_id, case.language) == ("telegram", "100200300", "ar")
    assert case.location == data.location
    assert case.nlu == nlu
    assert [h.status for h in case.history] == [CaseStatus.SUBMITTED]
    assert case.history[0].previous_status is None
    assert case.expected_response_by > case.created_at.date()
    assert case.is_open and case.pending_question is None

    second = await client.create_case(new_case(type="inquiry"), "create-key-0002")
    assert int(second.reference[-6:]) == int(case.reference[-6:]) + 1


async def test_same_key_same_case_and_different_body_refused(client: BackendClient) -> None:
    first = await client.create_case(new_case(), "same-key-0001")
    again = await client.create_case(new_case(), "same-key-0001")
    assert again.reference == first.reference
    assert again.created_at == first.created_at

    with pytest.raises(InvalidRequest) as info:
        await client.create_case(new_case(description="a different complaint"), "same-key-0001")
    assert info.value.code == "idempotency_key_reused"
    assert "Idempotency-Key" in info.value.message
    assert len(await client.list_all_cases()) == 1


async def test_get_case_and_not_found(client: BackendClient) -> None:
    created = await client.create_case(new_case(), "get-key-0001")
    fetched = await client.get_case(created.reference)
    assert fetched == created

    with pytest.raises(NotFound) as info:
        await client.get_case("TWS-2020-999999")
    assert info.value.message == "no case TWS-2020-999999"
    with pytest.raises(NotFound) as info:
        await client.get_case("../events")  # quoted into one path segment: cannot reach /events
    assert "TWS-" in info.value.message


async def test_list_cases_of_one_citizen_newest_first(client: BackendClient) -> None:
    a1 = await client.create_case(new_case(channel_user_id="citizen-a"), "list-key-0001")
    await client.create_case(new_case(channel_user_id="citizen-b"), "list-key-0002")
    a2 = await client.create_case(new_case(channel_user_id="citizen-a", channel="whatsapp"), "list-key-0003")
    a3 = await client.create_case(new_case(channel_user_id="citizen-a", type="suggestion"), "list-key-0004")

    mine = await client.list_cases("telegram", "citizen-a")
    assert [c.reference for c in mine] == [a3.reference, a1.reference]
    assert [c.reference for c in await client.list_cases("whatsapp", "citizen-a")] == [a2.reference]
    assert await client.list_cases("telegram", "nobody") == []
    assert len(await client.list_cases("telegram", "citizen-a", limit=1)) == 1


async def test_staff_list_filters(client: BackendClient) -> None:
    a = await client.create_case(new_case(agency="works"), "filter-key-0001")
    b = await client.create_case(new_case(agency="moh"), "filter-key-0002")
    await client.set_status(b.reference, CaseStatus.UNDER_REVIEW)

    assert [c.reference for c in await client.list_all_cases(agency="moh")] == [b.reference]
    assert [c.reference for c in await client.list_all_cases(status="submitted")] == [a.reference]
    assert [c.reference for c in await client.list_all_cases(status=CaseStatus.UNDER_REVIEW)] == [b.reference]
    assert len(await client.list_all_cases()) == 2
    with pytest.raises(InvalidRequest, match="unknown status"):
        await client.list_all_cases(status="lost")


async def test_attachments_upload_link_download(client: BackendClient) -> None:
    photo = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8
    ref = await client.upload_attachment(photo, "image/jpeg", "حفرة.jpg")
    assert (ref.kind, ref.mime_type, ref.size, ref.filename) == (
        "photo",
        "image/jpeg",
        len(photo),
        "حفرة.jpg",
    )
    assert ref.sha256 == hashlib.sha256(photo).hexdigest()
    assert ref.url == f"/attachments/{ref.id}"
    assert await client.download_attachment(ref.id) == photo

    voice = await client.upload_attachment(b"OggS-voice", "audio/ogg", kind="voice")
    assert voice.kind == "voice"

    case = await client.create_case(new_case(attachment_ids=[ref.id]), "attach-key-0001")
    assert [a.id for a in case.attachments] == [ref.id]
    case = await client.add_attachment(case.reference, voice.id)
    assert {a.id for a in case.attachments} == {ref.id, voice.id}

    other = await client.create_case(new_case(), "attach-key-0002")
    with pytest.raises(Conflict) as info:
        await client.add_attachment(other.reference, ref.id)
    assert info.value.code == "attachment_in_use"
    with pytest.raises(InvalidRequest) as info2:
        await client.add_attachment(other.reference, "0" * 32)
    assert info2.value.code == "unknown_attachment"
    with pytest.raises(NotFound):
        await client.download_attachment("f" * 32)


async def test_attachment_type_and_size_limits(sqlite_url: str) -> None:
    settings = backend_settings(sqlite_url, max_attachment_bytes=4096)
    async with (
        EmbeddedBackend(settings, port=0) as backend,
        BackendClient(backend.url, SERVICE_TOKEN) as client,
    ):
        with pytest.raises(UnsupportedMediaType) as info:
            await client.upload_attachment(b"<script>alert(1)</script>", "text/html", "x.html")
        assert "text/html" in info.value.message
        with pytest.raises(PayloadTooLarge):
            await client.upload_attachment(b"x" * 5000, "application/pdf", "big.pdf")
        assert (await client.upload_attachment(b"x" * 4096, "application/pdf", "ok.pdf")).size == 4096


async def test_more_info_reply_returns_case_to_in_progress(client: BackendClient) -> None:
    case = await client.create_case(new_case(), "reply-key-0001")
    await client.set_status(case.reference, "under_review")
    asked = await client.request_info(case.reference, "ما هو رقم المجمع؟")
    assert asked.status is CaseStatus.MORE_INFO_REQUESTED
    assert asked.pending_question == "ما هو رقم المجمع؟"

    doc = await client.upload_attachment(b"%PDF-1.4 map", "application/pdf", "map.pdf")
    replied = await client.add_reply(case.reference, "مجمع 338", [doc.id])
    assert replied.status is CaseStatus.IN_PROGRESS
    assert replied.history[-1].actor == "citizen"
    assert (replied.replies[-1].text, replied.replies[-1].attachment_ids) == ("مجمع 338", [doc.id])
    assert doc.id in {a.id for a in replied.attachments}

    # A reply to an in-progress case is kept without a status change.
    again = await client.add_reply(case.reference, "one more detail")
    assert again.status is CaseStatus.IN_PROGRESS and len(again.replies) == 2
    with pytest.raises(InvalidRequest, match="text or at least one attachment"):
        await client.add_reply(case.reference, None)


async def test_rating_and_reopen(client: BackendClient) -> None:
    case = await client.create_case(new_case(), "rate-key-0001")
    with pytest.raises(Conflict) as info:
        await client.rate(case.reference, 5)
    assert info.value.code == "not_rateable"

    await client.set_status(case.reference, "under_review")
    await client.set_status(case.reference, "in_progress", "assigned to the roads team")
    answered = await client.set_status(case.reference, "answered", "The road was repaired on Sunday.")
    assert answered.history[-1].public_note == "The road was repaired on Sunday."
    assert not answered.is_open

    rated = await client.rate(case.reference, 4, "شكراً")
    assert [(r.score, r.comment) for r in rated.ratings] == [(4, "شكراً")]
    with pytest.raises(Conflict) as info:
        await client.rate(case.reference, 5)
    assert info.value.code == "already_rated"
    with pytest.raises(InvalidRequest):
        await client.rate(case.reference, 6)  # refused before sending

    reopened = await client.reopen(case.reference, "the hole is back")
    assert reopened.status is CaseStatus.REOPENED
    assert reopened.replies[-1].text == "the hole is back"
    assert reopened.expected_response_by >= answered.expected_response_by
    with pytest.raises(Conflict):
        await client.reopen(case.reference, "again")


async def test_staff_actions_transfer_and_tokens(backend: EmbeddedBackend, client: BackendClient) -> None:
    case = await client.create_case(new_case(agency="works"), "staff-key-0001")
    moved = await client.transfer(case.reference, "moh", "this is a health matter")
    assert (moved.status, moved.agency) == (CaseStatus.TRANSFERRED, "moh")
    last = moved.history[-1]
    assert (last.agency, last.previous_agency, last.public_note) == (
        "moh",
        "works",
        "this is a health matter",
    )
    with pytest.raises(Conflict) as info:
        await client.transfer(case.reference, "moh")
    assert info.value.code == "same_agency"
    with pytest.raises(InvalidRequest) as info2:
        await client.set_status(case.reference, "answered")
    assert info2.value.code == "note_required"
    with pytest.raises(InvalidRequest) as info2:
        await client.set_status(case.reference, "transferred")
    assert info2.value.code == "use_transfer"

    bot_only = BackendClient(backend.url, SERVICE_TOKEN, staff_token=SERVICE_TOKEN)
    wrong = BackendClient(backend.url, "not-the-token", staff_token="not-the-token")
    no_staff = BackendClient(backend.url, SERVICE_TOKEN)
    staff_only = BackendClient(backend.url, "", staff_token=STAFF_TOKEN)
    try:
        with pytest.raises(Forbidden) as forbidden:
            await bot_only.set_status(case.reference, "under_review")
        assert forbidden.value.status == 403 and "staff token" in forbidden.value.message
        with pytest.raises(Unauthorized) as unauthorized:
            await wrong.get_case(case.reference)
        assert unauthorized.value.status == 401 and not isinstance(unauthorized.value, Forbidden)
        with pytest.raises(BackendError, match="no staff token"):
            await no_staff.request_info(case.reference, "which street?")
        # Staff read with their own token; citizen actions need the bot's.
        assert (await staff_only.get_case(case.reference)).agency == "moh"
        with pytest.raises(BackendError, match="no service token"):
            await staff_only.add_reply(case.reference, "hello")
    finally:
        for c in (bot_only, wrong, no_staff, staff_only):
            await c.close()


async def test_events_after_pages_in_order(client: BackendClient) -> None:
    case = await client.create_case(new_case(), "events-key-0001")
    assert (await client.events_after(0)).events == []
    await client.set_status(case.reference, "under_review")
    await client.request_info(case.reference, "Which block?")
    await client.add_reply(case.reference, "Block 338")

    page = await client.events_after(0, limit=2)
    assert [e.status for e in page.events] == [CaseStatus.UNDER_REVIEW, CaseStatus.MORE_INFO_REQUESTED]
    assert page.next_after == page.events[-1].sequence
    rest = await client.events_after(page.next_after)
    assert [e.status for e in rest.events] == [CaseStatus.IN_PROGRESS]
    event = rest.events[0]
    assert (event.reference, event.old_status, event.new_status) == (
        case.reference,
        CaseStatus.MORE_INFO_REQUESTED,
        CaseStatus.IN_PROGRESS,
    )
    assert (event.channel, event.channel_user_id, event.language) == ("telegram", "100200300", "ar")
    assert event.occurred_at.tzinfo is not None and event.occurred_at <= dt.datetime.now(dt.UTC)
    assert page.events[1].question == "Which block?"
    empty = await client.events_after(rest.next_after)
    assert (empty.events, empty.next_after) == ([], rest.next_after)
    sequences = [e.sequence for e in page.events + rest.events]
    assert sequences == sorted(set(sequences))


async def test_from_settings_and_shared_session(backend: EmbeddedBackend) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        client = BackendClient.from_settings(backend.settings, base_url=backend.url, session=session)
        async with client:
            case = await client.create_case(new_case(), "settings-key-0001")
            assert (await client.set_status(case.reference, "under_review")).status is CaseStatus.UNDER_REVIEW
        assert not session.closed  # a session passed in belongs to the caller
