"""Every way a call to the core backend can fail. ``BackendClient`` raises only these, from one place.

::

    BackendError                      anything below; catch this to handle "the backend said no or is away"
    ├── BackendUnavailable            cannot get an answer: connection refused/reset, 5xx after the retries
    │   └── BackendTimeout            no answer within ``timeout_s`` (after the retries)
    ├── BackendProtocolError          a 2xx answer that does not match the contract
    └── BackendRejected               the backend refused the request (4xx); ``.status``, ``.code``,
        │                             ``.message``, ``.details`` come from the JSON error body
        ├── InvalidRequest            400 / 422: malformed or invalid data (also: idempotency key reused
        │                             with a different body)
        ├── Unauthorized              401: missing or wrong bearer token
        │   └── Forbidden             403: a valid token without the right (service token on staff actions)
        ├── NotFound                  404: no such case / attachment
        ├── Conflict                  409: illegal status transition, already rated, case closed, ...
        ├── PayloadTooLarge           413: attachment or body beyond the size limit
        └── UnsupportedMediaType      415: attachment type not accepted

Unavailable and timeout errors are worth retrying later (the outbox does); rejections are not.

Arguments that cannot form a valid request (a blank note, a score of 7, a malformed idempotency key) raise
``InvalidRequest`` with status 422 and code ``invalid_argument`` before anything is sent; a client with no
token for the call's role raises plain ``BackendError``. aiohttp and asyncio exceptions never escape.
"""

from __future__ import annotations

from typing import Any


class BackendError(Exception):
    """Base of all core-backend errors."""


class BackendUnavailable(BackendError):
    """No usable answer: connection failed or the backend kept answering 5xx."""


class BackendTimeout(BackendUnavailable):
    """The backend did not answer in time."""


class BackendProtocolError(BackendError):
    """A successful answer whose body does not match the contract (a bug on one side)."""


class BackendRejected(BackendError):
    """The backend refused the request with a 4xx and a JSON error body."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []


class InvalidRequest(BackendRejected):
    """400 or 422."""


class Unauthorized(BackendRejected):
    """401."""


class Forbidden(Unauthorized):
    """403."""


class NotFound(BackendRejected):
    """404."""


class Conflict(BackendRejected):
    """409."""


class PayloadTooLarge(BackendRejected):
    """413."""


class UnsupportedMediaType(BackendRejected):
    """415."""


_BY_STATUS: dict[int, type[BackendRejected]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidRequest,
}


def rejection_for(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> BackendRejected:
    """The most specific ``BackendRejected`` for an HTTP status."""
    return _BY_STATUS.get(status, BackendRejected)(status, code, message, details)
