"""Throwaway PostgreSQL databases, for the test suite and the benchmarks (one place for both; neither may
import the other). They connect as the server's admin user (trust auth on this project's CI machine)."""

from __future__ import annotations

import uuid

import asyncpg

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def _admin(admin_dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_database(admin_dsn: str = DEFAULT_ADMIN_DSN, prefix: str = "tawasul_scratch") -> str:
    """Create an empty database named ``prefix_<random>``; return its SQLAlchemy async URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await _admin(admin_dsn, f'CREATE DATABASE "{name}"')
    base = admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}"


async def drop_database(url: str, admin_dsn: str = DEFAULT_ADMIN_DSN) -> None:
    """Drop a database made by ``create_database``, closing its connections."""
    name = url.rsplit("/", 1)[1]
    await _admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
