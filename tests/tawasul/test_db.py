"""Migrations create the schema on SQLite and PostgreSQL, match the models, and the tables work."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from tawasul.db import Database
from tawasul.db.migrate import upgrade_async
from tawasul.db.models import Base, Citizen, Conversation, MessageRecord

PROJECT = Path(__file__).resolve().parents[2]


async def test_upgrade_creates_schema_matching_models(db_url: str) -> None:
    await upgrade_async(db_url)
    db = Database(db_url)
    try:
        async with db.engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
            )
        assert set(Base.metadata.tables) <= tables
        assert "alembic_version" in tables
        assert diff == [], f"models and migrations differ: {diff}"
    finally:
        await db.close()


async def test_upgrade_is_idempotent(db_url: str) -> None:
    await upgrade_async(db_url)
    await upgrade_async(db_url)  # a second run changes nothing and does not fail


async def test_platform_message_id_is_unique(db_url: str) -> None:
    await upgrade_async(db_url)
    db = Database(db_url)
    try:
        async with db.session() as s:
            citizen = Citizen(channel="telegram", channel_user_id="42")
            s.add(citizen)
            await s.flush()
            s.add(MessageRecord(citizen_id=citizen.id, direction="in", channel="telegram",
                                platform_message_id="tg:1", text="hi"))
        with pytest.raises(IntegrityError):
            async with db.session() as s:
                s.add(MessageRecord(citizen_id=citizen.id, direction="in", channel="telegram",
                                    platform_message_id="tg:1", text="again"))
    finally:
        await db.close()


async def test_conversation_optimistic_locking(db_url: str) -> None:
    await upgrade_async(db_url)
    db = Database(db_url)
    try:
        async with db.session() as s:
            citizen = Citizen(channel="whatsapp", channel_user_id="97336000000")
            s.add(citizen)
            await s.flush()
            s.add(Conversation(citizen_id=citizen.id, state="idle", data={}))
        # Two workers read version 1; the second write must fail instead of overwriting the first.
        async with db.sessions() as a, db.sessions() as b:
            conv_b = (await b.execute(select(Conversation))).scalar_one()
            await b.commit()  # b keeps its (now stale) copy: expire_on_commit is off
            conv_a = (await a.execute(select(Conversation))).scalar_one()
            conv_a.state = "confirming"
            await a.commit()
            conv_b.state = "idle_again"
            with pytest.raises(StaleDataError):
                await b.commit()
        async with db.session() as s:
            conv = (await s.execute(select(Conversation))).scalar_one()
            assert (conv.state, conv.version) == ("confirming", 2)
    finally:
        await db.close()


def test_cli_db_upgrade_on_postgresql(pg_url: str) -> None:
    env = {"TAWASUL_DATABASE_URL": pg_url, "PATH": ""}
    proc = subprocess.run([sys.executable, "-m", "tawasul.cli", "db", "upgrade"], env=env, cwd=PROJECT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    db = Database(pg_url)

    async def tables() -> set[str]:
        async with db.engine.connect() as conn:
            names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        await db.close()
        return names

    assert {"citizens", "conversations", "outbox", "review_items", "staff_users"} <= asyncio.run(tables())
