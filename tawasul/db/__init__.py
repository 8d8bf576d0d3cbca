"""Persistence: SQLAlchemy 2 (async) models, engine/session factory, Alembic migrations."""

from tawasul.db.engine import Database

__all__ = ["Database"]
