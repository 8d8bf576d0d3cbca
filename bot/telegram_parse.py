"""Telegram updates -> channel-neutral ``IncomingMessage``.

Pure translation (no network): ``message_to_incoming`` for messages, ``callback_to_incoming`` for a pressed
inline button. ``message_id`` is ``tg:<update_id>`` so a re-delivered update keeps its identity.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from telegram import CallbackQuery, Message, MessageEntity, Update, User

from bot.channel import Attachment, AttachmentKind, Contact, IncomingMessage, Location

CHANNEL = "telegram"

# Content a user can send that we do not take (the dialogue answers politely). Checked in this order.
UNSUPPORTED_KINDS = (
    "sticker",
    "animation",
    "poll",
    "dice",
    "game",
    "story",
    "invoice",
    "paid_media",
    "checklist",
    "live_photo",
    "giveaway",
    "web_app_data",
    "passport_data",
    "users_shared",
    "chat_shared",
)

# Service messages that are not something the citizen "said": ignored without a reply.
SERVICE_KINDS = (
    "pinned_message",
    "message_auto_delete_timer_changed",
    "write_access_allowed",
    "new_chat_members",
    "left_chat_member",
    "new_chat_title",
    "new_chat_photo",
    "delete_chat_photo",
    "group_chat_created",
    "supergroup_chat_created",
    "migrate_to_chat_id",
    "migrate_from_chat_id",
    "successful_payment",
    "refunded_payment",
    "chat_background_set",
    "connected_website",
    "proximity_alert_triggered",
)


def message_id_for(update_id: int) -> str:
    return f"tg:{update_id}"


def _language(user: User | None) -> str | None:
    if user is None or not user.language_code:
        return None
    return user.language_code.split("-")[0].lower() or None


def _base(update_id: int, chat_id: int, user: User | None, at: dt.datetime | None) -> dict[str, Any]:
    return {
        "channel": CHANNEL,
        "sender_id": str(chat_id),
        "message_id": message_id_for(update_id),
        "sender_name": user.full_name if user else None,
        "language_hint": _language(user),
        "received_at": at if at is not None else dt.datetime.now(dt.UTC),
    }


def _command(message: Message) -> tuple[str, str | None] | None:
    """``/start@TawasulBot ref-42`` -> ("start", "ref-42"); None when the text is not a command."""
    text = message.text or ""
    entities = message.entities or ()
    if not text.startswith("/") or not any(
        e.type == MessageEntity.BOT_COMMAND and e.offset == 0 for e in entities
    ):
        return None
    head, _, args = text.partition(" ")
    name = head[1:].split("@", 1)[0].lower()
    return name, (args.strip() or None)


def _attachment(message: Message) -> Attachment | None:
    caption = message.caption
    if message.photo:
        best = max(message.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        return Attachment(AttachmentKind.PHOTO, best.file_id, "image/jpeg", best.file_size, None, caption)
    if message.document:
        d = message.document
        return Attachment(AttachmentKind.DOCUMENT, d.file_id, d.mime_type, d.file_size, d.file_name, caption)
    if message.voice:
        v = message.voice
        return Attachment(
            AttachmentKind.VOICE, v.file_id, v.mime_type or "audio/ogg", v.file_size, None, caption
        )
    if message.audio:
        a = message.audio
        return Attachment(AttachmentKind.AUDIO, a.file_id, a.mime_type, a.file_size, a.file_name, caption)
    if message.video:
        v2 = message.video
        return Attachment(AttachmentKind.VIDEO, v2.file_id, v2.mime_type, v2.file_size, v2.file_name, caption)
    if message.video_note:
        n = message.video_note
        return Attachment(AttachmentKind.VIDEO, n.file_id, "video/mp4", n.file_size, None, None)
    return None


def message_to_incoming(
    update_id: int, message: Message, reply_buttons: Mapping[str, str] | None = None
) -> IncomingMessage | None:
    """Translate a message from a private chat; None for things that need no answer (service messages,
    groups). ``reply_buttons`` maps the titles of a reply keyboard we showed this chat to their payloads,
    so pressing one arrives as a button rather than as typed text."""
    if message.chat.type != "private":
        return None
    base = _base(update_id, message.chat.id, message.from_user, message.date)
    base["metadata"] = {"tg_message_id": message.message_id}
    if message.media_group_id:
        base["metadata"]["media_group_id"] = message.media_group_id

    if message.text is not None:
        command = _command(message)
        if command is not None:
            return IncomingMessage(**base, command=command[0], text=command[1])
        if reply_buttons and message.text in reply_buttons:
            return IncomingMessage(**base, button=reply_buttons[message.text])
        return IncomingMessage(**base, text=message.text)

    attachment = _attachment(message)
    if attachment is not None:
        return IncomingMessage(**base, attachments=(attachment,))

    if message.venue is not None:
        venue = message.venue
        label = ", ".join(p for p in (venue.title, venue.address) if p) or None
        location = Location(venue.location.latitude, venue.location.longitude, label)
        return IncomingMessage(**base, location=location)
    if message.location is not None:
        loc = message.location
        return IncomingMessage(**base, location=Location(loc.latitude, loc.longitude))
    if message.contact is not None:
        c = message.contact
        name = " ".join(p for p in (c.first_name, c.last_name) if p) or None
        return IncomingMessage(**base, contact=Contact(phone=c.phone_number, name=name))

    for kind in UNSUPPORTED_KINDS:
        if getattr(message, kind, None):
            return IncomingMessage(**base, unsupported=kind)
    for kind in SERVICE_KINDS:
        if getattr(message, kind, None):
            return None
    return IncomingMessage(**base, unsupported="unknown")


def callback_to_incoming(update_id: int, query: CallbackQuery, title: str | None) -> IncomingMessage | None:
    """A pressed inline button; ``title`` is the label the citizen saw (kept in metadata)."""
    if query.message is None or query.data is None:
        return None
    chat = query.message.chat
    if chat.type != "private":
        return None
    base = _base(update_id, chat.id, query.from_user, None)
    base["metadata"] = {"tg_message_id": query.message.message_id, "button_title": title}
    return IncomingMessage(**base, button=query.data)


def kind_of(update: Update) -> str:
    """A content-free label of an update for log lines."""
    if update.callback_query is not None:
        return "callback_query"
    message = update.message
    if message is None:
        return "other"
    if message.text is not None:
        return "command" if message.text.startswith("/") else "text"
    for kind in (
        "photo",
        "document",
        "voice",
        "audio",
        "video",
        "video_note",
        "venue",
        "location",
        "contact",
    ):
        if getattr(message, kind, None):
            return kind
    return "other"
