"""Conversation data serialisation: the hand-written ``to_json`` gives what ``dataclasses.asdict`` would (the
stored form), round-trips, and shares no mutable value with the live object."""

from __future__ import annotations

from dataclasses import asdict

from dialogues.model import ConversationData, Draft, DraftAttachment, DraftLocation


def _full() -> ConversationData:
    draft = Draft(text="الشارع مليان حفر", language="ar", proposed_type="complaint", proposed_agency="works",
                  type_confidence=0.9, agency_confidence=0.8, candidates=[("works", 0.8), ("mun", 0.1)],
                  model_version="v1", engine="embedded", nlu_language="ar", type="complaint", agency="works",
                  attachments=[DraftAttachment(kind="photo", ref="f1", mime_type="image/jpeg", size=10)],
                  location=DraftLocation(latitude=26.1, longitude=50.5, text="سترة"), asked=["location"])
    return ConversationData(draft=draft, saved_draft=Draft(text="old"), agency_page=1, info_reference="R",
                            rating_reference=None, rating_score=4, pending_text="x", welcomed=True)


def test_to_json_is_the_asdict_form_and_round_trips() -> None:
    data = _full()
    assert data.to_json() == asdict(data)
    assert ConversationData.from_json(data.to_json()) == data
    empty = ConversationData()
    assert empty.to_json() == asdict(empty)


def test_to_json_shares_nothing_mutable() -> None:
    data = _full()
    before = asdict(data)  # a deep copy
    out = data.to_json()
    out["draft"]["candidates"].append(("x", 1.0))
    out["draft"]["asked"].append("type")
    out["draft"]["attachments"][0]["ref"] = "changed"
    out["draft"]["location"]["text"] = "changed"
    assert asdict(data) == before
