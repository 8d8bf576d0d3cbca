"""Wire models of the core case-management API (``openapi.yaml`` is the contract; these mirror it).

The case lifecycle (``TRANSITIONS``) lives here too, so the bot, the staff CLI and the reference backend
share one source of truth. Field limits match the schemas in ``openapi.yaml``; the reference backend is
fuzzed against that file, so a drift between the two shows up as a failing test.

Models are lax when built in Python (``CaseCreate(type="complaint", ...)`` works); the backend validates
request bodies with ``strict=True`` so ``"3"`` is not an integer on the wire.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Final, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from nlu.types import CaseType, Language

__all__ = [
    "ALLOWED_MIME_PREFIXES",
    "OPEN_STATUSES",
    "RATEABLE_STATUSES",
    "REOPENABLE_STATUSES",
    "TRANSITIONS",
    "Actor",
    "AttachmentKind",
    "AttachmentLink",
    "AttachmentRef",
    "Case",
    "CaseCreate",
    "CaseEvent",
    "CaseList",
    "CaseStatus",
    "CaseType",
    "ErrorBody",
    "ErrorDetail",
    "ErrorInfo",
    "EventPage",
    "Health",
    "InfoRequest",
    "Language",
    "Location",
    "NLUInfo",
    "NLUProposal",
    "Rating",
    "RatingCreate",
    "ReopenRequest",
    "Reply",
    "ReplyCreate",
    "StatusChange",
    "StatusEvent",
    "StatusHistoryEntry",
    "StatusUpdate",
    "TransferRequest",
    "attachment_kind_for",
    "is_allowed_mime",
    "transition_error",
]

# --- constrained strings (same patterns as openapi.yaml; [0-9] not \d, which is Unicode-aware) ---------

# NUL is refused everywhere: PostgreSQL cannot store it in text columns.
_NO_NUL = r"^[^\u0000]*$"


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _text(max_length: int) -> StringConstraints:
    return StringConstraints(min_length=1, max_length=max_length, pattern=_NO_NUL)


_NotBlank = AfterValidator(_not_blank)
Reference = Annotated[str, StringConstraints(pattern=r"^TWS-[0-9]{4}-[0-9]{6}$")]
AgencyId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,63}$")]
ChannelName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
ChannelUserId = Annotated[str, StringConstraints(pattern=r"^[^\u0000-\u001f\u007f]{1,128}$")]
AttachmentId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
EventId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Description = Annotated[str, _text(8000), _NotBlank]
ReplyText = Annotated[str, _text(8000), _NotBlank]
Note = Annotated[str, _text(4000), _NotBlank]
Question = Annotated[str, _text(2000), _NotBlank]
ShortText = Annotated[str, _text(2000), _NotBlank]
PlaceText = Annotated[str, _text(500), _NotBlank]
ModelVersion = Annotated[str, _text(128)]
EngineName = Annotated[str, _text(64)]
Confidence = Annotated[float, Field(ge=0.0, le=1.0)]

MAX_ATTACHMENTS_PER_REQUEST: Final = 10


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --- lifecycle ------------------------------------------------------------------------------------


class CaseStatus(StrEnum):
    SUBMITTED = "submitted"
    UNDER_REVIEW = "under_review"
    TRANSFERRED = "transferred"
    IN_PROGRESS = "in_progress"
    MORE_INFO_REQUESTED = "more_info_requested"
    ANSWERED = "answered"
    CLOSED = "closed"
    REOPENED = "reopened"


_S = CaseStatus

# Modelled on Tawasul: the review desk takes a submitted case, may re-route it (transferred) to the right
# agency, the agency works on it, may ask the citizen a question, answers; the citizen may reopen an
# answered or closed case. A reply to a question returns the case to in_progress.
TRANSITIONS: Final[Mapping[CaseStatus, frozenset[CaseStatus]]] = MappingProxyType(
    {
        _S.SUBMITTED: frozenset({_S.UNDER_REVIEW, _S.TRANSFERRED}),
        _S.UNDER_REVIEW: frozenset(
            {_S.IN_PROGRESS, _S.TRANSFERRED, _S.MORE_INFO_REQUESTED, _S.ANSWERED, _S.CLOSED}
        ),
        _S.TRANSFERRED: frozenset({_S.UNDER_REVIEW, _S.IN_PROGRESS, _S.TRANSFERRED}),
        _S.IN_PROGRESS: frozenset({_S.MORE_INFO_REQUESTED, _S.ANSWERED, _S.TRANSFERRED}),
        _S.MORE_INFO_REQUESTED: frozenset({_S.IN_PROGRESS, _S.CLOSED}),
        _S.ANSWERED: frozenset({_S.CLOSED, _S.REOPENED}),
        _S.CLOSED: frozenset({_S.REOPENED}),
        _S.REOPENED: frozenset(
            {_S.UNDER_REVIEW, _S.IN_PROGRESS, _S.TRANSFERRED, _S.MORE_INFO_REQUESTED, _S.ANSWERED}
        ),
    }
)
# Still awaiting an outcome (the bot polls these and offers them in "my cases").
OPEN_STATUSES: Final = frozenset(s for s in CaseStatus if s not in {_S.ANSWERED, _S.CLOSED})
RATEABLE_STATUSES: Final = frozenset({_S.ANSWERED, _S.CLOSED})
REOPENABLE_STATUSES: Final = frozenset(s for s, nxt in TRANSITIONS.items() if _S.REOPENED in nxt)


def transition_error(reference: str, current: CaseStatus, target: CaseStatus) -> str | None:
    """None when ``current -> target`` is allowed; otherwise the message the 409 carries."""
    allowed = TRANSITIONS[current]
    if target in allowed:
        return None
    nxt = ", ".join(sorted(allowed)) or "nothing"
    return f"case {reference} cannot go from {current} to {target}; from {current} it can go to: {nxt}"


class Actor(StrEnum):
    CITIZEN = "citizen"
    STAFF = "staff"


# --- attachments ----------------------------------------------------------------------------------


class AttachmentKind(StrEnum):
    PHOTO = "photo"
    DOCUMENT = "document"
    AUDIO = "audio"
    VOICE = "voice"
    VIDEO = "video"


# Types staff can open safely; anything else (HTML, executables, archives) is refused with 415.
ALLOWED_MIME_PREFIXES: Final = (
    "image/",
    "audio/",
    "video/",
    "application/pdf",
    "text/plain",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.",
    "application/vnd.ms-excel",
    "application/vnd.oasis.opendocument.",
    "application/octet-stream",
)


def is_allowed_mime(mime_type: str) -> bool:
    mime = mime_type.strip().lower()
    return mime not in {"image/svg+xml"} and any(mime.startswith(p) for p in ALLOWED_MIME_PREFIXES)


def attachment_kind_for(mime_type: str) -> AttachmentKind:
    major = mime_type.split("/", 1)[0].lower()
    return {"image": AttachmentKind.PHOTO, "audio": AttachmentKind.AUDIO, "video": AttachmentKind.VIDEO}.get(
        major, AttachmentKind.DOCUMENT
    )


class AttachmentRef(_Wire):
    """A stored attachment. ``url`` is relative to the backend's base URL (``GET /attachments/{id}``)."""

    id: AttachmentId
    kind: AttachmentKind
    mime_type: str
    filename: str | None = None
    size: int = Field(ge=1)
    sha256: str
    url: str
    created_at: dt.datetime


