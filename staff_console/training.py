"""Retraining in the background, with progress every worker can read, and the model registry's actions.

A training runs in a child process (spawned, so the event loop and the server's threads are not forked)
when the trainer can be pickled, else in a thread. Progress goes to a small JSON status file next to the
model registry, so a poll answered by another worker process sees it too; an exclusive ``flock`` on a
lock file keeps to one training at a time across all workers of the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import json
import logging
import multiprocessing
import os
import pickle
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from config import Settings
from nlu.registry import RegistryError
from staff_console.deps import StaffDeps, Trainer
from staff_console.export import export_reviewed
from tawasul.privacy import redact

log = logging.getLogger(__name__)

STATUS_FILE = ".staff-training.json"
LOCK_FILE = ".staff-training.lock"


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def write_status(path: Path, status: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-status-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(status, fh)
    os.replace(tmp, path)


def read_status(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"state": "idle"}
    return data if isinstance(data, dict) else {"state": "idle"}


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return redact(text)[:300]


def _train_entry(
    trainer: Trainer,
    settings: Settings,
    extra_dirs: Sequence[Path],
    promote: bool,
    status_path: str,
    base: dict[str, Any],
) -> None:
    """Runs in the child process (or thread): train, reporting progress into the status file."""
    path = Path(status_path)
    last_at, last_stage = 0.0, ""

    def progress(stage: str, fraction: float) -> None:
        nonlocal last_at, last_stage
        now = time.monotonic()
        # Throttled: a trainer may report thousands of steps.
        if stage == last_stage and now - last_at < 0.25 and fraction < 1.0:
            return
        last_at, last_stage = now, stage
        write_status(
            path,
            {
                **base,
                "state": "running",
                "stage": str(stage)[:80],
                "fraction": max(0.0, min(1.0, float(fraction))),
            },
        )

    # Any failure is reported through the status file, without a traceback (it may quote data).
    try:
        info = trainer(settings, extra_dirs=tuple(extra_dirs), progress=progress, promote=promote)
    except Exception as exc:
        log.error("training failed: %s", _short_error(exc))
        write_status(path, {**base, "state": "failed", "error": _short_error(exc), "finished_at": _now_iso()})
        return
    write_status(
        path,
        {
            **base,
            "state": "trained",
            "stage": "done",
            "fraction": 1.0,
            "version": str(getattr(info, "version", "") or ""),
        },
    )


def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
    except (pickle.PicklingError, TypeError, AttributeError):
        return False
    return True


class TrainingRunner:
    def __init__(self, deps: StaffDeps) -> None:
        self.deps = deps
        self.status_path = deps.registry_dir / STATUS_FILE
        self.lock_path = deps.registry_dir / LOCK_FILE
        self._lock_fh: IO[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._process: multiprocessing.process.BaseProcess | None = None

    # -- status -----------------------------------------------------------------------------------
    def _lock_held_elsewhere(self) -> bool:
        if self._lock_fh is not None:
            return False
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.lock_path, "a+", encoding="utf-8") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fh, fcntl.LOCK_UN)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False

    def status(self) -> dict[str, Any]:
        status = read_status(self.status_path)
        # Running according to the file, but nobody holds the lock: the worker that trained died.
        if (
            status.get("state") in ("running", "trained")
            and self._lock_fh is None
            and not self._lock_held_elsewhere()
        ):
            status = {**status, "state": "failed", "error": "interrupted"}
        status["running"] = status.get("state") in ("running", "trained")
        return status

    @property
    def running(self) -> bool:
        return bool(self.status()["running"])

    # -- start ------------------------------------------------------------------------------------
    async def start(self, *, promote: bool, started_by: str) -> bool:
        """Export reviewed items and start training; False when a training is already running."""
        fh = self._try_lock()
        if fh is None:
            return False
        self._lock_fh = fh
        base = {
            "started_at": _now_iso(),
            "started_by": started_by,
            "promote": promote,
            "version": None,
            "error": None,
            "finished_at": None,
        }
        write_status(self.status_path, {**base, "state": "running", "stage": "export", "fraction": 0.0})
        self._task = asyncio.create_task(self._run(promote, base))
        return True

    def _try_lock(self) -> IO[str] | None:
        """The training lock (held for the training's life), or None when another training holds it."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open while training
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return None
        return fh

    async def _run(self, promote: bool, base: dict[str, Any]) -> None:
        try:
            reviewed_dir = self.deps.reviewed_dir()
            result = await export_reviewed(self.deps.sessionmaker, reviewed_dir)
            base = {**base, "exported": result.examples}
            trainer = self.deps.resolve_trainer()
            args = (trainer, self.deps.settings, (reviewed_dir,), promote, str(self.status_path), base)
            if _picklable(args):
                await self._run_process(args)
            else:
                await asyncio.to_thread(_train_entry, *args)
            status = read_status(self.status_path)
            if status.get("state") != "trained":
                raise RuntimeError(status.get("error") or "training did not finish")
            if promote and self.deps.nlu_reload is not None:
                write_status(self.status_path, {**status, "stage": "reload", "fraction": 1.0})
                await self.deps.nlu_reload()
            write_status(
                self.status_path,
                {**status, "state": "done", "stage": "done", "fraction": 1.0, "finished_at": _now_iso()},
            )
            log.info("training finished: model %s (promote=%s)", status.get("version"), promote)
        except asyncio.CancelledError:
            write_status(
                self.status_path, {**base, "state": "failed", "error": "cancelled", "finished_at": _now_iso()}
            )
            raise
        except Exception as exc:
            current = read_status(self.status_path)
            error = current.get("error") if current.get("state") == "failed" else _short_error(exc)
            write_status(
                self.status_path, {**base, "state": "failed", "error": error, "finished_at": _now_iso()}
            )
            log.error("training failed: %s", error)
        finally:
            self._release()

    async def _run_process(self, args: tuple[Any, ...]) -> None:
        ctx = multiprocessing.get_context("spawn")
        process = ctx.Process(target=_train_entry, args=args, name="staff-training", daemon=True)
        process.start()
        self._process = process
        try:
            # A child process cannot set an asyncio.Event; polling its liveness is the simple way.
            while process.is_alive():  # noqa: ASYNC110
                await asyncio.sleep(0.2)
            process.join()
        finally:
            if process.is_alive():
                process.terminate()
                await asyncio.to_thread(process.join, 5)
            self._process = None
        if process.exitcode != 0:
            status = read_status(self.status_path)
            if status.get("state") != "failed":
                raise RuntimeError(f"training process exited with status {process.exitcode}")

    def _release(self) -> None:
        if self._lock_fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._release()


# -- the model registry -------------------------------------------------------------------------------
def _registry(registry_dir: Path) -> Any:
    from nlu.registry import ModelRegistry

    return ModelRegistry(registry_dir)


def models_snapshot(registry_dir: Path) -> tuple[list[Any], str | None]:
    """(model versions newest first, the current version). ``ModelInfo.promoted`` marks every version
    ever promoted; the current one is the registry's ``current()``."""
    registry = _registry(registry_dir)
    models = list(registry.list_models())
    models.sort(key=lambda m: (str(getattr(m, "created_at", "")), str(m.version)), reverse=True)
    current = registry.current()
    return models, (str(current.version) if current is not None else None)


def promote(registry_dir: Path, version: str) -> None:
    _registry(registry_dir).promote(version)


def rollback(registry_dir: Path) -> Any:
    return _registry(registry_dir).rollback()


# What a missing, damaged or refusing registry raises.
REGISTRY_ERRORS: tuple[type[Exception], ...] = (RegistryError, OSError, ValueError)
