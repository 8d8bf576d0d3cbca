"""A terminal channel for the citizen side: `tawasul shell` and `make run` without platform tokens.

Buttons print as numbered choices, one per line (``1) تأكيد``); typing the number or the button's text
presses it. ``/photo PATH`` and ``/file PATH`` attach a local file, ``/location TEXT`` or
``/location LAT,LON`` sends a location. It reads stdin whether or not it is a TTY, so a scripted
conversation can be piped in; at end of input it finishes (``finished`` is set).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import mimetypes
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from bot.channel import (
    Attachment,
    AttachmentKind,
    Button,
    IncomingMessage,
    InputChannel,
    Location,
    MessageHandler,
    OutgoingMessage,
    OutputChannel,
    numbered_choices,
)

SENDER = "local"


class TerminalOutput(OutputChannel):
    name = "terminal"

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.buttons: list[Button] = []

    async def send_text(self, recipient_id: str, text: str, *, language: str = "ar") -> None:
        self._print(text)

    async def send_buttons(self, recipient_id: str, text: str, buttons: Sequence[Button], *,
                           language: str = "ar") -> None:
        self.buttons = list(buttons)
        self._print(f"{text}\n{numbered_choices(buttons)}")

    async def send(self, recipient_id: str, message: OutgoingMessage) -> None:
        if message.buttons:
            await self.send_buttons(recipient_id, message.text, message.buttons, language=message.language)
        else:
            await self.send_text(recipient_id, message.text, language=message.language)

    async def fetch_attachment(self, attachment: Attachment) -> bytes:
        return await asyncio.to_thread(Path(attachment.ref).read_bytes)

    def _print(self, text: str) -> None:
        self.stream.write(f"\n{text}\n")
        self.stream.flush()


class TerminalChannel(InputChannel):
    name = "terminal"

    def __init__(self, stdin: TextIO | None = None, stdout: TextIO | None = None, sender_id: str = SENDER) -> None:
        self.stdin = stdin or sys.stdin
        self.output = TerminalOutput(stdout)
        self.sender_id = sender_id
        self.finished = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._run_id = os.urandom(4).hex()

    def output_channel(self) -> OutputChannel:
        return self.output

    async def start(self, handler: MessageHandler) -> None:
        self._task = asyncio.create_task(self._loop(handler), name="terminal")

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self.finished.set()

    async def _loop(self, handler: MessageHandler) -> None:
        interactive = self.stdin.isatty()
        try:
            while True:
                if interactive:
                    self.output.stream.write("> ")
                    self.output.stream.flush()
                line = await asyncio.to_thread(self.stdin.readline)
                if not line:
                    break
                message = self.parse(line.rstrip("\r\n"))
                if message is None:
                    continue
                if not interactive:  # echo scripted input so the transcript reads as a conversation
                    self.output.stream.write(f"\n> {line.rstrip()}\n")
                await handler(message, self.output)
        finally:
            self.finished.set()

    def parse(self, line: str) -> IncomingMessage | None:
        text = line.strip()
        if not text:
            return None
        message_id = f"term:{self._run_id}:{next(self._ids)}"

        def new(**fields: Any) -> IncomingMessage:
            return IncomingMessage(channel=self.name, sender_id=self.sender_id, message_id=message_id, **fields)

        buttons = self.output.buttons
        if text.isdigit() and 1 <= int(text) <= len(buttons):
            return new(button=buttons[int(text) - 1].payload)
        for button in buttons:
            if text.casefold() == button.title.casefold():
                return new(button=button.payload)
        head, _, rest = text.partition(" ")
        if head in ("/photo", "/file") and rest:
            path = Path(rest.strip()).expanduser()
            if not path.is_file():
                self.output._print(f"(no such file: {path})")
                return None
            mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            kind = AttachmentKind.PHOTO if mime.startswith("image/") else AttachmentKind.DOCUMENT
            att = Attachment(kind=kind, ref=str(path), mime_type=mime, size=path.stat().st_size,
                             filename=path.name)
            return new(attachments=(att,))
        if head == "/location" and rest:
            lat, _, lon = rest.partition(",")
            try:
                return new(location=Location(latitude=float(lat), longitude=float(lon)))
            except ValueError:
                return new(location=Location(text=rest.strip()))
        if text.startswith("/") and len(text) > 1 and " " not in text:
            return new(command=text[1:])
        return new(text=text)


async def remote_shell(base_url: str, stdin: TextIO | None = None, stdout: TextIO | None = None,
                       sender_id: str | None = None) -> int:
    """The same terminal chat, attached to a service already running at ``base_url`` (its web chat API),
    so `tawasul shell` talks to the running bot instead of starting a second one."""
    import aiohttp

    stdin = stdin or sys.stdin
    out = TerminalOutput(stdout)
    sender = sender_id or f"shell-{os.urandom(6).hex()}"
    helper = TerminalChannel(stdin=stdin, stdout=out.stream, sender_id=sender)
    helper.output = out
    interactive = stdin.isatty()

    async def show(messages: list[dict[str, object]]) -> None:
        for m in messages:
            raw = m.get("buttons")
            buttons = tuple(Button(str(b["title"]), str(b["payload"])) for b in raw if isinstance(b, dict)) \
                if isinstance(raw, list) else ()
            await out.send(sender, OutgoingMessage(text=str(m.get("text", "")), buttons=buttons))

    async with aiohttp.ClientSession(base_url) as http:
        async def poll() -> None:
            while True:
                await asyncio.sleep(2)
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get("/chat/api/poll", params={"sender": sender}) as resp:
                        await show((await resp.json()).get("messages", []))

        poller = asyncio.create_task(poll()) if interactive else None
        try:
            while True:
                if interactive:
                    out.stream.write("> ")
                    out.stream.flush()
                line = await asyncio.to_thread(stdin.readline)
                if not line:
                    break
                msg = helper.parse(line.rstrip("\r\n"))
                if msg is None:
                    continue
                if msg.attachments or msg.location:
                    out._print("(attachments and locations need the local shell: run it without a service)")
                    continue
                if not interactive:
                    out.stream.write(f"\n> {line.rstrip()}\n")
                body = {"sender": sender, "id": msg.message_id.replace(":", "-"), "text": msg.text,
                        "button": msg.button}
                if msg.command:
                    body["text"] = f"/{msg.command}"
                async with http.post("/chat/api/send", json=body) as resp:
                    data = await resp.json()
                    if resp.status >= 400:
                        out._print(f"(error: {data.get('error', {}).get('message', resp.status)})")
                        continue
                    await show(data.get("messages", []))
            # Scripted input: collect what arrives shortly after the last message (a late reference).
            await asyncio.sleep(0.5)
            async with http.get("/chat/api/poll", params={"sender": sender}) as resp:
                await show((await resp.json()).get("messages", []))
        finally:
            if poller is not None:
                poller.cancel()
    return 0
