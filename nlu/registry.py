"""Model registry: versioned artifacts under ``settings.nlu.model_dir`` and which one is promoted.

Layout::

    var/models/
      emb-20260301-101500-1a2b3c4d/   model.pkl, metadata.json, metrics.json, plots/*.png
      promoted.json                   {"history": [older, ..., current]}
      .lock

A version directory appears by ``os.rename`` of a finished staging directory, so readers never see half a
model. ``promoted.json`` is replaced atomically (write a temporary file, ``os.replace``) under an exclusive
``flock`` on ``.lock``, so two processes (a training CLI and the running service, or two trainings) cannot
lose each other's update. The current model is the last of the history; ``rollback`` drops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from nlu.model import FORMAT_VERSION

METADATA_FILE = "metadata.json"
POINTER_FILE = "promoted.json"
LOCK_FILE = ".lock"


class RegistryError(Exception):
    """Unknown version, nothing to roll back to, unreadable registry."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    version: str
    created_at: str  # ISO 8601, UTC
    data_hash: str
    metrics: dict[str, Any]
    promoted: bool
    path: Path
    n_train: int = 0
    n_heldout: int = 0
    data_sources: list[str] = field(default_factory=list)
    engine: str = "embedded"
    # Artifact format (nlu.model.FORMAT_VERSION when trained); 0 when the metadata predates the field.
    format_version: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data

    def write(self, directory: Path) -> None:
        data = self.to_dict()
        data.pop("path")
        data.pop("promoted")  # promotion lives in promoted.json, not in the immutable artifact
        (directory / METADATA_FILE).write_text(
            json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8"
        )

    @classmethod
    def read(cls, directory: Path, promoted: bool = False) -> ModelInfo:
        data = json.loads((directory / METADATA_FILE).read_text(encoding="utf-8"))
        return cls(
            version=str(data["version"]),
            created_at=str(data["created_at"]),
            data_hash=str(data.get("data_hash", "")),
            metrics=dict(data.get("metrics", {})),
            promoted=promoted,
            path=directory,
            n_train=int(data.get("n_train", 0)),
            n_heldout=int(data.get("n_heldout", 0)),
            data_sources=list(data.get("data_sources", [])),
            engine=str(data.get("engine", "embedded")),
            format_version=int(data.get("format_version", 0)),
        )


class ModelRegistry:
    def __init__(self, model_dir: Path) -> None:
        self.model_dir = Path(model_dir)

    # --- reading -------------------------------------------------------------------------------------

    def _history(self) -> list[str]:
        try:
            data = json.loads((self.model_dir / POINTER_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise RegistryError(f"cannot read {self.model_dir / POINTER_FILE}: {exc}") from None
        history = data.get("history", []) if isinstance(data, dict) else []
        return [str(v) for v in history]

    def _versions(self) -> list[str]:
        if not self.model_dir.is_dir():
            return []
        return [
            p.name
            for p in self.model_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / METADATA_FILE).is_file()
        ]

    def list_models(self) -> list[ModelInfo]:
        """Every complete version, oldest first."""
        promoted = set(self._history())
        infos = []
        for version in self._versions():
            try:
                infos.append(ModelInfo.read(self.model_dir / version, version in promoted))
            except (OSError, ValueError, KeyError):
                continue  # a damaged artifact is not a model
        return sorted(infos, key=lambda i: (i.created_at, i.version))

    def get(self, version: str) -> ModelInfo:
        directory = self.path_of(version)
        return ModelInfo.read(directory, version in self._history())

    def path_of(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise RegistryError(f"invalid model version {version!r}")
        directory = self.model_dir / version
        if not (directory / METADATA_FILE).is_file():
            raise RegistryError(f"no model {version!r} in {self.model_dir}")
        return directory

    def current(self) -> ModelInfo | None:
        """The promoted model: the newest promotion whose artifact exists and that this code can load (an
        artifact of another format, left by an older checkout, is skipped), or None."""
        for version in reversed(self._history()):
            try:
                info = self.get(version)
            except RegistryError:
                continue
            if info.format_version == FORMAT_VERSION:
                return info
        return None

    # --- writing -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.model_dir.mkdir(parents=True, exist_ok=True)
        with (self.model_dir / LOCK_FILE).open("a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _write_history(self, history: list[str]) -> None:
        tmp = self.model_dir / f".{POINTER_FILE}.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps({"history": history}, indent=2), encoding="utf-8")
        os.replace(tmp, self.model_dir / POINTER_FILE)

    def promote(self, version: str) -> ModelInfo:
        """Make ``version`` the current model (it moves to the end of the history)."""
        with self._locked():
            self.path_of(version)
            history = [v for v in self._history() if v != version] + [version]
            self._write_history(history)
        return self.get(version)

    def rollback(self) -> ModelInfo:
        """Drop the current promotion; the previously promoted model becomes current again."""
        with self._locked():
            history = [v for v in self._history() if (self.model_dir / v / METADATA_FILE).is_file()]
            if len(history) < 2:
                raise RegistryError("no previously promoted model to roll back to")
            history.pop()
            self._write_history(history)
        return self.get(history[-1])

    def unique_version(self, version: str) -> str:
        candidate, n = version, 1
        while (self.model_dir / candidate).exists():
            n += 1
            candidate = f"{version}-{n}"
        return candidate

    @contextlib.contextmanager
    def staging(self, version: str) -> Iterator[Path]:
        """A private directory that becomes ``model_dir/version`` (atomically) when the block succeeds."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        staging = self.model_dir / f".staging-{version}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            yield staging
            os.rename(staging, self.model_dir / version)  # fails if the version exists: never overwrite
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def with_promotion(self, info: ModelInfo) -> ModelInfo:
        return replace(info, promoted=info.version in self._history())
