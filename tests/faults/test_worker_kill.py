"""SIGKILL of one worker in the middle of many conversations and filings (real subprocesses: two
`tawasul run` workers on one PostgreSQL database, the reference core backend standalone, Telegram in
webhook mode against the fake Bot API). The killed worker is started again; nothing may be lost, filed
twice or answered out of order, and each reference reaches its citizen once."""

from __future__ import annotations

import asyncio
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

CHATS = 30
UPDATES_PER_FILING = 4


async def test_sigkill_of_a_worker_mid_conversation_loses_and_doubles_nothing(
    pg_url: str, tmp_path: Path, trained_nlu_dir: Path
) -> None:
    db = Database(pg_url)
    async with (
        FakeTelegram() as tg,
        aiohttp.ClientSession() as http,
        worker_cluster(tmp_path, pg_url, tg, trained_nlu_dir) as (backend, workers),
    ):
        try:
            # With separate ports the platform spreads updates over the workers that are up; with one
            # shared port the kernel does.
            platform = TelegramPlatform(lambda: sorted({w.url for w in workers if w.alive}), http)
            citizens = [TgCitizen(tg, platform, 5_560_000 + i) for i in range(CHATS)]
            filings = [asyncio.create_task(c.file_complaint()) for c in citizens]

            # Midway: about a third of all updates delivered, most conversations still going.
            victim = workers[0]
            await wait_until(lambda: platform.delivered >= CHATS * UPDATES_PER_FILING // 3
                             or any(f.done() for f in filings), timeout=120, what="the conversations to get going")
            assert sum(not f.done() for f in filings) >= CHATS // 2, "the kill must land mid-conversation"
            await victim.kill()
            await victim.start()
            await victim.ready()

            references = await asyncio.gather(*filings)

            # Each filing is exactly one case in the core backend, for its own citizen.
            assert len(set(references)) == CHATS
            cases = await all_cases(backend.staff(http), "telegram")
            assert sorted(c.reference for c in cases) == sorted(references), "no duplicate or stray case"
            owners = {c.reference: c.channel_user_id for c in cases}
            for citizen, reference in zip(citizens, references, strict=True):
                assert owners[reference] == str(citizen.chat_id)

            # Every answer arrived, in dialogue order; the reference exactly once. A message Telegram had
            # accepted from the killed worker just before the kill may come once more.
            settled = await outbox_settled(db)
            assert settled.get("dead", 0) == 0, settled
            repeated = sum(assert_filing_transcript(c, r, repeats=1)
                           for c, r in zip(citizens, references, strict=True))
            print(f"answers sent twice after the kill: {repeated}; platform retries: {platform.retries}")

            # None lost: every update the platform delivered is stored once and was processed normally.
            stored = await inbound_per_chat(db, "telegram")
            assert stored == {str(c.chat_id): c.sent_updates for c in citizens}
            assert sum(stored.values()) == CHATS * UPDATES_PER_FILING
            assert await unprocessed_or_failed(db) == []
            assert victim.starts == 2
        finally:
            await db.close()
