"""Reference core backend and its client, over HTTP on 127.0.0.1: latency and throughput.

``.venv/bin/python benchmarks/bench_backend.py [--db URL] [--n 200] [--concurrency 50]``

* create / get / status change: sequential calls through ``BackendClient``; p50, p95, mean (ms).
* concurrent creates: ``--concurrency`` clients filing ``--n`` cases with distinct keys; cases per second.
* webhook: time from sending a status change until the bot-side handler (``make_event_handler`` with the
  signature check, on 127.0.0.1) has handled its event; p50, p95.

The database defaults to a throwaway SQLite file; pass a PostgreSQL URL (an empty database) to measure it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend_client import BackendClient, CaseStatus
from core_backend.embedded import EmbeddedBackend
from tests.core_backend.backend_harness import (
    SERVICE_TOKEN,
    STAFF_TOKEN,
    Receiver,
    backend_settings,
    new_case,
)


def _summary(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"{name:<28} p50 {statistics.median(ms):7.1f} ms   p95 {p95:7.1f} ms   mean {statistics.fmean(ms):7.1f} ms"


async def run(db_url: str, n: int, concurrency: int) -> None:
    receiver = Receiver()
    await receiver.start()
    settings = backend_settings(db_url, events_webhook_url=receiver.url)
    async with (
        EmbeddedBackend(settings, port=0) as backend,
        BackendClient(backend.url, SERVICE_TOKEN, staff_token=STAFF_TOKEN) as client,
    ):
        creates, gets, changes, webhooks = [], [], [], []
        refs = []
        for i in range(n):
            t = time.perf_counter()
            case = await client.create_case(new_case(channel_user_id=f"bench-{i}"), f"bench-seq-{i:06d}")
            creates.append(time.perf_counter() - t)
            refs.append(case.reference)
        for ref in refs:
            t = time.perf_counter()
            await client.get_case(ref)
            gets.append(time.perf_counter() - t)
        for ref in refs:
            before = len(receiver.handled)  # the webhook may be handled before the change's answer arrives
            t = time.perf_counter()
            await client.set_status(ref, CaseStatus.UNDER_REVIEW)
            changes.append(time.perf_counter() - t)
            await receiver.wait_for(before + 1)
            webhooks.append(receiver.handled_at[before] - t)

        clients = [BackendClient(backend.url, SERVICE_TOKEN) for _ in range(concurrency)]
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(n):
            queue.put_nowait(i)

        async def worker(c: BackendClient) -> None:
            while not queue.empty():
                i = queue.get_nowait()
                await c.create_case(new_case(channel_user_id=f"bench-c-{i}"), f"bench-con-{i:06d}")

        t = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in clients))
        elapsed = time.perf_counter() - t
        for c in clients:
            await c.close()
    await receiver.stop()

    print(f"database: {db_url.split('://', 1)[0]}   n={n}   concurrency={concurrency}")
    print(_summary("create case", creates))
    print(_summary("get case", gets))
    print(_summary("status change", changes))
    print(_summary("change sent -> bot handled", webhooks))
    print(f"{'concurrent creates':<28} {n / elapsed:7.1f} cases/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--db", help="backend database URL (default: a temporary SQLite file)")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or f"sqlite+aiosqlite:///{tmp}/bench.db"
        asyncio.run(run(db, args.n, args.concurrency))


if __name__ == "__main__":
    main()
