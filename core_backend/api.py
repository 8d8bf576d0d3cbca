"""HTTP layer of the reference backend: routes, bearer tokens, request parsing, JSON errors.

Handlers stay small: parse, call ``CaseService``, serialise. Every refusal leaves as
``{"error": {"code", "message", "details"}}`` (the error middleware also covers aiohttp's own 404/405/413),
and nothing a client sends can produce a 500.
"""

from __future__ import annotations

import hmac
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from backend_client.models import (
    AgencyId,
    AttachmentKind,
    AttachmentLink,
    CaseCreate,
    CaseStatus,
    ChannelName,
    ChannelUserId,
    Health,
    InfoRequest,
    RatingCreate,
    ReopenRequest,
    ReplyCreate,
    StatusUpdate,
    TransferRequest,
    attachment_kind_for,
    is_allowed_mime,
)
from config.settings import BackendSettings
from core_backend.service import ApiError, CaseService

log = logging.getLogger(__name__)

SPEC_PATH = Path(__file__).resolve().parent.parent / "backend_client" / "openapi.yaml"
JSON_BODY_LIMIT = 256 * 1024
# JavaScript's largest safe integer: fits a BIGINT and any JSON consumer.
MAX_SAFE_INT = 2**53 - 1
_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{8,128}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Role = Literal["service", "staff"]
SERVICE_KEY = web.AppKey("service", CaseService)
TOKENS_KEY = web.AppKey("tokens", dict)
LIMITS_KEY = web.AppKey("max_attachment_bytes", int)
_M = TypeVar("_M", bound=BaseModel)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
}


def error_response(
    status: int, code: str, message: str, details: list[dict[str, str]] | None = None
) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": details or []}}
    return web.json_response(body, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.code, exc.message, exc.details)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif exc.status == 405:
            allowed = exc.headers.get("Allow", "")
            message = f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
        elif exc.status == 413:
            message = "request body is too large"
        else:
            message = exc.reason
        response = error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"), message)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        # Path only: query strings can carry a citizen's channel identity.
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; the incident was logged")


