"""Telegram channel on python-telegram-bot 22, embedded in the project's aiohttp server.

Updates arrive either through our webhook route (webhook mode: ``server.public_url`` set or
``telegram.mode: webhook``; the route checks ``X-Telegram-Bot-Api-Secret-Token`` and feeds
``application.update_queue``, as in PTB's ``customwebhookbot.py`` with ``.updater(None)``) or through
our getUpdates long-polling loop (the default), which feeds the same queue. Either way PTB's Application
takes the update from its queue, in a task it tracks and drains on stop, and calls
``TelegramInput._dispatch``: that translates the update and awaits the app's ``MessageHandler``. Updates of
one chat run in order; chats run in parallel. The webhook answers 200 once the handler has stored the
update (``bot.channel.accepted()``), 503 if it could not (Telegram retries). Polling must run in one process
only (Telegram allows one getUpdates consumer per bot); with several workers use the webhook.

Outbound requests pass ``TelegramRateLimiter`` (our budgets, PTB's rate-limiter hook) and PTB's ``Bot``.
Delivery errors surface as ``bot.channel.DeliveryFailed`` (permanent, or with ``retry_after``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from aiohttp import web

# Opt in to PTB's coming behaviour (time periods as timedelta) now: otherwise every RetryAfter it builds
# emits a deprecation warning. Our code reads these values as timedelta or number alike.
os.environ.setdefault("PTB_TIMEDELTA", "true")

from telegram import (
    Bot,
    CallbackQuery,
    InlineKeyboardMarkup,
    Message,
    ReplyKeyboardMarkup,
    ReplyKeyboardRemove,
    Update,
)
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, Conflict, Forbidden, InvalidToken, RetryAfter, TelegramError
from telegram.ext import (
    Application,
    BaseRateLimiter,
    BaseUpdateProcessor,
    ContextTypes,
    TypeHandler,
)

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
from bot.delivery import AttachmentTooLarge, RecentIds, SendProgress
from bot.ratelimit import InProcessRateLimiter, KeyedLocks, RateLimiter, backoff_delay
from bot.telegram_format import (
    TELEGRAM_TEXT_LIMIT,
    bot_commands,
    chosen_html,
    escape_html,
    inline_keyboard,
    reply_keyboard,
)
from bot.telegram_parse import callback_to_incoming, kind_of, message_id_for, message_to_incoming
from bot.telegram_request import AiohttpRequest
from bot.text import split_text, utf16_len
from config.settings import ServerSettings, TelegramSettings

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_UPDATES = ("message", "callback_query")
GLOBAL_KEY = "telegram:global"
# Endpoints that put a message into a chat count against the per-chat budget; these plus edits count
# against the bot-wide one. Everything else (getUpdates, getFile, answerCallbackQuery, ...) is not throttled.
# Compared in lower case: Bot API method names are case-insensitive (``call`` sends them lower-cased).
_CHAT_MESSAGE_ENDPOINTS = ("send", "copy", "forward")
_NOT_MESSAGES = frozenset({"sendchataction"})  # "typing…" is not a message
_MEMORY = 10_000  # chats remembered for keyboard bookkeeping (best effort, per process)

JSONResult = bool | dict[str, Any] | list[dict[str, Any]]


def webhook_secret(settings: TelegramSettings) -> str:
    """The configured secret, or one derived from the bot token (stable across workers and restarts).
    Telegram allows 1-256 characters of A-Z, a-z, 0-9, _ and -; a hex digest qualifies."""
    if settings.webhook_secret is not None and settings.webhook_secret.get_secret_value():
        return settings.webhook_secret.get_secret_value()
    if settings.bot_token is None:
        raise ValueError("telegram.bot_token is required")
    token = settings.bot_token.get_secret_value().encode("utf-8")
    return hmac.new(token, b"tawasul-telegram-webhook-secret", hashlib.sha256).hexdigest()


def webhook_url(telegram: TelegramSettings, server: ServerSettings) -> str | None:
    """Where Telegram should post updates, or None for polling."""
    if telegram.mode == "polling":
        return None
    if not server.public_url:
        if telegram.mode == "webhook":
            raise ValueError(
                "telegram.mode is 'webhook' but server.public_url (TAWASUL_PUBLIC_URL) is not set"
            )
        return None
    return server.public_url.rstrip("/") + telegram.webhook_path


def retry_after_seconds(exc: RetryAfter) -> float:
    value = exc.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


class TelegramRateLimiter(BaseRateLimiter[int]):
    """PTB rate limiter over our ``RateLimiter`` budgets: ``per_chat_rate_per_s`` per chat (after a burst
    of ``per_chat_burst``) and ``global_rate_per_s`` for the bot; a 429 pauses every request for its
    ``retry_after`` and then retries the same request, unless the wait is longer than
    ``max_retry_after_s`` or ``max_retries`` is used up: then PTB's ``RetryAfter`` propagates (the output
    channel turns it into ``DeliveryFailed(retry_after=...)`` for the outbox).

    Not PTB's ``AIORateLimiter``: that one throttles per chat only for groups, so private chats - all of
    ours - would get no per-chat limit, and its budgets cannot be shared across worker processes.
    """

    def __init__(
        self,
        settings: TelegramSettings,
        *,
        global_limiter: RateLimiter | None = None,
        chat_limiter: RateLimiter | None = None,
        on_throttled: Callable[[], None] | None = None,
    ) -> None:
        self._on_throttled = on_throttled  # every 429 Telegram answers (observability, /metrics)
        self._global = global_limiter or InProcessRateLimiter(
            settings.global_rate_per_s, burst=max(1, int(settings.global_rate_per_s))
        )
        self._chat = chat_limiter or InProcessRateLimiter(
            settings.per_chat_rate_per_s, burst=settings.per_chat_burst
        )
        self._max_retries = settings.max_retries
        self._max_retry_after = settings.max_retry_after_s
        self.retries = 0  # 429s absorbed by waiting (observability and tests)

    async def initialize(self) -> None:
        """Nothing to set up: the budgets exist already."""

    async def shutdown(self) -> None:
        """Nothing to release."""

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, JSONResult]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> JSONResult:
        chat_id = data.get("chat_id")
        name = endpoint.lower()
        message = name.startswith(_CHAT_MESSAGE_ENDPOINTS) and name not in _NOT_MESSAGES
        per_chat = chat_id is not None and message
        counted = message or name.startswith("edit")
        max_retries = self._max_retries if rate_limit_args is None else rate_limit_args
        attempt = 0
        while True:
            if per_chat:
                await self._chat.acquire(f"telegram:chat:{chat_id}")
            if counted:
                await self._global.acquire(GLOBAL_KEY)
            try:
                return await callback(*args, **kwargs)
            except RetryAfter as exc:
                if self._on_throttled is not None:
                    self._on_throttled()
                if not counted:  # getUpdates, getFile, ...: their callers wait as they see fit
                    raise
                seconds = retry_after_seconds(exc)
                # Telegram does not say which budget ran out; holding everything is the safe reading.
                await self._global.pause(GLOBAL_KEY, seconds)
                if attempt >= max_retries or seconds > self._max_retry_after:
                    raise
                attempt += 1
                self.retries += 1
                log.warning("telegram 429 on %s: waiting %.1fs (retry %d)", endpoint, seconds, attempt)


class PerChatUpdateProcessor(BaseUpdateProcessor):
    """Runs updates of different chats concurrently and those of one chat in arrival order, so one
    citizen's two quick messages never race each other in the dialogue."""

    def __init__(self, max_concurrent_updates: int = 4096) -> None:
        # Generous: a waiting update costs a task; the real concurrency limit is the per-chat lock.
        super().__init__(max_concurrent_updates)
        self._locks = KeyedLocks()

    async def do_process_update(self, update: object, coroutine: Any) -> None:
        chat = update.effective_chat if isinstance(update, Update) else None
        async with self._locks.hold(str(chat.id) if chat else "-"):
            await coroutine

    async def initialize(self) -> None:
        """Nothing to set up."""

    async def shutdown(self) -> None:
        """Nothing to release."""


