"""Everything between a conversation and the core backend: the citizen's own-case directory, the outbox jobs
that file cases and send replies/ratings, and the status-change events coming back.

All writes to the backend go through the outbox (so a backend outage delays but loses nothing); reads for a
status check go straight to the backend with the local mirror as the fallback.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend_client.client import BackendClient
from backend_client.errors import BackendError, BackendRejected, BackendUnavailable
from backend_client.models import CaseCreate, Location, NLUProposal, StatusEvent
from bot.channel import (
    Button,
    DeliveryFailed,
    OutgoingMessage,
    OutputChannel,
    outgoing_from_json,
    outgoing_to_json,
)
from config.settings import NLUSettings
from dialogues.i18n import Catalog
from dialogues.model import AgencyDirectory, CaseView, CitizenView, Draft
from dialogues.states import State
from dialogues.store import _insert, lock_conversation, outbound_row
from tawasul.db import Database
from tawasul.db.models import CaseRecord, Citizen, ProcessedEvent, ReviewItem, ReviewReason, ReviewStatus, utcnow
from tawasul.outbox import Job, NewJob, PermanentFailure, Recorder, RetryLater, enqueue, enqueue_many
from tawasul.privacy import mask_id, redact

log = logging.getLogger(__name__)
_T = TypeVar("_T")

SEND = "send"
FILE_CASE = "file_case"
BACKEND_REPLY = "backend_reply"
BACKEND_RATE = "backend_rate"


class CaseMetrics(Protocol):
    """What the case jobs report; the app wires Prometheus counters, tests may leave it out."""

    def delivered(self, channel: str) -> None: ...

    def backend_error(self, kind: str, error: str) -> None: ...


class _NoMetrics:
    def delivered(self, channel: str) -> None:
        return None

    def backend_error(self, kind: str, error: str) -> None:
        return None


def backend_error_kind(exc: BackendError) -> str:
    """A low-cardinality label for a failed backend call."""
    if isinstance(exc, BackendUnavailable):
        return "unavailable"  # down, 5xx, timeout
    if isinstance(exc, BackendRejected):
        return "rejected"  # 4xx: our request or its data
    return "protocol"  # an answer we could not read, or no token configured


def ordering_key(citizen_id: int) -> str:
    return f"c:{citizen_id}"


def idempotency_key(channel: str, channel_user_id: str, draft_id: str) -> str:
    """Derived from the draft, so a double tap or a retried filing reuses it and never files twice."""
    digest = hashlib.sha256(f"{channel}|{channel_user_id}|{draft_id}".encode()).hexdigest()[:40]
    return f"tawasul-{digest}"


def pending_reference(key: str) -> str:
    """What a review item names until the backend gives the case its reference: derived from the idempotency
    key and short enough for ``review_items.case_reference`` (32 characters; PostgreSQL enforces it)."""
    return f"pending:{key.removeprefix('tawasul-')[:24]}"


async def queue_message(
    session: AsyncSession, citizen: CitizenView | Citizen, message: OutgoingMessage, dedup_key: str
) -> None:
    await queue_messages(session, citizen, [(message, dedup_key)])


async def queue_messages(session: AsyncSession, citizen: CitizenView | Citizen,
                         messages: Sequence[tuple[OutgoingMessage, str]]) -> None:
    """Queue messages to the citizen, in order, in one round trip; each is ``(message, dedup_key)``."""
    await enqueue_many(session, [reply_job(citizen, message, dedup_key) for message, dedup_key in messages])


def reply_job(citizen: CitizenView | Citizen, message: OutgoingMessage, dedup_key: str) -> NewJob:
    """The outbox job that sends ``message`` to the citizen (in order with the rest of theirs)."""
    return NewJob(SEND, {"channel": citizen.channel, "recipient": citizen.channel_user_id, "citizen_id": citizen.id,
                         "message": outgoing_to_json(message)}, dedup_key, ordering_key(citizen.id))


@dataclass(frozen=True, slots=True)
class FilingRows:
    """See ``CaseService.filing_rows``: ``case`` and ``review`` are column values of ``cases`` and
    ``review_items``."""

    case: dict[str, Any]
    job: NewJob
    review: dict[str, Any] | None


class DbCaseDirectory:
    """The citizen's own cases: the local mirror decides ownership; the backend supplies live status."""

    def __init__(self, session: AsyncSession, backend: BackendClient | None,
                 metrics: CaseMetrics | None = None) -> None:
        self.session = session
        self.backend = backend
        self.metrics: CaseMetrics = metrics or _NoMetrics()

    async def find(self, citizen: CitizenView, reference: str) -> CaseView | None:
        record = (
            await self.session.execute(
                select(CaseRecord).where(CaseRecord.reference == reference, CaseRecord.citizen_id == citizen.id)
            )
        ).scalar_one_or_none()
        if record is None:  # not filed by this identity: same answer as a reference that does not exist
            return None
        view = _view(record)
        if self.backend is None:
            return view
        try:
            case = await self.backend.get_case(reference)
        except BackendError as exc:
            self.metrics.backend_error("status", backend_error_kind(exc))
            return CaseView(**{**_asdict(view), "stale": True})
        if (case.channel, case.channel_user_id) != (citizen.channel, citizen.channel_user_id):
            return None
        note = next((h.public_note for h in reversed(case.history) if h.public_note), None)
        return CaseView(reference=case.reference, type=str(case.type), agency=case.agency,
                        status=str(case.status), expected_response_by=case.expected_response_by, last_note=note)

    async def list(self, citizen: CitizenView) -> list[CaseView]:
        rows = (
            await self.session.execute(
                select(CaseRecord).where(CaseRecord.citizen_id == citizen.id).order_by(CaseRecord.id.desc())
            )
        ).scalars()
        return [_view(r) for r in rows]


