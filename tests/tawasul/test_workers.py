"""`tawasul run --workers N`: start-up validation (one readable line, exit 2), a real two-worker run on one port
(SO_REUSEPORT) sharing a throwaway PostgreSQL database and a standalone reference backend, metrics aggregated
across the workers, a SIGKILLed worker restarted, SIGTERM stopping everything; and the supervisor's restart
and give-up rules on small stand-in worker commands."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from config import ConfigError
from config.settings import Settings
from tawasul import workers
from tawasul.workers import Supervisor
from tests.bot.test_run_command import service_env, tawasul_command
from tests.support import free_port

# Bounds on a hung process only (start-up imports torch and loads the model; two loaded cores, N workers).
START_S = 150.0
WELCOME = "أهلاً بك في تواصل"
PG_UNUSED = "postgresql+asyncpg://postgres@127.0.0.1:5432/never_connected_to"


async def run_cli(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *tawasul_command(), *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd,
    )
    _, err = await asyncio.wait_for(proc.communicate(), START_S)
    assert proc.returncode is not None
    return proc.returncode, err.decode(errors="replace")


# --------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("extra", "args", "expected", "not_expected"),
    [
        pytest.param({}, ["--workers", "2"], ["database.url must be PostgreSQL", "SQLite allows one writing process"],
                     ["Telegram"], id="sqlite"),
        pytest.param({"TAWASUL_DATABASE_URL": PG_UNUSED, "TAWASUL_SERVER__WORKERS": "3"}, [],
                     ["3 workers", "backend.mode must be 'remote'", "run `tawasul backend serve` separately"],
                     ["database.url", "Telegram"], id="embedded-backend-via-setting"),
        pytest.param({"TAWASUL_DATABASE_URL": PG_UNUSED, "TAWASUL_BACKEND_MODE": "remote",
                      "TELEGRAM_BOT_TOKEN": "123456:test-token"}, ["--workers", "2"],
                     ["Telegram must use its webhook", "getUpdates polling allows one consumer per bot"],
                     ["database.url", "backend.mode"], id="telegram-polling"),
    ],
)
async def test_settings_several_workers_cannot_share_are_refused_in_one_line(
    tmp_path: Path, trained_nlu_dir: Path, extra: dict[str, str], args: list[str], expected: list[str],
    not_expected: list[str],
) -> None:
    code, err = await run_cli(service_env(tmp_path, trained_nlu_dir, **extra), tmp_path, "run", *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tawasul: invalid configuration for "), err
    for fragment in expected:
        assert fragment in err, err
    for fragment in not_expected:
        assert fragment not in err, err
    assert not (tmp_path / "bot.db").exists(), "nothing may start before the configuration is accepted"


def test_telegram_in_webhook_mode_passes_the_check() -> None:
    base = Settings()
    ok = base.model_copy(update={
        "database": base.database.model_copy(update={"url": PG_UNUSED}),
        "backend": base.backend.model_copy(update={"mode": "remote"}),
        "server": base.server.model_copy(update={"public_url": "https://bot.example.bh"}),
        "telegram": base.telegram.model_copy(update={"bot_token": SecretStr("123456:test-token")}),
    })
    workers.check_workers(ok, 4)  # no ConfigError
    polling = ok.model_copy(update={"telegram": ok.telegram.model_copy(update={"mode": "polling"})})
    with pytest.raises(ConfigError, match="Telegram must use its webhook"):
        workers.check_workers(polling, 4)
    workers.check_workers(polling, 1)  # one process may poll


def test_connection_budget_against_the_servers_limits(pg_url: str) -> None:
    """Pools that could exceed the server's connections are named with the setting that fits; the limits
    are read from the real server (this machine's: max_connections 100, 3 reserved)."""
    assert workers.connection_budget_problem(2, 10, 100, 3) is None  # 65 <= 97
    problem = workers.connection_budget_problem(4, 10, 100, 3)  # 125 > 97
    assert problem is not None and "TAWASUL_DATABASE__POOL_SIZE=7" in problem, problem
    base = Settings()
    settings = base.model_copy(update={"database": base.database.model_copy(update={"url": pg_url})})
    found = workers.check_connection_budget(settings, 40)
    assert found is not None and "max_connections" in found, found
    assert workers.check_connection_budget(settings, 1) is None
    unreachable = base.model_copy(update={"database": base.database.model_copy(update={"url": PG_UNUSED})})
    assert workers.check_connection_budget(unreachable, 40) is None  # the workers report that themselves


# --------------------------------------------------------------------------------------- a real run


class Cluster:
    """The supervisor's port, seen from outside: every request on a new connection, so the kernel picks a
    worker each time (a kept-alive connection would stay with one)."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def healthz(self) -> dict[str, Any]:
        async with self.http.get(f"{self.url}/healthz") as resp:
            assert resp.status == 200
            body: dict[str, Any] = await resp.json()
            assert resp.headers["X-Tawasul-Worker"] == body["worker"]
            return body

    async def say(self, sender: str, text: str) -> tuple[str, list[dict[str, Any]]]:
        async with self.http.post(f"{self.url}/chat/api/send", json={"sender": sender, "text": text}) as resp:
            assert resp.status == 200, await resp.text()
            return resp.headers["X-Tawasul-Worker"], (await resp.json())["messages"]

    async def poll(self, sender: str) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.url}/chat/api/poll", params={"sender": sender}) as resp:
            assert resp.status == 200, await resp.text()
            messages: list[dict[str, Any]] = (await resp.json())["messages"]
            return messages

    async def metrics(self) -> tuple[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
        async with self.http.get(f"{self.url}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
            worker = resp.headers["X-Tawasul-Worker"]
        samples = {(s.name, frozenset(s.labels.items())): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        return worker, samples


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and wanted <= lbl)


def live_worker_pids(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> set[int]:
    return {int(dict(lbl)["pid"]) for (n, lbl) in samples if n == "tawasul_worker_start_time_seconds"}


@contextlib.asynccontextmanager
async def reference_backend(env: dict[str, str], cwd: Path, port: int, events_url: str) -> AsyncIterator[None]:
    proc = await asyncio.create_subprocess_exec(
        *tawasul_command(), "backend", "serve", "--port", str(port), "--webhook-url", events_url,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=env, cwd=cwd,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), START_S)
        assert line.startswith(b"core backend listening on"), line + await proc.stdout.read(4000)
        yield
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_two_workers_share_the_port_and_postgresql_and_are_supervised(
    tmp_path: Path, trained_nlu_dir: Path, pg_url: str
) -> None:
    port, backend_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    (tmp_path / "tmp").mkdir()
    env = service_env(
        tmp_path, trained_nlu_dir,
        TAWASUL_DATABASE_URL=pg_url,
        TAWASUL_BACKEND_MODE="remote",
        TAWASUL_BACKEND_URL=f"http://127.0.0.1:{backend_port}",
        TAWASUL_SERVER__PORT=str(port),
        TMPDIR=str(tmp_path / "tmp"),  # where the supervisor makes its PROMETHEUS_MULTIPROC_DIR
    )
    stderr = tmp_path / "stderr.txt"

    def err_text() -> str:
        return stderr.read_text(encoding="utf-8", errors="replace")

    async with reference_backend(env, tmp_path, backend_port, f"{url}/backend/events"):
        with stderr.open("wb") as err_file:
            supervisor = await asyncio.create_subprocess_exec(
                *tawasul_command(), "run", "--workers", "2", stdin=asyncio.subprocess.DEVNULL,
                stdout=err_file, stderr=err_file, env=env, cwd=tmp_path,
            )
        loop = asyncio.get_running_loop()
        connector = aiohttp.TCPConnector(force_close=True)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
                cluster = Cluster(http, url)

                async def until(condition: Any, what: str) -> Any:
                    deadline = loop.time() + START_S
                    while True:
                        assert supervisor.returncode is None, f"supervisor exited:\n{err_text()[-3000:]}"
                        with contextlib.suppress(aiohttp.ClientConnectionError):
                            result = await condition()
                            if result:
                                return result
                        assert loop.time() < deadline, f"timed out waiting for {what}:\n{err_text()[-3000:]}"
                        await asyncio.sleep(0.2)

                # Both workers answer on the one port.
                pids: dict[str, int] = {}

                async def both_up() -> bool:
                    body = await cluster.healthz()
                    pids[body["worker"]] = body["pid"]
                    return set(pids) == {"0", "1"}

                await until(both_up, "both workers on the port")
                assert pids["0"] != pids["1"]

                # Citizens on the web chat: new connections spread over both workers; each gets its answer,
                # in the response or, when the other worker's outbox loop delivered it, from a poll (on
                # whichever worker: the web chat's pending replies are shared through PostgreSQL).
                served: dict[str, int] = {}
                received: dict[str, list[dict[str, Any]]] = {}
                sends = 0
                while set(served) != {"0", "1"}:
                    assert sends < 200, f"every message went to worker {set(served)}"
                    sender = f"cluster-citizen-{sends:04d}"
                    worker, received[sender] = await cluster.say(sender, "مرحبا")
                    sends += 1
                    served[worker] = served.get(worker, 0) + 1

                    async def answered(sender: str = sender) -> bool:
                        received[sender] += await cluster.poll(sender)
                        return bool(received[sender])

                    if not received[sender]:
                        await until(answered, f"the answer to {sender}")
                    assert received[sender][0]["text"].startswith(WELCOME), received[sender]

                # Once the outbox is empty, whatever either worker delivered after that is fetched too.
                async def outbox_idle() -> bool:
                    _, samples = await cluster.metrics()
                    return total(samples, "tawasul_outbox_items", status="pending") == 0

                await until(outbox_idle, "an empty outbox")
                for sender, messages in received.items():
                    messages += await cluster.poll(sender)
                replies = sum(len(messages) for messages in received.values())

                # /metrics from either worker adds up both workers' counters.
                scraped: dict[str, dict[tuple[str, frozenset[tuple[str, str]]], float]] = {}

                async def both_scraped() -> bool:
                    worker, samples = await cluster.metrics()
                    scraped[worker] = samples
                    return set(scraped) == {"0", "1"}

                await until(both_scraped, "a scrape from each worker")
                for worker, samples in scraped.items():
                    assert total(samples, "tawasul_updates_in_total", channel="web") == sends, worker
                    assert total(samples, "tawasul_replies_out_total", channel="web") == replies, worker
                    assert live_worker_pids(samples) == set(pids.values()), worker

                # A worker killed outright is started again; the other keeps serving meanwhile.
                victim = pids["1"]
                os.kill(victim, signal.SIGKILL)

                async def replaced() -> bool:
                    body = await cluster.healthz()
                    return bool(body["worker"] == "1" and body["pid"] != victim)

                await until(replaced, "worker 1 restarted")
                assert f"worker 1 (pid {victim}) exited unexpectedly with SIGKILL" in err_text()
                _, samples = await cluster.metrics()
                # The dead worker's live series is gone (mark_process_dead); its counts stay in the totals.
                new_pids = live_worker_pids(samples)
                assert len(new_pids) == 2 and victim not in new_pids and pids["0"] in new_pids, new_pids
                assert total(samples, "tawasul_updates_in_total", channel="web") == sends

            # SIGTERM to the supervisor stops both workers cleanly and removes the metrics directory.
            supervisor.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(supervisor.wait(), START_S) == 0, err_text()[-3000:]
        finally:
            if supervisor.returncode is None:
                supervisor.kill()
                await supervisor.wait()
    err = err_text()
    assert not [p for p in new_pids if running(p)], "a worker outlived its supervisor"
    assert list((tmp_path / "tmp").glob("tawasul-metrics-*")) == []
    assert "Traceback" not in err and " ERROR " not in err, err[-3000:]
    assert err.count("exited with status 0") == 2, err[-3000:]


# --------------------------------------------------------------------------------------- the supervisor


def stand_in(tmp_path: Path, body: str) -> list[str]:
    """A worker command: a tiny Python program (the real worker is exercised above)."""
    script = tmp_path / "worker.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "from pathlib import Path\n"
        "slot = os.environ['TAWASUL_WORKER_ID']\n"
        f"state = Path({str(tmp_path)!r})\n" + body,
        encoding="utf-8",
    )
    return [sys.executable, str(script)]


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "BACKOFF_BASE_S", 0.01)
    monkeypatch.setattr(workers, "BACKOFF_MAX_S", 0.05)


async def wait_for_files(*paths: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not all(p.exists() for p in paths):
        assert loop.time() < deadline, f"not all of {paths} appeared"
        await asyncio.sleep(0.02)


async def test_a_crashed_worker_is_restarted_and_sigterm_reaches_every_worker(
    tmp_path: Path, quick_backoff: None, caplog: pytest.LogCaptureFixture
) -> None:
    # Slot 1 crashes on its first start; after that each worker waits for SIGTERM and records it.
    command = stand_in(tmp_path, (
        "if slot == '1' and not (state / 'crashed').exists():\n"
        "    (state / 'crashed').touch()\n"
        "    sys.exit(7)\n"
        "def stop(signum, frame):\n"
        "    (state / f'stopped-{slot}').write_text(signal.Signals(signum).name)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "(state / f'ready-{slot}').touch()\n"
        "while True:\n"
        "    time.sleep(0.05)\n"
    ))
    caplog.set_level(logging.INFO, logger="tawasul.supervisor")
    supervisor = Supervisor(2, command, dict(os.environ), tmp_path)
    task = asyncio.create_task(supervisor.run())
    await wait_for_files(tmp_path / "ready-0", tmp_path / "ready-1")
    os.kill(os.getpid(), signal.SIGTERM)  # what systemd sends the supervisor
    assert await asyncio.wait_for(task, 60) == 0
    assert (tmp_path / "stopped-0").read_text() == (tmp_path / "stopped-1").read_text() == "SIGTERM"
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "worker 1" in log and "exited unexpectedly with status 7; restarting" in log, log
    assert sum("worker 1 started" in r.getMessage() for r in caplog.records) == 2, log


async def test_a_worker_that_keeps_crashing_makes_the_supervisor_give_up(
    tmp_path: Path, quick_backoff: None, caplog: pytest.LogCaptureFixture
) -> None:
    command = stand_in(tmp_path, "sys.exit(3)\n")
    caplog.set_level(logging.INFO, logger="tawasul.supervisor")
    assert await asyncio.wait_for(Supervisor(1, command, dict(os.environ), tmp_path).run(), 60) == 1
    starts = sum("worker 0 started" in r.getMessage() for r in caplog.records)
    assert starts == workers.MAX_RAPID_FAILURES
    assert any("giving up" in r.getMessage() for r in caplog.records)


async def test_a_configuration_error_in_a_worker_is_not_retried(
    tmp_path: Path, quick_backoff: None, caplog: pytest.LogCaptureFixture
) -> None:
    # Slot 0 fails like `tawasul run` on a bad setting (exit 2); slot 1 is healthy and is stopped with it.
    command = stand_in(tmp_path, (
        "if slot == '0':\n"
        "    sys.exit(2)\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        "while True:\n"
        "    time.sleep(0.05)\n"
    ))
    caplog.set_level(logging.INFO, logger="tawasul.supervisor")
    assert await asyncio.wait_for(Supervisor(2, command, dict(os.environ), tmp_path).run(), 60) == 1
    assert sum("worker 0 started" in r.getMessage() for r in caplog.records) == 1
    assert any("configuration error" in r.getMessage() for r in caplog.records)