@contextmanager
def _delivery_errors(what: str) -> Iterator[None]:
    """Map PTB's errors to the outbox's view: retry later (when), or give up."""
    try:
        yield
    except RetryAfter as exc:
        raise DeliveryFailed(f"telegram {what}: flood control", retry_after=retry_after_seconds(exc)) from exc
    except Forbidden as exc:  # the citizen blocked the bot or deleted the chat
        raise DeliveryFailed(f"telegram {what}: forbidden ({exc.message})", permanent=True) from exc
    except BadRequest as exc:  # chat not found, message too long, bad markup: the same request fails again
        raise DeliveryFailed(f"telegram {what}: bad request ({exc.message})", permanent=True) from exc
    except TelegramError as exc:  # network errors, timeouts, 5xx, conflicts
        raise DeliveryFailed(f"telegram {what}: {type(exc).__name__}") from exc


async def call(bot: Bot, method: str, **params: Any) -> Any:
    """A Bot API call answered as plain JSON (None parameters left out), through PTB's request path (our
    rate limiter, transport and error translation). PTB's typed methods build a ``Message`` of every answer,
    of which we read only the id: measured on the inbound benchmark (cProfile), that and their argument
    handling were about a quarter of a send's CPU. The method goes lower-cased: Bot API method names are case-insensitive, and
    ``do_api_request`` warns when given the name of a method PTB has."""
    return await bot.do_api_request(method.lower(), api_kwargs={k: v for k, v in params.items() if v is not None})


