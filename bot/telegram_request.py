"""python-telegram-bot's HTTP transport over aiohttp (``telegram.request.BaseRequest``).

Hand-written because PTB ships only an httpx transport. The service already runs on aiohttp; measured on the
inbound benchmark, the httpx stack (httpx + httpcore + anyio) was most of the Telegram client's CPU per Bot
API call, and aiohttp's client does the same call for less. One ``ClientSession`` (one connection pool) per
request object, opened by ``initialize`` and closed by ``shutdown`` as PTB's life cycle expects.

Bodies without files go as ``application/json`` (the Bot API takes JSON, form or query alike): PTB's own
transport sends a form, and url-encoding Arabic text (every byte percent-quoted in Python) cost more CPU
than the rest of building a request on the inbound benchmark.

Errors are translated here, at the one boundary: a timeout becomes ``telegram.error.TimedOut``, any other
transport failure ``telegram.error.NetworkError``; HTTP statuses are PTB's to interpret.
"""

from __future__ import annotations

import json

import aiohttp

# PTB's own HTTPXRequest uses these to tell "not given" from None; a subclass of BaseRequest needs the same.
from telegram._utils.defaultvalue import DefaultValue
from telegram._utils.types import ODVInput
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData


class AiohttpRequest(BaseRequest):
    """Timeouts have PTB's meaning (defaults as ``HTTPXRequest``'s); ``pool_timeout`` bounds the wait for a
    free connection when ``connection_pool_size`` are all busy."""

    def __init__(
        self,
        *,
        connection_pool_size: int = 256,
        read_timeout: float | None = 5.0,
        write_timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        pool_timeout: float | None = 1.0,
        media_write_timeout: float | None = 20.0,
    ) -> None:
        self._pool_size = connection_pool_size
        self._read = read_timeout
        self._write = write_timeout
        self._connect = connect_timeout
        self._pool = pool_timeout
        self._media_write = media_write_timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout(self) -> float | None:
        return self._read

    async def initialize(self) -> None:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._pool_size, limit_per_host=self._pool_size)
            self._session = aiohttp.ClientSession(connector=connector, headers={"User-Agent": self.USER_AGENT})

    async def shutdown(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        session = self._session
        if session is None or session.closed:
            raise RuntimeError("AiohttpRequest is not initialized")
        files = request_data.multipart_data if request_data is not None else None
        read = self._read if isinstance(read_timeout, DefaultValue) else read_timeout
        write = (self._media_write if files else self._write) if isinstance(write_timeout, DefaultValue) \
            else write_timeout
        connect = self._connect if isinstance(connect_timeout, DefaultValue) else connect_timeout
        pool = self._pool if isinstance(pool_timeout, DefaultValue) else pool_timeout
        # aiohttp has no separate write timeout: for an upload the socket-read limit also covers sending the
        # body, so it gets the write allowance added (a slow upload is not cut short).
        sock_read = None if read is None else read + ((write or 0.0) if files else 0.0)
        timeout = aiohttp.ClientTimeout(total=None, connect=None if pool is None or connect is None
                                        else pool + connect, sock_connect=connect, sock_read=sock_read)
        data: aiohttp.FormData | bytes | None = None
        headers: dict[str, str] | None = None
        if request_data is not None:
            if files:
                form = aiohttp.FormData()
                for name, value in request_data.json_parameters.items():
                    form.add_field(name, value)
                for name, part in files.items():
                    filename, content, mime = _file_part(part)
                    form.add_field(name, content, filename=filename, content_type=mime)
                data = form
            else:
                # ``parameters`` are plain JSON values (nested markup as objects), None already dropped.
                data = json.dumps(request_data.parameters, ensure_ascii=False).encode()
                headers = _JSON
        try:
            async with session.request(method, url, data=data, headers=headers, timeout=timeout) as response:
                return response.status, await response.read()
        except TimeoutError as exc:
            raise TimedOut from exc
        except aiohttp.ClientError as exc:
            raise NetworkError(f"aiohttp.{type(exc).__name__}: {exc}") from exc


_JSON = {"Content-Type": "application/json"}


def _file_part(part: object) -> tuple[str | None, bytes, str | None]:
    """PTB's multipart value: ``(filename, content, mimetype)`` or bare content."""
    if isinstance(part, tuple):
        filename = part[0] if len(part) > 0 else None
        content = part[1] if len(part) > 1 else b""
        mime = part[2] if len(part) > 2 else None
        return filename, bytes(content), mime
    return None, bytes(part) if isinstance(part, bytes | bytearray) else str(part).encode(), None
