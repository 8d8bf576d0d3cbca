"""Fixtures of the staff console tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest

from staff_console import messages
from tests.staff_console.staff_helpers import Console, start_console, stop_console


@pytest.fixture(autouse=True)
def strict_messages() -> Iterator[None]:
    """A template asking for a message the catalogue lacks fails the test."""
    messages.STRICT = True
    yield
    messages.STRICT = False


@pytest.fixture
async def console(tmp_path: Path, sqlite_url: str, unused_port: int) -> AsyncIterator[Console]:
    c = await start_console(tmp_path, sqlite_url, unused_port)
    try:
        yield c
    finally:
        await stop_console(c)


@pytest.fixture
async def console_any_db(tmp_path: Path, db_url: str, unused_port: int) -> AsyncIterator[Console]:
    """The console on SQLite and on PostgreSQL in turn."""
    c = await start_console(tmp_path, db_url, unused_port)
    try:
        yield c
    finally:
        await stop_console(c)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test item, so fixtures can tell whether the test failed."""
    report: pytest.TestReport = yield
    setattr(item, f"rep_{report.when}", report)
    return report