_NO_PREVIEW = {"is_disabled": True}


def _remember(mapping: OrderedDict[Any, Any], key: Any, value: Any) -> None:
    mapping[key] = value
    mapping.move_to_end(key)
    while len(mapping) > _MEMORY:
        mapping.popitem(last=False)


class TelegramOutput(OutputChannel):
    """Sends through the Application's bot. Text goes as parse_mode=HTML, escaped, in pieces under 4096
    UTF-16 units; buttons become an inline keyboard on the last piece, and the previous inline keyboard in
    that chat is removed so an old menu cannot be pressed. ``request_location`` shows a reply keyboard with
    a location button (inline keyboards cannot ask for a location)."""

    name = "telegram"

    def __init__(self, bot: Bot, settings: TelegramSettings) -> None:
        self._bot = bot
        self._max_file_bytes = settings.max_file_bytes
        # chat -> id of our latest message with an inline keyboard, stripped when a newer one is sent.
        self._keyboards: OrderedDict[int, int] = OrderedDict()
        # chat -> {title: payload} of the reply keyboard on screen (location requests).
        self._reply_buttons: OrderedDict[int, dict[str, str]] = OrderedDict()
        # (chat, message) of keyboards already pressed: a second quick press is not handed on.
        self._pressed: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._progress = SendProgress()

    @property
    def bot(self) -> Bot:
        return self._bot

    async def send_text(self, recipient_id: str, text: str, *, language: str = "ar") -> None:
        chat_id = _chat_id(recipient_id)
        markup: ReplyKeyboardRemove | None = None
        if self._reply_buttons.pop(chat_id, None) is not None:
            markup = ReplyKeyboardRemove()
        await self._send_pieces(chat_id, text, first_markup=markup, last_markup=None)

    async def send_buttons(
        self, recipient_id: str, text: str, buttons: Sequence[Button], *, language: str = "ar"
    ) -> None:
        chat_id = _chat_id(recipient_id)
        keyboard = inline_keyboard(buttons)  # validates payloads before anything is sent
        # A reply keyboard cannot be removed in the same message as an inline one is added; it was
        # one-time, so forgetting its titles is enough (typed text stops mapping to its payloads).
        self._reply_buttons.pop(chat_id, None)
        await self._strip_previous_keyboard(chat_id)
        sent = await self._send_pieces(chat_id, text, first_markup=None, last_markup=keyboard)
        if sent is not None:
            _remember(self._keyboards, chat_id, int(sent["message_id"]))

    async def send(self, recipient_id: str, message: OutgoingMessage) -> None:
        if not message.request_location:
            await super().send(recipient_id, message)
            return
        chat_id = _chat_id(recipient_id)
        keyboard = reply_keyboard(message.buttons, request_location=True, language=message.language)
        await self._strip_previous_keyboard(chat_id)
        await self._send_pieces(chat_id, message.text, first_markup=None, last_markup=keyboard)
        _remember(self._reply_buttons, chat_id, {b.title: b.payload for b in message.buttons})

    async def send_typing(self, recipient_id: str) -> None:
        """Show "typing…" while the reply is prepared; best effort."""
        try:
            await call(self._bot, "sendChatAction", chat_id=_chat_id(recipient_id), action=ChatAction.TYPING.value)
        except TelegramError as exc:
            log.debug("telegram: sendChatAction failed (%s)", type(exc).__name__)

    async def fetch_attachment(self, attachment: Attachment) -> bytes:
        """getFile, then download. Larger than ``max_file_bytes`` (or than Telegram serves, 20 MB on the
        cloud Bot API) raises ``AttachmentTooLarge``, a permanent ``DeliveryFailed``."""
        limit = self._max_file_bytes
        if attachment.size is not None and attachment.size > limit:
            raise AttachmentTooLarge(attachment.size, limit)
        try:
            with _delivery_errors("getFile"):
                file = await self._bot.get_file(attachment.ref)
        except DeliveryFailed as exc:
            if exc.permanent and "too big" in str(exc).lower():  # "Bad Request: file is too big"
                raise AttachmentTooLarge(attachment.size or 0, limit) from exc
            raise
        if file.file_size is not None and file.file_size > limit:
            raise AttachmentTooLarge(file.file_size, limit)
        with _delivery_errors("file download"):
            data = await file.download_as_bytearray()
        if len(data) > limit:
            raise AttachmentTooLarge(len(data), limit)
        return bytes(data)

    def reply_buttons(self, chat_id: int) -> dict[str, str] | None:
        return self._reply_buttons.get(chat_id)

    def claim_press(self, chat_id: int, message_id: int) -> bool:
        """True the first time a keyboard message is pressed; False for any later press of it."""
        key = (chat_id, message_id)
        if key in self._pressed:
            return False
        _remember(self._pressed, key, None)
        if self._keyboards.get(chat_id) == message_id:
            del self._keyboards[chat_id]
        return True

    def release_press(self, chat_id: int, message_id: int) -> None:
        """Forget a press that could not be stored, so the platform's next delivery of it counts."""
        self._pressed.pop((chat_id, message_id), None)

    async def _send_pieces(
        self,
        chat_id: int,
        text: str,
        *,
        first_markup: ReplyKeyboardRemove | None,
        last_markup: InlineKeyboardMarkup | ReplyKeyboardMarkup | None,
    ) -> dict[str, Any] | None:
        """Send ``text`` in pieces; return the last message as JSON (None when a retry found all pieces sent)."""
        pieces = [p for p in split_text(text, TELEGRAM_TEXT_LIMIT, measure=utf16_len) if p.strip()]
        if not pieces:
            raise DeliveryFailed("cannot send an empty message to Telegram", permanent=True)
        # A retry of a message that failed half-way resumes after the pieces that went out.
        digest = hashlib.sha256(repr((text, last_markup and last_markup.to_dict())).encode()).hexdigest()
        progress_key = f"{chat_id}:{digest}"
        done = self._progress.done(progress_key)
        sent: dict[str, Any] | None = None
        for index in range(done, len(pieces)):
            markup: InlineKeyboardMarkup | ReplyKeyboardMarkup | ReplyKeyboardRemove | None = None
            if index == len(pieces) - 1 and last_markup is not None:
                markup = last_markup
            elif index == 0:
                markup = first_markup
            with _delivery_errors("sendMessage"):
                sent = await call(self._bot, "sendMessage", chat_id=chat_id, text=escape_html(pieces[index]),
                                  parse_mode=ParseMode.HTML.value, reply_markup=markup,
                                  link_preview_options=_NO_PREVIEW)
            if len(pieces) > 1:
                self._progress.advance(progress_key, index + 1)
        self._progress.finish(progress_key)
        return sent

    async def _strip_previous_keyboard(self, chat_id: int) -> None:
        previous = self._keyboards.pop(chat_id, None)
        if previous is None:
            return
        try:
            await call(self._bot, "editMessageReplyMarkup", chat_id=chat_id, message_id=previous)
        except TelegramError as exc:  # already gone or too old to edit: nothing left to press anyway
            log.info("telegram: could not strip an old keyboard (%s)", type(exc).__name__)


