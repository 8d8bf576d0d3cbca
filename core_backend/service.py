"""What the reference backend does with cases, independent of HTTP.

``_transition`` is the one place a case changes status: it checks ``TRANSITIONS`` (from
``backend_client.models``), records the history entry and writes the status event (poll feed and
webhook outbox) in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload, undefer

from backend_client.models import (
    RATEABLE_STATUSES,
    Actor,
    AttachmentKind,
    AttachmentRef,
    Case,
    CaseCreate,
    CaseStatus,
    CaseType,
    EventPage,
    Language,
    Location,
    NLUProposal,
    Rating,
    RatingCreate,
    Reply,
    ReplyCreate,
    StatusChange,
    StatusEvent,
    StatusUpdate,
    TransferRequest,
    transition_error,
)
from config.settings import BackendSettings
from core_backend.db import (
    AttachmentRow,
    CaseRow,
    Database,
    EventRow,
    RatingRow,
    ReplyRow,
    StatusChangeRow,
    next_counter,
)
from core_backend.workdays import add_working_days, local_date

Clock = Callable[[], dt.datetime]

_REFERENCE = re.compile(r"TWS-[0-9]{4}-[0-9]{6}")
_ATTACHMENT_ID = re.compile(r"[0-9a-f]{32}")
DEFAULT_WORKING_DAYS = 14


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(eq=False)
class ApiError(Exception):
    """A refusal the API turns into ``{"error": {...}}`` with ``status``."""

    status: int
    code: str
    message: str
    details: list[dict[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def not_found(reference: str) -> ApiError:
    if not _REFERENCE.fullmatch(reference):
        return ApiError(404, "not_found", "not a case reference: references look like TWS-2026-000123")
    return ApiError(404, "not_found", f"no case {reference}")


@dataclass(frozen=True)
class StoredAttachment:
    ref: AttachmentRef
    data: bytes


class CaseService:
    def __init__(
        self,
        db: Database,
        settings: BackendSettings,
        *,
        clock: Clock = utcnow,
        push: bool = False,
        on_event: Callable[[], None] = lambda: None,
    ) -> None:
        """``push``: queue each new event for webhook delivery; ``on_event`` is called after a commit
        that wrote events (it wakes the webhook sender)."""
        self._db = db
        self._settings = settings
        self._clock = clock
        self._on_event = on_event
        self._holidays = frozenset(settings.public_holidays)
        self._push = push

    async def ping(self) -> None:
        await self._db.ping()

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncSession]:
        """A committed-or-rolled-back transaction; wakes the webhook sender if it wrote events."""
        async with self._db.sessions() as session:
            async with session.begin():
                yield session
            if session.info.get("events"):
                self._on_event()

    def expected_response_by(self, case_type: CaseType, at: dt.datetime) -> dt.date:
        days = self._settings.response_working_days.get(str(case_type), DEFAULT_WORKING_DAYS)
        return add_working_days(local_date(at), days, self._holidays)

    # --- reads -----------------------------------------------------------------------------------

    async def get_case(self, reference: str) -> Case:
        async with self._tx() as s:
            return to_case(await self._load(s, reference))

    async def list_cases(
        self,
        *,
        channel: str | None = None,
        channel_user_id: str | None = None,
        status: CaseStatus | None = None,
        agency: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> list[Case]:
        query = select(CaseRow).options(*_FULL).order_by(CaseRow.id.desc()).limit(limit).offset(offset)
        if channel is not None:
            query = query.where(CaseRow.channel == channel)
        if channel_user_id is not None:
            query = query.where(CaseRow.channel_user_id == channel_user_id)
        if status is not None:
            query = query.where(CaseRow.status == status.value)
        if agency is not None:
            query = query.where(CaseRow.agency == agency)
        async with self._tx() as s:
            return [to_case(row) for row in (await s.scalars(query)).all()]

    async def events_after(self, after: int, limit: int) -> EventPage:
        query = select(EventRow).where(EventRow.sequence > after).order_by(EventRow.sequence).limit(limit)
        async with self._tx() as s:
            rows = (await s.scalars(query)).all()
        events = [StatusEvent.model_validate(row.payload) for row in rows]
        return EventPage(events=events, next_after=events[-1].sequence if events else after)

    # --- citizen actions -------------------------------------------------------------------------

    async def create_case(self, data: CaseCreate, idempotency_key: str) -> tuple[Case, bool]:
        """Return ``(case, created)``; a repeated key returns the first case with ``created=False``."""
        digest = hashlib.sha256(data.model_dump_json().encode("utf-8")).hexdigest()
        existing = await self._replay(idempotency_key, digest)
        if existing is not None:
            return existing, False
        try:
            async with self._tx() as s:
                case = await self._insert_case(s, data, idempotency_key, digest)
        except IntegrityError:
            # Lost the race against a concurrent create with the same key: the unique constraint
            # refused our row, so the winner's case is the answer.
            existing = await self._replay(idempotency_key, digest)
            if existing is None:
                raise
            return existing, False
        return case, True

    async def _replay(self, key: str, digest: str) -> Case | None:
        async with self._tx() as s:
            row = await s.scalar(select(CaseRow).options(*_FULL).where(CaseRow.idempotency_key == key))
            if row is None:
                return None
            if row.request_hash != digest:
                raise ApiError(
                    422,
                    "idempotency_key_reused",
                    "this Idempotency-Key was already used for a different case; use a new key per case",
                )
            return to_case(row)

    async def _insert_case(self, s: AsyncSession, data: CaseCreate, key: str, digest: str) -> Case:
        now = self._clock()
        year = local_date(now).year
        number = await next_counter(s, f"ref:{year}")
        if number > 999_999:
            raise ApiError(503, "reference_space_exhausted", f"no case numbers left for {year}")
        loc = data.location
        row = CaseRow(
            reference=f"TWS-{year}-{number:06d}",
            idempotency_key=key,
            request_hash=digest,
            type=data.type.value,
            agency=data.agency,
            description=data.description,
            language=data.language.value,
            channel=data.channel,
            channel_user_id=data.channel_user_id,
            latitude=loc.latitude if loc else None,
            longitude=loc.longitude if loc else None,
            location_text=loc.text if loc else None,
            nlu=data.nlu.model_dump(mode="json") if data.nlu else None,
            status=CaseStatus.SUBMITTED.value,
            created_at=now,
            updated_at=now,
            expected_response_by=self.expected_response_by(data.type, now),
        )
        s.add(row)
        await s.flush()  # the idempotency-key conflict surfaces here, before anything else is claimed
        s.add(
            StatusChangeRow(
                case_id=row.id,
                status=CaseStatus.SUBMITTED.value,
                agency=row.agency,
                actor=Actor.CITIZEN.value,
                occurred_at=now,
            )
        )
        await self._claim_attachments(s, row.id, data.attachment_ids)
        return await self._reload(s, row.id)

    async def add_reply(self, reference: str, reply: ReplyCreate) -> Case:
        async with self._tx() as s:
            row = await self._load(s, reference, for_update=True)
            self._refuse_if_closed(row, "reply to it")
            now = self._clock()
            ids = _unique(reply.attachment_ids)
            await self._claim_attachments(s, row.id, ids)
            s.add(ReplyRow(case_id=row.id, text=reply.text, attachment_ids=ids, created_at=now))
            row.updated_at = now
            if row.status == CaseStatus.MORE_INFO_REQUESTED:
                await self._transition(s, row, CaseStatus.IN_PROGRESS, Actor.CITIZEN)
            return await self._reload(s, row.id)

    async def link_attachments(self, reference: str, attachment_ids: Sequence[str]) -> Case:
        async with self._tx() as s:
            row = await self._load(s, reference, for_update=True)
            self._refuse_if_closed(row, "add attachments")
            await self._claim_attachments(s, row.id, _unique(attachment_ids))
            row.updated_at = self._clock()
            return await self._reload(s, row.id)

    async def rate(self, reference: str, rating: RatingCreate) -> Case:
        async with self._tx() as s:
            row = await self._load(s, reference, for_update=True)
            if row.status not in RATEABLE_STATUSES:
                raise ApiError(
                    409,
                    "not_rateable",
                    f"only an answered or closed case can be rated; {reference} is {row.status}",
                )
            # One rating per answer (a case closed without an answer can be rated once).
            answers = await s.scalar(
                select(func.count())
                .select_from(StatusChangeRow)
                .where(StatusChangeRow.case_id == row.id, StatusChangeRow.status == CaseStatus.ANSWERED.value)
            )
            ratings = await s.scalar(
                select(func.count()).select_from(RatingRow).where(RatingRow.case_id == row.id)
            )
            if (ratings or 0) >= max(answers or 0, 1):
                raise ApiError(409, "already_rated", f"{reference} was already rated for its latest answer")
            s.add(
                RatingRow(
                    case_id=row.id, score=rating.score, comment=rating.comment, created_at=self._clock()
                )
            )
            return await self._reload(s, row.id)

    async def reopen(self, reference: str, reason: str) -> Case:
        async with self._tx() as s:
            row = await self._load(s, reference, for_update=True)
            # The reason is the citizen's own words: kept with the replies, not as a public note.
            s.add(ReplyRow(case_id=row.id, text=reason, attachment_ids=[], created_at=self._clock()))
            await self._transition(s, row, CaseStatus.REOPENED, Actor.CITIZEN)
            return await self._reload(s, row.id)

    # --- staff actions ---------------------------------------------------------------------------

    async def set_status(self, reference: str, update_: StatusUpdate) -> Case:
        if update_.status is CaseStatus.TRANSFERRED:
            raise ApiError(422, "use_transfer", "to transfer a case, use POST /cases/{reference}/transfer")
        if update_.status is CaseStatus.MORE_INFO_REQUESTED:
            raise ApiError(
                422, "use_request_info", "to ask the citizen, use POST /cases/{reference}/request-info"
            )
        if update_.status is CaseStatus.ANSWERED and update_.note is None:
            raise ApiError(422, "note_required", "an answer needs a note: the text the citizen will read")
        async with self._tx() as s:
            row = await self._load(s, reference, for_update=True)
            await self._transition(s, row, update_.status, Actor.STAFF, note=update_.note)
            return await self._reload(s, row.id)

    async def transfer(self, reference: str, request: TransferRequest) -> Case:
        async with self._tx() as s:
            row = await self._load(s, reference, for_update=True)
            if row.agency == request.agency:
                raise ApiError(409, "same_agency", f"{reference} is already with {request.agency}")
            await self._transition(
                s, row, CaseStatus.TRANSFERRED, Actor.STAFF, note=request.note, agency=request.agency
            )
            return await self._reload(s, row.id)

    async def request_info(self, reference: str, question: str) -> Case:
        async with self._tx() as s:
            row = await self._load(s, reference, for_update=True)
            await self._transition(s, row, CaseStatus.MORE_INFO_REQUESTED, Actor.STAFF, question=question)
            return await self._reload(s, row.id)

    # --- attachments -----------------------------------------------------------------------------

    async def store_attachment(
        self, data: bytes, mime_type: str, filename: str | None, kind: AttachmentKind
    ) -> AttachmentRef:
        row = AttachmentRow(
            id=uuid.uuid4().hex,
            kind=kind.value,
            mime_type=mime_type,
            filename=filename,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            data=data,
            created_at=self._clock(),
        )
        async with self._tx() as s:
            s.add(row)
        return to_attachment(row)

    async def get_attachment(self, attachment_id: str) -> StoredAttachment:
        if _ATTACHMENT_ID.fullmatch(attachment_id):
            async with self._tx() as s:
                row = await s.scalar(
                    select(AttachmentRow)
                    .options(undefer(AttachmentRow.data))
                    .where(AttachmentRow.id == attachment_id)
                )
            if row is not None:
                return StoredAttachment(to_attachment(row), row.data)
        raise ApiError(404, "not_found", "no such attachment")

    # --- the state machine -----------------------------------------------------------------------

    async def _transition(
        self,
        s: AsyncSession,
        row: CaseRow,
        target: CaseStatus,
        actor: Actor,
        *,
        note: str | None = None,
        question: str | None = None,
        agency: str | None = None,
    ) -> None:
        current = CaseStatus(row.status)
        problem = transition_error(row.reference, current, target)
        if problem is not None:
            raise ApiError(409, "illegal_transition", problem)
        now = self._clock()
        previous_agency = None
        if agency is not None and agency != row.agency:
            previous_agency, row.agency = row.agency, agency
        row.status = target.value
        row.updated_at = now
        if target is CaseStatus.ANSWERED:
            row.answered_at = now
        elif target is CaseStatus.REOPENED:
            # A reopened case gets a fresh response period from the day it was reopened.
            row.expected_response_by = self.expected_response_by(CaseType(row.type), now)
        s.add(
            StatusChangeRow(
                case_id=row.id,
                status=target.value,
                previous_status=current.value,
                agency=row.agency,
                previous_agency=previous_agency,
                public_note=note,
                question=question,
                actor=actor.value,
                occurred_at=now,
            )
        )
        sequence = await next_counter(s, "events")
        event = StatusEvent(
            event_id=uuid.uuid4().hex,
            sequence=sequence,
            reference=row.reference,
            status=target,
            previous_status=current,
            agency=row.agency,
            previous_agency=previous_agency,
            public_note=note,
            question=question,
            channel=row.channel,
            channel_user_id=row.channel_user_id,
            language=Language(row.language),
            occurred_at=now,
        )
        s.add(
            EventRow(
                sequence=sequence,
                event_id=event.event_id,
                case_id=row.id,
                payload=event.model_dump(mode="json"),
                created_at=now,
                attempts=0,
                next_attempt_at=now if self._push else None,
            )
        )
        s.info["events"] = s.info.get("events", 0) + 1

    # --- helpers ---------------------------------------------------------------------------------

    async def _load(self, s: AsyncSession, reference: str, *, for_update: bool = False) -> CaseRow:
        if not _REFERENCE.fullmatch(reference):
            raise not_found(reference)
        query = select(CaseRow).where(CaseRow.reference == reference)
        # Row lock on PostgreSQL so two staff actions on one case apply one after the other (and each
        # checks the transition against the state the other left); SQLite already serialises writers.
        query = query.with_for_update() if for_update else query.options(*_FULL)
        row = await s.scalar(query)
        if row is None:
            raise not_found(reference)
        return row

    async def _reload(self, s: AsyncSession, case_id: int) -> Case:
        await s.flush()
        query = (
            select(CaseRow)
            .options(*_FULL)
            .where(CaseRow.id == case_id)
            .execution_options(populate_existing=True)
        )
        return to_case((await s.scalars(query)).one())

    async def _claim_attachments(self, s: AsyncSession, case_id: int, ids: Sequence[str]) -> None:
        """Attach uploaded files to a case; each file belongs to at most one case."""
        if not ids:
            return
        result = await s.execute(
            update(AttachmentRow)
            .where(AttachmentRow.id.in_(ids), AttachmentRow.case_id.is_(None))
            .values(case_id=case_id)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) == len(ids):
            return
        rows = (
            await s.execute(select(AttachmentRow.id, AttachmentRow.case_id).where(AttachmentRow.id.in_(ids)))
        ).all()
        found = {r.id: r.case_id for r in rows}
        unknown = [i for i in ids if i not in found]
        if unknown:
            raise ApiError(422, "unknown_attachment", f"no uploaded attachment with id {', '.join(unknown)}")
        taken = [i for i in ids if found[i] != case_id]
        raise ApiError(
            409, "attachment_in_use", f"attachment {', '.join(taken)} already belongs to another case"
        )

    @staticmethod
    def _refuse_if_closed(row: CaseRow, action: str) -> None:
        if row.status == CaseStatus.CLOSED:
            raise ApiError(409, "case_closed", f"{row.reference} is closed; reopen it to {action}")


_FULL = (
    selectinload(CaseRow.history),
    selectinload(CaseRow.replies),
    selectinload(CaseRow.ratings),
    selectinload(CaseRow.attachments),
)


def _unique(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


# --- rows to wire models ------------------------------------------------------------------------


def to_attachment(row: AttachmentRow) -> AttachmentRef:
    return AttachmentRef(
        id=row.id,
        kind=AttachmentKind(row.kind),
        mime_type=row.mime_type,
        filename=row.filename,
        size=row.size,
        sha256=row.sha256,
        url=f"/attachments/{row.id}",
        created_at=row.created_at,
    )


def to_case(row: CaseRow) -> Case:
    location = None
    if row.latitude is not None or row.location_text is not None:
        location = Location(latitude=row.latitude, longitude=row.longitude, text=row.location_text)
    data: dict[str, Any] = {
        "reference": row.reference,
        "type": row.type,
        "agency": row.agency,
        "description": row.description,
        "language": row.language,
        "channel": row.channel,
        "channel_user_id": row.channel_user_id,
        "location": location,
        "attachments": [to_attachment(a) for a in row.attachments],
        "nlu": NLUProposal.model_validate(row.nlu) if row.nlu else None,
        "status": row.status,
        "history": [
            StatusChange(
                status=CaseStatus(h.status),
                previous_status=CaseStatus(h.previous_status) if h.previous_status else None,
                agency=h.agency,
                previous_agency=h.previous_agency,
                public_note=h.public_note,
                question=h.question,
                actor=Actor(h.actor),
                occurred_at=h.occurred_at,
            )
            for h in row.history
        ],
        "replies": [
            Reply(text=r.text, attachment_ids=r.attachment_ids, created_at=r.created_at) for r in row.replies
        ],
        "ratings": [Rating(score=r.score, comment=r.comment, created_at=r.created_at) for r in row.ratings],
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "expected_response_by": row.expected_response_by,
    }
    return Case.model_validate(data)
