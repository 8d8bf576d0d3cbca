"""The floor of the inbound pipeline: the ceiling any Python implementation of "Telegram webhook in, sendMessage
out" can reach on this machine, with the load generator, the fake Bot API and PostgreSQL on the same 2 cores.
``bench_inbound.py`` measures the real service; this the leanest pipeline possible: together they tell how much
of the gap to the target is the service and how much the machine. ``.venv/bin/python benchmarks/bench_floor.py``
(~4 min) writes benchmarks/results/e2e_floor.json and .md.

Pipelines, each 2 worker processes of this script on one port (SO_REUSEPORT, aiohttp.web, default event loop):
* http-only: check the secret header, parse the update, answer 200; in a task POST one sendMessage (one
  aiohttp.ClientSession per worker) and parse its answer.
* one-commit: first INSERT the raw update with raw asyncpg (a pool of 8 per worker; one statement = one implicit
  transaction, committed with the server's defaults, fsync and synchronous_commit on), then answer; after the
  sendMessage an UPDATE (a second transaction) records the reply's message id. The minimal durable design. The
  pool's reset query on release is off (no session state is left), else each update costs 2 more round trips.
* sqlalchemy-core: the same through SQLAlchemy 2 async Core (create_async_engine + asyncpg, prebuilt statements,
  ``engine.begin()`` per transaction: BEGIN, statement, COMMIT), to show that layer's cost.
Afterwards the table's rows are counted (every update stored, every reply recorded).

Load, open loop: at fixed offered rates (6 s each, after a 2 s warm-up, stepped up) realistic Telegram private
messages (from, chat, date, Arabic or English text), each from a new chat, with the secret header, written at
their scheduled times on 100 keep-alive connections (Telegram's maximum webhook max_connections; SO_REUSEPORT
spreads them over the workers), queued when all are busy; a minimal HTTP/1.1 asyncio protocol, not aiohttp, so
the generator takes little CPU. The fake Bot API (a tiny aiohttp server in its own process) stamps each
sendMessage with time.monotonic() (CLOCK_MONOTONIC, one clock for all processes) on receipt and hands the stamps
over when polled. Latency = scheduled POST time to that receipt, matched by chat id; a reply still missing 4 s
after the level ends counts as infinitely slow. Sustained = p99 <= 100 ms and >= 95% of the updates answered and
acknowledged 200. The machine is shared: a level missed but not clearly saturated (>= 80% of the offered rate
replied) is run once more; stepping stops at the first level missed. CPU seconds of each party (workers, fake,
generator, this database's PostgreSQL backends, the server's WAL writer/checkpointer/bgwriter; the machine's busy
and steal time from /proc/stat, so other jobs show) are taken over each level and its settling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from aiohttp import web
from e2e_common import (BOT_TOKEN, PG_ADMIN_DSN, WEBHOOK_SECRET, Spawned, clean_env, free_port, loadavg, machine,
                        percentile, pg_create, pg_drop, postgres_cpu_s, spawn, summary_ms, tree_cpu_s,
                        wait_for_line, write_results)

MODES = ("http-only", "one-commit", "sqlalchemy-core")
LEVELS = (50, 100, 200, 300, 500, 650, 800, 1000, 1300, 1600, 2000, 2500, 3200, 4000, 5000)
TARGET_P99_MS = 100.0
CONNECTIONS, POOL = 100, 8
SCRIPT = Path(__file__).resolve()
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
TEXTS = (
    "السلام عليكم، الشارع عندنا في الحي فيه حفرة كبيرة من أسبوعين وما أحد صلحها، الرجاء المتابعة",
    "Hello, the street light outside my building has been off for ten days. Who can fix it?",
    "أبغى أعرف وش صار على البلاغ اللي رفعته الشهر الماضي بخصوص انقطاع الماء",
    "اقتراح: تمديد ساعات عمل مركز الخدمة يوم الخميس لأن الزحمة كبيرة",
)
REPLY = "شكراً لتواصلك معنا. وصلتنا رسالتك وسنرد عليك قريباً. Thank you, we received your message."
DDL = ("CREATE TABLE inbound_update (update_id bigint PRIMARY KEY, chat_id bigint NOT NULL, body text NOT NULL, "
       "received_at timestamptz NOT NULL DEFAULT now(), replied_at timestamptz, reply_message_id bigint)")
INSERT_SQL = "INSERT INTO inbound_update (update_id, chat_id, body) VALUES ($1, $2, $3)"
MARK_SQL = "UPDATE inbound_update SET replied_at = now(), reply_message_id = $2 WHERE update_id = $1"


async def _serve(app: web.Application, port: int, reuse_port: bool) -> None:
    """Serve ``app`` on 127.0.0.1:``port``, print "ready", run until SIGTERM/SIGINT."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=reuse_port, backlog=1024).start()
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


