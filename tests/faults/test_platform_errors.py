"""The platforms refusing sends in bursts while several citizens file at once: Telegram's 429 with
retry_after and 5xx (the fake Bot API), WhatsApp's throughput error 130429 and bare HTTP 429 (the fake Graph
API). Delivery slows down; nothing is lost, nothing arrives twice and each chat's answers keep their order.
The service runs in process on PostgreSQL with the embedded core backend."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from tawasul.app import Service
from tests.faults.checks import outbox_settled
from tests.faults.harness import (
    TelegramPlatform,
    TgCitizen,
    WaCitizen,
    all_cases,
    assert_filing_transcript,
    inprocess_settings,
    staff_client,
)
from tests.fakes import FakeGraph, FakeTelegram
from tests.support import free_port

pytestmark = pytest.mark.faults

CHATS = 6


async def test_telegram_429_and_5xx_bursts_delay_but_lose_or_double_nothing(
    pg_url: str, tmp_path: Path, trained_nlu_dir: Path
) -> None:
    port = free_port()
    async with FakeTelegram() as tg, aiohttp.ClientSession() as http:
        # Two in-place retries per 429 at most: the rest of a burst goes back to the outbox.
        service = Service(inprocess_settings(pg_url, tmp_path, port=port, tg=tg, telegram={"max_retries": 2}))
        await service.start()
        try:
            platform = TelegramPlatform(lambda: [service.url], http)
            citizens = [TgCitizen(tg, platform, 5_580_000 + i) for i in range(CHATS)]
            # A 429 storm on the first answers; then, ten messages later, a burst of server errors.
            tg.fail("sendMessage", times=8, status=429, retry_after=1)
            tg.fail("sendMessage", times=6, status=502, after=10)
            references = await asyncio.gather(*(c.file_complaint() for c in citizens))
            settled = await outbox_settled(service.db)

            assert settled.get("dead", 0) == 0, settled
            for citizen, reference in zip(citizens, references, strict=True):
                assert_filing_transcript(citizen, reference)  # no repeats: nothing was half sent
            # Every refused call was made again: 14 refusals on top of what was accepted, all of them used.
            assert len(tg.calls_to("sendMessage")) == len(tg.sent) + 14
            cases = await all_cases(staff_client(service.backend.base_url, http), "telegram")
            assert sorted(c.reference for c in cases) == sorted(references)
        finally:
            await service.stop()


async def test_whatsapp_130429_and_http_429_bursts_delay_but_lose_or_double_nothing(
    pg_url: str, tmp_path: Path, trained_nlu_dir: Path
) -> None:
    port = free_port()
    async with FakeGraph() as wa, aiohttp.ClientSession() as http:
        whatsapp = {
            "access_token": SecretStr(wa.access_token), "phone_number_id": wa.phone_number_id,
            "app_secret": SecretStr(wa.app_secret), "verify_token": SecretStr("fault-verify-token"),
            "api_base_url": wa.base_url, "api_version": wa.api_version,
            # Quick back-off so the storm costs seconds; two in-place retries, then the outbox takes over.
            "retry_base_s": 0.2, "retry_max_s": 1.0, "max_retries": 2,
        }
        service = Service(inprocess_settings(pg_url, tmp_path, port=port, whatsapp=whatsapp))
        await service.start()
        try:
            url = f"{service.url}{service.settings.whatsapp.webhook_path}"
            citizens = [WaCitizen(wa, url, f"9733355{i:04d}") for i in range(CHATS)]
            wa.fail(times=8, code=130429)
            wa.fail(times=6, code=None, http_status=429)
            references = await asyncio.gather(*(c.file_complaint() for c in citizens))
            settled = await outbox_settled(service.db)

            assert settled.get("dead", 0) == 0, settled
            order = ("فهمت طلبك", "📍", "أو اختر", "📷")
            for citizen, reference in zip(citizens, references, strict=True):
                texts = citizen.texts()
                assert len(texts) == len(order) + 1, texts
                for text, fragment in zip(texts, (*order, f"برقم {reference}"), strict=True):
                    assert fragment in text, texts
            # Every POST was refused by the storm or accepted (a read receipt that met a refusal is not
            # retried: blue ticks are best effort, messages are not).
            posts = [r for r in wa.requests if r.path.endswith("/messages")]
            assert len(posts) == len(wa.sent) + len(wa.reads) + 14
            cases = await all_cases(staff_client(service.backend.base_url, http), "whatsapp")
            assert sorted(c.reference for c in cases) == sorted(references)
        finally:
            await service.stop()
