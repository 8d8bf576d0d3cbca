"""Helpers shared by integration tests: settings for a throwaway service, and a trained NLU model."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from config.settings import PROJECT_DIR, Settings

TEST_MODEL_DIR = PROJECT_DIR / "var" / "test-models"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_for(db_url: str, tmp: Path, **sections: dict[str, Any]) -> Settings:
    """Settings of a service on free ports with its own databases; ``sections`` override fields."""
    base = Settings()
    updates: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "database": {"url": db_url},
        "backend": {"mode": "embedded", "port": free_port(),
                    "database_url": f"sqlite+aiosqlite:///{tmp / 'core_backend.db'}",
                    "poll_interval_s": 3600.0},
        "nlu": {"model_dir": TEST_MODEL_DIR},
        "outbox": {"poll_interval_s": 0.2, "backoff_base_s": 0.2, "backoff_max_s": 1.0},
    }
    for name, values in sections.items():
        updates.setdefault(name, {}).update(values)
    patched = {name: getattr(base, name).model_copy(update=values) for name, values in updates.items()}
    return base.model_copy(update=patched)