async def fake_main(port: int) -> None:
    """The fake Bot API: sendMessage stamped on receipt; GET /drain hands the (chat id, time) stamps over."""
    received: list[tuple[int, float]] = []
    ids = itertools.count(1)
    bot = {"id": 7000001, "is_bot": True, "first_name": "Tawasul"}

    async def send_message(request: web.Request) -> web.Response:
        now = time.monotonic()
        params = json.loads(await request.read())
        chat_id = int(params["chat_id"])
        received.append((chat_id, now))
        result = {"message_id": next(ids), "from": bot, "chat": {"id": chat_id, "type": "private"},
                  "date": int(time.time()), "text": params["text"]}
        return web.Response(body=json.dumps({"ok": True, "result": result}, ensure_ascii=False).encode(),
                            content_type="application/json")

    async def drain(request: web.Request) -> web.Response:
        out = received[:]
        del received[: len(out)]
        return web.json_response(out)

    app = web.Application()
    app.router.add_post(f"/bot{BOT_TOKEN}/sendMessage", send_message)
    app.router.add_get("/drain", drain)
    await _serve(app, port, reuse_port=False)


class Store:
    """The update table through raw asyncpg (one-commit) or SQLAlchemy 2 async Core (sqlalchemy-core)."""

    async def open(self, mode: str, dsn: str) -> None:
        import asyncpg
        import sqlalchemy as sa
        from sqlalchemy.ext.asyncio import create_async_engine

        self.core = mode == "sqlalchemy-core"
        if not self.core:
            async def no_reset(conn: Any) -> None:
                return None

            self.pool: Any = await asyncpg.create_pool(dsn, min_size=POOL, max_size=POOL, reset=no_reset)
            return
        self.engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://"),
                                          pool_size=POOL, max_overflow=0)
        t = sa.Table("inbound_update", sa.MetaData(), sa.Column("update_id", sa.BigInteger, primary_key=True),
                     sa.Column("chat_id", sa.BigInteger), sa.Column("body", sa.Text),
                     sa.Column("replied_at", sa.DateTime(timezone=True)), sa.Column("reply_message_id", sa.BigInteger))
        self.ins = sa.insert(t)
        self.upd = sa.update(t).where(t.c.update_id == sa.bindparam("uid")).values(
            replied_at=sa.func.now(), reply_message_id=sa.bindparam("mid"))

    async def insert(self, update_id: int, chat_id: int, body: str) -> None:
        if not self.core:
            await self.pool.execute(INSERT_SQL, update_id, chat_id, body)
            return
        async with self.engine.begin() as conn:
            await conn.execute(self.ins, {"update_id": update_id, "chat_id": chat_id, "body": body})

    async def mark(self, update_id: int, message_id: int) -> None:
        if not self.core:
            await self.pool.execute(MARK_SQL, update_id, message_id)
            return
        async with self.engine.begin() as conn:
            await conn.execute(self.upd, {"uid": update_id, "mid": message_id})

    async def close(self) -> None:
        await (self.engine.dispose() if self.core else self.pool.close())


