"""A fake Telegram Bot API server (aiohttp, 127.0.0.1) for tests, in the Bot API's wire format.

Point python-telegram-bot at it with ``base_url=fake.base_url`` and ``base_file_url=fake.file_base_url``
(settings: ``TelegramSettings(bot_token=fake.token, api_base_url=fake.base_url,
api_file_base_url=fake.file_base_url)``). Requests may be form-encoded (what PTB sends: strings raw, other
values JSON-encoded), multipart or JSON; answers are ``{"ok": true, "result": ...}`` or
``{"ok": false, "error_code": ..., "description": ..., "parameters": {...}}`` as Telegram sends them.

Methods: getMe, getUpdates (long polling with ``offset``/``timeout``; 409 while a webhook is set),
setWebhook, deleteWebhook, getWebhookInfo, setMyCommands, deleteMyCommands, sendMessage, editMessageText,
editMessageReplyMarkup, answerCallbackQuery, sendChatAction, getFile and file downloads under
``/file/bot<token>/<file_path>``. ``sendMessage``/``editMessageText`` check the text the way Telegram does
for ``parse_mode=HTML`` (supported tags, ``&`` entities) and the 4096 UTF-16 limit after parsing, so badly
escaped text fails here as it would in production; callback_data over 64 bytes is refused.

Usage::

    async with FakeTelegram() as tg:
        settings = TelegramSettings(bot_token=SecretStr(tg.token), api_base_url=tg.base_url,
                                    api_file_base_url=tg.file_base_url, poll_timeout_s=1)
        ...
        tg.user_sends(chat_id=42, text="/start")           # queued for getUpdates; returns update_id
        await tg.deliver_webhook(update)                     # or POST to the registered webhook
        tg.user_presses(42, "confirm")                       # a callback_query on the latest keyboard
        tg.fail("sendMessage", times=5, status=429, retry_after=1)   # a 429 storm
        tg.messages_to(42)                                   # what the citizen sees (texts after edits)

State for assertions: ``calls`` (every request: method + decoded params), ``sent`` (every sendMessage
with its decoded params and the visible text), ``chats`` (messages per chat, current state after edits),
``callback_answers``, ``commands`` (per language code, "" = default), ``chat_actions``, ``webhook``.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import re
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

# Parameters PTB JSON-encodes (numbers, booleans, objects); everything else is a raw string.
_JSON_PARAMS = frozenset(
    {
        "chat_id",
        "message_id",
        "offset",
        "limit",
        "timeout",
        "reply_markup",
        "commands",
        "allowed_updates",
        "scope",
        "link_preview_options",
        "entities",
        "reply_parameters",
        "drop_pending_updates",
        "show_alert",
        "cache_time",
        "disable_notification",
        "protect_content",
        "max_connections",
        "disable_web_page_preview",
        "message_thread_id",
        "caption_entities",
    }
)
_HTML_TAGS = frozenset(
    {
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "a",
        "code",
        "pre",
        "tg-spoiler",
        "span",
        "blockquote",
        "tg-emoji",
    }
)
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s[^<>]*)?)>")
_ENTITY = re.compile(r"&(?:lt|gt|amp|quot|#[0-9]+|#x[0-9a-fA-F]+);")
TEXT_LIMIT = 4096
CALLBACK_DATA_LIMIT = 64
FILE_DOWNLOAD_LIMIT = 20 * 1024 * 1024


class TelegramApiError(Exception):
    def __init__(self, status: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


def visible_text(text: str, parse_mode: str | None) -> str:
    """What the citizen sees: for HTML, tags removed and entities decoded; errors like Telegram's."""
    if parse_mode is None:
        return text
    if parse_mode.upper() != "HTML":
        raise TelegramApiError(400, f"Bad Request: unsupported parse_mode {parse_mode} in this fake")
    out: list[str] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char == "<":
            match = _TAG.match(text, pos)
            if match is None or match.group(2).lower() not in _HTML_TAGS:
                name = match.group(2) if match else text[pos + 1 : pos + 8]
                raise TelegramApiError(
                    400,
                    f'Bad Request: can\'t parse entities: Unsupported start tag "{name}" at byte offset '
                    f"{len(text[:pos].encode())}",
                )
            pos = match.end()
            continue
        if char == "&":
            match = _ENTITY.match(text, pos)
            if match is None:
                raise TelegramApiError(
                    400,
                    "Bad Request: can't parse entities: Character '&' is reserved and must be escaped "
                    f"with the preceding '\\' at byte offset {len(text[:pos].encode())}",
                )
            out.append(html.unescape(match.group(0)))
            pos = match.end()
            continue
        if char == ">":
            raise TelegramApiError(400, "Bad Request: can't parse entities: unexpected end tag")
        out.append(char)
        pos += 1
    return "".join(out)


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass(slots=True)
class Call:
    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _Failure:
    status: int
    description: str
    retry_after: float | None
    skip: int = 0  # calls to let through before this failure applies


