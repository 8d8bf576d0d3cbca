"""Shared fixtures. Database tests run on SQLite and on the PostgreSQL server at 127.0.0.1:5432, each in a
throwaway database created for the test and dropped afterwards."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tawasul.db.scratch import DEFAULT_ADMIN_DSN, create_database, drop_database

PG_ADMIN_DSN = os.environ.get("TAWASUL_TEST_PG_DSN", DEFAULT_ADMIN_DSN)


def create_pg_database() -> str:
    """Create an empty PostgreSQL database; return its SQLAlchemy async URL."""
    try:
        return asyncio.run(create_database(PG_ADMIN_DSN, prefix="tawasul_test"))
    except OSError as exc:  # refuse to silently skip: CI must run the PostgreSQL tests
        raise RuntimeError(
            f"PostgreSQL at {PG_ADMIN_DSN} is not reachable ({exc}); start it, see README 'Services'"
        ) from exc


def drop_pg_database(url: str) -> None:
    asyncio.run(drop_database(url, PG_ADMIN_DSN))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind in turn."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    else:
        url = create_pg_database()
        try:
            yield url
        finally:
            drop_pg_database(url)


@pytest.fixture
async def unused_port() -> AsyncIterator[int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port


@pytest.fixture(scope="session")
def trained_nlu_dir() -> Path:
    """A promoted NLU model for integration tests, retrained when the training data changed."""
    from config.settings import Settings
    from nlu.dataset import load_dataset
    from nlu.registry import ModelRegistry
    from nlu.training import train_model
    from tests.support import TEST_MODEL_DIR

    settings = Settings()
    settings = settings.model_copy(update={"nlu": settings.nlu.model_copy(update={"model_dir": TEST_MODEL_DIR})})
    current = ModelRegistry(TEST_MODEL_DIR).current()
    if current is None or current.data_hash != load_dataset(settings).data_hash:
        train_model(settings, promote=True)
    return TEST_MODEL_DIR
