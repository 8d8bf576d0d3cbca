"""Typed values the dialogue policy reads and produces. Nothing untyped crosses into or out of the policy:
conversation data is (de)serialised here, at one place."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.channel import Attachment, AttachmentKind, IncomingMessage, Location, OutgoingMessage
from dialogues.states import State


def _shallow(obj: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict, not copied: the callers copy the mutable ones. ``dataclasses.asdict``
    deep-copies every value, and serialising the conversation runs on every turn."""
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


@dataclass(slots=True)
class DraftAttachment:
    kind: str
    ref: str
    mime_type: str | None = None
    size: int | None = None
    filename: str | None = None

    @classmethod
    def of(cls, a: Attachment) -> DraftAttachment:
        return cls(kind=str(a.kind), ref=a.ref, mime_type=a.mime_type, size=a.size, filename=a.filename)

    def to_attachment(self) -> Attachment:
        return Attachment(
            kind=AttachmentKind(self.kind), ref=self.ref, mime_type=self.mime_type, size=self.size,
            filename=self.filename,
        )


@dataclass(slots=True)
class DraftLocation:
    latitude: float | None = None
    longitude: float | None = None
    text: str | None = None

    @classmethod
    def of(cls, loc: Location) -> DraftLocation:
        return cls(latitude=loc.latitude, longitude=loc.longitude, text=loc.text)


@dataclass(slots=True)
class Draft:
    """A case being written. ``id`` is stable for the draft's life: the idempotency key derives from it."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    text: str = ""
    language: str = "ar"
    # What the NLU proposed (kept to record corrections) and what the citizen settled on.
    proposed_type: str | None = None
    proposed_agency: str | None = None
    type_confidence: float = 0.0
    agency_confidence: float = 0.0
    candidates: list[tuple[str, float]] = field(default_factory=list)
    model_version: str | None = None
    engine: str | None = None
    nlu_language: str | None = None
    type: str | None = None
    agency: str | None = None
    attachments: list[DraftAttachment] = field(default_factory=list)
    location: DraftLocation | None = None
    asked: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = _shallow(self)
        data["candidates"] = list(self.candidates)
        data["asked"] = list(self.asked)
        data["attachments"] = [_shallow(a) for a in self.attachments]
        data["location"] = _shallow(self.location) if self.location is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Draft:
        d = dict(data)
        d["attachments"] = [DraftAttachment(**a) for a in d.get("attachments", [])]
        d["location"] = DraftLocation(**d["location"]) if d.get("location") else None
        d["candidates"] = [(str(a), float(c)) for a, c in d.get("candidates", [])]
        return cls(**d)

    @property
    def corrected(self) -> bool:
        return (self.type, self.agency) != (self.proposed_type, self.proposed_agency)


@dataclass(slots=True)
class ConversationData:
    """The persisted part of a conversation besides its state."""

    draft: Draft | None = None
    saved_draft: Draft | None = None
    agency_page: int = 0
    info_reference: str | None = None
    rating_reference: str | None = None
    rating_score: int | None = None
    # Text of an out-of-scope message the citizen may still submit as a request.
    pending_text: str | None = None
    welcomed: bool = False

    def to_json(self) -> dict[str, Any]:
        data = _shallow(self)
        data["draft"] = self.draft.to_json() if self.draft else None
        data["saved_draft"] = self.saved_draft.to_json() if self.saved_draft else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ConversationData:
        data = dict(data or {})
        draft = data.pop("draft", None)
        saved = data.pop("saved_draft", None)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(
            draft=Draft.from_json(draft) if draft else None,
            saved_draft=Draft.from_json(saved) if saved else None,
            **known,
        )


@dataclass(frozen=True, slots=True)
class CitizenView:
    id: int
    channel: str
    channel_user_id: str
    language: str
    language_locked: bool
    first_contact: bool


@dataclass(frozen=True, slots=True)
class CaseView:
    """A case as the citizen may see it (only ever one of their own)."""

    reference: str | None
    type: str
    agency: str
    status: str
    expected_response_by: dt.date | None
    last_note: str | None = None
    stale: bool = False


# ---- effects: what the policy asks the engine to do after the state is saved -------------------------


@dataclass(frozen=True, slots=True)
class FileCase:
    draft: Draft


@dataclass(frozen=True, slots=True)
class SendReply:
    """The citizen's answer to an agency's question (text and/or attachments)."""

    reference: str
    text: str | None
    attachments: tuple[DraftAttachment, ...] = ()


@dataclass(frozen=True, slots=True)
class RateCase:
    reference: str
    score: int
    comment: str | None


@dataclass(frozen=True, slots=True)
class SetLanguage:
    language: str
    locked: bool


Effect = FileCase | SendReply | RateCase | SetLanguage


@dataclass(slots=True)
class Outcome:
    state: State
    data: ConversationData
    replies: list[OutgoingMessage] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    # What the turn amounts to for /metrics when its effects do not say ("cancelled"); None: derived.
    label: str | None = None


@dataclass(frozen=True, slots=True)
class Turn:
    message: IncomingMessage
    nlu: Any  # nlu.types.NLUResult | None; typed loosely to keep dialogues importable without the model
    now: dt.datetime


class CaseDirectory(Protocol):
    """Reads of the citizen's own cases. Implementations never return another citizen's case."""

    async def find(self, citizen: CitizenView, reference: str) -> CaseView | None: ...

    async def list(self, citizen: CitizenView) -> list[CaseView]: ...


class AgencyDirectory(Protocol):
    def ids(self) -> list[str]: ...

    def name(self, agency: str, lang: str) -> str: ...

    def short(self, agency: str, lang: str) -> str: ...

    def location_relevant(self, agency: str) -> bool: ...

    def photo_relevant(self, agency: str) -> bool: ...

    def search(self, text: str) -> list[str]: ...
