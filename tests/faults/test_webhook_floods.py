"""Webhook floods against the service's one aiohttp server (in process, PostgreSQL, Telegram and WhatsApp
both on): the same update delivered dozens of times at once is handled once; malformed, oversized and
forged requests are refused (400, 413, 401) and nothing of them is processed; and while junk pours in, a
real citizen still gets answers and /healthz keeps answering."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from tawasul.app import Service
from tests.faults.checks import inbound_per_chat
from tests.faults.harness import (
    COMPLAINT,
    TELEGRAM_SECRET,
    TelegramPlatform,
    TgCitizen,
    WaCitizen,
    inprocess_settings,
    sent_texts,
)
from tests.fakes import FakeGraph, FakeTelegram
from tests.support import free_port

pytestmark = pytest.mark.faults

MAX_BODY = 8192
COPIES = 40
JUNK = 400


async def post(http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> int:
    async with http.post(url, data=body, headers={"Content-Type": "application/json", **headers}) as resp:
        await resp.read()
        return resp.status


async def test_duplicate_floods_are_handled_once_and_junk_is_refused_while_citizens_get_answers(
    pg_url: str, tmp_path: Path, trained_nlu_dir: Path
) -> None:
    port = free_port()
    async with FakeTelegram() as tg, FakeGraph() as wa, aiohttp.ClientSession() as http:
        whatsapp = {
            "access_token": SecretStr(wa.access_token), "phone_number_id": wa.phone_number_id,
            "app_secret": SecretStr(wa.app_secret), "verify_token": SecretStr("fault-verify-token"),
            "api_base_url": wa.base_url, "api_version": wa.api_version,
        }
        service = Service(inprocess_settings(pg_url, tmp_path, port=port, tg=tg, whatsapp=whatsapp,
                                             server={"max_body_bytes": MAX_BODY}))
        await service.start()
        try:
            tg_url = f"{service.url}{service.settings.telegram.webhook_path}"
            wa_url = f"{service.url}{service.settings.whatsapp.webhook_path}"
            tg_headers = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}

            # --- the same update, many times at once and again afterwards: handled once --------------
            platform = TelegramPlatform(lambda: [service.url], http)
            tg_dup = TgCitizen(tg, platform, 5_590_001)
            update = json.dumps(tg.text_update(tg_dup.chat_id, "/help")).encode()
            wa_dup = WaCitizen(wa, wa_url, "97336660001")
            message = json.dumps(wa.text_message(wa_dup.wa_id, "/help")).encode()
            wa_headers = {"X-Hub-Signature-256": wa.sign(message)}
            first = await asyncio.gather(
                *(post(http, tg_url, update, tg_headers) for _ in range(COPIES)),
                *(post(http, wa_url, message, wa_headers) for _ in range(COPIES)),
            )
            assert first == [200] * (2 * COPIES)
            for _ in range(10):  # the platform's later retries
                assert await post(http, tg_url, update, tg_headers) == 200
                assert await post(http, wa_url, message, wa_headers) == 200
            # One chat's messages run in order: once a later message is answered, the copies had every
            # chance to be answered too.
            await tg_dup.says("شكراً")
            await tg_dup.expect("العفو")
            await wa_dup.says("شكراً")
            await wa_dup.expect("العفو")
            for texts in (sent_texts(tg, tg_dup.chat_id), wa_dup.texts()):
                assert len(texts) == 3, texts  # the help, the menu after it, the answer to the thanks
                for text, fragment in zip(texts, ("/status", "اختر من القائمة", "العفو"), strict=True):
                    assert fragment in text, texts
            assert await inbound_per_chat(service.db, "telegram") == {str(tg_dup.chat_id): 2}
            assert await inbound_per_chat(service.db, "whatsapp") == {wa_dup.wa_id: 2}

            # --- junk pours in while two citizens talk and /healthz is asked --------------------------
            forged_chat, forged_wa = 5_590_666, "97336666666"
            forged_update = json.dumps(tg.text_update(forged_chat, COMPLAINT)).encode()
            forged_message = json.dumps(wa.text_message(forged_wa, COMPLAINT)).encode()
            huge_update = json.dumps(tg.text_update(forged_chat, "x" * (5 * MAX_BODY))).encode()
            huge_message = json.dumps(wa.text_message(forged_wa, "x" * (5 * MAX_BODY))).encode()
            not_json = b'{"update_id": 1, "message": {'
            junk: list[tuple[str, str, bytes, dict[str, str], int]] = [
                ("tg malformed", tg_url, not_json, tg_headers, 400),
                ("tg wrong secret", tg_url, forged_update, {"X-Telegram-Bot-Api-Secret-Token": "guess"}, 401),
                ("tg no secret", tg_url, forged_update, {}, 401),
                ("tg too large", tg_url, huge_update, tg_headers, 413),
                ("wa malformed", wa_url, not_json, {"X-Hub-Signature-256": wa.sign(not_json)}, 400),
                ("wa wrong signature", wa_url, forged_message, {"X-Hub-Signature-256": "sha256=" + "0" * 64},
                 401),
                ("wa signed other body", wa_url, forged_message, {"X-Hub-Signature-256": wa.sign(b"{}")}, 401),
                ("wa too large", wa_url, huge_message, {"X-Hub-Signature-256": wa.sign(huge_message)}, 413),
            ]
            answers: Counter[tuple[str, int]] = Counter()
            flooding = True
            health: list[int] = []
            gate = asyncio.Semaphore(32)

            async def one(kind: str, url: str, body: bytes, headers: dict[str, str], _: int) -> None:
                try:
                    answers[(kind, await post(http, url, body, headers))] += 1
                finally:
                    gate.release()

            async def flood() -> None:
                # Junk until the citizens are answered (and at least JUNK requests), 32 in flight at a time.
                sent: set[asyncio.Task[None]] = set()
                for count, item in enumerate(itertools.cycle(junk)):
                    if not flooding and count >= JUNK:
                        break
                    await gate.acquire()
                    task = asyncio.create_task(one(*item))
                    sent.add(task)
                    task.add_done_callback(sent.discard)
                await asyncio.gather(*sent)

            async def healthz() -> None:
                while flooding:
                    async with http.get(f"{service.url}/healthz") as resp:
                        health.append(resp.status)
                    await asyncio.sleep(0.05)

            async def citizens() -> None:
                talker = TgCitizen(tg, platform, 5_590_002)
                await talker.says("/start")
                await talker.expect("اختر من القائمة")
                writer = WaCitizen(wa, wa_url, "97336660002")
                await writer.says("/help")
                await writer.expect("/status")

            flood_task = asyncio.create_task(flood())
            probe = asyncio.create_task(healthz())
            await citizens()
            flooding = False
            await flood_task
            await probe

            # Every kind of junk got its refusal, and only that.
            assert set(answers) == {(kind, status) for kind, *_, status in junk}, answers
            assert sum(answers.values()) >= JUNK
            assert health and set(health) == {200}
            # Nothing of the junk was processed: no citizen, no message, no answer for the forged senders.
            assert str(forged_chat) not in await inbound_per_chat(service.db, "telegram")
            assert forged_wa not in await inbound_per_chat(service.db, "whatsapp")
            assert tg.messages_to(forged_chat) == [] and wa.messages_to(forged_wa) == []
        finally:
            await service.stop()