class AttachmentLink(_Wire):
    attachment_ids: list[AttachmentId] = Field(min_length=1, max_length=MAX_ATTACHMENTS_PER_REQUEST)


# --- cases ----------------------------------------------------------------------------------------


class Location(_Wire):
    """Where the problem is: a point, a free-text place ("Block 338, Adliya"), or both."""

    latitude: float | None = Field(None, ge=-90, le=90)
    longitude: float | None = Field(None, ge=-180, le=180)
    text: PlaceText | None = None

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("latitude and longitude go together: give both or neither")
        if self.latitude is None and self.text is None:
            raise ValueError("give latitude and longitude, a text, or both")
        return self


class NLUProposal(_Wire):
    """What the NLU proposed when the case was filed (kept for quality review)."""

    type: CaseType | None = None
    type_confidence: Confidence
    agency: AgencyId | None = None
    agency_confidence: Confidence
    model_version: ModelVersion
    engine: EngineName | None = None


class CaseCreate(_Wire):
    type: CaseType
    agency: AgencyId
    description: Description
    language: Language
    channel: ChannelName
    channel_user_id: ChannelUserId
    location: Location | None = None
    attachment_ids: list[AttachmentId] = Field(default_factory=list, max_length=MAX_ATTACHMENTS_PER_REQUEST)
    nlu: NLUProposal | None = None