class PrivacyAccessLogger(AbstractAccessLogger):
    """Method, path, status and time; never the query string (it may name a citizen)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.1fms", request.method, request.path, response.status, time * 1000)


# --- auth -----------------------------------------------------------------------------------------


def _authorise(request: web.Request, roles: tuple[Role, ...]) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)")
    presented = token.strip().encode("utf-8", "replace")
    tokens: dict[Role, bytes] = request.app[TOKENS_KEY]
    role = next((r for r, t in tokens.items() if hmac.compare_digest(presented, t)), None)
    if role is None:
        raise ApiError(401, "unauthorized", "invalid bearer token")
    if role not in roles:
        needed = " or ".join(f"the {r} token" for r in roles)
        raise ApiError(403, "forbidden", f"this action needs {needed}")


def requires(*roles: Role) -> Callable[[Handler], Handler]:
    def wrap(handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            _authorise(request, roles)
            return await handler(request)

        return checked

    return wrap


# --- request parsing ------------------------------------------------------------------------------


def validation_error(exc: ValidationError, where: str = "body") -> ApiError:
    errors = exc.errors(include_url=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        reason = next(e["msg"] for e in errors if e["type"] == "json_invalid")
        return ApiError(400, "bad_json", f"request body is not valid JSON ({reason})")
    details = [{"loc": ".".join(str(p) for p in e["loc"]) or where, "message": e["msg"]} for e in errors]
    summary = "; ".join(f"{d['loc']}: {d['message']}" for d in details[:3])
    more = f" (and {len(details) - 3} more)" if len(details) > 3 else ""
    return ApiError(422, "invalid", f"invalid {where}: {summary}{more}", details)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes without reading them all."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"body is larger than the limit of {limit} bytes")
    data = bytearray()
    async for chunk in request.content.iter_any():
        data += chunk
        if len(data) > limit:
            raise ApiError(413, "payload_too_large", f"body is larger than the limit of {limit} bytes")
    return bytes(data)


async def read_json(request: web.Request, model: type[_M]) -> _M:
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", f"send the body as application/json, not {ctype}")
    body = await read_body(request, JSON_BODY_LIMIT)
    if not body.strip():
        raise ApiError(400, "bad_json", "request body is empty; expected a JSON object")
    try:
        # strict: on the wire "3" is not an integer and 1 is not true.
        return model.model_validate_json(body, strict=True)
    except ValidationError as exc:
        raise validation_error(exc) from None


def read_query(request: web.Request, model: type[_M]) -> _M:
    # First value of each parameter; unknown parameters are ignored, like most HTTP APIs do.
    params = {key: request.query.getone(key) for key in request.query}
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise validation_error(exc, "query") from None


class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CaseQuery(_Query):
    channel: ChannelName | None = None
    channel_user_id: ChannelUserId | None = None
    status: CaseStatus | None = None
    agency: AgencyId | None = None
    limit: int = Field(20, ge=1, le=100)
    offset: int = Field(0, ge=0, le=MAX_SAFE_INT)

    @model_validator(mode="after")
    def _pair(self) -> CaseQuery:
        if (self.channel is None) != (self.channel_user_id is None):
            raise ValueError("channel and channel_user_id go together")
        return self


class EventQuery(_Query):
    after: int = Field(0, ge=0, le=MAX_SAFE_INT)
    limit: int = Field(100, ge=1, le=500)


class UploadQuery(_Query):
    filename: str | None = Field(None, min_length=1, max_length=255)
    kind: AttachmentKind | None = None


def _service(request: web.Request) -> CaseService:
    return request.app[SERVICE_KEY]


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        body=model.model_dump_json().encode("utf-8"), status=status, content_type="application/json"
    )


def _ref(request: web.Request) -> str:
    return request.match_info["reference"]


# --- handlers -------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    try:
        await _service(request).ping()
    except Exception:
        log.exception("health check: database unreachable")
        return _json(Health(status="degraded", database="unreachable"), 503)
    return _json(Health(status="ok", database="ok"))


async def openapi_spec(request: web.Request) -> web.Response:
    return web.Response(body=SPEC_PATH.read_bytes(), content_type="application/yaml")


@requires("service")
async def upload_attachment(request: web.Request) -> web.Response:
    query = read_query(request, UploadQuery)
    mime = request.content_type
    if not is_allowed_mime(mime):
        raise ApiError(415, "unsupported_media_type", f"attachments of type {mime} are not accepted")
    filename = None
    if query.filename is not None:
        # Keep the last path segment and no control characters: it ends up in a Content-Disposition.
        filename = _CONTROL.sub("", query.filename.replace("\\", "/").rsplit("/", 1)[-1])[:255] or None
    data = await read_body(request, request.app[LIMITS_KEY])
    if not data:
        raise ApiError(422, "empty_attachment", "attachment is empty")
    ref = await _service(request).store_attachment(
        data, mime, filename, query.kind or attachment_kind_for(mime)
    )
    return _json(ref, 201)


@requires("service", "staff")
async def download_attachment(request: web.Request) -> web.Response:
    stored = await _service(request).get_attachment(request.match_info["attachment_id"])
    headers = {"X-Content-Type-Options": "nosniff"}
    if stored.ref.filename:
        quoted = urllib.parse.quote(stored.ref.filename, safe="")
        headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quoted}"
    return web.Response(body=stored.data, content_type=stored.ref.mime_type, headers=headers)


@requires("service")
async def create_case(request: web.Request) -> web.Response:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        raise ApiError(400, "missing_idempotency_key", "POST /cases needs an Idempotency-Key header")
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(
            400, "bad_idempotency_key", "Idempotency-Key must be 8-128 characters of A-Z a-z 0-9 . _ : -"
        )
    data = await read_json(request, CaseCreate)
    case, created = await _service(request).create_case(data, key)
    return _json(case, 201 if created else 200)


@requires("service", "staff")
async def list_cases(request: web.Request) -> web.Response:
    from backend_client.models import CaseList

    q = read_query(request, CaseQuery)
    cases = await _service(request).list_cases(
        channel=q.channel,
        channel_user_id=q.channel_user_id,
        status=q.status,
        agency=q.agency,
        limit=q.limit,
        offset=q.offset,
    )
    return _json(CaseList(cases=cases))


@requires("service", "staff")
async def get_case(request: web.Request) -> web.Response:
    return _json(await _service(request).get_case(_ref(request)))


@requires("service")
async def add_reply(request: web.Request) -> web.Response:
    body = await read_json(request, ReplyCreate)
    return _json(await _service(request).add_reply(_ref(request), body))


@requires("service")
async def link_attachments(request: web.Request) -> web.Response:
    body = await read_json(request, AttachmentLink)
    return _json(await _service(request).link_attachments(_ref(request), body.attachment_ids))


@requires("service")
async def rate_case(request: web.Request) -> web.Response:
    body = await read_json(request, RatingCreate)
    return _json(await _service(request).rate(_ref(request), body))


@requires("service")
async def reopen_case(request: web.Request) -> web.Response:
    body = await read_json(request, ReopenRequest)
    return _json(await _service(request).reopen(_ref(request), body.reason))


@requires("staff")
async def set_status(request: web.Request) -> web.Response:
    body = await read_json(request, StatusUpdate)
    return _json(await _service(request).set_status(_ref(request), body))


@requires("staff")
async def transfer_case(request: web.Request) -> web.Response:
    body = await read_json(request, TransferRequest)
    return _json(await _service(request).transfer(_ref(request), body))


@requires("staff")
async def request_info(request: web.Request) -> web.Response:
    body = await read_json(request, InfoRequest)
    return _json(await _service(request).request_info(_ref(request), body.question))


@requires("service", "staff")
async def list_events(request: web.Request) -> web.Response:
    q = read_query(request, EventQuery)
    return _json(await _service(request).events_after(q.after, q.limit))


ROUTES: tuple[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...] = (
    ("GET", "/healthz", healthz),
    ("GET", "/openapi.yaml", openapi_spec),
    ("POST", "/attachments", upload_attachment),
    ("GET", "/attachments/{attachment_id}", download_attachment),
    ("POST", "/cases", create_case),
    ("GET", "/cases", list_cases),
    ("GET", "/cases/{reference}", get_case),
    ("POST", "/cases/{reference}/replies", add_reply),
    ("POST", "/cases/{reference}/attachments", link_attachments),
    ("POST", "/cases/{reference}/rating", rate_case),
    ("POST", "/cases/{reference}/reopen", reopen_case),
    ("POST", "/cases/{reference}/status", set_status),
    ("POST", "/cases/{reference}/transfer", transfer_case),
    ("POST", "/cases/{reference}/request-info", request_info),
    ("GET", "/events", list_events),
)


def install(app: web.Application, service: CaseService, settings: BackendSettings) -> None:
    """Add the API's routes, error handling and tokens to ``app`` (``core_backend.app.create_app``)."""
    app.middlewares.append(error_middleware)
    app[SERVICE_KEY] = service
    tokens: dict[Any, Any] = {
        "service": settings.service_token.get_secret_value().encode("utf-8"),
        "staff": settings.staff_token.get_secret_value().encode("utf-8"),
    }
    app[TOKENS_KEY] = tokens
    app[LIMITS_KEY] = settings.max_attachment_bytes
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
