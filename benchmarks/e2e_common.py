"""Shared parts of the end-to-end benchmarks (``bench_inbound.py``, ``bench_fanout.py``).

* ``BenchTelegram``: the tests' ``FakeTelegram`` plus what a benchmark needs: an optional global send limit
  that the fake enforces itself (a sliding one-second window over accepted ``sendMessage`` calls, answered
  with 429 and ``retry_after`` like Telegram), a websocket that streams every accepted ``sendMessage`` to
  the load generator (``/bench/stream``), and ``/bench/stats`` / ``/bench/sent`` for the totals.
  It runs in its own process (``python benchmarks/e2e_common.py fake``) so the load generator does not
  take the fake's CPU. Receive times are ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every
  process on the machine), so they compare with the generator's send times.
* Process helpers: the ``tawasul`` command, a clean environment, start/stop with logs, ``/healthz`` waits,
  memory of a process from ``/proc/PID/status`` (VmRSS, VmHWM), CPU seconds of a process tree.
* Throwaway PostgreSQL databases (created and dropped here; the server at 127.0.0.1:5432, trust auth).
* ``ensure_model``: a promoted NLU model in ``var/bench-models`` (trained only when missing or stale).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiohttp import WSMsgType, web  # noqa: E402

from tawasul.db.scratch import DEFAULT_ADMIN_DSN, create_database, drop_database  # noqa: E402
from tests.fakes.fake_telegram import FakeTelegram, TelegramApiError, api_base_url, file_base_url  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BENCH_MODEL_DIR = ROOT / "var" / "bench-models"
PG_ADMIN_DSN = os.environ.get("TAWASUL_BENCH_PG_DSN", DEFAULT_ADMIN_DSN)
BOT_TOKEN = "123456789:BENCH-fake-token-for-benchmarks-01"
WEBHOOK_SECRET = "bench-webhook-secret-0123456789"
BACKEND_SECRET = "bench-backend-webhook-secret"  # signs status events (core backend -> bot)


# --- small numeric helpers --------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 1),
        "p90_ms": round(percentile(ms, 90), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "max_ms": round(max(ms), 1) if ms else 0.0,
        "mean_ms": round(statistics.fmean(ms), 1) if ms else 0.0,
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    import platform

    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}


# --- the fake Telegram server with a rate limit and a stream --------------------------------------------


class BenchTelegram(FakeTelegram):
    """``FakeTelegram`` that enforces a global send limit and streams sends; see the module docstring."""

    def __init__(self, *, rate_per_s: float | None = None, window_s: float = 1.0) -> None:
        super().__init__(token=BOT_TOKEN)
        self.rate_per_s = rate_per_s
        self.window_s = window_s
        self._window: deque[float] = deque()
        self.refused = 0  # 429s answered
        self.accepted_at: list[float] = []
        self.sent_log: list[tuple[int, float, str]] = []  # chat, monotonic time, visible text
        self._streams: set[web.WebSocketResponse] = set()

    async def start(self, port: int = 0) -> BenchTelegram:
        await super().start(port)
        assert self._runner is not None
        # The parent builds and freezes its app inside start(); the bench endpoints get their own port.
        app = web.Application()
        app.router.add_get("/bench/stream", self._stream)
        app.router.add_get("/bench/stats", self._stats)
        app.router.add_get("/bench/sent", self._sent)
        self._bench_runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._bench_runner.setup()
        site = web.TCPSite(self._bench_runner, "127.0.0.1", 0)
        await site.start()
        self.bench_port = int(self._bench_runner.addresses[0][1])
        return self

    async def close(self) -> None:
        for ws in list(self._streams):
            await ws.close()
        await self._bench_runner.cleanup()
        await super().close()

    async def _m_sendMessage(self, params: dict[str, Any]) -> Any:
        now = time.monotonic()
        if self.rate_per_s is not None:
            while self._window and self._window[0] <= now - self.window_s:
                self._window.popleft()
            if len(self._window) >= self.rate_per_s:
                self.refused += 1
                retry = max(1, math.ceil(self._window[0] + self.window_s - now))
                raise TelegramApiError(
                    429, f"Too Many Requests: retry after {retry}", {"retry_after": retry}
                )
        message = await super()._m_sendMessage(params)  # may raise 400 (bad HTML, empty...): not counted
        if self.rate_per_s is not None:
            self._window.append(now)
        self.accepted_at.append(now)
        chat_id = int(message["chat"]["id"])
        self.sent_log.append((chat_id, now, message["text"]))
        if self._streams:
            event = json.dumps(
                {
                    "chat": chat_id,
                    "t": now,
                    "mid": message["message_id"],
                    "text": message["text"],
                    "markup": params.get("reply_markup"),
                },
                ensure_ascii=False,
            )
            for ws in list(self._streams):
                if not ws.closed:
                    await ws.send_str(event)
        return message

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=0)
        await ws.prepare(request)
        self._streams.add(ws)
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        finally:
            self._streams.discard(ws)
        return ws

    def max_in_window(self, window_s: float = 1.0) -> int:
        """Most accepted sends in any sliding window of ``window_s`` seconds."""
        best, start = 0, 0
        times = self.accepted_at
        for end in range(len(times)):
            while times[end] - times[start] >= window_s:
                start += 1
            best = max(best, end - start + 1)
        return best

    async def _stats(self, request: web.Request) -> web.Response:
        methods = Counter(c.method for c in self.calls)
        times = self.accepted_at
        return web.json_response(
            {
                "sent": len(times),
                "refused_429": self.refused,
                "calls": dict(methods),
                "first_send": times[0] if times else None,
                "last_send": times[-1] if times else None,
                "max_sends_in_1s": self.max_in_window(1.0),
                "rate_per_s": self.rate_per_s,
                "webhook": self.webhook,
            }
        )

    async def _sent(self, request: web.Request) -> web.Response:
        return web.json_response([[c, t, text] for c, t, text in self.sent_log])


async def _fake_main(rate: float | None) -> None:
    fake = await BenchTelegram(rate_per_s=rate).start()
    print(f"FAKE {fake.port} {fake.bench_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fake.close()


@dataclass
class FakeProcess:
    proc: subprocess.Popen[str]
    port: int
    bench_port: int

    @property
    def base_url(self) -> str:
        return api_base_url(self.port)

    @property
    def file_base_url(self) -> str:
        return file_base_url(self.port)

    @property
    def bench_url(self) -> str:
        return f"http://127.0.0.1:{self.bench_port}"

    def stop(self) -> None:
        stop_process(self.proc)


def start_fake(rate: float | None = None) -> FakeProcess:
    cmd = [sys.executable, str(Path(__file__).resolve()), "fake"]
    if rate is not None:
        cmd += ["--rate", str(rate)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=clean_env())
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if len(line) != 3 or line[0] != "FAKE":
        stop_process(proc)
        raise RuntimeError(f"fake Telegram did not start: {line}")
    return FakeProcess(proc, int(line[1]), int(line[2]))


# --- processes ----------------------------------------------------------------------------------------


def tawasul_command() -> list[str]:
    script = Path(sys.executable).with_name("tawasul")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tawasul.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without TAWASUL_/TELEGRAM_/WHATSAPP_ variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAWASUL_", "TELEGRAM_", "WHATSAPP_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Spawned:
    proc: subprocess.Popen[bytes]
    log_path: Path
    started_at: float  # monotonic, just before Popen
    log_file: IO[bytes] = field(repr=False)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]

    def stop(self, timeout: float = 40.0) -> int | None:
        code = stop_process(self.proc, timeout)
        self.log_file.close()
        return code


def spawn(args: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> Spawned:
    log_file = log_path.open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd,
        start_new_session=True,  # our own process group: a supervisor's workers get the signal too
    )
    return Spawned(proc, log_path, started, log_file)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 40.0) -> int | None:
    """SIGTERM (a clean shutdown drains the outbox), SIGKILL after ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


