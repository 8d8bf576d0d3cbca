"""The core backend down for a while, then back (`tawasul backend serve` as a subprocess, stopped and started
again on the same port and database; the service in process, Telegram in webhook mode against the fake).

Citizens who file during the outage are told the request is received and the reference will follow; status
checks answer from the local mirror, marked stale. Meanwhile the back office goes on changing case statuses
in the backend's own database. When the backend is back, the filings go through (one case each, although
each was tried several times) and every notice reaches its citizen once, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, select

from backend_client.models import StatusUpdate
from config.settings import BackendSettings
from core_backend.db import Database as CoreDatabase
from core_backend.service import CaseService as CoreCases
from tawasul.app import Service
from tawasul.db.models import OutboxItem
from tests.faults.checks import outbox_settled
from tests.faults.harness import (
    BACKEND_WEBHOOK_SECRET,
    REF_RE,
    BackendProc,
    TelegramPlatform,
    TgCitizen,
    all_cases,
    inprocess_settings,
    log_tail,
    sent_texts,
)
from tests.fakes import FakeTelegram
from tests.support import free_port

pytestmark = pytest.mark.faults

DELAYED = "سنرسل لك رقم الطلب فور تسجيله"
STALE = "قد لا تكون الحالة محدّثة"


async def back_office_sets_status(database_url: str, reference: str, status: str) -> None:
    """Staff work in the backend's own database while its API is down; the event waits there for delivery
    (``push``: queued for the webhook sender of the next backend process)."""
    db = CoreDatabase(database_url)
    try:
        cases = CoreCases(db, BackendSettings(database_url=database_url,
                                              webhook_secret=BACKEND_WEBHOOK_SECRET), push=True)
        await cases.set_status(reference, StatusUpdate(status=status))
    finally:
        await db.close()


async def test_filings_and_notices_catch_up_after_a_backend_outage(
    pg_url: str, tmp_path: Path, trained_nlu_dir: Path
) -> None:
    port = free_port()
    backend_db = f"sqlite+aiosqlite:///{tmp_path / 'core_backend.db'}"
    backend = BackendProc(tmp_path, backend_db, webhook_url=f"http://127.0.0.1:{port}/backend/events")
    async with FakeTelegram() as tg, aiohttp.ClientSession() as http:
        settings = inprocess_settings(pg_url, tmp_path, port=port, tg=tg, remote=backend,
                                      backend={"poll_interval_s": 2.0})
        service = Service(settings)
        try:
            await backend.start()
            await backend.ready()
            await service.start()
            platform = TelegramPlatform(lambda: [service.url], http)

            # Before the outage: one citizen has a case.
            early = TgCitizen(tg, platform, 5_570_001)
            early_ref = await early.file_complaint()
            late = [TgCitizen(tg, platform, 5_570_100 + i) for i in range(4)]
            await asyncio.gather(*(c.start_filing() for c in late))

            assert await backend.stop() == 0
            # Filing during the outage: received, the reference will follow.
            for citizen in late:
                await citizen.presses("send")
            for citizen in late:
                await citizen.expect(DELAYED)
            # A status check answers from the mirror and says it may be out of date.
            await early.says(f"وين وصل طلبي {early_ref}")
            assert early_ref in await early.expect(STALE)
            # The back office moves the early case on; nobody can tell the bot yet.
            await back_office_sets_status(backend_db, early_ref, "under_review")
            await back_office_sets_status(backend_db, early_ref, "in_progress")

            await backend.start()
            await backend.ready()
            references = [REF_RE.search(await c.expect("TWS-")) for c in late]
            late_refs = [m.group(0) for m in references if m is not None]
            assert len(late_refs) == len(late)
            for citizen, reference in zip(late, late_refs, strict=True):
                await backend.staff(http).set_status(reference, "under_review")
            for citizen, reference in zip(late, late_refs, strict=True):
                await citizen.expect(reference, "قيد المراجعة")
            await early.expect(early_ref, "قيد المعالجة")
            settled = await outbox_settled(service.db)
            assert settled.get("dead", 0) == 0, settled

            # One case per filing, although each filing was tried several times while the backend was away.
            cases = await all_cases(backend.staff(http), "telegram")
            assert sorted(c.reference for c in cases) == sorted([early_ref, *late_refs])
            async with service.db.session() as session:
                attempts = (await session.execute(
                    select(func.max(OutboxItem.attempts)).where(OutboxItem.kind == "file_case"))).scalar_one()
            assert attempts >= 2, "the filings were tried while the backend was down"

            # Each chat: every answer once, in dialogue order.
            for citizen, reference in zip(late, late_refs, strict=True):
                texts = sent_texts(tg, citizen.chat_id)
                order = ("فهمت طلبك", "📍", "📷", DELAYED, f"برقم {reference}", f"طلبك {reference} قيد المراجعة")
                assert len(texts) == len(order), texts
                for text, fragment in zip(texts, order, strict=True):
                    assert fragment in text, texts
            texts = sent_texts(tg, early.chat_id)
            notices = [t for t in texts if t.startswith(f"طلبك {early_ref}")]
            assert notices == [f"طلبك {early_ref} قيد المراجعة الآن.",
                               f"طلبك {early_ref} قيد المعالجة لدى وزارة الأشغال."], texts
            assert texts.index(notices[0]) > next(i for i, t in enumerate(texts) if STALE in t)
        except BaseException:
            print(log_tail(backend))
            raise
        finally:
            await service.stop()
            await backend.stop()