class OnDemandCaseDirectory:
    """``DbCaseDirectory`` for a turn that holds no transaction (the quick turn on PostgreSQL): each read
    opens its own short session, and most turns read nothing."""

    def __init__(self, db: Database, backend: BackendClient | None, metrics: CaseMetrics | None = None) -> None:
        self.db = db
        self.backend = backend
        self.metrics = metrics

    async def find(self, citizen: CitizenView, reference: str) -> CaseView | None:
        async with self.db.session() as session:
            return await DbCaseDirectory(session, self.backend, self.metrics).find(citizen, reference)

    async def list(self, citizen: CitizenView) -> list[CaseView]:
        async with self.db.session() as session:
            return await DbCaseDirectory(session, self.backend, self.metrics).list(citizen)


def _view(record: CaseRecord) -> CaseView:
    return CaseView(reference=record.reference, type=record.type, agency=record.agency, status=record.status,
                    expected_response_by=record.expected_response_by)


def _asdict(view: CaseView) -> dict[str, Any]:
    return {f: getattr(view, f) for f in view.__dataclass_fields__}


class CaseService:
    """Outbox jobs and backend events. ``outputs`` maps a channel name to its output channel."""

    def __init__(
        self,
        db: Database,
        backend: BackendClient,
        texts: Catalog,
        agencies: AgencyDirectory,
        nlu_settings: NLUSettings,
        outputs: dict[str, OutputChannel],
        call_centre: str,
        rng: Callable[[], float] = random.random,
        *,
        metrics: CaseMetrics | None = None,
    ) -> None:
        self.db = db
        self.backend = backend
        self.t = texts
        self.agencies = agencies
        self.nlu_settings = nlu_settings
        self.outputs = outputs
        self.call_centre = call_centre
        self.rng = rng
        self.metrics: CaseMetrics = metrics or _NoMetrics()

    # -- called by the engine inside a turn's transaction -----------------------------------------
    async def register_filing(self, session: AsyncSession, citizen: CitizenView, draft: Draft, lang: str) -> None:
        rows = self.filing_rows(citizen, draft, lang)
        existing = (await session.execute(
            select(CaseRecord.id).where(CaseRecord.idempotency_key == rows.case["idempotency_key"]))).first()
        if existing is not None:  # the same draft sent twice: already queued
            return
        record = CaseRecord(**rows.case)
        session.add(record)
        await session.flush()
        job = rows.job
        await enqueue(session, job.kind, {**job.payload, "case_id": record.id}, dedup_key=job.dedup_key,
                      ordering_key=job.ordering_key)
        if rows.review is not None:
            session.add(ReviewItem(**rows.review))

    def filing_rows(self, citizen: CitizenView, draft: Draft, lang: str) -> FilingRows:
        """What filing ``draft`` writes in the turn's commit: the case mirror, the FILE_CASE job (its payload
        gets ``case_id`` once the case row has one) and perhaps a review item. The same draft gives the same
        idempotency key, so a second filing of it writes nothing."""
        assert draft.type is not None and draft.agency is not None
        key = idempotency_key(citizen.channel, citizen.channel_user_id, draft.id)
        now = utcnow()
        case = {
            "citizen_id": citizen.id, "idempotency_key": key, "type": draft.type, "agency": draft.agency,
            "language": lang, "status": "pending", "description": redact(draft.text), "last_event_sequence": 0,
            "nlu": {"type": draft.proposed_type, "type_confidence": draft.type_confidence,
                    "agency": draft.proposed_agency, "agency_confidence": draft.agency_confidence,
                    "candidates": draft.candidates, "model_version": draft.model_version, "engine": draft.engine},
            "created_at": now, "updated_at": now,
        }
        job = NewJob(FILE_CASE, {"draft": draft.to_json(), "language": lang, "channel": citizen.channel,
                                 "recipient": citizen.channel_user_id, "citizen_id": citizen.id,
                                 "idempotency_key": key},
                     dedup_key=f"file:{key}", ordering_key=f"file:{citizen.id}")
        return FilingRows(case, job, self._review_item(citizen, draft, lang, key, now))

    def _review_item(self, citizen: CitizenView, draft: Draft, lang: str, key: str,
                     now: dt.datetime) -> dict[str, Any] | None:
        if draft.model_version is None:
            return None  # no prediction to review (NLU was unavailable)
        reason: ReviewReason | None = None
        if draft.corrected:
            reason = ReviewReason.CORRECTION
        elif min(draft.type_confidence, draft.agency_confidence) < self.nlu_settings.review_threshold:
            reason = ReviewReason.LOW_CONFIDENCE
        elif self.rng() < self.nlu_settings.review_sample_rate:
            reason = ReviewReason.SAMPLE
        if reason is None:
            return None
        return {
            "reason": str(reason), "text": redact(draft.text), "language": draft.nlu_language or lang,
            "channel": citizen.channel, "model_version": draft.model_version, "predicted_type": draft.proposed_type,
            "predicted_type_confidence": draft.type_confidence, "predicted_agency": draft.proposed_agency,
            "predicted_agency_confidence": draft.agency_confidence,
            "candidates": {"agency": [[a, c] for a, c in draft.candidates]},
            "citizen_type": draft.type, "citizen_agency": draft.agency, "case_reference": pending_reference(key),
            "status": str(ReviewStatus.PENDING), "created_at": now,
        }

    # -- outbox jobs ------------------------------------------------------------------------------
    async def job_send(self, job: Job) -> Recorder:
        p = job.payload
        output = self.outputs.get(p["channel"])
        if output is None:
            raise RetryLater(f"channel {p['channel']} is not running", delay_s=30)
        message = outgoing_from_json(p["message"])
        try:
            await output.send(p["recipient"], message)
        except DeliveryFailed as exc:
            if exc.permanent:
                raise PermanentFailure(str(exc)) from exc
            raise RetryLater(str(exc), delay_s=exc.retry_after) from exc
        self.metrics.delivered(p["channel"])

        # Logged once the outbox marks it done.
        return outbound_row(p["citizen_id"], p["channel"], message.text,
                            {"buttons": [b.payload for b in message.buttons], "outbox_id": job.id})

    async def job_file_case(self, job: Job) -> None:
        p = job.payload
        draft = Draft.from_json(p["draft"])
        lang = p["language"]
        output = self.outputs.get(p["channel"])
        try:
            attachment_ids = await self._upload_attachments(draft, output)
            location = None
            if draft.location is not None and (draft.location.text or draft.location.latitude is not None):
                location = Location(latitude=draft.location.latitude, longitude=draft.location.longitude,
                                    text=(draft.location.text or None) and draft.location.text[:200])
            nlu = None
            if draft.model_version:
                nlu = NLUProposal(type=draft.proposed_type, type_confidence=draft.type_confidence,
                                  agency=draft.proposed_agency, agency_confidence=draft.agency_confidence,
                                  model_version=draft.model_version, engine=draft.engine)
            create = CaseCreate(
                type=draft.type, agency=draft.agency, description=draft.text[:4000], language=lang,
                channel=p["channel"], channel_user_id=p["recipient"], location=location,
                attachment_ids=attachment_ids, nlu=nlu,
            )
            case = await self._backend_call("file_case", self.backend.create_case(create, p["idempotency_key"]))
        except BackendUnavailable as exc:
            if job.attempts == 1:
                await self._tell(p, "filing_delayed", dedup=f"delayed:{p['case_id']}")
            raise RetryLater(f"backend unavailable: {type(exc).__name__}") from exc
        except BackendRejected as exc:
            raise PermanentFailure(f"backend rejected the case: {exc}") from exc
        async with self.db.session() as session:
            await session.execute(
                update(CaseRecord).where(CaseRecord.id == p["case_id"]).values(
                    reference=case.reference, status=str(case.status),
                    expected_response_by=case.expected_response_by, updated_at=utcnow())
            )
            await session.execute(
                update(ReviewItem).where(ReviewItem.case_reference == pending_reference(p["idempotency_key"]))
                .values(case_reference=case.reference)
            )
            type_name = self.t(lang, f"type_{case.type}")
            text = self.t(lang, "filed", type_lower=type_name.lower() if lang == "en" else type_name,
                          reference=case.reference, agency=self.agencies.name(case.agency, lang),
                          due=case.expected_response_by.isoformat())
            await self._queue(session, p, OutgoingMessage(text=text, language=lang), f"filed:{p['case_id']}")
        log.info("filed case %s for %s", case.reference, mask_id(p["recipient"]))

    async def _upload_attachments(self, draft: Draft, output: OutputChannel | None) -> list[str]:
        ids: list[str] = []
        for att in draft.attachments:
            if output is None:
                raise RetryLater("channel for attachments not running", delay_s=30)
            try:
                data = await output.fetch_attachment(att.to_attachment())
            except DeliveryFailed as exc:
                if exc.permanent:
                    log.warning("attachment could not be fetched: %s", exc)
                    continue
                raise RetryLater(str(exc)) from exc
            ref = await self._backend_call("attachment", self.backend.upload_attachment(
                data, att.mime_type or "application/octet-stream", att.filename))
            ids.append(ref.id)
        return ids

    async def on_file_dead(self, job: Job, error: str) -> None:
        await self._tell(job.payload, "filing_failed", dedup=f"failed:{job.payload['case_id']}",
                         call_centre=self.call_centre)

    async def job_backend_reply(self, job: Job) -> None:
        p = job.payload
        try:
            output = self.outputs.get(p["channel"])
            draft = Draft.from_json({"attachments": p.get("attachments", [])})
            ids = await self._upload_attachments(draft, output) if draft.attachments else []
            await self._backend_call("reply", self.backend.add_reply(p["reference"], p.get("text"), ids))
        except BackendUnavailable as exc:
            raise RetryLater(type(exc).__name__) from exc
        except BackendRejected as exc:
            raise PermanentFailure(str(exc)) from exc

    async def job_backend_rate(self, job: Job) -> None:
        p = job.payload
        try:
            await self._backend_call("rate", self.backend.rate(p["reference"], int(p["score"]), p.get("comment")))
        except BackendUnavailable as exc:
            raise RetryLater(type(exc).__name__) from exc
        except BackendRejected as exc:
            raise PermanentFailure(str(exc)) from exc

    async def _backend_call(self, kind: str, call: Awaitable[_T]) -> _T:
        """Await a backend call, counting its failure by kind (the caller still decides what it means)."""
        try:
            return await call
        except BackendError as exc:
            self.metrics.backend_error(kind, backend_error_kind(exc))
            raise

    async def _tell(self, p: dict[str, Any], key: str, dedup: str, **params: Any) -> None:
        lang = p["language"]
        async with self.db.session() as session:
            await self._queue(session, p, OutgoingMessage(text=self.t(lang, key, **params), language=lang), dedup)

    async def _queue(self, session: AsyncSession, p: dict[str, Any], message: OutgoingMessage, dedup: str) -> None:
        await enqueue(
            session, SEND,
            {"channel": p["channel"], "recipient": p["recipient"], "citizen_id": p["citizen_id"],
             "message": outgoing_to_json(message)},
            dedup_key=dedup, ordering_key=ordering_key(p["citizen_id"]),
        )

    # -- status-change events ---------------------------------------------------------------------
    async def on_event(self, event: StatusEvent) -> int | None:
        """Apply a status event; queue the citizen's notice. Returns the citizen id notified (or None)."""
        async with self.db.session() as session:
            first = await session.execute(
                _insert(session)(ProcessedEvent).values(event_id=event.event_id, received_at=utcnow())
                .on_conflict_do_nothing(index_elements=["event_id"]))
            if not getattr(first, "rowcount", 0):
                return None  # handled before (webhook retry, poll, another worker)
            record = (
                await session.execute(select(CaseRecord).where(CaseRecord.reference == event.reference))
            ).scalar_one_or_none()
            if record is None:
                log.info("event %s for a case this bot did not file; ignored", event.event_id)
                return None
            citizen = (await session.execute(select(Citizen).where(Citizen.id == record.citizen_id))).scalar_one()
            if (citizen.channel, citizen.channel_user_id) != (event.channel, event.channel_user_id):
                log.warning("event %s names another channel identity; ignored", event.event_id)
                return None
            if event.sequence <= record.last_event_sequence:
                return None  # older than what the citizen already knows
            previous_agency = record.agency
            record.status = str(event.status)
            record.agency = event.agency
            record.last_event_sequence = event.sequence
            record.last_status_notified = str(event.status)
            lang = citizen.language or event.language or "ar"
            lang = "en" if lang == "en" else "ar"
            message = self._notice(event, lang)
            await queue_message(session, citizen, message, dedup_key=f"event:{event.event_id}")
            if str(event.status) == "transferred" and event.agency != previous_agency:
                await self._transferred_review(session, record, citizen, event)
            if str(event.status) == "more_info_requested":
                conv = await lock_conversation(session, citizen.id)
                if conv.state == State.IDLE:
                    conv.state = State.AWAIT_INFO_REPLY
                    conv.data = {**(conv.data or {}), "info_reference": event.reference}
            return citizen.id

    def _notice(self, event: StatusEvent, lang: str) -> OutgoingMessage:
        status = str(event.status)
        agency = self.agencies.name(event.agency, lang)
        buttons: tuple[Button, ...] = ()
        if status == "more_info_requested":
            text = self.t(lang, "notify_more_info", agency=agency, reference=event.reference,
                          question=event.question or "")
            buttons = (Button(self.t(lang, "btn_reply_info"), f"info:{event.reference}"),)
        else:
            key = f"notify_{status}"
            text = self.t(lang, key, reference=event.reference, agency=agency)
            if event.public_note:
                text += "\n" + self.t(lang, "notify_note", note=event.public_note)
            if status == "answered":
                text += "\n\n" + self.t(lang, "ask_rating", reference=event.reference)
                buttons = tuple(Button("⭐" * n, f"rate:{event.reference}:{n}") for n in range(5, 0, -1))
        return OutgoingMessage(text=text, buttons=buttons, language=lang, notification=True,
                               template_params=(event.reference, self.t(lang, f"status_{status}")))

    async def _transferred_review(self, session: AsyncSession, record: CaseRecord, citizen: Citizen,
                                  event: StatusEvent) -> None:
        nlu = record.nlu or {}
        session.add(ReviewItem(
            reason=ReviewReason.TRANSFERRED, text=record.description or "", language=record.language,
            channel=citizen.channel, case_reference=record.reference, model_version=nlu.get("model_version"),
            predicted_type=nlu.get("type"), predicted_type_confidence=nlu.get("type_confidence"),
            predicted_agency=nlu.get("agency"), predicted_agency_confidence=nlu.get("agency_confidence"),
            candidates={"agency": nlu.get("candidates", [])}, citizen_type=record.type,
            citizen_agency=event.previous_agency, backend_agency=event.agency,
        ))

