"""Model registry: versions, promote / rollback, atomic pointer, two processes."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from nlu.model import FORMAT_VERSION
from nlu.registry import METADATA_FILE, ModelInfo, ModelRegistry, RegistryError


def _fake_model(
    registry: ModelRegistry, version: str, created_at: str, format_version: int = FORMAT_VERSION
) -> ModelInfo:
    with registry.staging(version) as staging:
        (staging / "model.pkl").write_bytes(b"x")
        info = ModelInfo(
            version, created_at, "hash", {"type_macro_f1": 0.9}, False, staging, 10, 2, ["a.yml"]
        )
        replace(info, format_version=format_version).write(staging)
    return registry.get(version)


def test_promote_and_rollback(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    assert registry.current() is None and registry.list_models() == []
    a = _fake_model(registry, "v1", "2026-01-01T00:00:00+00:00")
    b = _fake_model(registry, "v2", "2026-01-02T00:00:00+00:00")
    c = _fake_model(registry, "v3", "2026-01-03T00:00:00+00:00")
    assert registry.current() is None  # trained is not promoted
    assert [m.version for m in registry.list_models()] == ["v1", "v2", "v3"]
    registry.promote(a.version)
    registry.promote(c.version)
    current = registry.current()
    assert current is not None and current.version == "v3" and current.promoted
    assert not registry.get(b.version).promoted
    back = registry.rollback()
    assert back.version == "v1"
    assert registry.current() == registry.get("v1")
    assert not registry.get("v3").promoted  # rolled back
    with pytest.raises(RegistryError):
        registry.rollback()  # nothing before v1
    registry.promote("v2")
    registry.promote("v1")  # re-promoting moves it to the end
    assert json.loads((registry.model_dir / "promoted.json").read_text())["history"] == ["v2", "v1"]
    assert registry.rollback().version == "v2"


def test_unknown_versions_and_damaged_artifacts(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    with pytest.raises(RegistryError):
        registry.promote("nope")
    with pytest.raises(RegistryError):
        registry.path_of("../etc")
    _fake_model(registry, "v1", "2026-01-01T00:00:00+00:00")
    registry.promote("v1")
    (tmp_path / "half").mkdir()  # no metadata: not a model
    assert [m.version for m in registry.list_models()] == ["v1"]
    _fake_model(registry, "v2", "2026-01-02T00:00:00+00:00")
    registry.promote("v2")
    shutil.rmtree(tmp_path / "v2")  # deleted by hand: the previous promotion is current again
    current = registry.current()
    assert current is not None and current.version == "v1"


def test_failed_training_leaves_no_version(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    with pytest.raises(ZeroDivisionError), registry.staging("v9") as staging:
        (staging / "model.pkl").write_bytes(b"partial")
        1 / 0  # noqa: B018
    assert not (tmp_path / "v9").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".staging")] == []


def test_artifacts_of_another_format_are_not_current(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    _fake_model(registry, "v1", "2026-01-01T00:00:00+00:00")
    _fake_model(registry, "v0", "2026-01-02T00:00:00+00:00", format_version=FORMAT_VERSION - 1)
    registry.promote("v1")
    registry.promote("v0")  # promoted by an older checkout
    current = registry.current()
    assert current is not None and current.version == "v1"
    assert ModelRegistry(tmp_path / "other").current() is None


def test_unique_version(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    _fake_model(registry, "v1", "2026-01-01T00:00:00+00:00")
    assert registry.unique_version("v1") == "v1-2"
    assert registry.unique_version("v7") == "v7"


def _promote_many(model_dir: str, versions: list[str]) -> None:
    registry = ModelRegistry(Path(model_dir))
    for version in versions:
        registry.promote(version)


def test_two_processes_promoting_lose_nothing(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    versions = [f"v{i:02d}" for i in range(20)]
    for i, version in enumerate(versions):
        _fake_model(registry, version, f"2026-01-01T00:00:{i:02d}+00:00")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_promote_many, args=(str(tmp_path), versions[k::2])) for k in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    history = json.loads((tmp_path / "promoted.json").read_text())["history"]
    assert sorted(history) == versions  # every promotion recorded, none overwritten
    assert all((tmp_path / v / METADATA_FILE).is_file() for v in history)
