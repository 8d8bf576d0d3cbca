"""Fixtures: the reference backend embedded on 127.0.0.1 (its own throwaway database) and the real client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from backend_client import BackendClient
from core_backend.embedded import EmbeddedBackend
from tests.core_backend.backend_harness import SERVICE_TOKEN, STAFF_TOKEN, Receiver, backend_settings


@pytest.fixture
async def backend(sqlite_url: str) -> AsyncIterator[EmbeddedBackend]:
    async with EmbeddedBackend(backend_settings(sqlite_url), port=0) as running:
        yield running


@pytest.fixture
async def client(backend: EmbeddedBackend) -> AsyncIterator[BackendClient]:
    async with BackendClient(backend.url, SERVICE_TOKEN, staff_token=STAFF_TOKEN, backoff_base_s=0.01) as c:
        yield c


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()
