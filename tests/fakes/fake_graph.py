"""A fake WhatsApp Cloud API (Graph API) server (aiohttp, 127.0.0.1) for tests, plus a signed webhook sender.

Endpoints (Bearer ``access_token`` required, else Graph's OAuth error 190):

* ``POST /{version}/{phone_number_id}/messages``: text, interactive (button, list,
  location_request_message), template, and read receipts (``{"status": "read", "message_id": ...}``).
  Bodies are checked against the documented limits (text 4096; interactive body 1024; at most 3 reply
  buttons with titles of 20; at most 10 list rows with titles of 24, descriptions of 72, ids of 200; list
  button label 20) and refused with error 131009 like the real API. Answers
  ``{"messaging_product": "whatsapp", "contacts": [...], "messages": [{"id": "wamid...."}]}``.
* ``GET /{version}/{media_id}``: ``{"url", "mime_type", "sha256", "file_size", "id"}``.
* ``GET /media/{media_id}``: the bytes (the "url" above), Bearer required as on lookaside.fbsbx.com.

Errors look like Graph's: ``{"error": {"message", "type": "OAuthException", "code", "error_data":
{"messaging_product": "whatsapp", "details"}, "fbtrace_id"}}``. ``fail(times, code=130429)`` injects
throughput errors, ``fail(code=131026)`` undeliverable, ``fail(http_status=503, code=None)`` server errors.
With ``enforce_window = True`` free-form messages to a citizen whose ``last_inbound`` is older than 24 h (or
unknown) fail with 131047, as the real API does; templates always pass.

Playing the citizen (``app_url`` is the bot's webhook URL)::

    async with FakeGraph() as wa:
        settings = WhatsAppSettings(access_token=SecretStr(wa.access_token),
                                    phone_number_id=wa.phone_number_id,
                                    app_secret=SecretStr(wa.app_secret), verify_token=SecretStr("v"),
                                    api_base_url=wa.base_url, api_version=wa.api_version)
        await wa.user_sends(app_url, "97333333333", "مرحبا")     # signed POST; returns HTTP status
        await wa.user_presses(app_url, "97333333333", "confirm")  # button_reply / list_reply of the menu
        wa.messages_to("97333333333")                              # accepted payloads, in order

Builders (``text_message``, ``button_reply``, ``list_reply``, ``media_message``, ``location_message``,
``status_update``, ``webhook``) return the documented webhook bodies; ``deliver`` signs and posts them.
State for assertions: ``requests`` (method, path, JSON body), ``sent`` (accepted message payloads with their
``wamid``), ``reads`` (wamids marked read), ``media``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import aiohttp
from aiohttp import web


@dataclass(slots=True)
class GraphRequest:
    method: str
    path: str
    body: Any
    at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _Failure:
    http_status: int
    code: int | None
    message: str


class GraphApiError(Exception):
    def __init__(self, code: int, message: str, http_status: int = 400, details: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status
        self.details = details or message


def _error_body(code: int | None, message: str, details: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {
        "message": message,
        "type": "OAuthException",
        "fbtrace_id": uuid.uuid4().hex[:20],
    }
    if code is not None:
        error["code"] = code
        error["error_data"] = {"messaging_product": "whatsapp", "details": details or message}
    return {"error": error}


_ERROR_MESSAGES = {
    130429: "(#130429) Rate limit hit",
    131056: "(#131056) (Business Account, Consumer Account) pair rate limit hit",
    131026: "(#131026) Message undeliverable",
    131047: "(#131047) Re-engagement message",
    131000: "(#131000) Something went wrong",
    131009: "(#131009) Parameter value is not valid",
    190: "Error validating access token",
}


class FakeGraph:
    """See the module docstring."""

    def __init__(
        self,
        *,
        access_token: str = "EAAtest-fake-access-token",
        phone_number_id: str = "109876543210",
        api_version: str = "v21.0",
        app_secret: str = "fake-app-secret",
        display_phone_number: str = "97317000000",
    ) -> None:
        self.access_token = access_token
        self.phone_number_id = phone_number_id
        self.api_version = api_version
        self.app_secret = app_secret
        self.display_phone_number = display_phone_number
        self.requests: list[GraphRequest] = []
        self.sent: list[dict[str, Any]] = []
        self.reads: list[str] = []
        self.media: dict[str, tuple[bytes, str, int]] = {}
        self.enforce_window = False
        self.last_inbound: dict[str, dt.datetime] = {}
        self._failures: list[_Failure] = []
        self._wamids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self, port: int = 0) -> Self:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/{version}/{phone}/messages", self._messages)
        app.router.add_get("/media/{media_id}", self._download)
        app.router.add_get("/{version}/{media_id}", self._media_info)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ injection and state
    def fail(
        self,
        *,
        times: int = 1,
        code: int | None = 130429,
        http_status: int | None = None,
        message: str | None = None,
    ) -> None:
        """The next ``times`` POSTs to /messages fail with Graph error ``code`` (None: no code, e.g. a bare
        5xx). ``http_status`` defaults to 400 (Graph's usual) or 500 when ``code`` is None."""
        status = http_status or (400 if code is not None else 500)
        text = message or _ERROR_MESSAGES.get(code or 0, "Service temporarily unavailable")
        self._failures.extend(_Failure(status, code, text) for _ in range(times))

    def add_media(
        self, content: bytes, mime_type: str = "image/jpeg", *, declared_size: int | None = None
    ) -> str:
        """Store media a citizen "sent"; returns its media id. ``declared_size`` may claim more than
        ``content`` holds (to test size limits without big buffers)."""
        media_id = str(900_000_000_000 + len(self.media) + 1)
        self.media[media_id] = (
            content,
            mime_type,
            declared_size if declared_size is not None else len(content),
        )
        return media_id

    def messages_to(self, wa_id: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("to") == wa_id]

    @staticmethod
    def text_of(payload: Mapping[str, Any]) -> str:
        """The text a citizen reads in an accepted payload (body of text/interactive, template name)."""
        kind = payload.get("type")
        if kind == "text":
            return str(payload["text"]["body"])
        if kind == "interactive":
            return str(payload["interactive"]["body"]["text"])
        if kind == "template":
            return f"[template {payload['template']['name']}]"
        return ""

    @staticmethod
    def choices_of(payload: Mapping[str, Any]) -> list[str]:
        """Reply-button or list-row ids of an interactive payload."""
        if payload.get("type") != "interactive":
            return []
        interactive = payload["interactive"]
        if interactive["type"] == "button":
            return [b["reply"]["id"] for b in interactive["action"]["buttons"]]
        if interactive["type"] == "list":
            return [r["id"] for s in interactive["action"]["sections"] for r in s["rows"]]
        return []

    # ------------------------------------------------------------------ webhook bodies (Meta's format)
    def webhook(
        self,
        *,
        messages: list[dict[str, Any]] | None = None,
        statuses: list[dict[str, Any]] | None = None,
        contacts: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        value: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "metadata": {
                "display_phone_number": self.display_phone_number,
                "phone_number_id": self.phone_number_id,
            },
        }
        if contacts:
            value["contacts"] = contacts
        if messages:
            value["messages"] = messages
        if statuses:
            value["statuses"] = statuses
        return {
            "object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}],
        }

    def new_wamid(self) -> str:
        return f"wamid.HBgLOTczMzMzMzMzMzMVAgASGBQz{next(self._wamids):012d}AA=="

    def _message(
        self, wa_id: str, kind: str, content: dict[str, Any], *, wamid: str | None = None
    ) -> dict[str, Any]:
        return {
            "from": wa_id,
            "id": wamid or self.new_wamid(),
            "timestamp": str(int(time.time())),
            "type": kind,
            **content,
        }

    def _envelope(self, wa_id: str, message: dict[str, Any], name: str) -> dict[str, Any]:
        return self.webhook(messages=[message], contacts=[{"profile": {"name": name}, "wa_id": wa_id}])

    def text_message(
        self, wa_id: str, body: str, *, wamid: str | None = None, name: str = "Citizen"
    ) -> dict[str, Any]:
        return self._envelope(
            wa_id, self._message(wa_id, "text", {"text": {"body": body}}, wamid=wamid), name
        )

    def button_reply(
        self, wa_id: str, reply_id: str, title: str, *, context: str | None = None
    ) -> dict[str, Any]:
        content: dict[str, Any] = {
            "interactive": {"type": "button_reply", "button_reply": {"id": reply_id, "title": title}}
        }
        if context:
            content["context"] = {"from": self.display_phone_number, "id": context}
        return self._envelope(wa_id, self._message(wa_id, "interactive", content), "Citizen")

    def list_reply(
        self, wa_id: str, row_id: str, title: str, *, context: str | None = None
    ) -> dict[str, Any]:
        content: dict[str, Any] = {
            "interactive": {"type": "list_reply", "list_reply": {"id": row_id, "title": title}}
        }
        if context:
            content["context"] = {"from": self.display_phone_number, "id": context}
        return self._envelope(wa_id, self._message(wa_id, "interactive", content), "Citizen")

    def media_message(
        self,
        wa_id: str,
        kind: str,
        media_id: str,
        *,
        caption: str | None = None,
        filename: str | None = None,
        voice: bool = False,
    ) -> dict[str, Any]:
        content, mime, _ = self.media[media_id]
        media: dict[str, Any] = {
            "mime_type": mime,
            "sha256": hashlib.sha256(content).hexdigest(),
            "id": media_id,
        }
        if caption:
            media["caption"] = caption
        if filename:
            media["filename"] = filename
        if kind == "audio":
            media["voice"] = voice
        return self._envelope(wa_id, self._message(wa_id, kind, {kind: media}), "Citizen")

    def location_message(
        self,
        wa_id: str,
        latitude: float,
        longitude: float,
        *,
        name: str | None = None,
        address: str | None = None,
    ) -> dict[str, Any]:
        location: dict[str, Any] = {"latitude": latitude, "longitude": longitude}
        if name:
            location["name"] = name
        if address:
            location["address"] = address
        return self._envelope(wa_id, self._message(wa_id, "location", {"location": location}), "Citizen")

    def status_update(
        self, wamid: str, recipient_id: str, status: str, *, errors: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": wamid,
            "status": status,
            "timestamp": str(int(time.time())),
            "recipient_id": recipient_id,
        }
        if errors:
            item["errors"] = errors
        return self.webhook(statuses=[item])

    def sign(self, body: bytes) -> str:
        return "sha256=" + hmac.new(self.app_secret.encode(), body, hashlib.sha256).hexdigest()

    async def deliver(
        self,
        url: str,
        payload: Mapping[str, Any] | bytes,
        *,
        signature: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> int:
        """POST a webhook body to the bot signed with the app secret (or with ``signature``); the status.
        Records the citizen's last inbound time for ``enforce_window``."""
        raw = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
        if isinstance(payload, Mapping):
            for entry in payload.get("entry", []):
                for change in entry.get("changes", []):
                    for message in change.get("value", {}).get("messages", []):
                        self.last_inbound[message["from"]] = dt.datetime.now(dt.UTC)
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature or self.sign(raw)}
        if session is not None:
            async with session.post(url, data=raw, headers=headers) as resp:
                return resp.status
        async with aiohttp.ClientSession() as own, own.post(url, data=raw, headers=headers) as resp:
            return resp.status

    async def user_sends(self, url: str, wa_id: str, text: str) -> int:
        return await self.deliver(url, self.text_message(wa_id, text))

    async def user_presses(self, url: str, wa_id: str, choice_id: str) -> int:
        """Press ``choice_id`` on the latest interactive message to ``wa_id`` that offers it."""
        for payload in reversed(self.messages_to(wa_id)):
            if choice_id not in self.choices_of(payload):
                continue
            interactive = payload["interactive"]
            if interactive["type"] == "button":
                title = next(
                    b["reply"]["title"]
                    for b in interactive["action"]["buttons"]
                    if b["reply"]["id"] == choice_id
                )
                return await self.deliver(
                    url, self.button_reply(wa_id, choice_id, title, context=payload["wamid"])
                )
            title = next(
                r["title"]
                for s in interactive["action"]["sections"]
                for r in s["rows"]
                if r["id"] == choice_id
            )
            return await self.deliver(url, self.list_reply(wa_id, choice_id, title, context=payload["wamid"]))
        raise LookupError(f"no interactive message to {wa_id} offers {choice_id!r}")

    # ------------------------------------------------------------------ HTTP plumbing
    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.access_token}"

    @staticmethod
    def _error(exc: GraphApiError) -> web.Response:
        return web.json_response(_error_body(exc.code, exc.message, exc.details), status=exc.http_status)

    async def _messages(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        self.requests.append(GraphRequest("POST", request.path, body))
        if not self._authorised(request):
            return self._error(GraphApiError(190, _ERROR_MESSAGES[190], 401))
        if (
            request.match_info["version"] != self.api_version
            or request.match_info["phone"] != self.phone_number_id
        ):
            return self._error(GraphApiError(100, "Unsupported post request. Object does not exist", 400))
        if self._failures:
            failure = self._failures.pop(0)
            return web.json_response(_error_body(failure.code, failure.message), status=failure.http_status)
        try:
            if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
                raise GraphApiError(100, "(#100) The parameter messaging_product is required.")
            if body.get("status") == "read":
                if not body.get("message_id"):
                    raise GraphApiError(100, "(#100) The parameter message_id is required.")
                self.reads.append(str(body["message_id"]))
                return web.json_response({"success": True})
            _validate(body)
            to = str(body["to"])
            if self.enforce_window and body["type"] != "template":
                last = self.last_inbound.get(to)
                if last is None or dt.datetime.now(dt.UTC) - last > dt.timedelta(hours=24):
                    raise GraphApiError(
                        131047,
                        _ERROR_MESSAGES[131047],
                        details="Message failed to send because more than 24 hours have passed "
                        "since the customer last replied to this number.",
                    )
        except GraphApiError as exc:
            return self._error(exc)
        wamid = self.new_wamid()
        self.sent.append({**body, "wamid": wamid})
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to}],
                "messages": [{"id": wamid}],
            }
        )

    async def _media_info(self, request: web.Request) -> web.Response:
        self.requests.append(GraphRequest("GET", request.path, None))
        if not self._authorised(request):
            return self._error(GraphApiError(190, _ERROR_MESSAGES[190], 401))
        media_id = request.match_info["media_id"]
        if request.match_info["version"] != self.api_version or media_id not in self.media:
            return self._error(GraphApiError(100, "(#100) Invalid parameter", 400))
        content, mime, size = self.media[media_id]
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "url": f"{self.base_url}/media/{media_id}",
                "mime_type": mime,
                "sha256": hashlib.sha256(content).hexdigest(),
                "file_size": str(size),
                "id": media_id,
            }
        )

    async def _download(self, request: web.Request) -> web.Response:
        self.requests.append(GraphRequest("GET", request.path, None))
        if not self._authorised(request):
            return web.Response(status=401)
        item = self.media.get(request.match_info["media_id"])
        if item is None:
            return web.Response(status=404)
        return web.Response(body=item[0], content_type=item[1])


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise GraphApiError(131009, _ERROR_MESSAGES[131009], details=what)