async def wait_healthy(url: str, spawned: Spawned, limit_s: float = 120.0, interval: float = 0.02) -> float:
    """Poll ``url``/healthz until 200; return monotonic seconds since the process was started."""
    import aiohttp

    deadline = time.monotonic() + limit_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if spawned.proc.poll() is not None:
                raise RuntimeError(f"process exited with {spawned.proc.returncode}:\n{spawned.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        return time.monotonic() - spawned.started_at
            await asyncio.sleep(interval)
    raise RuntimeError(f"{url}/healthz did not answer 200 in {limit_s:.0f} s:\n{spawned.log_tail()}")


async def wait_for_line(spawned: Spawned, needle: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if needle in spawned.log_path.read_text(encoding="utf-8", errors="replace"):
            return
        if spawned.proc.poll() is not None:
            raise RuntimeError(f"process exited with {spawned.proc.returncode}:\n{spawned.log_tail()}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{needle!r} not logged in {limit_s:.0f} s:\n{spawned.log_tail()}")


def proc_memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process from /proc, in MB."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def service_pids(root_pid: int) -> list[int]:
    """The processes that serve: the children of a supervisor (``--workers N``), else the root itself."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        children = root.children(recursive=True)
    except psutil.Error:
        return []
    workers = [c.pid for c in children if "python" in (c.name() or "") or "tawasul" in " ".join(c.cmdline())]
    return workers or [root_pid]


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live children."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    except psutil.Error:
        pass  # the process tree ended while we read it: what was summed so far stands
    return total


def postgres_cpu_s(databases: list[str] | None = None) -> float:
    """CPU seconds of the PostgreSQL backends serving ``databases`` (database names or URLs; a backend's
    command line names its database), or of every PostgreSQL process when None. The server is shared with
    other jobs, so pass the benchmark's databases; read it as a difference (a backend that exits takes its
    CPU seconds with it)."""
    import psutil

    names = [d.rsplit("/", 1)[-1] for d in databases or []]
    total = 0.0
    for p in psutil.process_iter(["name", "cmdline"]):
        if not (p.info.get("name") or "").startswith("postgres"):
            continue
        cmdline = " ".join(p.info.get("cmdline") or [])
        if names and not any(f" {name} " in f" {cmdline} " for name in names):
            continue
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


async def pg_xact_commits(url: str) -> int:
    """Transactions committed in the database of ``url`` so far (``pg_stat_database``; statistics lag by up to
    half a second, so read it after the load has settled)."""
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        value = await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
                                    url.rsplit("/", 1)[-1])
    finally:
        await conn.close()
    return int(value or 0)


# --- PostgreSQL throwaway databases -------------------------------------------------------------------


async def pg_create(prefix: str = "tawasul_bench") -> str:
    return await create_database(PG_ADMIN_DSN, prefix=prefix)


async def pg_drop(url: str) -> None:
    await drop_database(url, PG_ADMIN_DSN)


# --- the NLU model ------------------------------------------------------------------------------------


def ensure_model(model_dir: Path = BENCH_MODEL_DIR) -> Path:
    """A promoted model trained on today's data in ``model_dir`` (trained here only when missing/stale)."""
    from config import load_settings
    from nlu.dataset import load_dataset
    from nlu.registry import ModelRegistry
    from nlu.training import train_model

    base = load_settings(env={})
    settings = base.model_copy(update={"nlu": base.nlu.model_copy(update={"model_dir": model_dir})})
    current = ModelRegistry(model_dir).current()
    if current is None or current.data_hash != load_dataset(settings).data_hash:
        print(f"training an NLU model in {model_dir} ...", file=sys.stderr, flush=True)
        train_model(settings, promote=True)
    return model_dir


def bot_env(
    *,
    port: int,
    db_url: str,
    backend_url: str,
    fake: FakeProcess,
    model_dir: Path,
    work: Path,
    **extra: str,
) -> dict[str, str]:
    """Environment of ``tawasul run --no-shell``: Telegram in webhook mode at the fake, the core backend
    remote, the benchmark's model, nothing from the caller's TAWASUL_* settings."""
    return clean_env(
        TAWASUL_SERVER__PORT=str(port),
        TAWASUL_PUBLIC_URL=f"http://127.0.0.1:{port}",
        TAWASUL_DATABASE_URL=db_url,
        TAWASUL_BACKEND_MODE="remote",
        TAWASUL_BACKEND_URL=backend_url,
        TAWASUL_BACKEND_WEBHOOK_SECRET=BACKEND_SECRET,
        TAWASUL_MODEL_DIR=str(model_dir),
        TAWASUL_NLU__TRAIN_IF_MISSING="false",
        TAWASUL_NLU__REVIEWED_DATA_DIR=str(work / "reviewed"),
        TELEGRAM_BOT_TOKEN=BOT_TOKEN,
        TELEGRAM_API_BASE_URL=fake.base_url,
        TELEGRAM_API_FILE_BASE_URL=fake.file_base_url,
        TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET,
        TELEGRAM_MODE="webhook",
        **extra,
    )


def backend_env(*, db_url: str, **extra: str) -> dict[str, str]:
    return clean_env(
        TAWASUL_BACKEND__DATABASE_URL=db_url,
        TAWASUL_BACKEND_WEBHOOK_SECRET=BACKEND_SECRET,
        **extra,
    )


def _finite(value: Any) -> Any:
    """JSON has no infinity: an update never answered is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_results(name: str, result: dict[str, Any], markdown: str, out_dir: Path = RESULTS) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(result), indent=2, ensure_ascii=False, allow_nan=False)
    (out_dir / f"{name}.json").write_text(text + "\n", encoding="utf-8")
    (out_dir / f"{name}.md").write_text(markdown, encoding="utf-8")


def _profiled_worker(out: str, argv: list[str]) -> int:
    """``tawasul <argv>`` with cProfile switched on by SIGUSR1 and off (stats written to ``out``) by SIGUSR2,
    so only the load phase is profiled, not start-up."""
    import cProfile

    from tawasul.cli import main as tawasul_main

    # CPU time, not wall time: on a shared machine, time spent preempted must not count as work.
    profiler = cProfile.Profile(time.process_time)

    def on(signum: int, frame: object) -> None:
        profiler.enable()

    def off(signum: int, frame: object) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    sys.argv = ["tawasul", *argv]
    return int(tawasul_main() or 0)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "profiled-worker":
        sys.exit(_profiled_worker(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser(description="run the benchmark fake Telegram server")
    parser.add_argument("role", choices=["fake"])
    parser.add_argument("--rate", type=float, default=None, help="enforced sendMessage limit per second")
    args = parser.parse_args()
    asyncio.run(_fake_main(args.rate))


if __name__ == "__main__":
    main()
