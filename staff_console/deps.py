"""What the console needs from the running service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from config import Settings
from config.settings import PROJECT_DIR

# ``trainer(settings, *, extra_dirs, progress, promote) -> ModelInfo`` (nlu.training.train_model's shape).
Trainer = Callable[..., Any]


@dataclass
class StaffDeps:
    settings: Settings
    sessionmaker: async_sessionmaker[Any]
    # Switches the running NLU service to the newly promoted model (NLUService.reload); None when the
    # NLU runs elsewhere (Rasa) and picks models up by itself.
    nlu_reload: Callable[[], Awaitable[None]] | None
    registry_dir: Path
    # None means nlu.training.train_model; tests may pass a smaller trainer of the same shape.
    trainer: Trainer | None = None

    def reviewed_dir(self) -> Path:
        """Where reviewed examples are written (training-only data, apart from nlu/data)."""
        configured = getattr(self.settings.nlu, "reviewed_data_dir", None)
        return Path(configured) if configured else PROJECT_DIR / "var" / "nlu" / "reviewed"

    def resolve_trainer(self) -> Trainer:
        if self.trainer is not None:
            return self.trainer
        from nlu.training import train_model

        return train_model
