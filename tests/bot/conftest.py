"""Fixtures for the channel tests: the fake platform servers and a recording handler."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.bot.helpers import Recorder
from tests.fakes import FakeGraph, FakeTelegram


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture
async def fake_graph() -> AsyncIterator[FakeGraph]:
    async with FakeGraph() as fake:
        yield fake
