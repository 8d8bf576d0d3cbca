"""NLUService: build, parse, reload after a promotion (in process and from another process), rollback,
ensure_model, and the Rasa wrapping (lazy import)."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
import sys
from pathlib import Path

import pytest

from config import Settings
from nlu.model import EmbeddedModel
from nlu.registry import ModelInfo, ModelRegistry
from nlu.service import NLUService, build_nlu, ensure_model
from nlu.types import NLUUnavailable
from tests.nlu.conftest import settings_with


def _copy_model(src: ModelInfo, model_dir: Path, version: str) -> ModelInfo:
    """A second model (same weights, new version) without training again."""
    registry = ModelRegistry(model_dir)
    model = EmbeddedModel.load(src.path)
    model.version = version
    with registry.staging(version) as staging:
        model.save(staging)
        replace(src, version=version, created_at="2099-01-01T00:00:00+00:00", path=staging).write(staging)
    return registry.get(version)


@pytest.fixture
def private(trained: ModelInfo, nlu_settings: Settings, tmp_path: Path) -> Settings:
    """A registry of its own holding the session model, promoted."""
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    shutil.copytree(trained.path, model_dir / trained.version)
    ModelRegistry(model_dir).promote(trained.version)
    return settings_with(nlu_settings, model_dir=model_dir)


async def test_parse_and_reload(private: Settings, trained: ModelInfo) -> None:
    service = build_nlu(private)
    assert service.model_version == trained.version and service.name == "embedded"
    before = await service.parse("الكهربا مقطوعة")
    assert before.model_version == trained.version and before.agency == "ewa"
    assert service.reload() == service.info  # nothing new: no-op

    new = _copy_model(trained, private.nlu.model_dir, "emb-next")
    ModelRegistry(private.nlu.model_dir).promote(new.version)
    info = await service.reload_async()
    assert info is not None and info.version == "emb-next"
    after = await service.parse("الكهربا مقطوعة")
    assert after.model_version == "emb-next" and after.agency == before.agency

    ModelRegistry(private.nlu.model_dir).rollback()
    service.reload()
    assert service.model_version == trained.version


async def test_concurrent_parses_during_reload(private: Settings, trained: ModelInfo) -> None:
    service = build_nlu(private)
    _copy_model(trained, private.nlu.model_dir, "emb-swap")
    ModelRegistry(private.nlu.model_dir).promote("emb-swap")
    texts = ["شكرا", "hi", "el mai maqtoo3", "my passport renewal"] * 25
    results, info = await asyncio.gather(
        asyncio.gather(*(service.parse(t) for t in texts)), service.reload_async()
    )
    assert info is not None and info.version == "emb-swap"
    assert {r.model_version for r in results} <= {trained.version, "emb-swap"}


async def test_promotion_by_another_process_is_picked_up(private: Settings, trained: ModelInfo) -> None:
    service = NLUService(private, watch_interval_s=0.0)
    service.reload()
    _copy_model(trained, private.nlu.model_dir, "emb-cli")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from nlu.registry import ModelRegistry; "
        f"ModelRegistry({str(private.nlu.model_dir)!r}).promote('emb-cli')",
    )
    assert await proc.wait() == 0
    await service.parse("hi")  # notices the new pointer and reloads in a worker thread
    for _ in range(100):
        if service.model_version == "emb-cli":
            break
        await asyncio.sleep(0.05)
    assert service.model_version == "emb-cli"


async def test_no_model_means_unavailable_not_a_crash(nlu_settings: Settings, tmp_path: Path) -> None:
    service = build_nlu(settings_with(nlu_settings, model_dir=tmp_path / "empty"))
    assert service.model_version == ""
    with pytest.raises(NLUUnavailable):
        await service.parse("hi")


def test_ensure_model_keeps_the_promoted_one(private: Settings, trained: ModelInfo) -> None:
    assert ensure_model(private).version == trained.version
    assert len(ModelRegistry(private.nlu.model_dir).list_models()) == 1  # nothing trained


async def test_rasa_engine_is_wrapped_with_the_embedded_fallback(private: Settings, unused_port: int) -> None:
    from nlu import rasa_engine

    service = build_nlu(settings_with(private, engine="rasa", rasa_url=f"http://127.0.0.1:{unused_port}"))
    assert isinstance(service.engine, rasa_engine.FallbackEngine)
    result = await service.parse("الكهربا مقطوعة")  # nothing listens there: the embedded engine answers
    assert result.agency == "ewa"
    close = getattr(service.engine.primary, "close", None)
    if close is not None:
        await close()
