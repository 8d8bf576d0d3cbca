"""The bot's tables. Everything a worker must share with other workers lives here, not in memory.

The core case-management system keeps its own tables (``core_backend``); ``CaseRecord`` is only the bot's
mirror of what it filed, so it can answer "my cases" and notify exactly once per status.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identities.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {
        dict[str, Any]: JSON,
        dt.datetime: DateTime(timezone=True),
    }


class Citizen(Base):
    """One channel identity (a Telegram chat, a WhatsApp number). Cases are visible only to it."""

    __tablename__ = "citizens"
    __table_args__ = (UniqueConstraint("channel", "channel_user_id", name="uq_citizen_identity"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    channel_user_id: Mapped[str] = mapped_column(String(128))
    language: Mapped[str | None] = mapped_column(String(8))
    # Set when the citizen chose a language explicitly; auto-detection then stops overriding it.
    language_locked: Mapped[bool] = mapped_column(default=False)
    last_inbound_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, server_default=func.now())

    conversation: Mapped[Conversation | None] = relationship(back_populates="citizen", uselist=False)


class Conversation(Base):
    """Dialogue state of one citizen, updated with optimistic locking on ``version``."""

    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    citizen_id: Mapped[int] = mapped_column(ForeignKey("citizens.id", ondelete="CASCADE"), unique=True)
    state: Mapped[str] = mapped_column(String(48))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    last_activity_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    citizen: Mapped[Citizen] = relationship(back_populates="conversation")

    __mapper_args__ = {"version_id_col": version}


class MessageDirection(StrEnum):
    IN = "in"
    OUT = "out"


class MessageRecord(Base):
    """Every message in and out. Inbound rows are unique per platform message id: the dedup key that makes
    processing exactly-once when a platform delivers an update again."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("channel", "platform_message_id", name="uq_message_platform_id"),
        Index("ix_messages_citizen_created", "citizen_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    citizen_id: Mapped[int] = mapped_column(ForeignKey("citizens.id", ondelete="CASCADE"))
    direction: Mapped[str] = mapped_column(String(3))
    channel: Mapped[str] = mapped_column(String(32))
    platform_message_id: Mapped[str | None] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16), default="text")
    text: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    nlu: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Delivery state reported by the platform (WhatsApp status callbacks): sent/delivered/read/failed.
    delivery_status: Mapped[str | None] = mapped_column(String(16))
    # Why handling this message failed (kept so staff can see it; the citizen got a generic answer).
    error: Mapped[str | None] = mapped_column(String(64))
    processed_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class CaseRecord(Base):
    """The bot's mirror of a case it filed (or is filing, while ``reference`` is still null)."""

    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    citizen_id: Mapped[int] = mapped_column(ForeignKey("citizens.id", ondelete="CASCADE"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(80), unique=True)
    reference: Mapped[str | None] = mapped_column(String(32), unique=True)
    type: Mapped[str] = mapped_column(String(16))
    agency: Mapped[str] = mapped_column(String(32))
    language: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(32), default="pending")
    last_status_notified: Mapped[str | None] = mapped_column(String(32))
    last_event_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    expected_response_by: Mapped[dt.date | None]
    # The citizen's text, redacted of CPR numbers and phones (for staff review of misrouted cases).
    description: Mapped[str | None] = mapped_column(Text)
    nlu: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class OutboxStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    DEAD = "dead"


class OutboxItem(Base):
    """A pending side effect (file a case, send a message/notification), done at least once and made
    idempotent downstream (idempotency keys, ``dedup_key``). Workers claim rows with SKIP LOCKED."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "status", "next_attempt_at"),
        # A key's pending items in id order, done rows left out: every claim asks "is an earlier item of this
        # key pending?" once per candidate, and the quick turn whether the citizen has one pending at all.
        # Without it a backlog of n pending items made a claim O(n^2) (0.5 s at 6,500 on stale statistics).
        Index("ix_outbox_pending_key", "ordering_key", "id", postgresql_where=text("status = 'pending'"),
              sqlite_where=text("status = 'pending'")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    # Unique per logical effect: enqueuing the same notice twice is a no-op.
    dedup_key: Mapped[str] = mapped_column(String(160), unique=True)
    # Items with the same ordering key are delivered in id order (one citizen's messages stay in order).
    ordering_key: Mapped[str | None] = mapped_column(String(160))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ProcessedEvent(Base):
    """Backend status events already handled (webhook and poll deliver the same event id)."""

    __tablename__ = "processed_events"

    event_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class KeyValue(Base):
    """Small shared cursors (e.g. the last backend event sequence polled)."""

    __tablename__ = "kv"

    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ReviewReason(StrEnum):
    CORRECTION = "correction"
    LOW_CONFIDENCE = "low_confidence"
    TRANSFERRED = "transferred"
    SAMPLE = "sample"


class ReviewStatus(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    RELABELLED = "relabelled"
    NOT_A_CASE = "not_a_case"


class ReviewItem(Base):
    """An NLU prediction staff should look at. ``text`` is stored redacted of CPR numbers and phones."""

    __tablename__ = "review_items"
    __table_args__ = (Index("ix_review_status_created", "status", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    reason: Mapped[str] = mapped_column(String(24))
    text: Mapped[str] = mapped_column(Text)
    language: Mapped[str] = mapped_column(String(8))
    channel: Mapped[str] = mapped_column(String(32))
    case_reference: Mapped[str | None] = mapped_column(String(32), index=True)
    model_version: Mapped[str | None] = mapped_column(String(64))
    predicted_type: Mapped[str | None] = mapped_column(String(16))
    predicted_type_confidence: Mapped[float | None]
    predicted_agency: Mapped[str | None] = mapped_column(String(32))
    predicted_agency_confidence: Mapped[float | None]
    candidates: Mapped[dict[str, Any]] = mapped_column(default=dict)
    citizen_type: Mapped[str | None] = mapped_column(String(16))
    citizen_agency: Mapped[str | None] = mapped_column(String(32))
    backend_agency: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=ReviewStatus.PENDING)
    final_type: Mapped[str | None] = mapped_column(String(16))
    final_agency: Mapped[str | None] = mapped_column(String(32))
    reviewer: Mapped[str | None] = mapped_column(String(64))
    reviewed_at: Mapped[dt.datetime | None]
    exported_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


class StaffUser(Base):
    __tablename__ = "staff_users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(default=True)
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class StaffSession(Base):
    """A signed-in staff session; the cookie holds a random token, the table only its SHA-256."""

    __tablename__ = "staff_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class RateBucket(Base):
    """A platform send budget shared by all workers (``bot.ratelimit.SharedRateLimiter``): ``tokens`` holds the
    time of the next free send slot in epoch seconds (the column's name is left from an earlier token bucket)."""

    __tablename__ = "rate_buckets"

    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    tokens: Mapped[float]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class WebChatReply(Base):
    """A web chat reply waiting for its page to fetch it. In the database, not in a worker's memory: the
    worker whose outbox loop delivers a reply is often not the one the page's next request reaches."""

    __tablename__ = "web_chat_replies"
    __table_args__ = (Index("ix_web_chat_replies_sender_id", "sender", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sender: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
