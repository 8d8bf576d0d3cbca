"""A small Graph API client for the WhatsApp Cloud API over one shared ``aiohttp.ClientSession``.

``send`` posts a ``/messages`` body and returns the new message's wamid, retrying in place with back-off
on throughput errors (130429 and friends, 131056 pair limit), HTTP 429/5xx and network errors while the
wait stays under ``max_inline_wait_s``; past that, or after ``max_retries``, it raises
``DeliveryFailed(retry_after=...)`` so the outbox reschedules. Errors retrying cannot fix raise
``DeliveryFailed(permanent=True)``. ``media_info``/``download_media`` fetch inbound media by id (two steps:
``GET /{media-id}`` for a short-lived URL, then ``GET`` that URL with the same bearer token).

Hand-written over aiohttp (no maintained async Cloud API client exists that takes a shared session and
our rate limiter); it speaks only the handful of endpoints the bot needs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from bot.channel import DeliveryFailed
from bot.delivery import AttachmentTooLarge
from bot.ratelimit import InProcessRateLimiter, RateLimiter, backoff_delay
from bot.whatsapp_format import read_payload
from config.settings import WhatsAppSettings

log = logging.getLogger(__name__)

# Throughput limits of the number/app: hold every send on this number for the back-off.
THROUGHPUT_CODES = frozenset({4, 80007, 130429, 613})
# Too many messages to one user in a short time: back off this send only.
PAIR_RATE_CODE = 131056
SPAM_RATE_CODE = 131048
# More than 24 hours since the user last wrote: only a template may be sent.
REENGAGEMENT_CODE = 131047
# Worth retrying later: temporary errors, service unavailable, maintenance, token/permission problems an
# operator fixes without the message changing, temporary policy blocks.
RETRYABLE_CODES = frozenset({1, 2, 0, 10, 190, 200, 368, 131000, 131016, 131031, 131057, 133004})


@dataclass(frozen=True, slots=True)
class GraphError:
    http_status: int
    code: int | None
    message: str
    permanent: bool
    throughput: bool = False  # pause the whole number
    outside_window: bool = False

    @property
    def throttled(self) -> bool:
        """A rate limit answered (throughput, pair or spam rate, HTTP 429): counted as a platform 429."""
        return self.throughput or self.code in (PAIR_RATE_CODE, SPAM_RATE_CODE) or self.http_status == 429

    def describe(self) -> str:
        code = self.code if self.code is not None else "-"
        return f"graph error {code} (HTTP {self.http_status}): {self.message}"


def classify(http_status: int, body: Any) -> GraphError:
    """Read a Graph error response: ``{"error": {"code": ..., "message": ..., "error_data": {...}}}``."""
    err = body.get("error") if isinstance(body, Mapping) else None
    code: int | None = None
    message = f"HTTP {http_status}"
    if isinstance(err, Mapping):
        raw_code = err.get("code")
        try:
            code = int(raw_code) if raw_code is not None else None
        except (TypeError, ValueError):
            code = None
        message = str(err.get("message") or message)[:200]
    if code in THROUGHPUT_CODES or (code is None and http_status == 429):
        return GraphError(http_status, code, message, permanent=False, throughput=True)
    if code in (PAIR_RATE_CODE, SPAM_RATE_CODE) or code in RETRYABLE_CODES:
        return GraphError(http_status, code, message, permanent=False)
    if code == REENGAGEMENT_CODE:
        return GraphError(http_status, code, message, permanent=True, outside_window=True)
    if http_status >= 500:
        return GraphError(http_status, code, message, permanent=False)
    # 131026 undeliverable, 131021 recipient is sender, 100/131009 invalid parameter, 132xxx template
    # errors, 133010 number not registered, ...: sending the same request again fails the same way.
    return GraphError(http_status, code, message, permanent=True)


class GraphFailed(DeliveryFailed):
    """``DeliveryFailed`` carrying the Graph error, so callers can react to specific codes (131047)."""

    def __init__(self, error: GraphError, *, retry_after: float | None = None) -> None:
        super().__init__(f"whatsapp {error.describe()}", permanent=error.permanent, retry_after=retry_after)
        self.error = error


@dataclass(frozen=True, slots=True)
class MediaInfo:
    url: str
    mime_type: str | None
    size: int | None
    sha256: str | None


Sleep = Callable[[float], Awaitable[None]]


class GraphClient:
    def __init__(
        self,
        settings: WhatsAppSettings,
        session: aiohttp.ClientSession,
        *,
        limiter: RateLimiter | None = None,
        sleep: Sleep = asyncio.sleep,
        on_throttled: Callable[[], None] | None = None,
    ) -> None:
        if settings.access_token is None or not settings.phone_number_id:
            raise ValueError("whatsapp.access_token and whatsapp.phone_number_id are required")
        self._settings = settings
        self._session = session
        self._token = settings.access_token.get_secret_value()
        base = settings.api_base_url.rstrip("/")
        self._base = f"{base}/{settings.api_version}"
        self._messages_url = f"{self._base}/{settings.phone_number_id}/messages"
        self._limiter: RateLimiter = limiter or InProcessRateLimiter(
            settings.rate_per_s, burst=max(1, int(settings.rate_per_s))
        )
        self._limit_key = f"whatsapp:{settings.phone_number_id}"
        self._sleep = sleep
        self._on_throttled = on_throttled  # observability (/metrics); the back-off below is the reaction
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s)
        self.retries = 0  # sends retried in place (observability and tests)

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    async def send(self, payload: Mapping[str, Any], *, max_retries: int | None = None) -> str:
        """POST a ``/messages`` body; return the wamid of the sent message."""
        data = await self._post_messages(payload, max_retries=max_retries)
        messages = data.get("messages") if isinstance(data, Mapping) else None
        if not isinstance(messages, list) or not messages or not isinstance(messages[0], Mapping):
            raise DeliveryFailed("whatsapp: send answered without a message id")
        return str(messages[0].get("id"))

    async def mark_read(self, wamid: str) -> None:
        """Blue ticks for an inbound message. Best effort: a failure is logged, never raised."""
        try:
            await self._post_messages(read_payload(wamid), max_retries=0)
        except DeliveryFailed as exc:
            log.info("whatsapp: mark as read failed (%s)", exc)

    async def _post_messages(self, payload: Mapping[str, Any], *, max_retries: int | None) -> Any:
        settings = self._settings
        retries = settings.max_retries if max_retries is None else max_retries
        attempt = 0
        while True:
            await self._limiter.acquire(self._limit_key)
            error: GraphError | None = None
            retry_after: float | None = None
            try:
                async with self._session.post(
                    self._messages_url, json=payload, headers=self._headers, timeout=self._timeout
                ) as resp:
                    body = await _json(resp)
                    if resp.status < 300:
                        return body
                    error = classify(resp.status, body)
                    retry_after = _retry_after_header(resp.headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = GraphError(0, None, f"network: {type(exc).__name__}", permanent=False)
            if error.throttled and self._on_throttled is not None:
                self._on_throttled()
            if error.permanent:
                raise GraphFailed(error)
            delay = (
                retry_after
                if retry_after is not None
                else backoff_delay(attempt, settings.retry_base_s, settings.retry_max_s)
            )
            if error.code == SPAM_RATE_CODE:
                delay = max(delay, settings.retry_max_s)  # spam limits last long; do not hammer
            if error.throughput:
                await self._limiter.pause(self._limit_key, delay)
            if attempt >= retries or delay > settings.max_inline_wait_s:
                raise GraphFailed(error, retry_after=delay)
            attempt += 1
            self.retries += 1
            log.warning("whatsapp send: %s; retry %d in %.1fs", error.describe(), attempt, delay)
            if not error.throughput:  # a throughput pause already holds this send via acquire()
                await self._sleep(delay)

    async def media_info(self, media_id: str) -> MediaInfo:
        url = f"{self._base}/{media_id}"
        try:
            async with self._session.get(url, headers=self._headers, timeout=self._timeout) as resp:
                body = await _json(resp)
                if resp.status >= 300:
                    raise GraphFailed(classify(resp.status, body))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryFailed(f"whatsapp media lookup: network ({type(exc).__name__})") from exc
        if not isinstance(body, Mapping) or not isinstance(body.get("url"), str):
            raise DeliveryFailed("whatsapp media lookup: no url in the answer", permanent=True)
        size = body.get("file_size")
        try:
            size_int = int(size) if size is not None else None
        except (TypeError, ValueError):
            size_int = None
        mime = body.get("mime_type")
        sha = body.get("sha256")
        return MediaInfo(
            body["url"],
            mime if isinstance(mime, str) else None,
            size_int,
            sha if isinstance(sha, str) else None,
        )

    async def download_media(self, media_id: str, max_bytes: int) -> bytes:
        """Both steps of a media download; refuses (``AttachmentTooLarge``) anything over ``max_bytes``."""
        info = await self.media_info(media_id)
        if info.size is not None and info.size > max_bytes:
            raise AttachmentTooLarge(info.size, max_bytes)
        try:
            async with self._session.get(info.url, headers=self._headers, timeout=self._timeout) as resp:
                if resp.status >= 300:
                    body = await _json(resp)
                    raise GraphFailed(classify(resp.status, body))
                if resp.content_length is not None and resp.content_length > max_bytes:
                    raise AttachmentTooLarge(resp.content_length, max_bytes)
                chunks: list[bytes] = []
                total = 0
                async for chunk in resp.content.iter_chunked(65536):
                    total += len(chunk)
                    if total > max_bytes:
                        raise AttachmentTooLarge(total, max_bytes)
                    chunks.append(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryFailed(f"whatsapp media download: network ({type(exc).__name__})") from exc
        return b"".join(chunks)


async def _json(resp: aiohttp.ClientResponse) -> Any:
    try:
        return await resp.json(content_type=None)
    except ValueError:  # not JSON (a proxy's error page): the status code has to do
        return None


def _retry_after_header(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
