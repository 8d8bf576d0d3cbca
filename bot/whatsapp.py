"""WhatsApp Cloud API channel: webhook in, Graph API out.

Inbound (``WhatsAppInput``, routes on the shared aiohttp app at ``whatsapp.webhook_path``):

* ``GET``: the subscription handshake - ``hub.mode=subscribe`` and ``hub.verify_token`` equal to
  ``WHATSAPP_VERIFY_TOKEN`` echo ``hub.challenge``; anything else is 403.
* ``POST``: ``X-Hub-Signature-256`` must be ``sha256=`` + HMAC-SHA256(app secret, raw body), else 401. A body
  we cannot read is 400 (logged, redacted). Otherwise each message runs in a background task (one
  citizen's messages in order): read receipt, window bookkeeping, media size lookup, then the app's
  ``MessageHandler``; the answer is 200 once every message is stored (the handler calls
  ``bot.channel.accepted()``), 503 if one could not be (Meta retries). Re-deliveries of a recent message id
  are answered without running it again.
  Status callbacks (sent/delivered/read/failed) are logged and passed to the optional ``StatusHook``.

Outbound (``WhatsAppOutput``): text, reply buttons or paged lists, location requests, and for a
notification outside the 24-hour customer-service window the approved template from
``whatsapp.status_template`` filled with ``OutgoingMessage.template_params``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
from aiohttp import web

from bot.channel import (
    Attachment,
    Button,
    DeliveryFailed,
    IncomingMessage,
    InputChannel,
    MessageHandler,
    OutgoingMessage,
    OutputChannel,
    accepting,
)
from bot.delivery import RecentIds, SendProgress, TaskSet
from bot.ratelimit import RateLimiter
from bot.whatsapp_api import GraphClient, GraphFailed
from bot.whatsapp_format import Payload, plan_message, template_payload
from bot.whatsapp_parse import MORE_PREFIX, DeliveryStatus, MalformedPayload, parse_webhook
from bot.whatsapp_window import InMemoryWindowTracker, WindowTracker, in_window
from config.settings import ServerSettings, WhatsAppSettings
from tawasul.privacy import mask_id

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature-256"
_MENU_MEMORY = 10_000


@dataclasses.dataclass(frozen=True, slots=True)
class SentMessage:
    """One platform message the bot sent: ``message_id`` is ``wa:<wamid>``, the id status callbacks name."""

    recipient_id: str
    message_id: str
    template: bool = False


StatusHook = Callable[[DeliveryStatus], Awaitable[None]]
SentHook = Callable[[SentMessage], Awaitable[None]]
Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def signature_for(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``body``."""
    return "sha256=" + hmac.new(app_secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class WhatsAppOutput(OutputChannel):
    name = "whatsapp"

    def __init__(
        self,
        settings: WhatsAppSettings,
        client: GraphClient,
        tracker: WindowTracker,
        *,
        on_sent: SentHook | None = None,
        clock: Clock = _utcnow,
    ) -> None:
        self._settings = settings
        self._client = client
        self._tracker = tracker
        self._on_sent = on_sent
        self._clock = clock
        self._progress = SendProgress()
        # citizen -> list pages still to show when "more" is pressed (the latest menu only).
        self._menus: OrderedDict[str, list[Payload]] = OrderedDict()
        self.templates_sent = 0  # observability and tests

    @property
    def client(self) -> GraphClient:
        return self._client

    async def send_text(self, recipient_id: str, text: str, *, language: str = "ar") -> None:
        await self._deliver(recipient_id, OutgoingMessage(text=text, language=language))

    async def send_buttons(
        self, recipient_id: str, text: str, buttons: Sequence[Button], *, language: str = "ar"
    ) -> None:
        await self._deliver(
            recipient_id, OutgoingMessage(text=text, buttons=tuple(buttons), language=language)
        )

    async def send(self, recipient_id: str, message: OutgoingMessage) -> None:
        if message.notification:
            await self.send_notification(recipient_id, message)
        else:
            await self._deliver(recipient_id, message)

    async def send_notification(self, recipient_id: str, message: OutgoingMessage) -> None:
        """Free-form inside the customer-service window, the approved template outside it."""
        last = await self._tracker.last_inbound(recipient_id)
        if not in_window(
            last, self._clock(), hours=self._settings.window_hours, margin_s=self._settings.window_margin_s
        ):
            await self._send_template(recipient_id, message)
            return
        try:
            await self._deliver(recipient_id, message)
        except GraphFailed as exc:
            if not exc.error.outside_window:
                raise
            # Our window bookkeeping was stale (another worker, a restart): the platform knows better.
            log.info("whatsapp: window closed for %s; sending the template instead", mask_id(recipient_id))
            await self._send_template(recipient_id, message)

    async def show_more(self, recipient_id: str, page: int) -> bool:
        """Send page ``page`` (1-based after the first) of the latest menu; False if it is not known here."""
        pages = self._menus.get(recipient_id)
        if pages is None or not 1 <= page <= len(pages):
            return False
        await self._send_one(recipient_id, pages[page - 1])
        return True

    async def fetch_attachment(self, attachment: Attachment) -> bytes:
        return await self._client.download_media(attachment.ref, self._settings.max_media_bytes)

    async def _send_template(self, recipient_id: str, message: OutgoingMessage) -> None:
        payload = template_payload(
            recipient_id, self._settings.status_template, message.language, message.template_params
        )
        await self._send_one(recipient_id, payload, template=True)
        self.templates_sent += 1

    async def _deliver(self, recipient_id: str, message: OutgoingMessage) -> None:
        try:
            plan = plan_message(recipient_id, message)
        except ValueError as exc:  # empty text, a payload too long: the same message never fits
            raise DeliveryFailed(f"whatsapp: cannot send this message ({exc})", permanent=True) from exc
        steps = plan.steps
        digest = hashlib.sha256(json.dumps(steps, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        key = f"{recipient_id}:{digest}"
        for index in range(self._progress.done(key), len(steps)):
            await self._send_one(recipient_id, steps[index])
            if len(steps) > 1:
                self._progress.advance(key, index + 1)
        self._progress.finish(key)
        if message.buttons:
            if plan.later_pages:
                self._menus[recipient_id] = plan.later_pages
                self._menus.move_to_end(recipient_id)
                while len(self._menus) > _MENU_MEMORY:
                    self._menus.popitem(last=False)
            else:
                self._menus.pop(recipient_id, None)

    async def _send_one(self, recipient_id: str, payload: Payload, *, template: bool = False) -> None:
        wamid = await self._client.send(payload)
        if self._on_sent is not None:
            try:
                await self._on_sent(SentMessage(recipient_id, f"wa:{wamid}", template))
            except Exception:  # the message went out; a bookkeeping error must not make the outbox resend it
                log.exception("whatsapp: on_sent hook failed")


class WhatsAppInput(InputChannel):
    """WhatsApp Cloud API input. Needs ``app_secret`` and ``verify_token`` to accept webhooks; without them
    the routes refuse every call (sending still works)."""

    name = "whatsapp"

    def __init__(
        self,
        settings: WhatsAppSettings,
        server: ServerSettings,
        session: aiohttp.ClientSession,
        *,
        limiter: RateLimiter | None = None,
        window_tracker: WindowTracker | None = None,
        on_status: StatusHook | None = None,
        on_sent: SentHook | None = None,
        clock: Clock = _utcnow,
        on_throttled: Callable[[], None] | None = None,
    ) -> None:
        if not settings.enabled:
            raise ValueError("whatsapp.access_token and whatsapp.phone_number_id are required")
        self._settings = settings
        self._max_body = server.max_body_bytes
        self._app_secret = settings.app_secret.get_secret_value().encode() if settings.app_secret else b""
        self._verify_token = settings.verify_token.get_secret_value() if settings.verify_token else ""
        self.tracker: WindowTracker = window_tracker or InMemoryWindowTracker()
        self.client = GraphClient(settings, session, limiter=limiter, on_throttled=on_throttled)
        self._output = WhatsAppOutput(settings, self.client, self.tracker, on_sent=on_sent, clock=clock)
        self._on_status = on_status
        self._handler: MessageHandler | None = None
        self._tasks = TaskSet("whatsapp")
        self._recent = RecentIds()
        # Messages in hand, by message id: True once stored (the webhook answers 200), False if that failed.
        self._acks: dict[str, asyncio.Future[bool]] = {}
        self.duplicates = 0  # re-deliveries answered without the handler (observability, tests)
        if not settings.webhook_enabled:
            log.warning(
                "whatsapp: WHATSAPP_APP_SECRET and WHATSAPP_VERIFY_TOKEN are not both set; "
                "the webhook refuses every call (sending still works)"
            )

    def output_channel(self) -> WhatsAppOutput:
        return self._output

    def add_routes(self, app: Any, handler: MessageHandler) -> None:
        self._handler = handler
        app.router.add_get(self._settings.webhook_path, self._verify)
        app.router.add_post(self._settings.webhook_path, self._receive)

    async def start(self, handler: MessageHandler) -> None:
        self._handler = handler
        log.info("whatsapp channel started (webhook %s)", self._settings.webhook_path)

    async def stop(self) -> None:
        await self._tasks.drain(self._settings.drain_timeout_s)

    @property
    def pending(self) -> int:
        """Background tasks still running (tests wait for 0)."""
        return len(self._tasks)

    async def _verify(self, request: web.Request) -> web.Response:
        query = request.query
        mode, token, challenge = (
            query.get("hub.mode"),
            query.get("hub.verify_token"),
            query.get("hub.challenge"),
        )
        if (
            self._verify_token
            and mode == "subscribe"
            and token is not None
            and hmac.compare_digest(token.encode(), self._verify_token.encode())
            and challenge
        ):
            log.info("whatsapp: webhook subscription verified")
            return web.Response(text=challenge)
        log.warning("whatsapp: webhook verification refused (mode=%s)", (mode or "-")[:20])
        return web.Response(status=403, text="verification failed")

    async def _receive(self, request: web.Request) -> web.Response:
        if not self._app_secret:
            return web.json_response({"error": "webhook not configured"}, status=401)
        if request.content_length is not None and request.content_length > self._max_body:
            return web.json_response({"error": "payload too large"}, status=413)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": "payload too large"}, status=413)
        if len(body) > self._max_body:
            return web.json_response({"error": "payload too large"}, status=413)
        given = request.headers.get(SIGNATURE_HEADER, "")
        expected = signature_for(self._app_secret.decode(), body)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            log.warning("whatsapp webhook: %s signature", "missing" if not given else "wrong")
            return web.json_response({"error": "bad signature"}, status=401)
        try:
            data = json.loads(body)
            parsed = parse_webhook(data, self._settings.phone_number_id)
        except (ValueError, MalformedPayload) as exc:
            # The reason names the field, never a value: bodies carry phone numbers and names.
            reason = str(exc) if isinstance(exc, MalformedPayload) else "not JSON"
            log.warning("whatsapp webhook: malformed payload rejected (%s; %d bytes)", reason, len(body))
            return web.json_response({"error": "malformed payload"}, status=400)
        if parsed.skipped and not parsed.messages and not parsed.statuses:
            return web.json_response({"error": "malformed payload"}, status=400)
        if parsed.other_numbers:
            log.info("whatsapp webhook: %d item(s) for another phone number ignored", parsed.other_numbers)
        if self._tasks.closed:
            return web.json_response({"error": "shutting down"}, status=503)  # Meta retries later
        # Answer once every message is stored, not when it is queued: Meta does not send an acknowledged
        # webhook again, so a crash in between would lose it. A retry of a message still in hand waits for
        # the same outcome; if one could not be stored the answer is 503 and Meta sends the body again.
        waiters: list[asyncio.Future[bool]] = []
        for incoming in parsed.messages:
            waiter = self._acks.get(incoming.message_id)
            if waiter is not None:
                self.duplicates += 1
                waiters.append(waiter)
                continue
            if not self._recent.add(incoming.message_id):
                self.duplicates += 1
                log.info("whatsapp message %s delivered again: ignored", mask_id(incoming.message_id))
                continue
            waiter = self._acks[incoming.message_id] = asyncio.get_running_loop().create_future()
            waiters.append(waiter)
            if not self._tasks.spawn(
                incoming.sender_id,
                functools.partial(self._process, incoming, waiter),
                f"message {mask_id(incoming.message_id)}",
            ):
                self._not_stored(incoming, waiter)
        for status in parsed.statuses:
            if not self._recent.add(f"{status.message_id}:{status.status}"):
                continue
            self._tasks.spawn(
                f"status:{status.recipient_id}",
                functools.partial(self._record_status, status),
                f"status {status.status}",
            )
        if not all(await asyncio.gather(*(asyncio.shield(w) for w in waiters))):
            return web.json_response({"error": "not stored; send it again"}, status=503)
        return web.json_response({"ok": True})

    def _not_stored(self, incoming: IncomingMessage, waiter: asyncio.Future[bool]) -> None:
        if not waiter.done():
            self._recent.discard(incoming.message_id)  # Meta's next delivery of it must run
            waiter.set_result(False)
        self._acks.pop(incoming.message_id, None)

    async def _process(self, incoming: IncomingMessage, waiter: asyncio.Future[bool]) -> None:
        def stored() -> None:
            if not waiter.done():
                waiter.set_result(True)

        try:
            with accepting(stored):
                await self._process_message(incoming)
        except BaseException:
            self._not_stored(incoming, waiter)
            raise
        finally:
            stored()  # handled without storing anything (a "more" page)
            self._acks.pop(incoming.message_id, None)

    async def _process_message(self, incoming: IncomingMessage) -> None:
        sender = incoming.sender_id
        wamid = incoming.message_id.removeprefix("wa:")
        if self._settings.mark_read:
            self._tasks.spawn(
                f"read:{wamid}", functools.partial(self.client.mark_read, wamid), "read receipt"
            )
        await self.tracker.record_inbound(sender, incoming.received_at)
        if incoming.button is not None and incoming.button.startswith(MORE_PREFIX):
            page = incoming.button[len(MORE_PREFIX) :]
            if page.isdigit() and await self._output.show_more(sender, int(page)):
                return
            # The menu is not known in this process (restart, another worker): the dialogue re-prompts.
        if incoming.attachments:
            incoming = await self._with_sizes(incoming)
        if self._handler is None:
            raise RuntimeError("WhatsAppInput.start() was not called with a handler")
        await self._handler(incoming, self._output)

    async def _with_sizes(self, incoming: IncomingMessage) -> IncomingMessage:
        """Meta's webhook does not give media sizes; look them up so the dialogue can refuse big files
        with a clear reply before anything is downloaded. Best effort: unknown stays None."""
        attachments: list[Attachment] = []
        for att in incoming.attachments:
            if att.size is None:
                try:
                    info = await self.client.media_info(att.ref)
                    att = dataclasses.replace(att, size=info.size, mime_type=att.mime_type or info.mime_type)
                except DeliveryFailed as exc:
                    log.info("whatsapp: media size lookup failed (%s)", exc)
            attachments.append(att)
        return dataclasses.replace(incoming, attachments=tuple(attachments))

    async def _record_status(self, status: DeliveryStatus) -> None:
        if status.status == "failed":
            codes = ",".join(str(e.code) for e in status.errors) or "-"
            log.warning(
                "whatsapp message %s to %s failed (codes %s)",
                mask_id(status.message_id),
                mask_id(status.recipient_id),
                codes,
            )
        else:
            log.debug("whatsapp message %s %s", mask_id(status.message_id), status.status)
        if self._on_status is not None:
            await self._on_status(status)
