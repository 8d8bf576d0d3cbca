"""Async client of the core case-management API (``openapi.yaml``).

One ``aiohttp.ClientSession`` per client (pass your own to share it). Every call goes through
``_request``, the single place where HTTP outcomes become typed models or ``backend_client.errors``.
Only safe calls (GET) and creates carrying an ``Idempotency-Key`` are retried, with exponential backoff
and full jitter; a retried create can never file a second case because the backend dedups on the key.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from backend_client.errors import (
    BackendError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    InvalidRequest,
    rejection_for,
)
from backend_client.models import (
    AttachmentKind,
    AttachmentLink,
    AttachmentRef,
    Case,
    CaseCreate,
    CaseList,
    CaseStatus,
    EventPage,
    Health,
    InfoRequest,
    RatingCreate,
    ReopenRequest,
    ReplyCreate,
    StatusUpdate,
    TransferRequest,
)

if TYPE_CHECKING:
    from config.settings import BackendSettings

__all__ = ["IDEMPOTENCY_HEADER", "BackendClient"]

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{8,128}")
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_M = TypeVar("_M", bound=BaseModel)
Role = Literal["service", "staff"]


class BackendClient:
    """``async with BackendClient(url, token) as backend: case = await backend.get_case(ref)``."""

    def __init__(
        self,
        base_url: str,
        service_token: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 10.0,
        retries: int = 3,
        staff_token: str | None = None,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 5.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._tokens: dict[Role, str | None] = {"service": service_token, "staff": staff_token}
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._retries = retries
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s

    @classmethod
    def from_settings(
        cls,
        settings: BackendSettings,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> BackendClient:
        """From ``settings.backend``; ``base_url`` overrides ``settings.url`` (the embedded backend's URL)."""
        return cls(
            base_url or settings.url,
            settings.service_token.get_secret_value(),
            session=session,
            timeout_s=settings.timeout_s,
            retries=settings.retries,
            staff_token=settings.staff_token.get_secret_value(),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    # --- citizen side (service token) ------------------------------------------------------------

    async def create_case(self, case: CaseCreate, idempotency_key: str) -> Case:
        """File a case. Reusing ``idempotency_key`` returns the case filed first, never a second one
        (so this call is retried); the same key with a different body raises ``InvalidRequest``."""
        if not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise InvalidRequest(
                422, "invalid_argument", "idempotency_key must be 8-128 characters of A-Z a-z 0-9 . _ : -"
            )
        return await self._call(
            "POST", "/cases", Case, json=case, headers={IDEMPOTENCY_HEADER: idempotency_key}, retry=True
        )

    async def get_case(self, reference: str) -> Case:
        return await self._call("GET", f"/cases/{_seg(reference)}", Case, retry=True, role="any")

    async def list_cases(
        self,
        channel: str,
        channel_user_id: str,
        *,
        status: CaseStatus | str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> list[Case]:
        """One citizen's cases, newest first."""
        return await self._list(
            "service",
            channel=channel,
            channel_user_id=channel_user_id,
            status=status,
            limit=limit,
            offset=offset,
        )

    async def add_reply(self, reference: str, text: str | None, attachment_ids: Sequence[str] = ()) -> Case:
        """The citizen's reply; answers the question of a ``more_info_requested`` case (-> ``in_progress``)."""
        body = _build(ReplyCreate, text=text, attachment_ids=list(attachment_ids))
        return await self._call("POST", f"/cases/{_seg(reference)}/replies", Case, json=body)

    async def add_attachment(self, reference: str, attachment_id: str | Sequence[str]) -> Case:
        """Link uploaded attachment(s) to a case."""
        ids = [attachment_id] if isinstance(attachment_id, str) else list(attachment_id)
        body = _build(AttachmentLink, attachment_ids=ids)
        return await self._call("POST", f"/cases/{_seg(reference)}/attachments", Case, json=body)

    async def upload_attachment(
        self,
        data: bytes,
        mime_type: str,
        filename: str | None = None,
        kind: AttachmentKind | str | None = None,
    ) -> AttachmentRef:
        """Store a file; link it with ``CaseCreate.attachment_ids``, ``add_reply`` or ``add_attachment``."""
        if "\n" in mime_type or "\r" in mime_type or "/" not in mime_type:
            raise InvalidRequest(422, "invalid_argument", f"not a MIME type: {mime_type[:80]!r}")
        params = {"filename": filename, "kind": AttachmentKind(kind) if kind is not None else None}
        return await self._call(
            "POST",
            "/attachments",
            AttachmentRef,
            data=data,
            params=params,
            headers={"Content-Type": mime_type},
        )

    async def download_attachment(self, attachment_id: str) -> bytes:
        return await self._request("GET", f"/attachments/{_seg(attachment_id)}", retry=True, role="any")

    async def rate(self, reference: str, score: int, comment: str | None = None) -> Case:
        body = _build(RatingCreate, score=score, comment=comment)
        return await self._call("POST", f"/cases/{_seg(reference)}/rating", Case, json=body)

    async def reopen(self, reference: str, reason: str) -> Case:
        body = _build(ReopenRequest, reason=reason)
        return await self._call("POST", f"/cases/{_seg(reference)}/reopen", Case, json=body)

    async def events_after(self, after: int, limit: int = 100) -> EventPage:
        """Status events with ``sequence > after``, oldest first (see ``webhooks.poll_events``)."""
        params = {"after": after, "limit": limit}
        return await self._call("GET", "/events", EventPage, params=params, retry=True, role="any")

    async def health(self) -> Health:
        return await self._call("GET", "/healthz", Health, retry=True, role=None)

    # --- staff side (staff token) ----------------------------------------------------------------

    async def list_all_cases(
        self,
        *,
        status: CaseStatus | str | None = None,
        agency: str | None = None,
        channel: str | None = None,
        channel_user_id: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> list[Case]:
        """Any cases (staff), newest first, optionally filtered."""
        return await self._list(
            "staff",
            status=status,
            agency=agency,
            channel=channel,
            channel_user_id=channel_user_id,
            limit=limit,
            offset=offset,
        )

    async def set_status(self, reference: str, status: CaseStatus | str, note: str | None = None) -> Case:
        """Move a case along; ``note`` is public (required for ``answered``)."""
        body = _build(StatusUpdate, status=status, note=note)
        return await self._call("POST", f"/cases/{_seg(reference)}/status", Case, json=body, role="staff")

    async def transfer(self, reference: str, agency: str, note: str | None = None) -> Case:
        body = _build(TransferRequest, agency=agency, note=note)
        return await self._call("POST", f"/cases/{_seg(reference)}/transfer", Case, json=body, role="staff")

    async def request_info(self, reference: str, question: str) -> Case:
        body = _build(InfoRequest, question=question)
        return await self._call(
            "POST", f"/cases/{_seg(reference)}/request-info", Case, json=body, role="staff"
        )

    async def _list(self, role: Role, **params: Any) -> list[Case]:
        if params.get("status") is not None:
            params["status"] = _build_status(params["status"])
        page = await self._call("GET", "/cases", CaseList, params=params, retry=True, role=role)
        return page.cases

    # --- the one boundary ------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        model: type[_M],
        *,
        json: BaseModel | None = None,
        data: bytes | None = None,
        params: Mapping[str, object | None] | None = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = False,
        role: Role | Literal["any"] | None = "service",
    ) -> _M:
        raw = await self._request(
            method, path, json=json, data=data, params=params, headers=headers, retry=retry, role=role
        )
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise BackendProtocolError(
                f"{method} {path}: unexpected answer ({exc.error_count()} errors)"
            ) from exc

    def _auth(self, role: Role | Literal["any"] | None) -> dict[str, str]:
        if role is None:
            return {}
        if role == "any":  # reads accept either token; staff tools have only the staff one
            token = self._tokens["service"] or self._tokens["staff"]
        else:
            token = self._tokens[role]
        if not token:
            raise BackendError(f"no {role} token configured for this client")
        return {"Authorization": f"Bearer {token}"}

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: BaseModel | None = None,
        data: bytes | None = None,
        params: Mapping[str, object | None] | None = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = False,
        role: Role | Literal["any"] | None = "service",
    ) -> bytes:
        url = self.base_url + path
        all_headers = {**self._auth(role), **(headers or {})}
        if json is not None:
            data = json.model_dump_json(exclude_none=True).encode("utf-8")
            all_headers["Content-Type"] = "application/json"
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        attempts = 1 + (self._retries if retry else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            delay = self._backoff(attempt)
            try:
                async with self._get_session().request(
                    method, url, data=data, params=query, headers=all_headers, timeout=self._timeout
                ) as resp:
                    body = await resp.read()
                    if resp.status < 400:
                        return body
                    if resp.status not in _RETRY_STATUSES and resp.status < 500:
                        raise _rejection(resp.status, body)
                    if last:
                        raise BackendUnavailable(f"{method} {path}: backend answered {resp.status}")
                    log.info("%s %s answered %s; retrying", method, path, resp.status)
                    delay = max(delay, _retry_after(resp, self._backoff_max_s))
            except TimeoutError as exc:
                if last:
                    raise BackendTimeout(
                        f"{method} {path}: no answer within {self._timeout.total:g} s"
                    ) from exc
            except aiohttp.ClientError as exc:
                if last:
                    raise BackendUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    def _backoff(self, attempt: int) -> float:
        # "Full jitter": spreads the retries of many callers after a common outage.
        return random.uniform(0, min(self._backoff_max_s, self._backoff_base_s * 2**attempt))


def _retry_after(resp: aiohttp.ClientResponse, cap: float) -> float:
    value = resp.headers.get("Retry-After", "")
    return min(float(value), cap) if value.isdigit() else 0.0


def _seg(value: str) -> str:
    """One path segment: a reference cannot reach another endpoint ("../", "?", "#")."""
    return urllib.parse.quote(value, safe="")


def _build(model: type[_M], **fields: Any) -> _M:
    """A request body; arguments that cannot form a valid one raise ``InvalidRequest`` before sending."""
    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or model.__name__
        raise InvalidRequest(422, "invalid_argument", f"{where}: {first['msg']}") from None


def _build_status(value: CaseStatus | str) -> CaseStatus:
    try:
        return CaseStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in CaseStatus)
        raise InvalidRequest(422, "invalid_argument", f"unknown status {value!r}; known: {known}") from None


def _rejection(status: int, body: bytes) -> BackendError:
    from backend_client.models import ErrorBody

    try:
        info = ErrorBody.model_validate_json(body).error
        details = [d.model_dump() for d in info.details]
        return rejection_for(status, info.code, info.message, details)
    except ValidationError:
        text = body[:200].decode("utf-8", "replace").strip() or "(no body)"
        return rejection_for(status, f"http_{status}", text)