class StatusChange(_Wire):
    """One entry of a case's history. ``previous_status`` is null only for the first (``submitted``)."""

    status: CaseStatus
    previous_status: CaseStatus | None = None
    agency: str
    previous_agency: str | None = None
    public_note: str | None = None
    question: str | None = None
    actor: Actor
    occurred_at: dt.datetime


class Reply(_Wire):
    text: str | None = None
    attachment_ids: list[str] = Field(default_factory=list)
    created_at: dt.datetime


class Rating(_Wire):
    score: int = Field(ge=1, le=5)
    comment: str | None = None
    created_at: dt.datetime


class Case(_Wire):
    reference: Reference
    type: CaseType
    agency: str
    description: str
    language: Language
    channel: str
    channel_user_id: str
    location: Location | None = None
    attachments: list[AttachmentRef] = Field(default_factory=list)
    nlu: NLUProposal | None = None
    status: CaseStatus
    history: list[StatusChange] = Field(default_factory=list)
    replies: list[Reply] = Field(default_factory=list)
    ratings: list[Rating] = Field(default_factory=list)
    created_at: dt.datetime
    updated_at: dt.datetime
    expected_response_by: dt.date

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def pending_question(self) -> str | None:
        """The agency's question while the case waits for the citizen."""
        if self.status is not CaseStatus.MORE_INFO_REQUESTED or not self.history:
            return None
        return self.history[-1].question


class CaseList(_Wire):
    cases: list[Case]


# --- citizen and staff actions --------------------------------------------------------------------


class ReplyCreate(_Wire):
    """A citizen's reply (text and/or attachments). Answers the question of a more_info_requested case."""

    text: ReplyText | None = None
    attachment_ids: list[AttachmentId] = Field(default_factory=list, max_length=MAX_ATTACHMENTS_PER_REQUEST)

    @model_validator(mode="after")
    def _something(self) -> Self:
        if self.text is None and not self.attachment_ids:
            raise ValueError("a reply needs a text or at least one attachment")
        return self


class RatingCreate(_Wire):
    score: int = Field(ge=1, le=5)
    comment: ShortText | None = None


class ReopenRequest(_Wire):
    reason: ShortText


class StatusUpdate(_Wire):
    """Staff: move a case along. ``note`` is public (the citizen sees it); required for ``answered``."""

    status: CaseStatus
    note: Note | None = None


class TransferRequest(_Wire):
    agency: AgencyId
    note: Note | None = None


class InfoRequest(_Wire):
    question: Question


# --- events ---------------------------------------------------------------------------------------


class StatusEvent(_Wire):
    """A status change, pushed as a webhook and served by ``GET /events``; both carry the same
    ``event_id`` (dedup on it) and an increasing ``sequence`` (poll with ``after=<last sequence>``)."""

    event_id: EventId
    sequence: int = Field(ge=1)
    reference: Reference
    status: CaseStatus
    previous_status: CaseStatus
    agency: str
    previous_agency: str | None = None
    public_note: str | None = None
    question: str | None = None
    channel: str
    channel_user_id: str
    language: Language
    occurred_at: dt.datetime

    @property
    def new_status(self) -> CaseStatus:
        return self.status

    @property
    def old_status(self) -> CaseStatus:
        return self.previous_status


# The names the rest of the project uses; the wire names above match ``openapi.yaml``.
CaseEvent = StatusEvent
StatusHistoryEntry = StatusChange
NLUInfo = NLUProposal


class EventPage(_Wire):
    events: list[StatusEvent]
    # Pass as ``after`` next time; equals the request's ``after`` when there was nothing new.
    next_after: int = Field(ge=0)


# --- misc -----------------------------------------------------------------------------------------


class Health(_Wire):
    status: str
    database: str


class ErrorDetail(_Wire):
    loc: str
    message: str


class ErrorInfo(_Wire):
    code: str
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorBody(_Wire):
    error: ErrorInfo
