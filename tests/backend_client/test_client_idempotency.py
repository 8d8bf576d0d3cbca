"""Idempotent creates under concurrency, on SQLite and on PostgreSQL (the backend's own database)."""

from __future__ import annotations

import asyncio

import aiohttp
from sqlalchemy import func, select

from backend_client import BackendClient, Case
from core_backend.app import DB_KEY
from core_backend.db import CaseRow
from core_backend.embedded import EmbeddedBackend
from tests.core_backend.backend_harness import SERVICE_TOKEN, backend_settings, new_case


async def _count_cases(backend: EmbeddedBackend) -> int:
    assert backend.app is not None
    async with backend.app[DB_KEY].sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(CaseRow)) or 0)


async def test_fifty_concurrent_creates_with_one_key_give_one_case(db_url: str) -> None:
    async with (
        EmbeddedBackend(backend_settings(db_url), port=0) as backend,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
    ):
        # 50 separate clients on one connection pool: 50 requests in flight at once.
        clients = [
            BackendClient(backend.url, SERVICE_TOKEN, session=session, timeout_s=60) for _ in range(50)
        ]
        data = new_case(description="one complaint, sent fifty times")
        results: list[Case] = await asyncio.gather(
            *(c.create_case(data, "concurrent-key-1") for c in clients)
        )

        assert {c.reference for c in results} == {results[0].reference}
        assert {c.created_at for c in results} == {results[0].created_at}
        assert await _count_cases(backend) == 1

        # Different keys at the same time: distinct, gapless references.
        others = await asyncio.gather(
            *(c.create_case(new_case(), f"concurrent-key-other-{i:02d}") for i, c in enumerate(clients[:20]))
        )
        numbers = sorted(int(c.reference[-6:]) for c in others)
        first = int(results[0].reference[-6:])
        assert numbers == list(range(first + 1, first + 21))
        assert await _count_cases(backend) == 21
