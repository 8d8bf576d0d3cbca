"""One model trained on the real data per test session (a few seconds), shared read-only by the tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import Settings, load_settings
from nlu.engine import EmbeddedEngine
from nlu.registry import ModelInfo


def settings_with(settings: Settings, **nlu: object) -> Settings:
    return settings.model_copy(update={"nlu": settings.nlu.model_copy(update=nlu)})


@pytest.fixture(scope="session")
def nlu_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A snapshot of the real nlu/data (stable while people edit it), a private model directory and no
    staff-reviewed data from this machine's var/."""
    root = tmp_path_factory.mktemp("nlu")
    settings = load_settings(env={})
    data = root / "data"
    data.mkdir()
    for path in sorted(settings.nlu.data_dir.glob("*.yml")):
        shutil.copy2(path, data / path.name)
    return settings_with(
        settings, data_dir=data, model_dir=root / "models", reviewed_data_dir=root / "reviewed"
    )


@pytest.fixture(scope="session")
def trained(nlu_settings: Settings) -> ModelInfo:
    """Trained and promoted by ``ensure_model`` on an empty registry, as `make run` does on a fresh clone."""
    from nlu.service import ensure_model

    return ensure_model(nlu_settings)


@pytest.fixture(scope="session")
def engine(trained: ModelInfo, nlu_settings: Settings) -> Iterator[EmbeddedEngine]:
    yield EmbeddedEngine.load(Path(trained.path), nlu_settings.nlu)
