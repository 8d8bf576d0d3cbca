"""PostgreSQL restarted under load (two `tawasul run` workers as subprocesses, the reference core backend
standalone, Telegram in webhook mode against the fake Bot API). Connections die mid-transaction and new
ones are refused for a moment; the workers reconnect, updates that could not be stored are refused (503) so
the platform sends them again, turns interrupted by the restart are finished later, and every citizen's
filing completes: nothing lost, no case twice, no message answered with an error."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest

from tawasul.db import Database
from tests.faults.checks import inbound_per_chat, outbox_settled, unprocessed_or_failed
from tests.faults.harness import (
    TelegramPlatform,
    TgCitizen,
    all_cases,
    assert_filing_transcript,
    worker_cluster,
)
from tests.fakes import FakeTelegram, wait_until

pytestmark = pytest.mark.faults

CHATS = 16
UPDATES_PER_FILING = 4
CLUSTER = ("15", "main")  # the machine's cluster (pg_lsclusters); the CI runs on this machine


def _versions() -> list[str]:
    root = Path("/etc/postgresql")
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


async def pg_ctl(action: str) -> int:
    """``pg_ctlcluster`` for the local cluster (through sudo unless we are root); its exit status."""
    versions = _versions()
    version = versions[-1] if versions else CLUSTER[0]
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, CLUSTER[1], action]
    if os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    if proc.returncode not in (0, 3):  # 3: "status" of a stopped cluster
        print(f"pg_ctlcluster {action}: {out.decode(errors='replace')}")
    return int(proc.returncode or 0)


async def test_postgres_restart_under_load_loses_nothing(
    pg_url: str, tmp_path: Path, trained_nlu_dir: Path
) -> None:
    db = Database(pg_url)
    try:
        async with (
            FakeTelegram() as tg,
            aiohttp.ClientSession() as http,
            worker_cluster(tmp_path, pg_url, tg, trained_nlu_dir) as (backend, workers),
        ):
            platform = TelegramPlatform(lambda: sorted({w.url for w in workers if w.alive}), http)
            citizens = [TgCitizen(tg, platform, 5_600_000 + i) for i in range(CHATS)]
            filings = [asyncio.create_task(c.file_complaint()) for c in citizens]

            await wait_until(lambda: platform.delivered >= CHATS * UPDATES_PER_FILING // 3
                             or any(f.done() for f in filings), timeout=120, what="the conversations to get going")
            assert sum(not f.done() for f in filings) >= CHATS // 2, "the restart must land mid-conversation"
            retries_before = platform.retries
            assert await pg_ctl("restart") == 0

            references = await asyncio.gather(*filings)

            assert all(w.alive and w.starts == 1 for w in workers), "the workers rode it out"
            cases = await all_cases(backend.staff(http), "telegram")
            assert sorted(c.reference for c in cases) == sorted(references), "one case per filing"
            await db.close()  # its connections died with the restart; a fresh pool for the reads below
            settled = await outbox_settled(db)
            assert settled.get("dead", 0) == 0, settled
            # At least once out: a message Telegram accepted just as the database went away may come again.
            repeated = sum(assert_filing_transcript(c, r, repeats=1)
                           for c, r in zip(citizens, references, strict=True))
            stored = await inbound_per_chat(db, "telegram")
            assert stored == {str(c.chat_id): c.sent_updates for c in citizens}
            assert sum(stored.values()) == CHATS * UPDATES_PER_FILING
            assert await unprocessed_or_failed(db) == [], "no turn was given up because of the restart"
            print(f"answers sent twice: {repeated}; updates refused and sent again: "
                  f"{platform.retries - retries_before}")
    finally:
        # Never leave the machine without its database, whatever happened above.
        if await pg_ctl("status") != 0:
            await pg_ctl("start")
        await db.close()
