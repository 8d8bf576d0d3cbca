"""The dialogue engine: the ``MessageHandler`` every channel calls, around the pure ``Policy``.

A turn, in order:

1. NLU runs outside any transaction (it is CPU work or an HTTP call).
2. The quick turn (PostgreSQL, ``dialogues.pg_turn``): one statement stores the inbound message and reads the
   citizen and conversation; a message id seen before (a platform re-delivery) stops here, and the webhook
   may acknowledge the platform. The policy runs with no transaction open; a second statement applies its
   outcome only if the conversation's version is unchanged (optimistic versioning): message marked handled,
   new state, a filing if there is one, replies queued in the outbox and leased to this worker.
3. The locked turn takes whatever the quick one cannot (and every turn on SQLite): under the per-citizen lock
   (an ``asyncio.Lock`` in this process plus the conversation row lock in the database, ``FOR UPDATE`` on
   PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) it takes every unprocessed inbound message of that citizen in
   arrival order, runs the policy, applies its effects (filings, backend calls, notices), writes the replies
   to the outbox and marks the message processed, all in one commit. A crash anywhere leaves either nothing or
   everything of that turn; the sweeper picks up messages left unprocessed.
4. The outbox delivers that citizen's replies at once (and any worker retries them later if that fails).

Nothing a citizen sends is dropped silently: a message that makes the policy fail is answered with
``error_generic`` and kept in the inbound log (with the error logged) so staff can look at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import weakref
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backend_client.client import BackendClient
from backend_client.models import StatusEvent
from bot.channel import IncomingMessage, OutgoingMessage, OutputChannel, accepted, incoming_from_json
from config.settings import Settings
from dialogues.cases import (
    BACKEND_RATE,
    BACKEND_REPLY,
    FILE_CASE,
    SEND,
    CaseService,
    DbCaseDirectory,
    FilingRows,
    OnDemandCaseDirectory,
    ordering_key,
    queue_message,
    queue_messages,
    reply_job,
)
from dialogues.model import (
    CitizenView,
    ConversationData,
    FileCase,
    Outcome,
    RateCase,
    SendReply,
    SetLanguage,
    Turn,
)
from dialogues.pg_turn import Applied, PgTurns, Stored
from dialogues.policy import Policy
from dialogues.states import DRAFT_STATES, State
from dialogues.store import (
    citizen_and_conversation,
    citizens_with_unprocessed,
    inbound_counts,
    inbound_since,
    insert_inbound,
    insert_inbound_handled,
    lock_conversation,
    next_unprocessed,
    unprocessed,
    upsert_citizen,
)
from nlu.types import NLUResult, NLUUnavailable
from tawasul.db import Database
from tawasul.db.engine import database_unavailable
from tawasul.db.models import Citizen, Conversation, MessageRecord, ProcessedEvent, utcnow
from tawasul.outbox import Job, Outbox, enqueue
from tawasul.privacy import mask_id

log = logging.getLogger(__name__)
FLOOD_WINDOW = dt.timedelta(minutes=1)  # dialogue.flood_limit_per_minute counts messages in this window
# Status notices being delivered beside the backend's webhook answers, at most. Past that an event's webhook
# call waits for a free slot before it is answered: the backend's sender slows to the platform's pace (as it
# did when every call waited for its delivery), instead of piling up a backlog the outbox drains later.
BACKGROUND_DELIVERIES = 256


class Parser(Protocol):
    async def parse(self, text: str) -> NLUResult: ...


class Metrics(Protocol):
    """What the engine reports; the app wires Prometheus counters, tests a no-op."""

    def turn(self, channel: str, outcome: str) -> None: ...


class _NoMetrics:
    def turn(self, channel: str, outcome: str) -> None:
        return None


class DialogueEngine:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        nlu: Parser,
        policy: Policy,
        cases: CaseService,
        outbox: Outbox,
        status_backend: BackendClient | None,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.nlu = nlu
        self.policy = policy
        self.cases = cases
        self.outbox = outbox
        # Status checks read the backend inside the turn; this client has a short timeout and no retries,
        # and the local mirror answers (marked stale) when the backend is slow or down.
        self.status_backend = status_backend
        self.clock = clock
        self.metrics: Metrics = metrics or _NoMetrics()
        self._locks: weakref.WeakValueDictionary[Hashable, asyncio.Lock] = weakref.WeakValueDictionary()
        # The quick turn: two hand-written statements on PostgreSQL (``dialogues.pg_turn``); None on SQLite.
        raw = db.raw if settings.database.quick_turns else None
        self.turns = PgTurns(raw, settings.outbox.lease_s) if raw is not None else None
        self._directory = OnDemandCaseDirectory(db, status_backend, cases.metrics)
        self._background: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(BACKGROUND_DELIVERIES)
        self._closing = False
        outbox.register(SEND, cases.job_send)
        outbox.register(FILE_CASE, cases.job_file_case, on_dead=cases.on_file_dead)
        outbox.register(BACKEND_REPLY, cases.job_backend_reply)
        outbox.register(BACKEND_RATE, cases.job_backend_rate)

    # ------------------------------------------------------------------ the MessageHandler
    async def handle(self, msg: IncomingMessage, output: OutputChannel) -> None:
        """Persist, process and answer one inbound message. Safe to call again with the same message.

        On PostgreSQL the usual path is the quick turn (two statements, see the module docstring); otherwise one
        transaction stores the message, runs the turn under the conversation lock and leases the replies it
        queued. After the commit the replies are sent and marked done. (Round trips to the database are most of
        a turn's cost.) A turn that fails takes the careful path:
        the message is stored on its own, then answered with ``error_generic`` by ``process_citizen``."""
        self.cases.outputs.setdefault(msg.channel, output)
        nlu_json = await self._parse(msg)
        now = self.clock()
        async with self._lock((msg.channel, msg.sender_id)):
            try:
                stored = None
                if self.turns is not None:
                    stored = await self.turns.store(msg, nlu_json, now, now - FLOOD_WINDOW)
                if stored is None:  # SQLite (or the quick path could not store it)
                    done = await self._store_and_turn(msg, nlu_json)
            except Exception as exc:
                if database_unavailable(exc):
                    raise  # nothing was stored: the webhook answers 503 and the platform sends it again
                log.exception("turn failed for a message from %s; storing it apart", mask_id(msg.sender_id))
                stored, done = None, None
            if stored is not None:
                accepted()  # stored: the webhook may acknowledge the platform now
                done = await self._quick_turn(self.turns, msg, nlu_json, stored, now)
        if done is None:
            await self._handle_apart(msg, nlu_json)
            return
        accepted()  # committed: the webhook may acknowledge the platform now
        if done.duplicate:
            log.info("duplicate delivery of %s from %s ignored", msg.message_id, mask_id(msg.sender_id))
            self.metrics.turn(msg.channel, "duplicate")
            return
        if done.locked:
            try:
                await self.process_citizen(done.citizen_id)
            except Exception:  # stored: the sweeper handles it once the database answers again
                log.exception("turn of citizen %s postponed", done.citizen_id)
            await self.deliver(done.citizen_id)
            return
        try:
            ran = await self.outbox.run_in_order(done.jobs)
            if done.backend_work:
                await self.deliver(done.citizen_id, replies=done.replies_waiting or ran < len(done.jobs))
        except Exception:  # delivery is retried by the outbox loop; the turn itself is committed
            log.exception("inline delivery failed; the outbox loop will retry")

    async def _store_and_turn(self, msg: IncomingMessage, nlu_json: dict[str, Any] | None) -> _Handled:
        now = self.clock()
        async with self.db.session() as session:
            citizen, conv = await citizen_and_conversation(session, msg.channel, msg.sender_id)
            recent, waiting = await inbound_counts(session, citizen.id, now - FLOOD_WINDOW)
            backend_work = False
            if waiting == 0:  # the usual case: this message is the only one to handle
                record = await insert_inbound_handled(session, citizen.id, msg, nlu_json, now)
                if record is None:
                    return _Handled(citizen.id, duplicate=True)
                _seen_now(citizen, now)
                backend_work = await self._run_turn(session, citizen, conv, record, now, recent=recent + 1)
            else:  # older messages are left over from a crash or a database outage: those first, in order
                if not await insert_inbound(session, citizen.id, msg, nlu_json):
                    return _Handled(citizen.id, duplicate=True)
                _seen_now(citizen, now)
                for record in await unprocessed(session, citizen.id):
                    backend_work |= await self._run_turn(session, citizen, conv, record, now)
            jobs = await self.outbox.claim(session, ordering_key(citizen.id))
            return _Handled(citizen.id, jobs=jobs, backend_work=backend_work)

    async def _quick_turn(self, turns: PgTurns | None, msg: IncomingMessage, nlu_json: dict[str, Any] | None,
                          stored: Stored, now: dt.datetime) -> _Handled:
        """The rest of a turn whose message ``PgTurns.store`` stored (and the webhook may acknowledge): the
        policy with no transaction open, then ``PgTurns.commit``. Whatever that cannot apply (see
        ``_quick_outcome``) is handed to the locked path, which handles the citizen's messages in order."""
        if stored.message_id is None:
            return _Handled(stored.citizen_id, duplicate=True)
        assert turns is not None  # it stored the message
        try:
            applied = await self._quick_outcome(turns, msg, nlu_json, stored, now)
        except Exception as exc:
            if database_unavailable(exc):  # stored, not handled: the sweeper takes it when the database is back
                log.warning("turn of citizen %s postponed: database unavailable (%s)", stored.citizen_id,
                            type(exc).__name__)
                return _Handled(stored.citizen_id)
            log.exception("quick turn failed for citizen %s; taking the locked path", stored.citizen_id)
            applied = None
        if applied is None:
            return _Handled(stored.citizen_id, locked=True)
        waiting = applied.queued > len(applied.leased)  # queued behind an earlier pending item
        return _Handled(stored.citizen_id, jobs=applied.leased, backend_work=applied.filed or waiting,
                        replies_waiting=waiting)

    async def _quick_outcome(self, turns: PgTurns, msg: IncomingMessage, nlu_json: dict[str, Any] | None,
                             stored: Stored, now: dt.datetime) -> Applied | None:
        """Run the policy and commit its outcome; None when this turn needs the locked path: messages left
        over, the flood limit, an idle conversation to close, effects beyond replies, language and one filing
        (a reply or rating for the backend), or another worker's turn in between."""
        cfg = self.settings.dialogue
        if stored.waiting or stored.recent + 1 > cfg.flood_limit_per_minute:
            return None
        last = _aware(stored.last_activity_at)
        if stored.state != State.IDLE and last is not None and now - last >= dt.timedelta(
                minutes=cfg.idle_timeout_minutes):
            return None
        view = CitizenView(id=stored.citizen_id, channel=msg.channel, channel_user_id=msg.sender_id,
                           language=stored.language or cfg.default_language, language_locked=stored.language_locked,
                           first_contact=not stored.data.get("welcomed", False) and stored.state == State.IDLE)
        nlu = NLUResult.from_dict(nlu_json) if nlu_json else None
        outcome = await self.policy.step(view, _state(stored.state), ConversationData.from_json(stored.data),
                                         Turn(msg, nlu, now), self._directory)
        language, locked = None, False
        filing: FilingRows | None = None
        for effect in outcome.effects:
            if isinstance(effect, SetLanguage):
                language, locked = effect.language, locked or effect.locked
            elif isinstance(effect, FileCase) and filing is None:
                filing = self.cases.filing_rows(view, effect.draft, effect.draft.language)
            else:
                return None
        replies = [reply_job(view, reply, f"out:{stored.message_id}:{i}") for i, reply in enumerate(outcome.replies)]
        applied = await turns.commit(stored, now=now, state=str(outcome.state), data=outcome.data.to_json(),
                                     language=language, language_locked=locked,
                                     ordering_key=ordering_key(view.id), replies=replies, filing=filing)
        if applied is not None:
            self.metrics.turn(msg.channel, _outcome_label(outcome))
        return applied

    async def _handle_apart(self, msg: IncomingMessage, nlu_json: dict[str, Any] | None) -> None:
        """The careful path: store the message in its own transaction, then process it (a failing turn is
        answered with ``error_generic`` and kept for staff)."""
        async with self.db.session() as session:
            citizen, _ = await upsert_citizen(session, msg.channel, msg.sender_id)
            fresh = await insert_inbound(session, citizen.id, msg, nlu_json)
            if fresh:
                _seen_now(citizen, self.clock())
            citizen_id = citizen.id
        accepted()
        if fresh:
            await self.process_citizen(citizen_id)
            await self.deliver(citizen_id)

    async def _parse(self, msg: IncomingMessage) -> dict[str, Any] | None:
        text = (msg.text or "").strip()
        if not text or msg.button or msg.command:
            return None
        try:
            result = await self.nlu.parse(text[: self.settings.dialogue.max_text_chars])
        except NLUUnavailable:
            # The dialogue still works without NLU: the citizen picks type and agency from buttons.
            log.warning("NLU unavailable; continuing without a prediction")
            return None
        return result.to_dict()

    async def deliver(self, citizen_id: int, *, replies: bool = True) -> None:
        """Deliver what is queued for this citizen now, then run their filings and backend calls (and send
        what those queue); failures stay queued for the background loop. ``replies=False``: the caller sent
        every reply its turn queued already, so the first look at the citizen's queue is skipped."""
        try:
            if replies:
                await self.outbox.run_due(ordering_key=ordering_key(citizen_id))
            # A filing's answer (the reference) is queued by the filing itself: look again only after one ran.
            if await self.outbox.run_due(ordering_key=f"file:{citizen_id}"):
                await self.outbox.run_due(ordering_key=ordering_key(citizen_id))
        except Exception:  # delivery is retried by the outbox loop; the turn itself is committed
            log.exception("inline delivery failed; the outbox loop will retry")

    # ------------------------------------------------------------------ turns
    def _lock(self, key: Hashable) -> asyncio.Lock:
        """In-process order for one citizen (by id, or by channel identity before the id is known); the
        conversation row lock orders turns across workers."""
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    async def process_citizen(self, citizen_id: int) -> int:
        """Handle every unprocessed inbound message of one citizen, oldest first. Returns how many."""
        handled = 0
        async with self._lock(citizen_id):
            while True:
                done = await self._process_one(citizen_id)
                if not done:
                    return handled
                handled += 1

    async def _process_one(self, citizen_id: int) -> bool:
        try:
            async with self.db.session() as session:
                conv = await lock_conversation(session, citizen_id)
                record = await next_unprocessed(session, citizen_id)
                if record is None:
                    return False
                citizen = (await session.execute(select(Citizen).where(Citizen.id == citizen_id))).scalar_one()
                await self._run_turn(session, citizen, conv, record, self.clock())
                return True
        except Exception as exc:
            if database_unavailable(exc):
                # Not the message's fault: it stays unprocessed and is handled once the database answers
                # again (the sweeper, or the citizen's next message) instead of being answered with an error.
                log.warning("turn of citizen %s postponed: database unavailable (%s)", citizen_id,
                            type(exc).__name__)
                raise
            log.exception("turn failed for citizen %s; answering with a generic error", citizen_id)
            await self._fail_turn(citizen_id)
            return True

    async def _run_turn(self, session: AsyncSession, citizen: Citizen, conv: Conversation, record: MessageRecord,
                        now: dt.datetime, *, recent: int | None = None) -> bool:
        """One inbound message, under the conversation lock. True when it queued backend work (a filing,
        a reply or rating for the backend) that ``deliver`` should run now. ``recent``: the citizen's
        messages in the flood window up to this one, when the caller counted them already."""
        if recent is None:
            recent = await inbound_since(session, citizen.id, now - FLOOD_WINDOW, record.id)
        if await self._flooded(session, citizen, recent, now):
            record.processed_at = now
            return False
        await self._expire_if_idle(session, citizen, conv, now)
        return await self._turn(session, citizen, conv, record, now)

    async def _turn(self, session: AsyncSession, citizen: Citizen, conv: Conversation, record: MessageRecord,
                    now: dt.datetime) -> bool:
        msg = incoming_from_json(record.payload)
        nlu = NLUResult.from_dict(record.nlu) if record.nlu else None
        view = _view(citizen, first_contact=not conv.data.get("welcomed", False) and conv.state == State.IDLE,
                     default=self.settings.dialogue.default_language)
        state = _state(conv.state)
        data = ConversationData.from_json(conv.data)
        directory = DbCaseDirectory(session, self.status_backend, self.cases.metrics)
        outcome = await self.policy.step(view, state, data, Turn(msg, nlu, now), directory)
        lang = await self._apply_effects(session, citizen, view, outcome, record)
        await queue_messages(session, view, [(reply, f"out:{record.id}:{i}") for i, reply in enumerate(outcome.replies)])
        conv.state = str(outcome.state)
        conv.data = outcome.data.to_json()
        conv.last_activity_at = now
        record.processed_at = now
        self.metrics.turn(citizen.channel, _outcome_label(outcome))
        log.debug("turn %s: %s -> %s (%s)", record.id, state, outcome.state, lang)
        return any(isinstance(e, FileCase | SendReply | RateCase) for e in outcome.effects)

    async def _apply_effects(self, session: AsyncSession, citizen: Citizen, view: CitizenView, outcome: Outcome,
                             record: MessageRecord) -> str:
        lang = view.language
        for effect in outcome.effects:
            if isinstance(effect, SetLanguage):
                citizen.language = effect.language
                citizen.language_locked = citizen.language_locked or effect.locked
                lang = effect.language
            elif isinstance(effect, FileCase):
                await self.cases.register_filing(session, view, effect.draft, effect.draft.language)
            elif isinstance(effect, SendReply):
                await enqueue(
                    session, BACKEND_REPLY,
                    {"reference": effect.reference, "text": effect.text,
                     "attachments": [asdict(a) for a in effect.attachments],
                     "channel": citizen.channel, "recipient": citizen.channel_user_id, "citizen_id": citizen.id,
                     "language": lang},
                    dedup_key=f"reply:{record.id}", ordering_key=f"file:{citizen.id}",
                )
            elif isinstance(effect, RateCase):
                await enqueue(
                    session, BACKEND_RATE,
                    {"reference": effect.reference, "score": effect.score, "comment": effect.comment},
                    dedup_key=f"rate:{record.id}", ordering_key=f"file:{citizen.id}",
                )
        return lang

    async def _flooded(self, session: AsyncSession, citizen: Citizen, recent: int, now: dt.datetime) -> bool:
        """One citizen may not starve the others: past the per-minute limit, messages are kept but
        answered with one polite notice per minute instead of being processed."""
        if recent <= self.settings.dialogue.flood_limit_per_minute:
            return False
        minute = now.strftime("%Y%m%d%H%M")
        await self._notify(session, citizen, lambda lang: self._text(lang, "flood"),
                           dedup_key=f"flood:{citizen.id}:{minute}")
        log.info("flood limit reached for %s", mask_id(citizen.channel_user_id))
        self.metrics.turn(citizen.channel, "flood")
        return True

    async def _expire_if_idle(self, session: AsyncSession, citizen: Citizen, conv: Conversation,
                              now: dt.datetime) -> bool:
        """Close a conversation idle past the timeout: the draft is kept to resume, the citizen told once."""
        idle = dt.timedelta(minutes=self.settings.dialogue.idle_timeout_minutes)
        last = _aware(conv.last_activity_at)
        if conv.state == State.IDLE or last is None or now - last < idle:
            return False
        data = ConversationData.from_json(conv.data)
        has_draft = data.draft is not None and _state(conv.state) in DRAFT_STATES
        if has_draft:
            data.saved_draft, data.draft = data.draft, None
        data.info_reference = data.rating_reference = None
        data.rating_score = None
        conv.state = str(State.IDLE)
        conv.data = data.to_json()
        conv.last_activity_at = now
        await self._notify(session, citizen, lambda lang: self.policy.timeout_notice(lang, has_draft),
                           dedup_key=f"timeout:{citizen.id}:{conv.version}:{last.isoformat()}")
        self.metrics.turn(citizen.channel, "timeout")
        return True

    def _text(self, lang: str, key: str) -> OutgoingMessage:
        return OutgoingMessage(text=self.policy.t(lang, key), language=lang)

    async def _notify(self, session: AsyncSession, citizen: Citizen,
                      build: Callable[[str], OutgoingMessage], *, dedup_key: str) -> None:
        """Queue a notice the engine itself sends (outside a policy turn), in the citizen's language."""
        default = self.settings.dialogue.default_language
        view = _view(citizen, first_contact=False, default=default)
        await queue_message(session, view, build(view.language), dedup_key=dedup_key)

    async def _fail_turn(self, citizen_id: int) -> None:
        """Mark the message that failed as processed (so it cannot wedge the conversation) and say so."""
        try:
            async with self.db.session() as session:
                record = await next_unprocessed(session, citizen_id)
                if record is None:
                    return
                citizen = (await session.execute(select(Citizen).where(Citizen.id == citizen_id))).scalar_one()
                record.processed_at = self.clock()
                record.error = "policy_error"
                await self._notify(session, citizen, lambda lang: self._text(lang, "error_generic"),
                                   dedup_key=f"error:{record.id}")
            self.metrics.turn("unknown", "error")
        except Exception:  # the database itself is failing: the sweeper retries the message later
            log.exception("could not record the failed turn of citizen %s", citizen_id)
            raise

    # ------------------------------------------------------------------ background sweeps
    async def sweep(self) -> int:
        """Recover unprocessed inbound messages (a worker died mid-turn) and close idle conversations."""
        now = self.clock()
        async with self.db.session() as session:
            stuck = await citizens_with_unprocessed(session, older_than=now - dt.timedelta(seconds=10))
            idle_before = now - dt.timedelta(minutes=self.settings.dialogue.idle_timeout_minutes)
            idle = list((await session.execute(
                select(Conversation.citizen_id).where(Conversation.state != str(State.IDLE),
                                                      Conversation.last_activity_at < idle_before).limit(200)
            )).scalars())
        for citizen_id in stuck:
            await self.process_citizen(citizen_id)
            await self.deliver(citizen_id)
        for citizen_id in idle:
            async with self._lock(citizen_id), self.db.session() as session:
                conv = await lock_conversation(session, citizen_id)
                citizen = (await session.execute(select(Citizen).where(Citizen.id == citizen_id))).scalar_one()
                await self._expire_if_idle(session, citizen, conv, self.clock())
            await self.deliver(citizen_id)
        return len(stuck) + len(idle)

    async def run_sweeper(self, stop: asyncio.Event, interval_s: float = 15.0) -> None:
        while not stop.is_set():
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep failed")
            with contextlib.suppress(TimeoutError):  # the interval passed without a stop: sweep again
                await asyncio.wait_for(stop.wait(), timeout=interval_s)

    # ------------------------------------------------------------------ backend events
    async def on_backend_event(self, event: StatusEvent) -> None:
        """A status change from the core backend (webhook or poll): applied once per event id, in one
        transaction with the notice it causes (``CaseService.on_event``). The notice is delivered beside the
        answer, not before it: the backend's webhook call waits for the commit only, not for the platform's
        rate limit."""
        citizen_id = await self.cases.on_event(event)
        if citizen_id is not None:
            await self.deliver_soon(citizen_id)

    async def deliver_soon(self, citizen_id: int) -> None:
        """``deliver`` in a background task, once one of ``BACKGROUND_DELIVERIES`` slots is free (the wait is the
        backpressure). Closing, the outbox loop is woken to send it instead: it is queued already."""
        if self._closing:
            self.outbox.wake()
            return
        await self._slots.acquire()
        if self._closing:  # closed while this waited for a slot
            self._slots.release()
            self.outbox.wake()
            return
        task = asyncio.create_task(self.deliver(citizen_id), name=f"deliver-{citizen_id}")
        self._background.add(task)
        task.add_done_callback(self._delivered)

    def _delivered(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        self._slots.release()

    async def close(self, timeout_s: float = 10.0) -> None:
        """Let background deliveries finish (a send the platform accepted must be marked done, or a restart
        sends it again); cancel what still runs after ``timeout_s`` (its lease expires and it is retried)."""
        self._closing = True
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout_s)
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


@dataclass(frozen=True, slots=True)
class _Handled:
    """What ``_store_and_turn`` committed: the replies it leased for inline delivery, and whether backend
    work was queued too."""

    citizen_id: int
    duplicate: bool = False
    jobs: list[Job] = field(default_factory=list)
    backend_work: bool = False
    replies_waiting: bool = True  # replies may be queued beyond ``jobs`` (the locked path does not know)
    locked: bool = False  # stored, to be handled by the locked path (``process_citizen``)


class DbEventLedger:
    """``EventLedger`` over ``processed_events``. The row is written by ``on_backend_event`` in the same
    step that handles the event (so a crash in between cannot lose one); ``seen_before`` is a cheap
    pre-check and ``mark`` has nothing left to do."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def seen_before(self, event_id: str) -> bool:
        async with self.db.session() as session:
            found = (await session.execute(
                select(ProcessedEvent.event_id).where(ProcessedEvent.event_id == event_id))).first()
        return found is not None

    async def mark(self, event_id: str) -> None:
        return None


def _seen_now(citizen: Citizen, now: dt.datetime) -> None:
    """Note the citizen's latest message (WhatsApp's 24-hour window). Written at most once a minute: an
    UPDATE per message costs a round trip, and a value up to a minute old only closes the window earlier."""
    last = _aware(citizen.last_inbound_at)
    if last is None or now - last >= dt.timedelta(seconds=60) or now < last:
        citizen.last_inbound_at = now


def _view(citizen: Citizen, *, first_contact: bool, default: str) -> CitizenView:
    return CitizenView(id=citizen.id, channel=citizen.channel, channel_user_id=citizen.channel_user_id,
                       language=citizen.language or default, language_locked=citizen.language_locked,
                       first_contact=first_contact)


def _state(value: str) -> State:
    try:
        return State(value)
    except ValueError:  # a state removed in a newer release: start over rather than fail every turn
        return State.IDLE


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _outcome_label(outcome: Outcome) -> str:
    """``tawasul_updates_in_total{outcome}``: filed, corrected (filed after the citizen changed what the NLU
    proposed), cancelled (a draft or question dropped), else turn."""
    if outcome.label is not None:
        return outcome.label
    for effect in outcome.effects:
        if isinstance(effect, FileCase):
            return "corrected" if effect.draft.corrected else "filed"
    return "turn"

