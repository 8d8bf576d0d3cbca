"""`tawasul run --workers N`: a small supervisor of N worker processes behind one port.

Each worker is a plain `tawasul run --no-shell` with ``TAWASUL_SERVER__REUSE_PORT=true`` (SO_REUSEPORT: the
kernel spreads connections over the processes bound to host:port) and ``TAWASUL_WORKER_ID=i``. Everything
they must agree on already lives in PostgreSQL (conversation state, dedup, the outbox with SKIP LOCKED,
platform send budgets), so the supervisor only starts them, forwards SIGTERM/SIGINT, restarts one that
dies, and gives up (exit 1) when a worker keeps crashing. Prometheus counters are aggregated across the
workers through prometheus-client's multiprocess mode: a fresh ``PROMETHEUS_MULTIPROC_DIR`` per supervisor,
removed at exit.

Not gunicorn: its aiohttp worker wants an app factory, while a worker here is the whole service (channels,
outbox, sweeper, event poller) with its own start-up and drain; a process per worker and asyncio's
subprocess support are all this needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from config import ConfigError, Settings

log = logging.getLogger("tawasul.supervisor")

# A worker that ran less than STABLE_S counts as a rapid failure; at MAX_RAPID_FAILURES of those in a
# row the supervisor gives up. Restart waits BACKOFF_BASE_S * 2**(failures - 1), capped.
STABLE_S = 60.0
MAX_RAPID_FAILURES = 5
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 30.0
# A worker drains the outbox job in hand and the platform updates already taken (30 s each at most);
# one still running after this is killed.
STOP_TIMEOUT_S = 75.0
# A worker's configuration error does not go away by restarting it.
CONFIG_ERROR_EXIT = 2
# Ctrl-C reaches the workers too (one process group); one still starting exits through KeyboardInterrupt.
INTERRUPTED_EXIT = 130


def check_workers(settings: Settings, workers: int) -> None:
    """Refuse, in one readable line, a configuration that several workers cannot share."""
    if workers <= 1:
        return
    problems: list[str] = []
    if not settings.database.url.startswith("postgresql"):
        problems.append(
            "database.url must be PostgreSQL (TAWASUL_DATABASE_URL=postgresql+asyncpg://...): "
            "SQLite allows one writing process"
        )
    if settings.backend.mode != "remote":
        problems.append(
            "backend.mode must be 'remote' (TAWASUL_BACKEND_MODE=remote, TAWASUL_BACKEND_URL=...): the "
            "embedded reference backend belongs to one process; run `tawasul backend serve` separately"
        )
    if settings.telegram.enabled and _telegram_polls(settings):
        problems.append(
            "Telegram must use its webhook (set TAWASUL_PUBLIC_URL, or TELEGRAM_MODE=webhook with it): "
            "getUpdates polling allows one consumer per bot"
        )
    if settings.server.port == 0:
        problems.append("server.port must be fixed: port 0 gives every worker a different free port")
    if problems:
        raise ConfigError(f"invalid configuration for {workers} workers: " + "; ".join(problems))


def _telegram_polls(settings: Settings) -> bool:
    from bot.telegram import webhook_url

    try:
        return webhook_url(settings.telegram, settings.server) is None
    except ValueError:  # mode webhook without a public URL: polling is not what happens, but it cannot work
        return True


def worker_command() -> list[str]:
    """What a worker runs: this interpreter's `tawasul run --no-shell` (same environment, see ``_env``)."""
    return [sys.executable, "-m", "tawasul.cli", "run", "--no-shell", "--workers", "1"]


