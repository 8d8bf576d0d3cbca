"""The NLU as the rest of the service sees it: one object holding the current engine.

``build_nlu(settings)`` gives an ``NLUService`` over the promoted embedded model, or, with
``settings.nlu.engine == "rasa"``, over Rasa with the embedded engine as its fallback. ``reload()`` swaps in
the newest promoted model without a restart: the new engine is built completely first and then replaces the
old one in a single attribute assignment, so a concurrent ``parse`` uses either the old or the new engine,
never half of one. ``parse`` also notices, at most every few seconds, when another process (the CLI, the
staff console) promoted or rolled back a model, and reloads in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config.settings import Settings
from nlu.engine import EmbeddedEngine
from nlu.registry import POINTER_FILE, ModelInfo, ModelRegistry
from nlu.types import NLUEngine, NLUResult, NLUUnavailable

if TYPE_CHECKING:
    from nlu.rasa_engine import FallbackHook

log = logging.getLogger(__name__)

# How often ``parse`` looks at the registry's pointer file for a promotion made by another process.
WATCH_INTERVAL_S = 5.0


def ensure_model(settings: Settings) -> ModelInfo:
    """The promoted model; trains and promotes one first if there is none (``make run`` on a fresh clone)."""
    registry = ModelRegistry(settings.nlu.model_dir)
    current = registry.current()
    if current is not None:
        return current
    from nlu.training import train_model

    log.info("no promoted NLU model in %s: training one", settings.nlu.model_dir)
    return train_model(settings, promote=True)


def load_embedded(
    settings: Settings, registry: ModelRegistry | None = None
) -> tuple[EmbeddedEngine, ModelInfo]:
    registry = registry or ModelRegistry(settings.nlu.model_dir)
    info = registry.current()
    if info is None:
        raise NLUUnavailable(f"no promoted NLU model in {settings.nlu.model_dir}; run `tawasul nlu train`")
    return EmbeddedEngine.load(info.path, settings.nlu), info


class NLUService:
    """Holds the current engine; ``parse`` delegates to it."""

    def __init__(
        self,
        settings: Settings,
        engine: NLUEngine | None = None,
        info: ModelInfo | None = None,
        *,
        primary: NLUEngine | None = None,
        watch_interval_s: float = WATCH_INTERVAL_S,
        on_fallback: FallbackHook | None = None,
    ) -> None:
        self.settings = settings
        self.registry = ModelRegistry(settings.nlu.model_dir)
        self._engine = engine
        self._info = info
        self._primary = primary  # Rasa, when the embedded engine is its fallback
        self._on_fallback = on_fallback  # kept for the engines a reload builds
        self._watch_interval_s = watch_interval_s
        self._next_check = time.monotonic() + watch_interval_s
        self._pointer_mtime = self._pointer_stamp()
        self._lock = threading.Lock()
        self._reloading: asyncio.Task[Any] | None = None

    @property
    def engine(self) -> NLUEngine:
        if self._engine is None:
            raise NLUUnavailable(f"no promoted NLU model in {self.settings.nlu.model_dir}")
        return self._engine

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def model_version(self) -> str:
        return self._engine.model_version if self._engine is not None else ""

    @property
    def info(self) -> ModelInfo | None:
        """Registry entry of the embedded model in use."""
        return self._info

    async def parse(self, text: str) -> NLUResult:
        self._maybe_watch()
        return await self.engine.parse(text)

    def reload(self) -> ModelInfo | None:
        """Load the newest promoted model and swap it in; no-op when it is already the one in use."""
        with self._lock:
            self._pointer_mtime = self._pointer_stamp()
            info = self.registry.current()
            if info is None:
                return None
            if self._info is not None and self._info.version == info.version and self._engine is not None:
                return info
            embedded = EmbeddedEngine.load(info.path, self.settings.nlu)
            engine: NLUEngine = embedded
            if self._primary is not None:
                engine = _wrap_fallback(self._primary, embedded, self._on_fallback)
            self._engine, self._info = engine, info  # one assignment each; parse reads _engine once
            log.info("NLU model %s in use", info.version)
            return info

    async def reload_async(self) -> ModelInfo | None:
        return await asyncio.to_thread(self.reload)

    def _pointer_stamp(self) -> int:
        try:
            return (Path(self.settings.nlu.model_dir) / POINTER_FILE).stat().st_mtime_ns
        except OSError:
            return 0

    def _maybe_watch(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self._watch_interval_s
        if self._pointer_stamp() == self._pointer_mtime or self._reloading is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self.reload_async())
        self._reloading = task

        def done(t: asyncio.Task[Any]) -> None:
            self._reloading = None
            if not t.cancelled() and t.exception() is not None:
                log.error("NLU model reload failed: %s", t.exception())

        task.add_done_callback(done)


def _wrap_fallback(primary: NLUEngine, fallback: NLUEngine, on_fallback: FallbackHook | None) -> NLUEngine:
    from nlu.rasa_engine import FallbackEngine

    engine: NLUEngine = FallbackEngine(primary=primary, fallback=fallback, on_fallback=on_fallback)
    return engine


def build_nlu(settings: Settings, *, on_fallback: FallbackHook | None = None) -> NLUService:
    """The service's NLU: the promoted embedded model, behind Rasa when ``settings.nlu.engine == "rasa"``.
    ``on_fallback(primary, fallback)`` is called for each message the embedded engine answers for Rasa.

    Without a promoted model the service is still built; ``parse`` then raises ``NLUUnavailable`` until a
    model is trained and ``reload()`` (or the pointer watch) picks it up.
    """
    registry = ModelRegistry(settings.nlu.model_dir)
    embedded: EmbeddedEngine | None = None
    info: ModelInfo | None = None
    try:
        embedded, info = load_embedded(settings, registry)
    except NLUUnavailable as exc:
        log.warning("%s", exc)
    if settings.nlu.engine == "rasa":
        from nlu.rasa_engine import RasaEngine  # lazily: the Rasa client is not needed on embedded defaults

        rasa: NLUEngine = RasaEngine(settings)
        engine: NLUEngine | None = (
            _wrap_fallback(rasa, embedded, on_fallback) if embedded is not None else rasa
        )
        return NLUService(settings, engine, info, primary=rasa, on_fallback=on_fallback)
    return NLUService(settings, embedded, info)