def _chat_id(recipient_id: str) -> int:
    try:
        return int(recipient_id)
    except ValueError:
        raise DeliveryFailed("telegram recipient must be a numeric chat id", permanent=True) from None


class TelegramInput(InputChannel):
    """Telegram input: webhook route or getUpdates polling (see the module docstring).

    ``global_limiter`` may be a ``SharedRateLimiter`` so every worker shares the bot's 30 messages/s;
    the per-chat budget is in-process by default (one citizen's messages are sent in order anyway).
    """

    name = "telegram"

    def __init__(
        self,
        telegram: TelegramSettings,
        server: ServerSettings,
        *,
        global_limiter: RateLimiter | None = None,
        chat_limiter: RateLimiter | None = None,
        on_throttled: Callable[[], None] | None = None,
    ) -> None:
        if not telegram.enabled or telegram.bot_token is None:
            raise ValueError("telegram.bot_token (TELEGRAM_BOT_TOKEN) is required for the Telegram channel")
        self._settings = telegram
        self._max_body = server.max_body_bytes
        self._webhook_url = webhook_url(telegram, server)
        self._secret = webhook_secret(telegram)
        self.rate_limiter = TelegramRateLimiter(
            telegram, global_limiter=global_limiter, chat_limiter=chat_limiter, on_throttled=on_throttled
        )
        self.application: Application[Any, Any, Any, Any, Any, Any] = (
            Application.builder()
            .token(telegram.bot_token.get_secret_value())
            .base_url(telegram.api_base_url)
            .base_file_url(telegram.api_file_base_url)
            .request(AiohttpRequest())
            .get_updates_request(AiohttpRequest(connection_pool_size=1))
            .rate_limiter(self.rate_limiter)
            .concurrent_updates(PerChatUpdateProcessor())
            .job_queue(None)
            # Both modes feed update_queue themselves: the webhook route, or our getUpdates loop below.
            .updater(None)
            .build()
        )
        self.application.add_handler(TypeHandler(Update, self._dispatch))
        self.application.add_error_handler(self._on_error)
        self._output = TelegramOutput(self.application.bot, telegram)
        self._handler: MessageHandler | None = None
        self._recent = RecentIds()
        # Webhook updates in hand, by update_id: True once stored (answer 200), False if it failed (503).
        self._acks: dict[int, asyncio.Future[bool]] = {}
        self._stopping = asyncio.Event()
        self._poll_task: asyncio.Task[None] | None = None
        self.duplicates = 0  # re-delivered updates answered without the handler (observability, tests)
        self.unreadable = 0  # updates skipped because they could not be parsed

    @property
    def webhook_url(self) -> str | None:
        return self._webhook_url

    @property
    def polling(self) -> bool:
        return self._webhook_url is None

    def output_channel(self) -> TelegramOutput:
        return self._output

    def add_routes(self, app: Any, handler: MessageHandler) -> None:
        self._handler = handler
        if self._webhook_url:
            app.router.add_post(self._settings.webhook_path, self._webhook)

    async def start(self, handler: MessageHandler) -> None:
        self._handler = handler
        app = self.application
        await app.initialize()  # getMe: fails fast on a wrong token or base URL
        await self._register_commands()
        if self._webhook_url:
            await app.bot.set_webhook(
                url=self._webhook_url,
                secret_token=self._secret,
                allowed_updates=list(ALLOWED_UPDATES),
                drop_pending_updates=False,
            )
        else:
            await app.bot.delete_webhook(drop_pending_updates=False)  # getUpdates refuses while one is set
        await app.start()
        if not self._webhook_url:
            self._stopping.clear()
            self._poll_task = asyncio.create_task(self._poll(), name="telegram-getUpdates")
        log.info("telegram channel started (%s)", "webhook" if self._webhook_url else "polling")

    async def stop(self) -> None:
        """Stop fetching (confirming what was fetched), finish the updates already taken, shut down."""
        self._stopping.set()
        if self._poll_task is not None:
            await self._poll_task
            self._poll_task = None
        app = self.application
        if app.running:
            try:
                # PTB's stop processes what is queued and awaits the update tasks it created.
                await asyncio.wait_for(app.stop(), self._settings.drain_timeout_s)
            except TimeoutError:
                log.warning(
                    "telegram: updates still running after %.0fs at shutdown were cancelled",
                    self._settings.drain_timeout_s,
                )
        with contextlib.suppress(RuntimeError):  # still marked running after a timed-out stop
            await app.shutdown()

    async def _poll(self) -> None:
        """getUpdates long polling. Hand-written rather than PTB's Updater: that one parses a whole batch at
        once, so one update it cannot read (an API change, a bad server) stops polling for good; here
        such an update is logged and skipped. The offset advances only past updates already queued, and
        a last call on stop confirms them so a restart does not fetch them again."""
        bot = self.application.bot
        timeout = self._settings.poll_timeout_s
        offset: int | None = None
        failures = 0
        while not self._stopping.is_set():
            kwargs: dict[str, Any] = {"timeout": timeout, "allowed_updates": list(ALLOWED_UPDATES)}
            if offset is not None:
                kwargs["offset"] = offset
            # Lower-case endpoint: Bot API method names are case-insensitive, and PTB would warn about a
            # name it has a method for. The raw JSON lets us parse each update on its own.
            request = asyncio.ensure_future(
                bot.do_api_request("getupdates", api_kwargs=kwargs, read_timeout=timeout + 10.0)
            )
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({request, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not request.done():  # stop() while long polling: nothing was fetched by this call
                request.cancel()
                with contextlib.suppress(asyncio.CancelledError, TelegramError):
                    await request
                break
            wait = 0.0
            try:
                raw = request.result()
                failures = 0
            except RetryAfter as exc:
                wait = retry_after_seconds(exc)
            except InvalidToken:
                log.error("telegram: the bot token was rejected; polling stopped")
                return
            except Conflict as exc:  # a webhook is set, or another process polls with this token
                failures += 1
                wait = backoff_delay(failures - 1, 1.0, 30.0)
                log.error("telegram: getUpdates conflict (%s); retrying in %.0fs", exc.message[:80], wait)
            except TelegramError as exc:
                failures += 1
                wait = backoff_delay(failures - 1, 0.5, 30.0)
                log.warning("telegram: getUpdates failed (%s); retrying in %.1fs", type(exc).__name__, wait)
            else:
                offset = await self._enqueue(raw, offset)
            if wait:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), wait)
        if offset is not None:
            with contextlib.suppress(TelegramError):
                await bot.do_api_request(
                    "getupdates",
                    api_kwargs={"offset": offset, "timeout": 0, "allowed_updates": list(ALLOWED_UPDATES)},
                )

    async def _enqueue(self, raw: Any, offset: int | None) -> int | None:
        if not isinstance(raw, list):
            log.warning("telegram: getUpdates answered %s instead of a list", type(raw).__name__)
            return offset
        for item in raw:
            update_id = item.get("update_id") if isinstance(item, dict) else None
            if isinstance(update_id, int) and not isinstance(update_id, bool):
                offset = max(offset or 0, update_id + 1)
            try:
                if update_id is None:
                    raise TypeError("update_id missing")
                update = Update.de_json(item, self.application.bot)
            except Exception as exc:
                self.unreadable += 1
                log.warning(
                    "telegram: unreadable update %s skipped (%s: %s)",
                    update_id,
                    type(exc).__name__,
                    str(exc)[:120],
                )
                continue
            await self.application.update_queue.put(update)
        return offset

    async def _register_commands(self) -> None:
        bot = self.application.bot
        try:
            await bot.set_my_commands(bot_commands("ar"))  # default for every language
            await bot.set_my_commands(bot_commands("ar"), language_code="ar")
            await bot.set_my_commands(bot_commands("en"), language_code="en")
        except TelegramError as exc:  # the menu is a convenience; typing commands still works
            log.warning("telegram: setMyCommands failed (%s)", type(exc).__name__)

    async def _webhook(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER)
        if given is None or not hmac.compare_digest(given.encode("utf-8"), self._secret.encode("utf-8")):
            log.warning("telegram webhook: missing or wrong secret token")
            return web.json_response({"error": "unauthorized"}, status=401)
        if request.content_length is not None and request.content_length > self._max_body:
            return web.json_response({"error": "payload too large"}, status=413)
        if not self.application.running:
            return web.json_response({"error": "not ready"}, status=503)  # Telegram retries later
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": "payload too large"}, status=413)
        if len(body) > self._max_body:
            return web.json_response({"error": "payload too large"}, status=413)
        try:
            data = json.loads(body)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            update_id = data.get("update_id")
            if not isinstance(update_id, int) or isinstance(update_id, bool):
                raise TypeError("update_id missing")
            update = Update.de_json(data, self.application.bot)
        except Exception as exc:
            log.warning(
                "telegram webhook: malformed update rejected (%s: %s)", type(exc).__name__, str(exc)[:120]
            )
            return web.json_response({"error": "malformed update"}, status=400)
        # Acknowledge once the update is stored, not when it is queued: Telegram never sends an acknowledged
        # update again, so a crash in between would lose it. A retry of an update still in hand waits for
        # the same outcome; one that could not be stored is answered 503 and Telegram sends it again.
        waiter = self._acks.get(update.update_id)
        if waiter is not None:
            self.duplicates += 1
        elif message_id_for(update.update_id) in self._recent:
            self.duplicates += 1
            return web.json_response({"ok": True, "duplicate": True})
        else:
            waiter = self._acks[update.update_id] = asyncio.get_running_loop().create_future()
            await self.application.update_queue.put(update)
        if not await asyncio.shield(waiter):
            return web.json_response({"error": "not stored; send it again"}, status=503)
        return web.json_response({"ok": True})

    async def _dispatch(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        waiter = self._acks.get(update.update_id)

        def stored() -> None:
            if waiter is not None and not waiter.done():
                waiter.set_result(True)

        try:
            with accepting(stored):
                await self._dispatch_update(update)
        except BaseException:
            if waiter is not None and not waiter.done():
                # Not stored: forget the update (and its press) so that Telegram's next delivery runs.
                self._recent.discard(message_id_for(update.update_id))
                query = update.callback_query
                if query is not None and query.message is not None:
                    self._output.release_press(query.message.chat.id, query.message.message_id)
                waiter.set_result(False)
            raise
        finally:
            stored()  # handled without storing anything (nothing to answer, a re-delivery)
            self._acks.pop(update.update_id, None)

    async def _dispatch_update(self, update: Update) -> None:
        if not self._recent.add(message_id_for(update.update_id)):
            self.duplicates += 1
            log.info("telegram update %s delivered again: ignored", update.update_id)
            return
        incoming = await self._translate(update)
        if incoming is None:
            log.debug("telegram update %s (%s) needs no answer", update.update_id, kind_of(update))
            return
        if self._handler is None:
            raise RuntimeError("TelegramInput.start() was not called with a handler")
        typing: asyncio.Task[None] | None = None
        if incoming.button is None:  # presses already got their feedback (the edited message)
            typing = asyncio.create_task(self._typing_later(incoming.sender_id))
        try:
            await self._handler(incoming, self._output)
        finally:
            if typing is not None:
                typing.cancel()

    async def _typing_later(self, sender_id: str) -> None:
        """"typing…" for an answer that is slow to come (the handler returns once it is sent)."""
        await asyncio.sleep(self._settings.typing_after_s)
        await self._output.send_typing(sender_id)

    async def _translate(self, update: Update) -> IncomingMessage | None:
        if update.callback_query is not None:
            return await self._on_press(update.update_id, update.callback_query)
        if update.message is not None:
            buttons = self._output.reply_buttons(update.message.chat.id)
            return message_to_incoming(update.update_id, update.message, buttons)
        return None

    async def _on_press(self, update_id: int, query: CallbackQuery) -> IncomingMessage | None:
        """Hand the press on at once; answering it and taking the keyboard off the message (showing the
        choice) run beside the dialogue turn, not before it."""
        message = query.message
        if message is None or query.data is None:
            await self._answer(query)
            return None
        first = self._output.claim_press(message.chat.id, message.message_id)
        if not first:
            await self._answer(query)
            log.info("telegram update %s: repeated press of one keyboard ignored", update_id)
            return None
        title = _button_title(message, query.data)
        self.application.create_task(self._press_feedback(update_id, query, title))
        return callback_to_incoming(update_id, query, title)

    async def _press_feedback(self, update_id: int, query: CallbackQuery, title: str | None) -> None:
        message = query.message
        assert message is not None
        bot = self.application.bot
        await self._answer(query)
        edited = False
        if isinstance(message, Message) and message.text is not None and title is not None:
            try:
                # No reply_markup: an edit without one takes the inline keyboard off.
                await call(bot, "editMessageText", chat_id=message.chat.id, message_id=message.message_id,
                           text=chosen_html(message.text_html, title), parse_mode=ParseMode.HTML.value,
                           link_preview_options=_NO_PREVIEW)
                edited = True
            except TelegramError as exc:  # e.g. the text with the choice would be too long
                log.info(
                    "telegram update %s: could not edit the pressed text (%s)", update_id, type(exc).__name__
                )
        if not edited:
            try:
                await call(bot, "editMessageReplyMarkup", chat_id=message.chat.id, message_id=message.message_id)
            except TelegramError as exc:  # the press still counts; the keyboard may already be gone
                log.info(
                    "telegram update %s: could not remove the pressed keyboard (%s)",
                    update_id,
                    type(exc).__name__,
                )

    async def _answer(self, query: CallbackQuery) -> None:
        try:
            await call(query.get_bot(), "answerCallbackQuery", callback_query_id=query.id)
        except TelegramError as exc:  # too old (>15 min) or network: the client's spinner just times out
            log.info("telegram: answerCallbackQuery failed (%s)", type(exc).__name__)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        update_id = update.update_id if isinstance(update, Update) else None
        error = context.error
        log.error(
            "telegram update %s failed: %s",
            update_id,
            type(error).__name__,
            exc_info=(type(error), error, error.__traceback__) if error is not None else None,
        )


def _button_title(message: Any, data: str) -> str | None:
    markup = getattr(message, "reply_markup", None)
    if not isinstance(markup, InlineKeyboardMarkup):
        return None
    for row in markup.inline_keyboard:
        for button in row:
            if button.callback_data == data:
                return button.text
    return None