class Supervisor:
    def __init__(self, workers: int, command: list[str], env: dict[str, str], metrics_dir: Path) -> None:
        self.workers = workers
        self.command = command
        self.env = env
        self.metrics_dir = metrics_dir
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        self._killer: asyncio.Task[None] | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop, sig)
        slots = [asyncio.create_task(self._keep(i), name=f"worker-{i}") for i in range(self.workers)]
        try:
            clean = await asyncio.gather(*slots)
        finally:
            if self._killer is not None:
                self._killer.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return 0 if all(clean) else 1

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Forward a stop to every worker (SIGTERM: each drains and exits); kill stragglers later."""
        if not self._stopping.is_set():
            log.info("stopping %d workers (%s)", len(self.procs), signal.Signals(sig).name)
            self._stopping.set()
            self._killer = asyncio.create_task(self._kill_after(STOP_TIMEOUT_S))
        for proc in list(self.procs.values()):
            _signal(proc, signal.SIGTERM)

    async def _kill_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        for i, proc in list(self.procs.items()):
            log.error("worker %d (pid %d) still running after %.0fs: killing it", i, proc.pid, seconds)
            _signal(proc, signal.SIGKILL)

    async def _keep(self, slot: int) -> bool:
        """Run worker ``slot`` until the supervisor stops; False when it stopped uncleanly or kept crashing."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            env = {**self.env, "TAWASUL_WORKER_ID": str(slot)}
            try:
                proc = await asyncio.create_subprocess_exec(*self.command, env=env,
                                                            stdin=asyncio.subprocess.DEVNULL)
            except OSError as exc:
                log.error("worker %d could not be started: %s", slot, exc)
                self.stop()
                return False
            self.procs[slot] = proc
            log.info("worker %d started (pid %d)", slot, proc.pid)
            if self._stopping.is_set():  # the signal came while it was being spawned
                _signal(proc, signal.SIGTERM)
            started = loop.time()
            code = await proc.wait()
            del self.procs[slot]
            # Its live gauges go; its counters stay in the totals (prometheus-client multiprocess mode).
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(proc.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
            if self._stopping.is_set():
                clean = code in (0, INTERRUPTED_EXIT, -signal.SIGTERM, -signal.SIGINT)
                (log.info if clean else log.error)("worker %d (pid %d) exited with %s",
                                                   slot, proc.pid, _status(code))
                return clean
            if code == CONFIG_ERROR_EXIT:
                log.error("worker %d (pid %d) stopped on a configuration error: giving up",
                          slot, proc.pid)
                self.stop()
                return False
            failures = failures + 1 if loop.time() - started < STABLE_S else 1
            if failures >= MAX_RAPID_FAILURES:
                log.error("worker %d (pid %d) exited with %s, %d times in a row within %.0fs of starting: "
                          "giving up", slot, proc.pid, _status(code), failures, STABLE_S)
                self.stop()
                return False
            delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (failures - 1))
            log.warning("worker %d (pid %d) exited unexpectedly with %s; restarting in %.0fs",
                        slot, proc.pid, _status(code), delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            if self._stopping.is_set():
                return True


def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


def _status(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-code).name
    return f"status {code}"


def _prepare(settings: Settings, env: dict[str, str]) -> int:
    """What must happen once and not N times at once: migrations, and a first model on a fresh checkout."""
    import subprocess

    base = [sys.executable, "-m", "tawasul.cli"]
    code = subprocess.run([*base, "db", "upgrade"], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, check=False).returncode
    if code != 0:
        return code
    if settings.nlu.train_if_missing:
        from nlu.registry import ModelRegistry

        if ModelRegistry(settings.nlu.model_dir).current() is None:
            log.info("no promoted NLU model in %s: training one before starting the workers",
                     settings.nlu.model_dir)
            code = subprocess.run([*base, "nlu", "train", "--quiet"], env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, check=False).returncode
    return code


def connection_budget_problem(workers: int, pool_size: int, max_connections: int, reserved: int) -> str | None:
    """What to do when N workers' pools could take more connections than the server allows, else None. Each
    worker holds up to 3 x pool_size (README "PostgreSQL connections"); 5 more for CLI commands."""
    wanted = workers * 3 * pool_size + 5
    allowed = max_connections - reserved
    if wanted <= allowed:
        return None
    fitting = max(1, (allowed - 5) // (3 * workers))
    return (f"{workers} workers x 3 x database.pool_size {pool_size} (+5) = {wanted} connections, but the server "
            f"allows {allowed} (max_connections {max_connections} - {reserved} reserved): under load statements "
            f"will fail with 'too many clients'. Set TAWASUL_DATABASE__POOL_SIZE={fitting}, raise max_connections, "
            "or put PgBouncer in front")


async def _server_connection_limits(url: str) -> tuple[int, int]:
    import asyncpg

    from tawasul.db.raw import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        limit = int(await conn.fetchval("SHOW max_connections"))
        reserved = int(await conn.fetchval("SHOW superuser_reserved_connections"))
    finally:
        await conn.close()
    return limit, reserved


def check_connection_budget(settings: Settings, workers: int) -> str | None:
    """``connection_budget_problem`` against the server's own limits (None when they cannot be read)."""
    try:
        limit, reserved = asyncio.run(_server_connection_limits(settings.database.url))
    except Exception as exc:  # the workers will report an unreachable database themselves
        log.debug("could not read the server's connection limits (%s)", type(exc).__name__)
        return None
    return connection_budget_problem(workers, settings.database.pool_size, limit, reserved)


def supervise(settings: Settings, workers: int) -> int:
    """`tawasul run --workers N` with N > 1 (after ``check_workers``)."""
    from tawasul.logging import setup_logging

    setup_logging(settings.logging)
    metrics_dir = Path(tempfile.mkdtemp(prefix="tawasul-metrics-"))
    env = {
        **os.environ,
        "TAWASUL_SERVER__REUSE_PORT": "true",
        "TAWASUL_SERVER__WORKERS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    try:
        code = _prepare(settings, env)
        if code != 0:
            return code
        problem = check_connection_budget(settings, workers)
        if problem is not None:  # a warning, not a refusal: pools open lazily and the server may be tuned later
            log.warning("PostgreSQL connections: %s", problem)
        print(f"Tawasul Bot: {workers} workers on {settings.server.host}:{settings.server.port} "
              f"(supervisor pid {os.getpid()}); no terminal chat with several workers, "
              "attach one with `tawasul shell`", file=sys.stderr, flush=True)
        return asyncio.run(Supervisor(workers, worker_command(), env, metrics_dir).run())
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