async def worker_main(mode: str, port: int, fake_url: str, dsn: str) -> None:
    store = Store() if mode != "http-only" else None
    if store is not None:
        await store.open(mode, dsn)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100), timeout=aiohttp.ClientTimeout(30))
    send_url, headers = f"{fake_url}/bot{BOT_TOKEN}/sendMessage", {"Content-Type": "application/json"}
    tasks: set[asyncio.Task[None]] = set()
    errors = itertools.count(1)

    async def reply(update_id: int, chat_id: int) -> None:
        try:
            body = json.dumps({"chat_id": chat_id, "text": REPLY}, ensure_ascii=False).encode()
            async with session.post(send_url, data=body, headers=headers) as resp:
                answer = json.loads(await resp.read())
            if store is not None:
                await store.mark(update_id, int(answer["result"]["message_id"]))
        except Exception as exc:
            if next(errors) <= 5:
                print(f"ERROR reply: {exc!r}", file=sys.stderr, flush=True)

    async def webhook(request: web.Request) -> web.Response:
        if request.headers.get(SECRET_HEADER) != WEBHOOK_SECRET:
            return web.Response(status=403)
        raw = await request.read()
        update = json.loads(raw)
        update_id, chat_id = int(update["update_id"]), int(update["message"]["chat"]["id"])
        if store is not None:
            await store.insert(update_id, chat_id, raw.decode())  # durable before acknowledged
        task = asyncio.create_task(reply(update_id, chat_id))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return web.Response()

    app = web.Application()
    app.router.add_post("/webhooks/telegram", webhook)
    try:
        await _serve(app, port, reuse_port=True)
    finally:
        await session.close()
        if store is not None:
            await store.close()


