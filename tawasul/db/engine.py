"""Engine and session factory. One ``Database`` per process, shared by every part of the service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from asyncpg.exceptions import ConnectionDoesNotExistError
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from tawasul.db.raw import RawPostgres


def ensure_sqlite_dir(url: str) -> None:
    """Create the folder of a SQLite file (``var/`` by default) so a fresh clone just works."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; busy_timeout makes concurrent writers wait instead of failing.
    # The driver must not open transactions itself: we BEGIN IMMEDIATE (below) so two transactions never
    # both read and then deadlock on upgrading to a write lock.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(url: str, *, echo: bool = False, pool_size: int = 10) -> AsyncEngine:
    ensure_sqlite_dir(url)
    kwargs: dict[str, Any] = {"echo": echo}
    if make_url(url).get_backend_name() == "postgresql":
        # No pre-ping: it is a round trip on every checkout (two per message). A connection that died (a
        # database restart) fails its first statement instead; SQLAlchemy then discards the whole pool, and
        # that turn is retried (webhooks answer 503 so the platform sends again; the sweeper and outbox retry).
        # No overflow (see the autocommit pool below): most turns go through ``tawasul.db.raw`` now.
        kwargs.update(pool_size=pool_size, max_overflow=0, pool_pre_ping=False, pool_recycle=1800)
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


# SQLSTATEs of a database that is away rather than of a bad statement: connection exceptions (08), operator
# intervention (57P: shutting down, starting up), too many connections, serialization failure and deadlock.
_TRANSIENT_SQLSTATES = ("08", "57P", "53300", "40001", "40P01")


def database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database could not be reached or dropped the connection (a restart,
    a failover, the connection limit, a locked SQLite file): the same work succeeds later. False for an
    error in the statement or the data, which would fail again."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, OSError | TimeoutError | sa_exc.TimeoutError | sa_exc.OperationalError
                      | ConnectionDoesNotExistError):
            return True  # refused/reset connections, pool timeouts, SQLite "database is locked"
        state = getattr(current, "sqlstate", None)
        if isinstance(state, str) and state.startswith(_TRANSIENT_SQLSTATES):
            return True
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


class Database:
    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10) -> None:
        self.url = url
        self.engine = create_engine(url, echo=echo, pool_size=pool_size)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._autocommit_engine = self.engine
        if self.dialect == "postgresql":
            # Its own small pool: AUTOCOMMIT (no BEGIN/COMMIT round trips) and synchronous_commit off (no WAL
            # flush to wait for). Safe for what goes through it (outbox leases, done marks and retries, the
            # delivered-message log, send budgets): a database crash can lose its last fraction of a second,
            # which means a message sent again or a lease that expires, never a lost citizen message; turns
            # (the inbound message and its state) commit durably through the main pool.
            # No overflow: an overflow connection is closed when it is given back, so bursts beyond the pool
            # opened and closed a connection per statement (a third of the inline delivery's CPU in a profile);
            # a burst now waits a moment for a pooled connection instead.
            self._autocommit_engine = create_async_engine(
                url, echo=echo, pool_size=max(2, pool_size // 2), max_overflow=0, pool_recycle=1800,
                isolation_level="AUTOCOMMIT", connect_args={"server_settings": {"synchronous_commit": "off"}})
        # The hot path's hand-written statements (``tawasul.db.raw``); None on SQLite.
        self.raw: RawPostgres | None = RawPostgres(url, max_size=pool_size) if self.dialect == "postgresql" else None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction: committed on success, rolled back on error."""
        async with self.sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncSession]:
        """A session whose every statement commits on its own (PostgreSQL ``AUTOCOMMIT``, asynchronous
        commit): no BEGIN and COMMIT round trips and no WAL flush, for work that is one statement, or several
        that need not be atomic, and that may be lost in a database crash (see ``__init__``). On SQLite it
        is an ordinary transaction (its writers are serialised by ``BEGIN IMMEDIATE`` anyway)."""
        if self.dialect != "postgresql":
            async with self.session() as session:
                yield session
            return
        async with self._autocommit_engine.connect() as conn, AsyncSession(bind=conn) as session:
            yield session

    async def ping(self) -> None:
        from sqlalchemy import text

        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        if self.raw is not None:
            await self.raw.close()
        await self.engine.dispose()
        if self._autocommit_engine is not self.engine:
            await self._autocommit_engine.dispose()
