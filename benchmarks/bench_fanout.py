"""Notification fan-out end to end: N case status events delivered to N Telegram chats at the configured
global send limit, through the real worker processes and a fake Bot API that enforces the limit itself.

``.venv/bin/python benchmarks/bench_fanout.py`` (part of `make bench`; ~5 min). Writes
benchmarks/results/e2e_fanout.json and e2e_fanout.md. Two phases, each on fresh databases and processes:

* **main**: 10,000 events at a 50/s limit (``--events``, ``--rate``). Events are fired for at most
  ``--budget-s`` seconds (240) so `make bench` stays bounded when the workers cannot keep up; events not
  fired by then are reported, and the checks cover the fired ones.
* **limiter**: 400 events at a 20/s limit (``--check-events``, ``--check-rate``), below what the workers
  can push, so the shared send budget alone sets the pace: does it reach the limit without 429s?

Set-up: a throwaway PostgreSQL database for the bot, migrated with `tawasul db upgrade`, then seeded through
the product's own ORM models (``tawasul.db.models``: one ``Citizen`` per Telegram chat and one filed
``CaseRecord`` with its reference per citizen, as the dialogue leaves them after a filing; 75% Arabic,
25% English). `tawasul run --no-shell --workers 2` (the send budget ``telegram.global_rate_per_s`` is shared
in PostgreSQL) with Telegram in webhook mode at the fake Bot API in its own process, which answers 429 with
``retry_after`` whenever more than ``--rate`` ``sendMessage`` calls would fall in any sliding one-second
window (so "no 429s" is measured). `tawasul backend serve` runs beside them (the workers' event poller
talks to it) but holds no cases: the status events are fired by this script as the core backend sends
them, signed webhooks to ``POST /backend/events`` (``backend_client.webhooks.signed_headers``, the same
code the reference backend uses), ``--concurrency`` at a time (the reference backend keeps 4 in flight; a
larger backend more), spread over the workers by SO_REUSEPORT. Statuses: under review 50%, in progress
30% (with a public note), answered 15% (with the rating buttons), closed 5%.

Measured: every chat got exactly one message and it names its own case reference (none lost, none
doubled); 429s answered by the fake; the delivery rate (sends / time from the first to the last send, and
over the steady middle 80% of the sends) as a fraction of the limit; the most sends in any one-second
window; the outbox state afterwards (pending / dead); event-to-notice latency; load average before/after.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from e2e_common import (
    BACKEND_SECRET,
    BENCH_MODEL_DIR,
    FakeProcess,
    Spawned,
    backend_env,
    bot_env,
    clean_env,
    ensure_model,
    free_port,
    loadavg,
    machine,
    percentile,
    pg_create,
    pg_drop,
    postgres_cpu_s,
    proc_memory_mb,
    service_pids,
    spawn,
    start_fake,
    summary_ms,
    tawasul_command,
    tree_cpu_s,
    wait_for_line,
    wait_healthy,
    write_results,
)

CHAT_BASE = 700_000_000
STATUSES = (("under_review", 0.50), ("in_progress", 0.30), ("answered", 0.15), ("closed", 0.05))
AGENCIES = ("works", "ewa", "health", "education", "municipalities", "interior", "housing", "traffic")
TARGET_FRACTION = 0.95
COMMON = Path(__file__).resolve().parent / "e2e_common.py"


async def seed(db_url: str, n: int, seed_value: int) -> list[dict[str, Any]]:
    """N citizens with one filed case each, inserted with the product's models; returns the cases."""
    from sqlalchemy import insert, select

    from tawasul.db import Database
    from tawasul.db.models import CaseRecord, Citizen

    rng = random.Random(seed_value)
    db = Database(db_url)
    now = dt.datetime.now(dt.UTC)
    cases: list[dict[str, Any]] = []
    try:
        async with db.session() as session:
            await session.execute(insert(Citizen), [
                {"channel": "telegram", "channel_user_id": str(CHAT_BASE + i),
                 "language": "en" if rng.random() < 0.25 else "ar", "created_at": now}
                for i in range(n)
            ])
            rows = (await session.execute(select(Citizen.id, Citizen.channel_user_id, Citizen.language))).all()
            by_chat = {int(chat): (cid, lang) for cid, chat, lang in rows}
            values = []
            for i in range(n):
                chat = CHAT_BASE + i
                citizen_id, lang = by_chat[chat]
                reference = f"TWS-2026-{500_000 + i:06d}"
                agency = rng.choice(AGENCIES)
                values.append({
                    "citizen_id": citizen_id, "idempotency_key": f"tawasul-bench-{uuid.uuid4().hex}",
                    "reference": reference, "type": rng.choice(("complaint", "suggestion", "inquiry")),
                    "agency": agency, "language": lang, "status": "submitted", "last_event_sequence": 0,
                    "description": "benchmark case", "created_at": now, "updated_at": now,
                })
                cases.append({"chat": chat, "reference": reference, "agency": agency, "language": lang})
            await session.execute(insert(CaseRecord), values)
    finally:
        await db.close()
    return cases