class Conn(asyncio.Protocol):
    """One keep-alive connection of the generator's minimal HTTP/1.1 client, one request at a time."""

    def __init__(self, gen: Generator) -> None:
        self.gen, self.buf = gen, bytearray()
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            lines = bytes(self.buf[:end]).lower().split(b"\r\n")
            length = next((int(ln[15:]) for ln in lines if ln.startswith(b"content-length:")), 0)
            if len(self.buf) < end + 4 + length:
                return
            status = self.buf[9:12].decode()
            del self.buf[: end + 4 + length]
            self.gen.done(self, status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.done(self, "lost")


class Generator:
    def __init__(self, port: int, fake_url: str) -> None:
        self.port, self.fake_url = port, fake_url
        self.head = (f"POST /webhooks/telegram HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json"
                     f"\r\n{SECRET_HEADER}: {WEBHOOK_SECRET}\r\nContent-Length: ")
        self.idle: deque[Conn] = deque()
        self.queue: deque[bytes] = deque()  # requests waiting for an idle connection
        self.status: dict[str, int] = {}  # webhook answers by HTTP status
        self.ids, self.closing = itertools.count(1), False
        self.pending: dict[int, float] = {}  # chat id -> scheduled POST time
        self.latencies: list[float] = []
        self.replies: list[float] = []  # receipt times

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(CONNECTIONS):
            self.idle.append((await loop.create_connection(lambda: Conn(self), "127.0.0.1", self.port))[1])
        self.session = aiohttp.ClientSession()
        self.poller = asyncio.create_task(self._poll())

    async def close(self) -> None:
        self.closing = True
        self.poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.poller
        await self.session.close()
        for conn in self.idle:
            conn.transport.close()

    def done(self, conn: Conn, status: str) -> None:
        if status == "lost" and self.closing:
            return
        self.status[status] = self.status.get(status, 0) + 1
        if status == "lost":
            with contextlib.suppress(ValueError):
                self.idle.remove(conn)
        elif self.queue:
            conn.transport.write(self.queue.popleft())
        else:
            self.idle.append(conn)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            async with self.session.get(f"{self.fake_url}/drain") as resp:
                for chat_id, t in await resp.json():
                    scheduled = self.pending.pop(chat_id, None)
                    if scheduled is not None:
                        self.latencies.append(t - scheduled)
                        self.replies.append(t)

    def fire(self, scheduled: float) -> None:
        n = next(self.ids)
        chat_id = 500_000_000 + n
        message = {"message_id": n, "from": {"id": chat_id, "is_bot": False, "first_name": "Citizen",
                                             "language_code": "ar" if n % 4 else "en"},
                   "chat": {"id": chat_id, "first_name": "Citizen", "type": "private"},
                   "date": int(time.time()), "text": TEXTS[n % len(TEXTS)]}
        body = json.dumps({"update_id": n, "message": message}, ensure_ascii=False).encode()
        self.pending[chat_id] = scheduled
        request = f"{self.head}{len(body)}\r\n\r\n".encode() + body
        if self.idle:
            self.idle.popleft().transport.write(request)
        else:
            self.queue.append(request)

    async def offer(self, rate: float, seconds: float) -> tuple[float, float, float]:
        """Fire ``rate``/s for ``seconds``; returns (start, end, worst lateness of a POST in seconds)."""
        start = time.monotonic() + 0.005
        n, i, late = round(rate * seconds), 0, 0.0
        while i < n:
            now = time.monotonic()
            while i < n and start + i / rate <= now:
                late = max(late, now - (start + i / rate))
                self.fire(start + i / rate)
                i += 1
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        return start, start + n / rate, late


def cpu_snapshot(workers: list[Spawned], fake: Spawned, db: str | None) -> dict[str, float]:
    stat = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    per_worker = {f"worker{i}": tree_cpu_s(w.proc.pid) for i, w in enumerate(workers)}
    return {"workers": sum(per_worker.values()), **per_worker, "fake": tree_cpu_s(fake.proc.pid),
            "generator": time.process_time(), "postgres": postgres_cpu_s([db]) if db else 0.0,
            "postgres_aux": postgres_cpu_s(["walwriter", "checkpointer", "writer"]),  # server-wide, shared
            "machine_busy": (stat[0] + stat[1] + stat[2] + stat[5] + stat[6]) / tick, "machine_steal": stat[7] / tick}


def _meets(lv: dict[str, Any]) -> bool:
    return bool(lv["latency"]["p99_ms"] <= TARGET_P99_MS and lv["answered_pct"] >= 95 and lv["acked_200_pct"] >= 95)


async def run_level(gen: Generator, rate: float, seconds: float, snap: Callable[[], dict[str, float]],
                    settle_s: float) -> dict[str, Any]:
    gen.latencies, gen.replies, gen.status = [], [], {}
    cpu0 = snap()
    start, end, late = await gen.offer(rate, seconds)
    cpu_load, n = snap(), round(rate * seconds)
    for _ in range(int(settle_s / 0.05)):  # until every update is answered and every webhook acknowledged
        if not gen.pending and sum(gen.status.values()) >= n:
            break
        await asyncio.sleep(0.05)
    cpu1, unanswered = snap(), len(gen.pending)
    gen.pending.clear()  # late replies to these chats are ignored: they already count as infinitely slow
    latencies = gen.latencies + [math.inf] * unanswered
    lat = summary_ms(gen.latencies)
    lat["p90_ms"], lat["p99_ms"] = (round(percentile(latencies, q) * 1000, 1) for q in (90, 99))
    duration = end - start
    return {
        "offered_per_s": rate, "seconds": round(duration, 2), "updates": n, "latency": lat,
        "replies_per_s": round(sum(1 for t in gen.replies if start <= t < end) / duration, 1),
        "answered_pct": round(100 * len(gen.latencies) / n, 2), "unanswered": unanswered,
        "acked_200_pct": round(100 * gen.status.get("200", 0) / n, 2), "webhook_status": dict(gen.status),
        "generator_max_late_ms": round(late * 1000, 1), "loadavg_1m": loadavg()[0],
        "cores_during_load": {k: round((cpu_load[k] - cpu0[k]) / duration, 2) for k in cpu0},
        "cpu_ms_per_update": {k: round(1000 * (cpu1[k] - cpu0[k]) / n, 3) for k in cpu0},
    }


async def run_mode(mode: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import asyncpg

    print(f"== {mode}", file=sys.stderr, flush=True)
    db = await pg_create("tawasul_bench_floor") if mode != "http-only" else None
    dsn = db.replace("postgresql+asyncpg://", "postgresql://") if db else ""
    fake: Spawned | None = None
    workers: list[Spawned] = []
    gen: Generator | None = None
    out: dict[str, Any] = {"mode": mode, "loadavg_before": loadavg()}
    pg_started = await pg_start_time()
    try:
        if db:
            conn = await asyncpg.connect(dsn)
            await conn.execute(DDL)
            await conn.close()
        env, fake_port, port = clean_env(), free_port(), free_port()
        fake = spawn([sys.executable, str(SCRIPT), "fake", str(fake_port)], env, work / f"{mode}-fake.log", work)
        await wait_for_line(fake, "ready")
        for i in range(args.workers):
            cmd = [sys.executable, str(SCRIPT), "worker", mode, str(port), f"http://127.0.0.1:{fake_port}", dsn]
            workers.append(spawn(cmd, env, work / f"{mode}-worker{i}.log", work))
            await wait_for_line(workers[-1], "ready")
        gen = Generator(port, f"http://127.0.0.1:{fake_port}")
        await gen.start()
        f = fake

        def snap() -> dict[str, float]:
            return cpu_snapshot(workers, f, db)

        await run_level(gen, args.levels[0], args.warmup_s, snap, args.settle_s)  # warm-up, not reported
        levels: list[dict[str, Any]] = []
        for rate in args.levels:
            for attempt in (1, 2):
                lv = {**await run_level(gen, rate, args.level_s, snap, args.settle_s), "attempt": attempt}
                levels.append(lv)
                print(f"   {rate:>5} /s (attempt {attempt}): {lv['replies_per_s']:>6.1f} replies/s, answered "
                      f"{lv['answered_pct']}%, p50 {lv['latency']['p50_ms']} ms, p99 {lv['latency']['p99_ms']} ms, "
                      f"cores {lv['cores_during_load']}", file=sys.stderr, flush=True)
                if _meets(lv) or lv["replies_per_s"] < 0.8 * rate:
                    break  # met, or clearly saturated
            if not _meets(lv):
                break
        ok = [lv for lv in levels if _meets(lv)]
        out["levels"], out["at_max"] = levels, (ok[-1] if ok else None)
        out["max_sustained_per_s"] = ok[-1]["offered_per_s"] if ok else 0
        out["first_missed_per_s"] = levels[-1]["offered_per_s"] if not _meets(levels[-1]) else None
    finally:
        if gen is not None:
            await gen.close()
        for spawned in [*workers, *([fake] if fake else [])]:
            spawned.stop(10)
        out["errors_logged"] = [ln[:300] for w in workers for ln in w.log_tail(10**6).splitlines() if "ERROR" in ln]
        out["loadavg_after"] = loadavg()
        out["postgres_restarted"] = await pg_start_time() != pg_started  # by another job: the run is void
        if db:
            with contextlib.suppress(Exception):
                conn = await asyncpg.connect(dsn)
                row = await conn.fetchrow("SELECT count(*) AS n, count(replied_at) AS r FROM inbound_update")
                out["db_rows"] = {"stored": row["n"], "replied": row["r"]}
                await conn.close()
            await pg_drop(db)
    return out


async def pg_start_time() -> str:
    import asyncpg

    try:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        started = str(await conn.fetchval("SELECT pg_postmaster_start_time()"))
        await conn.close()
    except Exception as exc:  # down (restarting)
        return repr(exc)
    return started


async def pg_settings() -> dict[str, str]:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN)
    names = ("server_version", "fsync", "synchronous_commit", "wal_sync_method", "commit_delay", "shared_buffers")
    settings = {n: str(await conn.fetchval(f"SHOW {n}")) for n in names}
    await conn.close()
    return settings


def render(r: dict[str, Any]) -> str:
    lines = [
        "# The floor: the leanest Python webhook-to-sendMessage pipeline on this machine", "",
        "Produced by `benchmarks/bench_floor.py` (method in its docstring): the ceiling any Python implementation "
        "of this pipeline can reach here, with the load generator, the fake Bot API and PostgreSQL on the same "
        f"{r['machine']['cpus']} cores as the {r['settings']['workers']} workers. Latency = scheduled webhook POST "
        "to the fake's receipt of the sendMessage. Sustained = p99 <= 100 ms and >= 95% answered.", "",
        f"PostgreSQL: {r['postgres']}. Load average at start {r['loadavg_start']}; the machine is shared with "
        "other jobs: `other` = machine busy CPU minus the parties measured.", "",
        "## Summary", "",
        "| pipeline | max sustained updates/s | first missed | p50 / p99 there | CPU ms per update there: workers / "
        "fake / generator / PostgreSQL backends / PostgreSQL WAL writer+checkpointer+bgwriter / other | service-side bound: 2 cores / (workers + PostgreSQL) | workers + "
        "PostgreSQL CPU ms per update at 500/s | rows stored / replied | load avg before / after |",
        "|---|---:|---:|---:|---|---:|---:|---|---|",
    ]
    for m in r["modes"]:
        if "levels" not in m:
            lines.append(f"| {m['mode']} | failed: {m.get('error')} | | | | | | | |")
            continue
        lv = m["at_max"] or m["levels"][0]
        c = lv["cpu_ms_per_update"]
        other = c["machine_busy"] - c["workers"] - c["fake"] - c["generator"] - c["postgres"] - c["postgres_aux"]
        lat = f"{lv['latency']['p50_ms']:.0f} / {lv['latency']['p99_ms']:.0f} ms" if m["at_max"] else "-"
        rows = m.get("db_rows", {})
        at500 = next((x["cpu_ms_per_update"] for x in m["levels"] if x["offered_per_s"] == 500), None)
        svc500 = f"{at500['workers'] + at500['postgres']:.2f}" if at500 else "-"
        lines.append(
            f"| {m['mode']}{' (PostgreSQL restarted meanwhile: void)' if m['postgres_restarted'] else ''} | "
            f"{m['max_sustained_per_s']:.0f} | {m['first_missed_per_s'] or 'none'} | {lat} | "
            f"{c['workers']:.2f} / {c['fake']:.2f} / {c['generator']:.2f} / {c['postgres']:.2f} / {c['postgres_aux']:.2f} / "
            f"{other:.2f} | "
            f"{2000 / (c['workers'] + c['postgres']):.0f}/s | "
            f"{svc500} | {rows.get('stored', '-')} / {rows.get('replied', '-')} "
            f"| {m['loadavg_before']} / {m['loadavg_after']} |")
    lines += ["", "CPU per update at the highest sustained level, over the level and its settling. PostgreSQL "
              "backends = this database's; WAL writer, checkpointer and background writer serve the whole server "
              "(other jobs' databases too). `other` = machine busy minus all of these: other jobs, kernel work.", "",
              "## Per level", ""]
    for m in (m for m in r["modes"] if "levels" in m):
        lines += [f"### {m['mode']}", "", "| offered /s | attempt | replies /s | answered % | p50 ms | p90 ms | p99 ms "
                  "| max ms | gen late ms | cores: workers | fake | gen | PG | PG aux | other | machine busy | steal "
                  "| load 1m |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for lv in m["levels"]:
            lat, k = lv["latency"], lv["cores_during_load"]
            other = k["machine_busy"] - k["workers"] - k["fake"] - k["generator"] - k["postgres"] - k["postgres_aux"]
            lines.append(
                f"| {lv['offered_per_s']:.0f} | {lv['attempt']} | {lv['replies_per_s']} | {lv['answered_pct']} | "
                f"{lat['p50_ms']} | {lat['p90_ms']} | {lat['p99_ms']} | {lat['max_ms']} | "
                f"{lv['generator_max_late_ms']} | {k['workers']} | {k['fake']} | {k['generator']} | {k['postgres']} | "
                f"{k['postgres_aux']} | {other:.2f} | {k['machine_busy']} | {k['machine_steal']} | {lv['loadavg_1m']} |")
        lines += ["", *(f"    {e}" for e in m["errors_logged"][:10]), ""] if m["errors_logged"] else [""]
    return "\n".join([*lines, f"Machine: Python {r['machine']['python']}, {r['machine']['platform']}.", ""])


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "machine": machine(), "loadavg_start": loadavg(), "postgres": await pg_settings(),
        "settings": {k: getattr(args, k) for k in ("levels", "level_s", "warmup_s", "settle_s", "workers")}
        | {"connections": CONNECTIONS, "db_pool_per_worker": POOL, "target_p99_ms": TARGET_P99_MS},
        "modes": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        for mode in args.modes:
            try:
                result["modes"].append(await run_mode(mode, args, Path(tmp)))
            except Exception as exc:  # one pipeline failing must not hide the others' numbers
                print(f"   {mode} failed: {exc!r}", file=sys.stderr, flush=True)
                result["modes"].append({"mode": mode, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
    return result


def main() -> int:
    if sys.argv[1:2] == ["fake"]:
        asyncio.run(fake_main(int(sys.argv[2])))
        return 0
    if sys.argv[1:2] == ["worker"]:
        asyncio.run(worker_main(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description="the floor of the inbound pipeline on this machine")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--levels", nargs="+", type=float, default=list(LEVELS))
    parser.add_argument("--level-s", type=float, default=6.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--settle-s", type=float, default=4.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    args = parser.parse_args()
    result = asyncio.run(amain(args))
    markdown = render(result)
    write_results("e2e_floor", result, markdown, **({"out_dir": Path(args.out)} if args.out else {}))
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
