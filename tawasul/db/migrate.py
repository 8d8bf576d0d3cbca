"""Alembic, driven from code: `tawasul db upgrade` and start-up both call ``upgrade``.

Workers started independently (not through the supervisor) each upgrade at start-up; on PostgreSQL they take
turns under an advisory lock, so the later ones find the schema current instead of racing to create it.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tawasul.db.engine import ensure_sqlite_dir

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_KEY = 0x7461_7761  # "tawa": any constant shared by every process of this application


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a '%' in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _upgrade_unlocked(url: str, revision: str) -> None:
    ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), revision)


def upgrade(url: str, revision: str = "head") -> None:
    """For synchronous callers (the CLI); not from inside a running event loop (use ``upgrade_async``)."""
    if make_url(url).get_backend_name() == "postgresql":
        asyncio.run(upgrade_async(url, revision))
    else:  # SQLite: one process only (several workers are refused without PostgreSQL), no lock needed
        _upgrade_unlocked(url, revision)


async def upgrade_async(url: str, revision: str = "head") -> None:
    if make_url(url).get_backend_name() != "postgresql":
        # Alembic's env.py runs its own event loop; keep it off the caller's loop.
        await asyncio.to_thread(_upgrade_unlocked, url, revision)
        return
    # A session-level lock on a connection of its own, held around the whole Alembic run: unlike a lock in
    # the migration's transaction it also covers migrations that commit part-way (autocommit_block).
    # Closing the connection releases it too, so a crashed migrator never leaves it behind.
    engine = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            try:
                await asyncio.to_thread(_upgrade_unlocked, url, revision)
            finally:
                # A lost connection has released the lock already; that must not fail a finished upgrade.
                with contextlib.suppress(DBAPIError):
                    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
    finally:
        await engine.dispose()