@dataclass(slots=True)
class _File:
    content: bytes
    path: str
    size: int
    unique_id: str


def api_base_url(port: int) -> str:
    """``telegram.api_base_url`` for a fake on ``port`` (this process's or another's)."""
    return f"http://127.0.0.1:{port}/bot"


def file_base_url(port: int) -> str:
    """``telegram.api_file_base_url`` for a fake on ``port``."""
    return f"http://127.0.0.1:{port}/file/bot"


class FakeTelegram:
    """See the module docstring. All state is plain attributes so tests can assert on it directly."""

    def __init__(
        self,
        token: str = "123456789:TEST-fake-token-for-tests-only-0001",
        *,
        bot_id: int = 7000001,
        bot_username: str = "TawasulTestBot",
    ) -> None:
        self.token = token
        self.bot_user = {
            "id": bot_id,
            "is_bot": True,
            "first_name": "Tawasul",
            "username": bot_username,
            "can_join_groups": False,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.calls: list[Call] = []
        self.sent: list[dict[str, Any]] = []
        self.chats: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self.callback_answers: list[dict[str, Any]] = []
        self.commands: dict[str, list[dict[str, str]]] = {}
        self.chat_actions: list[tuple[int, str]] = []
        self.webhook: dict[str, Any] | None = None
        self.updates: list[dict[str, Any]] = []  # not yet confirmed by a getUpdates offset
        self.file_download_limit = FILE_DOWNLOAD_LIMIT
        self._files: dict[str, _File] = {}
        self._failures: dict[str, list[_Failure]] = defaultdict(list)
        self._update_ids = itertools.count(100_001)
        self._message_ids: dict[int, itertools.count[int]] = defaultdict(lambda: itertools.count(1))
        self._callback_ids = itertools.count(1)
        self._new_update = asyncio.Condition()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self, port: int = 0) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        self._closing = True
        async with self._new_update:
            self._new_update.notify_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        return api_base_url(self.port)

    @property
    def file_base_url(self) -> str:
        return file_base_url(self.port)

    # ------------------------------------------------------------------ failure injection
    def fail(
        self,
        method: str,
        *,
        times: int = 1,
        status: int = 429,
        retry_after: float | None = 1,
        description: str | None = None,
        after: int = 0,
    ) -> None:
        """The next ``times`` calls of ``method`` fail (after ``after`` calls that succeed). 429 carries
        ``parameters.retry_after``; use status 500/502 for server errors, 403 "Forbidden: bot was blocked by
        the user", 400 bad requests."""
        if description is None:
            description = {
                429: f"Too Many Requests: retry after {retry_after}",
                403: "Forbidden: bot was blocked by the user",
                400: "Bad Request: chat not found",
            }.get(status, "Internal Server Error")
        for index in range(times):
            self._failures[method].append(
                _Failure(
                    status, description, retry_after if status == 429 else None, after if index == 0 else 0
                )
            )

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    # ------------------------------------------------------------------ playing the citizen
    @staticmethod
    def user(
        chat_id: int, *, first_name: str = "Citizen", language_code: str | None = "ar"
    ) -> dict[str, Any]:
        user: dict[str, Any] = {"id": chat_id, "is_bot": False, "first_name": first_name}
        if language_code:
            user["language_code"] = language_code
        return user

    def _citizen_message(self, chat_id: int, language_code: str | None, **content: Any) -> dict[str, Any]:
        user = self.user(chat_id, language_code=language_code)
        return {
            "message_id": next(self._message_ids[chat_id]),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private", "first_name": user["first_name"]},
            "from": user,
            **content,
        }

    def make_update(self, **content: Any) -> dict[str, Any]:
        return {"update_id": next(self._update_ids), **content}

    def message_update(
        self, chat_id: int, *, language_code: str | None = "ar", **content: Any
    ) -> dict[str, Any]:
        """An update with a private-chat message whose content fields are ``content`` (Bot API names)."""
        message = self._citizen_message(chat_id, language_code, **content)
        self.chats[chat_id].append(message)
        return self.make_update(message=message)

    def text_update(self, chat_id: int, text: str, *, language_code: str | None = "ar") -> dict[str, Any]:
        content: dict[str, Any] = {"text": text}
        if text.startswith("/"):
            command = text.split(" ", 1)[0]
            content["entities"] = [{"type": "bot_command", "offset": 0, "length": _utf16_len(command)}]
        return self.message_update(chat_id, language_code=language_code, **content)

    def press_update(self, chat_id: int, payload: str, *, message_id: int | None = None) -> dict[str, Any]:
        """A callback_query pressing ``payload`` on the bot message ``message_id`` (default: the latest bot
        message in the chat whose inline keyboard has that payload)."""
        message = self._keyboard_message(chat_id, payload, message_id)
        query = {
            "id": f"cbq-{next(self._callback_ids)}",
            "from": self.user(chat_id),
            "chat_instance": f"ci-{chat_id}",
            "message": json.loads(json.dumps(message)),
            "data": payload,
        }
        return self.make_update(callback_query=query)

    def _keyboard_message(self, chat_id: int, payload: str, message_id: int | None) -> dict[str, Any]:
        candidates: list[dict[str, Any]] = list(reversed(self.chats[chat_id]))
        for item in candidates:
            if item.get("from", {}).get("id") != self.bot_user["id"]:
                continue
            if message_id is not None:
                if item["message_id"] == message_id:
                    return item
                continue
            keyboard = (item.get("reply_markup") or {}).get("inline_keyboard") or []
            if any(b.get("callback_data") == payload for row in keyboard for b in row):
                return item
        raise LookupError(f"no bot message in chat {chat_id} with a button {payload!r}")

    def push_update(self, update: dict[str, Any]) -> int:
        """Queue an update for getUpdates (long polls wake up at once)."""
        self.updates.append(update)
        asyncio.get_running_loop().create_task(self._notify())
        return int(update["update_id"])

    async def _notify(self) -> None:
        async with self._new_update:
            self._new_update.notify_all()

    def user_sends(self, chat_id: int, text: str, *, language_code: str | None = "ar") -> int:
        return self.push_update(self.text_update(chat_id, text, language_code=language_code))

    def user_presses(self, chat_id: int, payload: str, *, message_id: int | None = None) -> int:
        return self.push_update(self.press_update(chat_id, payload, message_id=message_id))

    def add_file(
        self, content: bytes, *, file_size: int | None = None, suffix: str = "jpg"
    ) -> tuple[str, str]:
        """Store a downloadable file; returns (file_id, file_unique_id). ``file_size`` may claim more than
        ``content`` holds (to test size limits without big buffers)."""
        file_id = f"FILE-{uuid.uuid4().hex}"
        unique = uuid.uuid4().hex[:16]
        self._files[file_id] = _File(
            content, f"documents/{unique}.{suffix}", file_size or len(content), unique
        )
        return file_id, unique

    def photo_update(
        self, chat_id: int, content: bytes, *, caption: str | None = None, file_size: int | None = None
    ) -> dict[str, Any]:
        file_id, unique = self.add_file(content, file_size=file_size)
        size = file_size or len(content)
        photo = [
            {
                "file_id": f"{file_id}-thumb",
                "file_unique_id": f"{unique}t",
                "width": 90,
                "height": 67,
                "file_size": max(1, size // 20),
            },
            {"file_id": file_id, "file_unique_id": unique, "width": 1280, "height": 960, "file_size": size},
        ]
        content_fields: dict[str, Any] = {"photo": photo}
        if caption:
            content_fields["caption"] = caption
        return self.message_update(chat_id, **content_fields)

    def document_update(
        self,
        chat_id: int,
        content: bytes,
        *,
        file_name: str = "report.pdf",
        mime_type: str = "application/pdf",
        file_size: int | None = None,
    ) -> dict[str, Any]:
        file_id, unique = self.add_file(content, file_size=file_size, suffix=file_name.rsplit(".", 1)[-1])
        document = {
            "file_id": file_id,
            "file_unique_id": unique,
            "file_name": file_name,
            "mime_type": mime_type,
            "file_size": file_size or len(content),
        }
        return self.message_update(chat_id, document=document)

    def location_update(self, chat_id: int, latitude: float, longitude: float) -> dict[str, Any]:
        return self.message_update(chat_id, location={"latitude": latitude, "longitude": longitude})

    async def deliver_webhook(self, update: dict[str, Any], *, secret: str | None = None) -> int:
        """POST ``update`` to the registered webhook with its secret token (or ``secret``); the status."""
        import aiohttp

        if self.webhook is None:
            raise RuntimeError("no webhook registered")
        headers = {}
        token = secret if secret is not None else self.webhook.get("secret_token")
        if token:
            headers["X-Telegram-Bot-Api-Secret-Token"] = token
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.webhook["url"], json=update, headers=headers) as resp,
        ):
            return resp.status

    # ------------------------------------------------------------------ what the citizen sees
    def messages_to(self, chat_id: int) -> list[dict[str, Any]]:
        """The bot's messages in the chat, current state (edits applied)."""
        return [m for m in self.chats[chat_id] if m.get("from", {}).get("id") == self.bot_user["id"]]

    def texts_to(self, chat_id: int) -> list[str]:
        return [m.get("text", "") for m in self.messages_to(chat_id)]

    def keyboard_of(self, message: dict[str, Any]) -> list[str]:
        """Callback payloads of a message's inline keyboard ([] when it has none)."""
        keyboard = (message.get("reply_markup") or {}).get("inline_keyboard") or []
        return [b.get("callback_data") for row in keyboard for b in row]

    # ------------------------------------------------------------------ HTTP plumbing
    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                body = await request.json()
                if isinstance(body, dict):
                    params.update(body)
                return params
            form = await request.post()
            for key, value in form.items():
                params[key] = value if isinstance(value, str) else getattr(value, "file", value)
        for key in list(params):
            value = params[key]
            if key in _JSON_PARAMS and isinstance(value, str):
                try:
                    params[key] = json.loads(value)
                except ValueError:
                    pass  # "@channelname" chat ids stay strings
        return params

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        # Bot API method names are case-insensitive; calls are recorded under the documented spelling.
        method = _METHODS.get(request.match_info["method"].lower(), request.match_info["method"])
        try:
            params = await self._params(request)
        except ValueError:
            return web.json_response(
                {"ok": False, "error_code": 400, "description": "Bad Request"}, status=400
            )
        self.calls.append(Call(method, params))
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)
        failures = self._failures.get(method)
        if failures and failures[0].skip > 0:
            failures[0].skip -= 1
        elif failures:
            failure = failures.pop(0)
            body: dict[str, Any] = {
                "ok": False,
                "error_code": failure.status,
                "description": failure.description,
            }
            if failure.retry_after is not None:
                body["parameters"] = {"retry_after": failure.retry_after}
            return web.json_response(body, status=failure.status)
        try:
            result = await handler(params)
        except TelegramApiError as exc:
            error: dict[str, Any] = {"ok": False, "error_code": exc.status, "description": exc.description}
            if exc.parameters:
                error["parameters"] = exc.parameters
            return web.json_response(error, status=exc.status)
        return web.json_response({"ok": True, "result": result})

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        path = request.match_info["path"]
        for item in self._files.values():
            if item.path == path:
                return web.Response(body=item.content, content_type="application/octet-stream")
        return web.Response(status=404)

    # ------------------------------------------------------------------ methods
    async def _m_getMe(self, params: dict[str, Any]) -> Any:
        return self.bot_user

    async def _m_setWebhook(self, params: dict[str, Any]) -> Any:
        url = params.get("url")
        if not url:
            raise TelegramApiError(400, "Bad Request: bad webhook: URL is empty")
        self.webhook = {
            "url": url,
            "secret_token": params.get("secret_token"),
            "allowed_updates": params.get("allowed_updates"),
        }
        return True

    async def _m_deleteWebhook(self, params: dict[str, Any]) -> Any:
        self.webhook = None
        if params.get("drop_pending_updates"):
            self.updates.clear()
        return True

    async def _m_getWebhookInfo(self, params: dict[str, Any]) -> Any:
        return {
            "url": self.webhook["url"] if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self.updates),
        }

    async def _m_setMyCommands(self, params: dict[str, Any]) -> Any:
        commands = params.get("commands")
        if not isinstance(commands, list) or not commands:
            raise TelegramApiError(400, "Bad Request: commands must be non-empty")
        for command in commands:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", str(command.get("command", ""))):
                raise TelegramApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", ""))) <= 256:
                raise TelegramApiError(400, "Bad Request: BOT_COMMAND_DESCRIPTION_INVALID")
        self.commands[str(params.get("language_code") or "")] = commands
        return True

    async def _m_deleteMyCommands(self, params: dict[str, Any]) -> Any:
        self.commands.pop(str(params.get("language_code") or ""), None)
        return True

    async def _m_getUpdates(self, params: dict[str, Any]) -> Any:
        if self.webhook is not None:
            raise TelegramApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        timeout = float(params.get("timeout") or 0)
        if offset:  # confirms every update before it
            self.updates = [u for u in self.updates if u["update_id"] >= offset]

        def pending() -> list[dict[str, Any]]:
            return [u for u in self.updates if u["update_id"] >= offset][:limit]

        if not pending() and timeout > 0 and not self._closing:
            async with self._new_update:
                try:
                    await asyncio.wait_for(
                        self._new_update.wait_for(lambda: bool(pending()) or self._closing), timeout
                    )
                except TimeoutError:
                    pass  # long poll ended with nothing new: answer an empty result, as Telegram does
        return pending()

    def _chat(self, params: dict[str, Any]) -> int:
        chat_id = params.get("chat_id")
        if not isinstance(chat_id, int):
            raise TelegramApiError(400, "Bad Request: chat not found")
        return chat_id

    def _check_markup(self, markup: Any) -> Any:
        if markup is None:
            return None
        if not isinstance(markup, dict):
            raise TelegramApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")
        for row in markup.get("inline_keyboard") or []:
            for button in row:
                data = button.get("callback_data")
                if data is not None and not 1 <= len(str(data).encode()) <= CALLBACK_DATA_LIMIT:
                    raise TelegramApiError(400, "Bad Request: BUTTON_DATA_INVALID")
                if not button.get("text"):
                    raise TelegramApiError(
                        400, "Bad Request: text buttons are unallowed in the inline keyboard"
                    )
        return markup

    def _visible(self, params: dict[str, Any]) -> str:
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise TelegramApiError(400, "Bad Request: message text is empty")
        shown = visible_text(text, params.get("parse_mode") or None)
        if not shown.strip():
            raise TelegramApiError(400, "Bad Request: message text is empty")
        if _utf16_len(shown) > TEXT_LIMIT:
            raise TelegramApiError(400, "Bad Request: message is too long")
        return shown

    def _find(self, chat_id: int, message_id: Any) -> dict[str, Any]:
        for message in self.chats.get(chat_id, []):
            if (
                message["message_id"] == message_id
                and message.get("from", {}).get("id") == self.bot_user["id"]
            ):
                return message
        raise TelegramApiError(400, "Bad Request: message to edit not found")

    async def _m_sendMessage(self, params: dict[str, Any]) -> Any:
        chat_id = self._chat(params)
        shown = self._visible(params)
        markup = self._check_markup(params.get("reply_markup"))
        message: dict[str, Any] = {
            "message_id": next(self._message_ids[chat_id]),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private", "first_name": "Citizen"},
            "from": self.bot_user,
            "text": shown,
        }
        if markup and "inline_keyboard" in markup:  # Telegram echoes only inline keyboards
            message["reply_markup"] = markup
        self.chats[chat_id].append(message)
        self.sent.append(
            {
                "chat_id": chat_id,
                "message_id": message["message_id"],
                "text": shown,
                "raw_text": params["text"],
                "parse_mode": params.get("parse_mode"),
                "reply_markup": markup,
            }
        )
        return message

    async def _m_editMessageText(self, params: dict[str, Any]) -> Any:
        chat_id = self._chat(params)
        message = self._find(chat_id, params.get("message_id"))
        shown = self._visible(params)
        markup = self._check_markup(params.get("reply_markup"))
        if shown == message.get("text") and markup == message.get("reply_markup"):
            raise TelegramApiError(400, "Bad Request: message is not modified")
        message["text"] = shown
        if markup and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        else:
            message.pop("reply_markup", None)
        message["edit_date"] = int(time.time())
        return message

    async def _m_editMessageReplyMarkup(self, params: dict[str, Any]) -> Any:
        chat_id = self._chat(params)
        message = self._find(chat_id, params.get("message_id"))
        markup = self._check_markup(params.get("reply_markup"))
        if markup == message.get("reply_markup") or (not markup and "reply_markup" not in message):
            raise TelegramApiError(400, "Bad Request: message is not modified")
        if markup:
            message["reply_markup"] = markup
        else:
            message.pop("reply_markup", None)
        message["edit_date"] = int(time.time())
        return message

    async def _m_answerCallbackQuery(self, params: dict[str, Any]) -> Any:
        if not params.get("callback_query_id"):
            raise TelegramApiError(
                400, "Bad Request: query is too old and response timeout expired or query ID is invalid"
            )
        self.callback_answers.append(params)
        return True

    async def _m_sendChatAction(self, params: dict[str, Any]) -> Any:
        self.chat_actions.append((self._chat(params), str(params.get("action"))))
        return True

    async def _m_getFile(self, params: dict[str, Any]) -> Any:
        item = self._files.get(str(params.get("file_id")))
        if item is None:
            raise TelegramApiError(400, "Bad Request: invalid file_id")
        if item.size > self.file_download_limit:
            raise TelegramApiError(400, "Bad Request: file is too big")
        return {
            "file_id": params["file_id"],
            "file_unique_id": item.unique_id,
            "file_size": item.size,
            "file_path": item.path,
        }


_METHODS = {name[3:].lower(): name[3:] for name in dir(FakeTelegram) if name.startswith("_m_")}
