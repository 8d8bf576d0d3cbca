"""Plain asyncpg pools beside SQLAlchemy, for the few statements on every message's path (PostgreSQL only).

A turn through the ORM costs about a dozen round trips and, per statement, more CPU in SQLAlchemy than in the
database (the profile in README "Benchmarks"). The usual turn is instead two hand-written statements (see
``dialogues.pg_turn``) and the outbox's done mark one, sent straight through asyncpg: its prepared-statement
cache then holds them per connection, with no compile, result-mapping or unit-of-work cost. Everything else
(rare turns, the console, migrations) stays on SQLAlchemy.

Two pools, as for SQLAlchemy (``Database.autocommit``): ``durable`` commits with the server's
``synchronous_commit`` (what a citizen sent, and the turn's state and replies), ``relaxed`` with
``synchronous_commit = off`` (done marks and the delivered-message log, which a database crash may lose
without losing or doubling anything a citizen sees but one repeated message). Both run every statement in
autocommit: each of these statements is atomic on its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url


_DISCONNECTED = (OSError, asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.PostgresConnectionError,
                 asyncpg.exceptions.OperatorInterventionError)


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> str:
    """JSON for a ``json`` parameter (timestamps as ISO 8601, which PostgreSQL reads back)."""
    return json.dumps(value, ensure_ascii=False, default=_json_default)


async def _init(conn: asyncpg.Connection) -> None:
    # json values cross as Python objects, both ways (the tables' JSON columns are ``json``).
    await conn.set_type_codec("json", encoder=dumps, decoder=json.loads, schema="pg_catalog")


async def _reset(conn: asyncpg.Connection) -> None:
    # Every statement here is one autocommit statement: no transaction, cursor, LISTEN, SET or advisory lock is
    # ever left on a connection, so asyncpg's reset query (a round trip on every release) has nothing to undo.
    if conn.is_in_transaction():  # never expected; a local check, no round trip
        await conn.execute("ROLLBACK")


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """The plain ``postgresql://`` DSN asyncpg takes, from the project's SQLAlchemy URL."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


class RawPostgres:
    """The two pools, opened on first use (a worker that never needs them never connects)."""

    def __init__(self, sqlalchemy_url: str, *, max_size: int = 10) -> None:
        self._dsn = asyncpg_dsn(sqlalchemy_url)
        self._max_size = max_size
        self._durable: asyncpg.Pool | None = None
        self._relaxed: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def _pool(self, relaxed: bool) -> asyncpg.Pool:
        pool = self._relaxed if relaxed else self._durable
        if pool is not None:
            return pool
        async with self._opening:  # two first uses at once open one pool, not two
            pool = self._relaxed if relaxed else self._durable
            if pool is not None:
                return pool
            settings = {"synchronous_commit": "off"} if relaxed else {}
            size = max(2, self._max_size // 2) if relaxed else self._max_size
            pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=size, init=_init, reset=_reset,
                                             server_settings=settings, max_inactive_connection_lifetime=1800)
            if relaxed:
                self._relaxed = pool
            else:
                self._durable = pool
            return pool

    @asynccontextmanager
    async def durable(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._connection(False) as conn:
            yield conn

    @asynccontextmanager
    async def relaxed(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._connection(True) as conn:
            yield conn

    @asynccontextmanager
    async def _connection(self, relaxed: bool) -> AsyncIterator[asyncpg.Connection]:
        pool = await self._pool(relaxed)
        async with pool.acquire() as conn:
            try:
                yield conn
            except _DISCONNECTED:
                # The server went away (a restart, a failover): every idle connection of the pool is dead too.
                # Replace them all on their next use instead of failing one turn per stale connection.
                pool.expire_connections()
                raise

    async def close(self) -> None:
        for pool in (self._durable, self._relaxed):
            if pool is not None:
                await pool.close()
        self._durable = self._relaxed = None
