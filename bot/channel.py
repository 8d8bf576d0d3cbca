"""Channel-neutral message types and the channel interfaces (after Rasa's ``rasa/core/channels/channel.py``).

A channel is an input/output pair. The input side translates a platform payload into an
``IncomingMessage`` and hands it to the ``MessageHandler`` it was given; the output side translates an
``OutgoingMessage`` back into platform calls. Channels never import ``nlu/`` or ``dialogues/``: the
application wires a handler in. ``OutputChannel`` falls back to plain text for everything, so a channel
overrides only what its platform supports.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class AttachmentKind(StrEnum):
    PHOTO = "photo"
    DOCUMENT = "document"
    AUDIO = "audio"
    VOICE = "voice"
    VIDEO = "video"
    STICKER = "sticker"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file the citizen sent. ``ref`` is the platform's file/media id; bytes are fetched on demand."""

    kind: AttachmentKind
    ref: str
    mime_type: str | None = None
    size: int | None = None
    filename: str | None = None
    caption: str | None = None


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float | None = None
    longitude: float | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Contact:
    phone: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One thing a citizen did on a channel: typed text, pressed a button, sent media or a location.

    ``message_id`` is the platform's id of the update (Telegram ``update_id``, WhatsApp message id); it
    is what makes processing idempotent when the platform delivers the same update again.
    ``button`` carries the payload of a pressed button; ``command`` a slash command without the slash.
    """

    channel: str
    sender_id: str
    message_id: str
    text: str | None = None
    button: str | None = None
    command: str | None = None
    attachments: tuple[Attachment, ...] = ()
    location: Location | None = None
    contact: Contact | None = None
    # Kinds the platform sent that we do not support (e.g. "sticker", "poll"): answered politely.
    unsupported: str | None = None
    sender_name: str | None = None
    language_hint: str | None = None
    received_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Button:
    """A choice offered to the citizen. ``payload`` comes back as ``IncomingMessage.button``.

    Payloads must fit Telegram's 64-byte callback_data and WhatsApp's 256-char reply id.
    """

    title: str
    payload: str


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """What the bot says. ``buttons`` is a list of choices; channels lay them out as they can.

    ``replaces_buttons`` asks the channel to disable the buttons of the previous message (Telegram edits
    that message) so an old button cannot be pressed twice. ``rtl`` marks Arabic text so channels that
    render markup can set the direction. ``notification`` marks a status notice, which on WhatsApp may
    need an approved template outside the 24-hour window; ``template_params`` are that template's values.
    """

    text: str
    buttons: tuple[Button, ...] = ()
    language: str = "ar"
    request_location: bool = False
    notification: bool = False
    template_params: tuple[str, ...] = ()


MessageHandler = Callable[[IncomingMessage, "OutputChannel"], Awaitable[None]]

# A webhook may acknowledge an update only once it is stored: the platform never sends an acknowledged
# update again, so a crash between the acknowledgement and the store would lose it. The channel sets a
# callback around its call of the handler (``accepting``); the handler calls ``accepted()`` as soon as the
# message is stored durably or recognised as a re-delivery.
_accepted: ContextVar[Callable[[], None] | None] = ContextVar("tawasul_accepted", default=None)


def accepted() -> None:
    """Called by a ``MessageHandler``: the incoming message is safe, its webhook may answer now."""
    callback = _accepted.get()
    if callback is not None:
        callback()


@contextlib.contextmanager
def accepting(callback: Callable[[], None]) -> Iterator[None]:
    """Run the handler call inside this block to hear its ``accepted()``."""
    token = _accepted.set(callback)
    try:
        yield
    finally:
        _accepted.reset(token)


def numbered_choices(buttons: Sequence[Button]) -> str:
    """Plain-text rendering of buttons, one per line: ``1) تأكيد``."""
    return "\n".join(f"{i}) {b.title}" for i, b in enumerate(buttons, start=1))


class OutputChannel(abc.ABC):
    """Sends messages to one platform. Subclasses implement ``send_text``; the rest falls back to it."""

    name: str = "base"

    @abc.abstractmethod
    async def send_text(self, recipient_id: str, text: str, *, language: str = "ar") -> None:
        """Send plain text."""

    async def send_buttons(
        self, recipient_id: str, text: str, buttons: Sequence[Button], *, language: str = "ar"
    ) -> None:
        """Fallback: buttons as numbered lines under the text."""
        await self.send_text(recipient_id, f"{text}\n\n{numbered_choices(buttons)}", language=language)

    async def send_notification(self, recipient_id: str, message: OutgoingMessage) -> None:
        """A status notice pushed outside a conversation; by default sent like any message."""
        if message.buttons:
            await self.send_buttons(recipient_id, message.text, message.buttons, language=message.language)
        else:
            await self.send_text(recipient_id, message.text, language=message.language)

    async def send(self, recipient_id: str, message: OutgoingMessage) -> None:
        if message.notification:
            await self.send_notification(recipient_id, message)
        elif message.buttons:
            await self.send_buttons(recipient_id, message.text, message.buttons, language=message.language)
        else:
            await self.send_text(recipient_id, message.text, language=message.language)

    async def fetch_attachment(self, attachment: Attachment) -> bytes:
        """Download the bytes of an attachment the citizen sent; channels with media override this."""
        raise UnsupportedOperation(f"{self.name} cannot fetch attachments")


class UnsupportedOperation(Exception):
    """The channel cannot do what was asked (for example fetch media)."""


@dataclass(slots=True)
class Sent:
    recipient_id: str
    message: OutgoingMessage


class CollectingOutputChannel(OutputChannel):
    """Keeps what would have been sent, for tests and the "simulate conversation" page."""

    name = "collector"

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    async def send_text(self, recipient_id: str, text: str, *, language: str = "ar") -> None:
        self.sent.append(Sent(recipient_id, OutgoingMessage(text=text, language=language)))

    async def send(self, recipient_id: str, message: OutgoingMessage) -> None:
        self.sent.append(Sent(recipient_id, message))

    def texts(self) -> list[str]:
        return [s.message.text for s in self.sent]

    def latest(self) -> OutgoingMessage | None:
        return self.sent[-1].message if self.sent else None

    def clear(self) -> None:
        self.sent.clear()


class InputChannel(abc.ABC):
    """Receives platform updates. ``routes`` mounts its webhook handlers on the shared aiohttp app.

    Channels with a background loop (Telegram polling) start it in ``start`` and stop it in ``stop``.
    """

    name: str = "base"

    @abc.abstractmethod
    def output_channel(self) -> OutputChannel:
        """The output side paired with this input."""

    def add_routes(self, app: Any, handler: MessageHandler) -> None:
        """Register webhook routes on the aiohttp application (``aiohttp.web.Application``)."""

    async def start(self, handler: MessageHandler) -> None:
        """Start background work (polling); the default has none."""

    async def stop(self) -> None:
        """Stop background work."""


# ---- JSON forms, for the database (inbound log, outbox). One place, so the layers exchange typed values.


def incoming_to_json(msg: IncomingMessage) -> dict[str, Any]:
    return {
        "channel": msg.channel,
        "sender_id": msg.sender_id,
        "message_id": msg.message_id,
        "text": msg.text,
        "button": msg.button,
        "command": msg.command,
        "attachments": [
            {"kind": str(a.kind), "ref": a.ref, "mime_type": a.mime_type, "size": a.size,
             "filename": a.filename, "caption": a.caption}
            for a in msg.attachments
        ],
        "location": None if msg.location is None else {
            "latitude": msg.location.latitude, "longitude": msg.location.longitude, "text": msg.location.text},
        "contact": None if msg.contact is None else {"phone": msg.contact.phone, "name": msg.contact.name},
        "unsupported": msg.unsupported,
        "language_hint": msg.language_hint,
        "received_at": msg.received_at.isoformat(),
        "metadata": dict(msg.metadata),
    }


def incoming_from_json(data: Mapping[str, Any]) -> IncomingMessage:
    return IncomingMessage(
        channel=data["channel"],
        sender_id=data["sender_id"],
        message_id=data["message_id"],
        text=data.get("text"),
        button=data.get("button"),
        command=data.get("command"),
        attachments=tuple(
            Attachment(kind=AttachmentKind(a["kind"]), ref=a["ref"], mime_type=a.get("mime_type"),
                       size=a.get("size"), filename=a.get("filename"), caption=a.get("caption"))
            for a in data.get("attachments", [])
        ),
        location=Location(**data["location"]) if data.get("location") else None,
        contact=Contact(**data["contact"]) if data.get("contact") else None,
        unsupported=data.get("unsupported"),
        language_hint=data.get("language_hint"),
        received_at=dt.datetime.fromisoformat(data["received_at"]) if data.get("received_at")
        else dt.datetime.now(dt.UTC),
        metadata=data.get("metadata") or {},
    )


def outgoing_to_json(msg: OutgoingMessage) -> dict[str, Any]:
    return {
        "text": msg.text,
        "buttons": [[b.title, b.payload] for b in msg.buttons],
        "language": msg.language,
        "request_location": msg.request_location,
        "notification": msg.notification,
        "template_params": list(msg.template_params),
    }


def outgoing_from_json(data: Mapping[str, Any]) -> OutgoingMessage:
    return OutgoingMessage(
        text=data["text"],
        buttons=tuple(Button(title, payload) for title, payload in data.get("buttons", [])),
        language=data.get("language", "ar"),
        request_location=bool(data.get("request_location", False)),
        notification=bool(data.get("notification", False)),
        template_params=tuple(data.get("template_params", [])),
    )


class DeliveryFailed(Exception):
    """An output channel could not deliver. ``permanent`` when retrying cannot help (the citizen blocked
    the bot, the number does not exist); ``retry_after`` when the platform said when to try again."""

    def __init__(self, reason: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.permanent = permanent
        self.retry_after = retry_after