def event_body(case: dict[str, Any], sequence: int, rng: random.Random) -> bytes:
    status = rng.choices([s for s, _ in STATUSES], weights=[w for _, w in STATUSES])[0]
    event: dict[str, Any] = {
        "event_id": uuid.uuid4().hex,
        "sequence": sequence,
        "reference": case["reference"],
        "status": status,
        "previous_status": "submitted",
        "agency": case["agency"],
        "previous_agency": None,
        "public_note": "سيتم التواصل معكم خلال يومين" if status == "in_progress" else None,
        "question": None,
        "channel": "telegram",
        "channel_user_id": str(case["chat"]),
        "language": case["language"],
        "occurred_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    return json.dumps(event, ensure_ascii=False).encode("utf-8")


async def fire(url: str, cases: list[dict[str, Any]], concurrency: int, seed_value: int, budget_s: float | None
               ) -> tuple[dict[int, float], list[float], dict[str, int], float, float]:
    """POST one signed status event per case, ``concurrency`` in flight, until all are sent or ``budget_s``
    has passed. Returns the fire time per chat, the webhook response times, the response statuses, and the
    first/last fire times."""
    from backend_client.webhooks import signed_headers

    rng = random.Random(seed_value)
    queue: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
    for i, case in enumerate(cases):
        queue.put_nowait((i + 1, case))
    fired: dict[int, float] = {}
    response_s: list[float] = []
    statuses: dict[str, int] = {}

    stop_at = time.monotonic() + budget_s if budget_s else math.inf

    async def poster(session: aiohttp.ClientSession) -> None:
        while not queue.empty() and time.monotonic() < stop_at:
            sequence, case = queue.get_nowait()
            body = event_body(case, sequence, rng)
            started = time.monotonic()
            fired[case["chat"]] = started
            try:
                async with session.post(f"{url}/backend/events", data=body,
                                        headers=signed_headers(BACKEND_SECRET, body)) as resp:
                    await resp.read()
                    key = str(resp.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                key = type(exc).__name__
            statuses[key] = statuses.get(key, 0) + 1
            response_s.append(time.monotonic() - started)

    # One connection per poster: SO_REUSEPORT spreads connections (not requests) over the workers.
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        t0 = time.monotonic()
        await asyncio.gather(*(poster(session) for _ in range(concurrency)))
        t1 = time.monotonic()
    return fired, response_s, statuses, t0, t1


async def fake_json(fake: FakeProcess, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(f"{fake.bench_url}{path}") as resp:
        return await resp.json()


async def outbox_state(db_url: str) -> dict[str, int]:
    from sqlalchemy import func, select

    from tawasul.db import Database
    from tawasul.db.models import OutboxItem

    db = Database(db_url)
    try:
        async with db.session() as session:
            rows = (await session.execute(
                select(OutboxItem.status, func.count(), func.max(OutboxItem.attempts)).group_by(OutboxItem.status)
            )).all()
    finally:
        await db.close()
    return {f"{status}": int(count) for status, count, _ in rows} | {
        "max_attempts": max((int(a or 0) for _, _, a in rows), default=0)}


async def run_phase(args: argparse.Namespace, events: int, rate: float, budget_s: float | None
                    ) -> dict[str, Any]:
    """One fan-out: fresh databases, fake and workers; ``events`` events at a ``rate``/s limit."""
    result: dict[str, Any] = {"events": events, "rate_limit_per_s": rate, "workers": args.workers,
                              "concurrency": args.concurrency, "fire_budget_s": budget_s}
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        work = Path(tmp)
        (work / "reviewed").mkdir()
        fake = start_fake(rate=rate)
        bot_db = await pg_create("tawasul_bench_bot")
        core_db = await pg_create("tawasul_bench_core")
        port, backend_port = free_port(), free_port()
        procs: list[Spawned] = []
        try:
            t = time.monotonic()
            upgrade = await asyncio.create_subprocess_exec(
                *tawasul_command(), "db", "upgrade", env=clean_env(TAWASUL_DATABASE_URL=bot_db),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            if await upgrade.wait() != 0:
                raise RuntimeError("tawasul db upgrade failed")
            cases = await seed(bot_db, events, args.seed)
            result["seed_s"] = round(time.monotonic() - t, 1)
            backend = spawn([*tawasul_command(), "backend", "serve", "--port", str(backend_port), "--no-webhooks"],
                            backend_env(db_url=core_db), work / "backend.log", work)
            procs.append(backend)
            await wait_for_line(backend, "core backend listening on")
            # The bot is configured a little under the platform's limit, as the deployment notes advise: the
            # fake counts a strict sliding second, and late slots (up to half a slot) or network jitter would cross it.
            extra = {"TAWASUL_TELEGRAM__GLOBAL_RATE_PER_S": str(rate * args.headroom)}
            extra.update(item.split("=", 1) for item in args.worker_env)  # may override the bot's limit
            env = bot_env(port=port, db_url=bot_db, backend_url=f"http://127.0.0.1:{backend_port}", fake=fake,
                          model_dir=BENCH_MODEL_DIR, work=work, **extra)
            cmd = [*tawasul_command(), "run", "--no-shell"]
            if args.profile:  # one worker under cProfile, on only while the events are delivered
                cmd = [sys.executable, str(COMMON), "profiled-worker", args.profile, "run", "--no-shell"]
            elif args.workers > 1:
                cmd += ["--workers", str(args.workers)]
            bot = spawn(cmd, env, work / "bot.log", work)
            procs.append(bot)
            url = f"http://127.0.0.1:{port}"
            await wait_healthy(url, bot)
            deadline = time.monotonic() + 90
            while bot.log_tail(10**7).count("telegram channel started") < args.workers:
                if time.monotonic() > deadline or bot.proc.poll() is not None:
                    raise RuntimeError(f"workers did not start:\n{bot.log_tail()}")
                await asyncio.sleep(0.1)
            pids = service_pids(bot.proc.pid)
            dbs = [bot_db, core_db]  # PostgreSQL CPU of these databases only (the server is shared)
            cpu0 = {"workers": tree_cpu_s(bot.proc.pid), "fake": tree_cpu_s(fake.proc.pid),
                    "postgres": postgres_cpu_s(dbs), "generator": time.process_time()}
            result["loadavg_before"] = loadavg()
            print(f"firing {len(cases)} events at {url} ({args.workers} workers, limit {rate}/s)",
                  file=sys.stderr, flush=True)
            usage: list[list[float]] = []  # per second: [worker cores, PostgreSQL cores]

            async def sample_usage() -> None:
                last = (tree_cpu_s(bot.proc.pid), postgres_cpu_s(dbs), time.monotonic())
                while True:
                    await asyncio.sleep(1.0)
                    now = (tree_cpu_s(bot.proc.pid), postgres_cpu_s(dbs), time.monotonic())
                    usage.append([round((now[0] - last[0]) / (now[2] - last[2]), 2),
                                  round(max(0.0, now[1] - last[1]) / (now[2] - last[2]), 2)])
                    last = now

            sampler = asyncio.create_task(sample_usage())
            if args.profile:
                os.kill(bot.proc.pid, signal.SIGUSR1)
            fired, response_s, statuses, t0, t1 = await fire(url, cases, args.concurrency, args.seed, budget_s)
            # Wait while notices still go out: the webhook is answered once an event is committed, so a backlog
            # drains at the limit after the firing ends (and retries after a 429 or a failure go through the
            # outbox loop). Stop when all are sent, or after ``settle_s`` without a new send.
            last_sent, last_progress = -1, time.monotonic()
            while time.monotonic() - last_progress < args.settle_s:
                stats = await fake_json(fake, "/bench/stats")
                if stats["sent"] >= len(fired):
                    break
                if stats["sent"] != last_sent:
                    last_sent, last_progress = stats["sent"], time.monotonic()
                await asyncio.sleep(0.5)
            await asyncio.sleep(2.0)  # anything doubled would arrive now
            if args.profile:
                os.kill(bot.proc.pid, signal.SIGUSR2)
            sampler.cancel()
            result["cpu_cores_per_second"] = usage
            stats = await fake_json(fake, "/bench/stats")
            sent = await fake_json(fake, "/bench/sent")
            result["loadavg_after"] = loadavg()
            cpu1 = {"workers": tree_cpu_s(bot.proc.pid), "fake": tree_cpu_s(fake.proc.pid),
                    "postgres": postgres_cpu_s(dbs), "generator": time.process_time()}
            result["cpu_s"] = {k: round(cpu1[k] - cpu0[k], 1) for k in cpu0}
            result["cpu_s"]["postgres"] = max(0.0, result["cpu_s"]["postgres"])  # connections of others may end
            result["worker_cpu_ms_per_notice"] = round(1000 * result["cpu_s"]["workers"] / max(1, len(fired)), 1)
            result["rss_mb"] = {str(pid): proc_memory_mb(pid) for pid in pids}
            result["outbox"] = await outbox_state(bot_db)
            result["not_fired"] = len(cases) - len(fired)
            result.update(analyse([c for c in cases if c["chat"] in fired], fired, sent, stats, rate))
            result["firing"] = {
                "seconds": round(t1 - t0, 1),
                "webhook_statuses": statuses,
                "webhook_response": summary_ms(response_s),
            }
            result["errors_logged"] = [line[:300] for line in bot.log_tail(10**8).splitlines()
                                       if " ERROR " in line or "Traceback" in line][:20]
            result["warnings_429"] = bot.log_tail(10**8).count("telegram 429")
        finally:
            for proc in reversed(procs):
                proc.stop()
            if args.keep_log and len(procs) > 1:
                _copy(procs[1].log_path, Path(args.keep_log))
            fake.stop()
            await pg_drop(bot_db)
            await pg_drop(core_db)
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ensure_model()
    result: dict[str, Any] = {"machine": machine(), "phases": {}}
    plan = [("main", args.events, args.rate, args.budget_s)]
    if args.check_events:
        plan.append(("limiter", args.check_events, args.check_rate, None))
    for name, events, rate, budget in plan:
        print(f"== {name}: {events} events, limit {rate}/s", file=sys.stderr, flush=True)
        try:
            result["phases"][name] = await run_phase(args, events, rate, budget)
        except Exception as exc:  # one phase failing must not hide the other's numbers
            result["phases"][name] = {"events": events, "rate_limit_per_s": rate,
                                      "error": f"{type(exc).__name__}: {str(exc)[-2000:]}"}
    result["targets"] = {}
    for name, phase in result["phases"].items():
        if "delivered" not in phase:
            result["targets"][f"{name}: ran"] = False
            continue
        limit = phase["rate_limit_per_s"]
        result["targets"][f"{name}: delivered at >= {TARGET_FRACTION:.0%} of the {limit:.0f}/s limit"] = (
            phase["rate_fraction_of_limit"] >= TARGET_FRACTION)
        result["targets"][f"{name}: zero 429s"] = phase["refused_429"] == 0
        result["targets"][f"{name}: none lost, none doubled (every chat exactly its own notice)"] = (
            phase["lost"] == 0 and phase["doubled"] == 0 and phase["wrong"] == 0)
        if phase["not_fired"]:
            result["targets"][f"{name}: all {phase['events']:,} events fired within the time budget"] = False
    return result


def _copy(src: Path, dest: Path) -> None:
    import shutil

    shutil.copy(src, dest)


def analyse(cases: list[dict[str, Any]], fired: dict[int, float], sent: list[list[Any]],
            stats: dict[str, Any], rate: float) -> dict[str, Any]:
    by_chat: dict[int, list[tuple[float, str]]] = {}
    for chat, t, text in sent:
        by_chat.setdefault(int(chat), []).append((float(t), str(text)))
    lost = doubled = wrong = 0
    latency: list[float] = []
    for case in cases:
        got = by_chat.get(case["chat"], [])
        if not got:
            lost += 1
            continue
        if len(got) > 1:
            doubled += 1
        if not all(case["reference"] in text for _, text in got):
            wrong += 1
        latency.append(got[0][0] - fired[case["chat"]])
    times = sorted(float(t) for _, t, _ in sent)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    overall = (len(times) - 1) / span if span else 0.0
    lo, hi = int(0.1 * len(times)), int(0.9 * len(times))
    middle = (hi - lo) / (times[hi - 1] - times[lo]) if hi - 1 > lo and times[hi - 1] > times[lo] else 0.0
    per_second: dict[int, int] = {}
    for t in times:
        per_second[int(t - times[0])] = per_second.get(int(t - times[0]), 0) + 1
    return {
        "delivered": len(times),
        "chats_reached": sum(1 for c in cases if c["chat"] in by_chat),
        "lost": lost,
        "doubled": doubled,
        "wrong": wrong,
        "refused_429": stats["refused_429"],
        "send_span_s": round(span, 1),
        "rate_overall_per_s": round(overall, 1),
        "rate_middle_80pct_per_s": round(middle, 1),
        "rate_fraction_of_limit": round(overall / rate, 3),
        "max_sends_in_1s": stats["max_sends_in_1s"],
        "sends_per_second": [per_second.get(i, 0) for i in range(int(span) + 1)],
        "event_to_notice": summary_ms(latency),
        "event_to_notice_p50_s": round(statistics.median(latency), 2) if latency else None,
        "event_to_notice_p99_s": round(percentile(latency, 99), 2) if latency else None,
        "telegram_calls": stats["calls"],
    }


def render_markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Notification fan-out end to end (status events to Telegram chats)",
        "",
        (
            "Produced by `benchmarks/bench_fanout.py` (method in its docstring). One status event per citizen, "
            "fired as signed webhooks at `tawasul run --workers N` on PostgreSQL; the fake Bot API (own "
            "process) enforces the configured limit itself (sendMessage calls in any sliding second) and "
            "answers 429 beyond it. **main**: the issue's fan-out at a 50/s limit (the bot configured at 97% of it). **limiter**: a limit below "
            "what the workers can push, so the shared send budget itself decides the rate."
        ),
        "",
    ]
    for name, p in r["phases"].items():
        lines += [f"## {name}: {p['events']:,} events, limit {p['rate_limit_per_s']:.0f}/s", ""]
        if "delivered" not in p:
            lines += [f"Failed: {p.get('error', '?')}", ""]
            continue
        firing, lat = p["firing"], p["event_to_notice"]
        lines += [
            f"{p['workers']} workers, {p['concurrency']} webhooks in flight. Load average "
            f"{p.get('loadavg_before')} before, {p.get('loadavg_after')} after "
            f"({r['machine']['cpus']} CPUs, shared).",
            "",
            "| measure | value | target |",
            "|---|---:|---:|",
            f"| events fired (within the {p['fire_budget_s'] or '-'} s budget) | "
            f"{p['events'] - p['not_fired']:,} of {p['events']:,} | all |",
            f"| notices delivered | {p['delivered']:,} | one per fired event |",
            f"| chats lost / doubled / wrong text | {p['lost']} / {p['doubled']} / {p['wrong']} | 0 / 0 / 0 |",
            f"| 429s answered by the fake | {p['refused_429']} | 0 |",
            f"| delivery rate, first to last send | {p['rate_overall_per_s']:.1f} /s "
            f"({p['rate_fraction_of_limit']:.1%} of {p['rate_limit_per_s']:.0f}) | >= 95% |",
            f"| delivery rate, middle 80% of sends | {p['rate_middle_80pct_per_s']:.1f} /s | |",
            f"| most sends in any 1-second window | {p['max_sends_in_1s']} | <= {p['rate_limit_per_s']:.0f} |",
            f"| send span | {p['send_span_s']} s | |",
            f"| event fired to notice received, p50 / p99 | {lat['p50_ms'] / 1000:.2f} / "
            f"{lat['p99_ms'] / 1000:.2f} s | |",
            f"| webhook response p50 / p99 (answered once the event is committed and a delivery slot is free) | "
            f"{firing['webhook_response']['p50_ms']:.0f} / {firing['webhook_response']['p99_ms']:.0f} ms | |",
            f"| webhook statuses | {firing['webhook_statuses']} | all 200 |",
            f"| outbox afterwards | {p['outbox']} | no pending, no dead |",
            f"| worker CPU per notice | {p['worker_cpu_ms_per_notice']:.1f} ms | |",
            f"| CPU seconds: workers / PostgreSQL / fake / generator | {p['cpu_s']['workers']} / "
            f"{p['cpu_s']['postgres']} / {p['cpu_s']['fake']} / {p['cpu_s']['generator']} | |",
            f"| seeding citizens + cases (migrate + insert) | {p['seed_s']} s | |",
            "",
            f"Sends per second (from the first send): {p['sends_per_second']}",
            "",
            f"CPU cores used per second [workers, PostgreSQL]: {p.get('cpu_cores_per_second')}",
            "",
            f"Worker memory (MB): {p['rss_mb']}. Telegram calls: {p['telegram_calls']}. "
            f"429 warnings logged by the workers: {p['warnings_429']}.",
            "",
        ]
        if p.get("errors_logged"):
            lines += ["Errors logged by the workers:", ""] + [f"    {e}" for e in p["errors_logged"]] + [""]
    lines += ["## Targets", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in r["targets"].items()]
    lines += ["", f"Machine: Python {r['machine']['python']}, {r['machine']['platform']}.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=50.0, help="the fake's limit per second")
    parser.add_argument("--headroom", type=float, default=0.97,
                        help="telegram.global_rate_per_s = rate x headroom (configure the bot under the platform limit)")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="stop firing new events after this many seconds (keeps `make bench` bounded)")
    parser.add_argument("--check-events", type=int, default=400, help="limiter phase events (0: skip it)")
    parser.add_argument("--check-rate", type=float, default=20.0, help="limiter phase limit per second")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64, help="status webhooks in flight")
    parser.add_argument("--settle-s", type=float, default=60.0,
                        help="after the last event, stop waiting once this long passes without a send")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", default=None, help="run one worker under cProfile; write the stats here")
    parser.add_argument("--worker-env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra environment for the workers (e.g. TAWASUL_DATABASE__ECHO=true)")
    parser.add_argument("--keep-log", default=None, help="copy the workers' log to this file")
    parser.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    args = parser.parse_args()
    if args.profile:
        args.workers = 1
        args.profile = str(Path(args.profile).resolve())
    result = asyncio.run(run(args))
    markdown = render_markdown(result)
    kwargs = {"out_dir": Path(args.out)} if args.out else {}
    write_results("e2e_fanout", result, markdown, **kwargs)
    print(markdown)
    return 0 if all("delivered" in p for p in result["phases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
