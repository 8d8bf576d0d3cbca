"""Drive the whole service like a citizen: messages go through the real engine, NLU, outbox and the
in-process reference backend over HTTP; replies land in a collecting output channel."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any

from backend_client.client import BackendClient
from bot.channel import (
    Attachment,
    AttachmentKind,
    CollectingOutputChannel,
    IncomingMessage,
    InputChannel,
    Location,
    OutgoingMessage,
    OutputChannel,
)
from config.settings import Settings
from tawasul.app import Service

_ids = itertools.count(1)


class StoryOutput(CollectingOutputChannel):
    name = "story"

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}

    async def fetch_attachment(self, attachment: Attachment) -> bytes:
        return self.files[attachment.ref]


class StoryChannel(InputChannel):
    name = "story"

    def __init__(self) -> None:
        self.out = StoryOutput()

    def output_channel(self) -> OutputChannel:
        return self.out


class Person:
    """One citizen (a channel identity) talking to the service."""

    def __init__(self, harness: Harness, sender_id: str) -> None:
        self.h = harness
        self.sender_id = sender_id
        self._seen = 0

    # --- actions; each returns the bot's replies it caused ----------------------------------------
    async def send(self, **fields: Any) -> list[OutgoingMessage]:
        fields.setdefault("message_id", f"story:{next(_ids)}")
        msg = IncomingMessage(channel="story", sender_id=self.sender_id, **fields)
        await self.h.service.engine.handle(msg, self.h.channel.out)
        return self.new()

    async def say(self, text: str) -> list[OutgoingMessage]:
        if text.startswith("/") and " " not in text:
            return await self.send(command=text[1:])
        return await self.send(text=text)

    async def press(self, choice: str) -> list[OutgoingMessage]:
        """Press a button of the latest message that has buttons, by payload or by title."""
        payload = self.button(choice)
        return await self.send(button=payload)

    async def photo(self, data: bytes = b"\xff\xd8\xff fake jpeg", caption: str | None = None) -> list[OutgoingMessage]:
        ref = f"file-{next(_ids)}"
        self.h.channel.out.files[ref] = data
        att = Attachment(kind=AttachmentKind.PHOTO, ref=ref, mime_type="image/jpeg", size=len(data))
        return await self.send(attachments=(att,), text=caption)

    async def location(self, lat: float, lon: float) -> list[OutgoingMessage]:
        return await self.send(location=Location(latitude=lat, longitude=lon))

    # --- reading ----------------------------------------------------------------------------------
    def all(self) -> list[OutgoingMessage]:
        return [s.message for s in self.h.channel.out.sent if s.recipient_id == self.sender_id]

    def new(self) -> list[OutgoingMessage]:
        messages = self.all()
        fresh = messages[self._seen:]
        self._seen = len(messages)
        return fresh

    def last_buttons(self) -> Sequence[Any]:
        for message in reversed(self.all()):
            if message.buttons:
                return message.buttons
        return ()

    def button(self, choice: str) -> str:
        buttons = self.last_buttons()
        for b in buttons:
            if choice in (b.payload, b.title):
                return b.payload
        # Payloads with a variable part (ag:ewa, st:REF, rate:REF:5) by prefix.
        for b in buttons:
            if b.payload.startswith(choice):
                return b.payload
        raise AssertionError(f"no button {choice!r}; offered: {[(b.title, b.payload) for b in buttons]}")

    async def wait(self, count: int = 1, timeout: float = 20.0) -> list[OutgoingMessage]:
        """Wait for ``count`` messages pushed without a citizen action (notifications, late references)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.all()) - self._seen < count:
            if loop.time() > deadline:
                raise AssertionError(f"waited {timeout}s for {count} message(s); got {self.all()[self._seen:]}")
            await asyncio.sleep(0.05)
        return self.new()


class Harness:
    def __init__(self, service: Service, channel: StoryChannel) -> None:
        self.service = service
        self.channel = channel

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, settings: Settings) -> AsyncIterator[Harness]:
        """A whole service with a story channel, started and stopped around the block."""
        channel = StoryChannel()
        service = Service(settings, channels=[channel])
        await service.start()
        try:
            yield cls(service, channel)
        finally:
            await service.stop()

    def person(self, sender_id: str) -> Person:
        return Person(self, sender_id)

    @property
    def staff(self) -> BackendClient:
        s = self.service.settings.backend
        return BackendClient(self.service.backend.base_url, s.service_token.get_secret_value(),
                             session=self.service.http, staff_token=s.staff_token.get_secret_value())

    async def backend_down(self) -> None:
        assert self.service.embedded_backend is not None
        await self.service.embedded_backend.stop()

    async def backend_up(self) -> None:
        assert self.service.embedded_backend is not None
        await self.service.embedded_backend.start()


def texts(messages: Sequence[OutgoingMessage]) -> str:
    return "\n---\n".join(m.text for m in messages)
