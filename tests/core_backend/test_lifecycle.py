"""The case lifecycle over HTTP: every (state, target) pair is tried; legal ones succeed and emit one event,
illegal ones are refused with 409 and a message naming what is allowed."""

from __future__ import annotations

import itertools

import pytest

from backend_client import TRANSITIONS, BackendClient, Case, CaseStatus, Conflict
from core_backend.embedded import EmbeddedBackend
from tests.core_backend.backend_harness import SERVICE_TOKEN, STAFF_TOKEN, backend_settings, new_case

S = CaseStatus
_keys = itertools.count()

# How to bring a fresh case into each state (staff and citizen calls, each one a legal step).
ROUTES: dict[CaseStatus, list[tuple[str, tuple[str, ...]]]] = {
    S.SUBMITTED: [],
    S.UNDER_REVIEW: [("set_status", ("under_review",))],
    S.TRANSFERRED: [("transfer", ("moh",))],
    S.IN_PROGRESS: [("set_status", ("under_review",)), ("set_status", ("in_progress",))],
    S.MORE_INFO_REQUESTED: [("set_status", ("under_review",)), ("request_info", ("Which block?",))],
    S.ANSWERED: [("set_status", ("under_review",)), ("set_status", ("answered", "Fixed."))],
    S.CLOSED: [("set_status", ("under_review",)), ("set_status", ("closed", "Duplicate of another case."))],
    S.REOPENED: [
        ("set_status", ("under_review",)),
        ("set_status", ("answered", "Fixed.")),
        ("reopen", ("still broken",)),
    ],
}


async def _attempt(client: BackendClient, case: Case, target: CaseStatus) -> Case:
    """Ask for ``target`` the way the API offers it."""
    if target is S.TRANSFERRED:
        return await client.transfer(
            case.reference, "labour" if case.agency != "labour" else "moh", "re-routed"
        )
    if target is S.MORE_INFO_REQUESTED:
        return await client.request_info(case.reference, "Please send a photo.")
    if target is S.REOPENED:
        return await client.reopen(case.reference, "not solved")
    return await client.set_status(case.reference, target, "public note")


async def _case_in(client: BackendClient, state: CaseStatus) -> Case:
    case = await client.create_case(new_case(), f"lifecycle-key-{next(_keys):06d}")
    for method, args in ROUTES[state]:
        case = await getattr(client, method)(case.reference, *args)
    assert case.status is state
    return case


async def test_every_transition_pair(client: BackendClient) -> None:
    legal = illegal = 0
    for state, target in itertools.product(CaseStatus, CaseStatus):
        case = await _case_in(client, state)
        before = (await client.events_after(0, limit=500)).next_after
        if target in TRANSITIONS[state]:
            after = await _attempt(client, case, target)
            assert after.status is target, (state, target)
            assert (after.history[-1].previous_status, after.history[-1].status) == (state, target)
            events = (await client.events_after(before)).events
            assert [(e.previous_status, e.status) for e in events] == [(state, target)]
            legal += 1
        else:
            with pytest.raises(Conflict) as info:
                await _attempt(client, case, target)
            assert info.value.status == 409 and info.value.code == "illegal_transition", (state, target)
            assert f"cannot go from {state} to {target}" in info.value.message
            for allowed in TRANSITIONS[state]:
                assert allowed.value in info.value.message
            unchanged = await client.get_case(case.reference)
            assert unchanged.status is state and unchanged.history == case.history
            assert (await client.events_after(before)).events == []
            illegal += 1
    assert legal == sum(len(t) for t in TRANSITIONS.values())
    assert legal + illegal == len(CaseStatus) ** 2


async def test_full_tawasul_story(client: BackendClient) -> None:
    """submitted -> under_review -> transferred -> in_progress -> more_info_requested -> (reply) ->
    in_progress -> answered -> (rating) -> closed -> reopened."""
    case = await client.create_case(new_case(agency="works"), "story-key-0001")
    ref = case.reference
    await client.set_status(ref, S.UNDER_REVIEW)
    await client.transfer(ref, "moh", "This concerns the health ministry.")
    await client.set_status(ref, S.IN_PROGRESS)
    await client.request_info(ref, "Which clinic?")
    await client.add_reply(ref, "Clinic in Isa Town")
    await client.set_status(ref, S.ANSWERED, "An inspector visited the clinic.")
    await client.rate(ref, 5)
    await client.set_status(ref, S.CLOSED)
    final = await client.reopen(ref, "The problem is back")
    assert [h.status for h in final.history] == [
        S.SUBMITTED,
        S.UNDER_REVIEW,
        S.TRANSFERRED,
        S.IN_PROGRESS,
        S.MORE_INFO_REQUESTED,
        S.IN_PROGRESS,
        S.ANSWERED,
        S.CLOSED,
        S.REOPENED,
    ]
    assert [h.actor for h in final.history] == [
        "citizen",
        "staff",
        "staff",
        "staff",
        "staff",
        "citizen",
        "staff",
        "staff",
        "citizen",
    ]
    assert final.agency == "moh" and final.is_open


async def test_closed_case_refuses_replies_and_attachments(client: BackendClient) -> None:
    case = await _case_in(client, S.CLOSED)
    with pytest.raises(Conflict) as info:
        await client.add_reply(case.reference, "hello?")
    assert info.value.code == "case_closed" and "reopen" in info.value.message
    upload = await client.upload_attachment(b"%PDF-1.4", "application/pdf")
    with pytest.raises(Conflict):
        await client.add_attachment(case.reference, upload.id)


async def test_concurrent_staff_actions_apply_one_after_the_other(db_url: str) -> None:
    import asyncio

    async with (
        EmbeddedBackend(backend_settings(db_url), port=0) as backend,
        BackendClient(backend.url, SERVICE_TOKEN, staff_token=STAFF_TOKEN) as client,
    ):
        case = await client.create_case(new_case(), "race-key-0001")
        await client.set_status(case.reference, S.UNDER_REVIEW)
        # Ten staff members answer at once: exactly one wins, the others see the new state and get 409.
        results = await asyncio.gather(
            *(client.set_status(case.reference, S.ANSWERED, f"answer {i}") for i in range(10)),
            return_exceptions=True,
        )
        wins = [r for r in results if isinstance(r, Case)]
        assert len(wins) == 1
        assert all(isinstance(r, Conflict) for r in results if not isinstance(r, Case))
        final = await client.get_case(case.reference)
        assert [h.status for h in final.history].count(S.ANSWERED) == 1
        assert len((await client.events_after(0)).events) == 2
