"""WhatsApp Cloud API webhook payloads -> channel-neutral ``IncomingMessage`` and typed ``DeliveryStatus``.

Pure translation (no network). The payload shape (``object: whatsapp_business_account``, ``entry[].changes[]``
with ``field: messages`` and a ``value`` holding ``metadata``, ``contacts``, ``messages`` and ``statuses``) is
Meta's documented webhook format; ``tests/fixtures/whatsapp/`` holds samples of every kind handled here.

``message_id`` is ``wa:<wamid>`` so a re-delivered webhook keeps its identity. A structurally broken
payload raises ``MalformedPayload``; one broken item inside a good payload is skipped and counted.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.channel import Attachment, AttachmentKind, Contact, IncomingMessage, Location

log = logging.getLogger(__name__)

CHANNEL = "whatsapp"
# Button payloads we put on "more choices" list rows; the channel answers them itself.
MORE_PREFIX = "~more:"
# Typed "/start" and friends become commands, as on Telegram (WhatsApp has no command menu).
COMMANDS = frozenset({"start", "new", "status", "cases", "help", "cancel", "language"})
# Things a user does that need no answer: an emoji reaction, "number changed" system notices.
IGNORED_TYPES = frozenset({"reaction", "system"})
_MEDIA_KINDS = {
    "image": AttachmentKind.PHOTO,
    "document": AttachmentKind.DOCUMENT,
    "audio": AttachmentKind.AUDIO,
    "video": AttachmentKind.VIDEO,
}


class MalformedPayload(ValueError):
    """The body is not a WhatsApp Business Account webhook we can read."""


@dataclass(frozen=True, slots=True)
class StatusError:
    code: int | None
    title: str | None
    details: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    """What the platform reports about a message the bot sent: ``sent``, ``delivered``, ``read`` or
    ``failed`` (with ``errors``). ``message_id`` is ``wa:<wamid>`` of that outbound message."""

    channel: str
    message_id: str
    recipient_id: str
    status: str
    timestamp: dt.datetime
    errors: tuple[StatusError, ...] = ()


@dataclass(slots=True)
class ParsedWebhook:
    messages: list[IncomingMessage] = field(default_factory=list)
    statuses: list[DeliveryStatus] = field(default_factory=list)
    skipped: int = 0  # items that were malformed inside an otherwise good payload
    other_numbers: int = 0  # items addressed to a phone number id that is not ours


def message_id_for(wamid: str) -> str:
    return f"wa:{wamid}"


def _timestamp(value: Any) -> dt.datetime:
    try:
        return dt.datetime.fromtimestamp(int(value), dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return dt.datetime.now(dt.UTC)


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedPayload(f"{what} missing")
    return value


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedPayload(f"{what} is not an object")
    return value


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_webhook(data: Any, phone_number_id: str | None = None) -> ParsedWebhook:
    """Translate a whole webhook body. Items for another phone number id are left out (counted)."""
    body = _obj(data, "body")
    if body.get("object") != "whatsapp_business_account":
        raise MalformedPayload("object is not whatsapp_business_account")
    entries = body.get("entry")
    if not isinstance(entries, list):
        raise MalformedPayload("entry is not a list")
    parsed = ParsedWebhook()
    for entry in entries:
        changes = _obj(entry, "entry").get("changes")
        if not isinstance(changes, list):
            raise MalformedPayload("changes is not a list")
        for change in changes:
            change = _obj(change, "change")
            if change.get("field") != "messages":
                continue  # template/account/quality updates: not ours to act on
            value = _obj(change.get("value"), "value")
            metadata = value.get("metadata")
            if (
                phone_number_id is not None
                and isinstance(metadata, Mapping)
                and str(metadata.get("phone_number_id")) != phone_number_id
            ):
                parsed.other_numbers += len(value.get("messages") or ()) + len(value.get("statuses") or ())
                continue
            _parse_value(value, parsed)
    return parsed


def _parse_value(value: Mapping[str, Any], parsed: ParsedWebhook) -> None:
    names: dict[str, str] = {}
    for contact in value.get("contacts") or ():
        if isinstance(contact, Mapping) and isinstance(contact.get("wa_id"), str):
            profile = contact.get("profile")
            name = profile.get("name") if isinstance(profile, Mapping) else None
            if isinstance(name, str) and name:
                names[contact["wa_id"]] = name
    messages = value.get("messages") or []
    statuses = value.get("statuses") or []
    if not isinstance(messages, list) or not isinstance(statuses, list):
        raise MalformedPayload("messages/statuses is not a list")
    for raw in messages:
        try:
            incoming = message_to_incoming(raw, names)
        except MalformedPayload as exc:
            parsed.skipped += 1
            log.warning("whatsapp webhook: malformed message skipped (%s)", exc)
            continue
        if incoming is not None:
            parsed.messages.append(incoming)
    for raw in statuses:
        try:
            parsed.statuses.append(status_from_json(raw))
        except MalformedPayload as exc:
            parsed.skipped += 1
            log.warning("whatsapp webhook: malformed status skipped (%s)", exc)


def _attachment(kind: str, media: Mapping[str, Any], caption: str | None) -> Attachment:
    media_kind = _MEDIA_KINDS[kind]
    if kind == "audio" and media.get("voice") is True:
        media_kind = AttachmentKind.VOICE
    filename = media.get("filename")
    return Attachment(
        kind=media_kind,
        ref=_str(media.get("id"), f"{kind}.id"),
        mime_type=media.get("mime_type") if isinstance(media.get("mime_type"), str) else None,
        size=_int(media.get("file_size")),  # not sent by Meta today; the channel looks it up
        filename=filename if isinstance(filename, str) else None,
        caption=caption,
    )


def message_to_incoming(raw: Any, names: Mapping[str, str] | None = None) -> IncomingMessage | None:
    """One ``messages[]`` item; None for kinds that need no answer (reactions, system notices)."""
    msg = _obj(raw, "message")
    wamid = _str(msg.get("id"), "message id")
    sender = _str(msg.get("from"), "message from")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise MalformedPayload("message type missing")
    metadata: dict[str, Any] = {"wa_type": kind}
    context = msg.get("context")
    if isinstance(context, Mapping) and isinstance(context.get("id"), str):
        metadata["reply_to"] = message_id_for(context["id"])
    base: dict[str, Any] = {
        "channel": CHANNEL,
        "sender_id": sender,
        "message_id": message_id_for(wamid),
        "sender_name": (names or {}).get(sender),
        "received_at": _timestamp(msg.get("timestamp")),
        "metadata": metadata,
    }
    if kind in IGNORED_TYPES:
        return None
    if kind == "text":
        text = _obj(msg.get("text"), "text").get("body")
        if not isinstance(text, str):
            raise MalformedPayload("text.body missing")
        stripped = text.strip()
        if stripped.startswith("/") and stripped[1:].split(" ", 1)[0].lower() in COMMANDS:
            name, _, args = stripped[1:].partition(" ")
            return IncomingMessage(**base, command=name.lower(), text=args.strip() or None)
        return IncomingMessage(**base, text=text)
    if kind == "interactive":
        interactive = _obj(msg.get("interactive"), "interactive")
        reply_type = interactive.get("type")
        if reply_type in ("button_reply", "list_reply"):
            reply = _obj(interactive.get(reply_type), reply_type)
            metadata["button_title"] = reply.get("title")
            return IncomingMessage(**base, button=_str(reply.get("id"), f"{reply_type}.id"))
        return IncomingMessage(**base, unsupported=f"interactive:{reply_type}")
    if kind == "button":  # a quick-reply button of a template message
        button = _obj(msg.get("button"), "button")
        payload = button.get("payload") or button.get("text")
        metadata["button_title"] = button.get("text")
        return IncomingMessage(**base, button=_str(payload, "button.payload"))
    if kind in _MEDIA_KINDS:
        media = _obj(msg.get(kind), kind)
        caption = media.get("caption") if isinstance(media.get("caption"), str) else None
        return IncomingMessage(**base, attachments=(_attachment(kind, media, caption),))
    if kind == "location":
        loc = _obj(msg.get("location"), "location")
        label = ", ".join(str(p) for p in (loc.get("name"), loc.get("address")) if p) or None
        latitude, longitude = _float(loc.get("latitude")), _float(loc.get("longitude"))
        if latitude is None or longitude is None:
            raise MalformedPayload("location without coordinates")
        return IncomingMessage(**base, location=Location(latitude, longitude, label))
    if kind == "contacts":
        cards = msg.get("contacts")
        if not isinstance(cards, list) or not cards:
            raise MalformedPayload("contacts missing")
        card = _obj(cards[0], "contact")
        phones = [p for p in card.get("phones") or () if isinstance(p, Mapping) and p.get("phone")]
        if not phones:
            return IncomingMessage(**base, unsupported="contact_without_phone")
        name_obj = card.get("name")
        formatted = name_obj.get("formatted_name") if isinstance(name_obj, Mapping) else None
        contact = Contact(
            phone=str(phones[0]["phone"]), name=formatted if isinstance(formatted, str) else None
        )
        return IncomingMessage(**base, contact=contact)
    if kind == "request_welcome":  # the user opened the chat for the first time
        return IncomingMessage(**base, command="start")
    if kind == "unsupported":  # Meta could not show us what the user sent (e.g. a poll, a view-once)
        errors = msg.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
            metadata["wa_error"] = errors[0].get("code")
        return IncomingMessage(**base, unsupported="unknown")
    return IncomingMessage(**base, unsupported=kind)  # sticker, order, ...


def status_from_json(raw: Any) -> DeliveryStatus:
    item = _obj(raw, "status")
    errors: list[StatusError] = []
    for err in item.get("errors") or ():
        if isinstance(err, Mapping):
            data = err.get("error_data")
            details = data.get("details") if isinstance(data, Mapping) else None
            errors.append(StatusError(_int(err.get("code")), err.get("title") or err.get("message"), details))
    return DeliveryStatus(
        channel=CHANNEL,
        message_id=message_id_for(_str(item.get("id"), "status id")),
        recipient_id=_str(item.get("recipient_id"), "status recipient_id"),
        status=_str(item.get("status"), "status"),
        timestamp=_timestamp(item.get("timestamp")),
        errors=tuple(errors),
    )