def _validate(body: dict[str, Any]) -> None:
    kind = body.get("type", "text")
    _check(isinstance(body.get("to"), str) and bool(body["to"]), "to is required")
    content = body.get(kind)
    if not isinstance(content, dict):
        raise GraphApiError(131009, _ERROR_MESSAGES[131009], details=f"{kind} object is required")
    if kind == "text":
        text = content.get("body")
        _check(isinstance(text, str) and 0 < len(text) <= 4096, "text.body must be 1-4096 characters")
    elif kind == "interactive":
        _validate_interactive(content)
    elif kind == "template":
        _check(bool(content.get("name")), "template.name is required")
        _check(bool((content.get("language") or {}).get("code")), "template.language.code is required")
        for component in content.get("components") or []:
            for parameter in component.get("parameters") or []:
                _check(
                    parameter.get("type") == "text" and bool(parameter.get("text")),
                    "template parameters need type text and non-empty text",
                )
    else:
        raise GraphApiError(
            131009, _ERROR_MESSAGES[131009], details=f"type {kind} not supported by this fake"
        )


def _validate_interactive(interactive: dict[str, Any]) -> None:
    body = (interactive.get("body") or {}).get("text")
    _check(isinstance(body, str) and 0 < len(body) <= 1024, "interactive body must be 1-1024 characters")
    kind = interactive.get("type")
    action = interactive.get("action") or {}
    if kind == "button":
        buttons = action.get("buttons") or []
        _check(1 <= len(buttons) <= 3, "1-3 reply buttons")
        ids = [b.get("reply", {}).get("id") for b in buttons]
        _check(len(set(ids)) == len(ids), "reply button ids must be unique")
        for button in buttons:
            reply = button.get("reply") or {}
            _check(button.get("type") == "reply", "button type must be reply")
            _check(0 < len(str(reply.get("title", ""))) <= 20, "button title must be 1-20 characters")
            _check(0 < len(str(reply.get("id", ""))) <= 256, "button id must be 1-256 characters")
    elif kind == "list":
        _check(0 < len(str(action.get("button", ""))) <= 20, "list button label must be 1-20 characters")
        sections = action.get("sections") or []
        _check(1 <= len(sections) <= 10, "1-10 sections")
        rows = [r for s in sections for r in s.get("rows") or []]
        _check(1 <= len(rows) <= 10, "1-10 rows in all")
        ids = [r.get("id") for r in rows]
        _check(len(set(ids)) == len(ids), "row ids must be unique")
        for row in rows:
            _check(0 < len(str(row.get("title", ""))) <= 24, "row title must be 1-24 characters")
            _check(0 < len(str(row.get("id", ""))) <= 200, "row id must be 1-200 characters")
            _check(
                len(str(row.get("description", ""))) <= 72, "row description must be at most 72 characters"
            )
    elif kind == "location_request_message":
        _check(action.get("name") == "send_location", "action.name must be send_location")
    else:
        raise GraphApiError(
            131009, _ERROR_MESSAGES[131009], details=f"interactive {kind} not supported by this fake"
        )
