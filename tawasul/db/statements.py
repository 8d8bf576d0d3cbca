"""``INSERT ... ON CONFLICT DO NOTHING`` as a cacheable statement.

SQLAlchemy's dialect inserts (``sqlalchemy.dialects.postgresql.insert``/``sqlite.insert``) that carry ON
CONFLICT have no cache key, so they are compiled again on every execution ("[no key]" in the echo log): on the
per-message path (the inbound log, the outbox) that compile cost more than the round trip. PostgreSQL and
SQLite spell ON CONFLICT the same way, so one ``text()`` statement with typed bind parameters serves both and
is compiled once. Hand-written because SQLAlchemy offers no cacheable form of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from sqlalchemy import Table, bindparam, text
from sqlalchemy.sql.elements import TextClause


@cache
def insert_ignoring_conflict(table: Table, columns: tuple[str, ...], conflict: tuple[str, ...],
                             returning: str | None = None) -> TextClause:
    """``INSERT INTO table (columns) VALUES (:columns) ON CONFLICT (conflict) DO NOTHING [RETURNING x]``,
    each parameter typed by its column (JSON, timezone-aware datetimes, ...). Execute it with a dict of
    ``columns``; with ``returning``, a conflict returns no row."""
    _check(table, (*columns, *conflict, *(() if returning is None else (returning,))))
    sql = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)}) "
        f"ON CONFLICT ({', '.join(conflict)}) DO NOTHING"
    )
    if returning is not None:
        sql += f" RETURNING {returning}"
    return text(sql).bindparams(*(bindparam(c, type_=table.c[c].type) for c in columns))


def _check(table: Table, names: Sequence[str]) -> None:
    # Names come from our own code, never from input; still, refuse anything that is not a column.
    unknown = [n for n in names if n not in table.c]
    if unknown:
        raise ValueError(f"{table.name} has no column(s) {unknown}")
