"""WhatsApp end to end through the whole service: Meta-signed webhook POSTs into the service's one aiohttp
server, the dialogue engine with the trained NLU model, the outbox, the embedded reference core backend,
and our Graph API client sending to the fake Graph API on 127.0.0.1 (which enforces the 24-hour window)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select, update

from backend_client.client import BackendClient
from tawasul.app import Service
from tawasul.db.models import Citizen, MessageDirection, MessageRecord
from tests.fakes import FakeGraph, wait_until
from tests.fakes.wa_citizen import WaCitizen as _WaCitizen
from tests.support import settings_for

REF_RE = re.compile(r"TWS-\d{4}-\d{6}")
COMPLAINT = "السلام عليكم، الشارع اللي جدام بيتنا في سترة مليان حفر وخربت تاير سيارتي، ليش محد يصلحه؟"
VERIFY_TOKEN = "verify-me-0123456789"
WAIT_S = 45.0  # generous: two loaded cores


@pytest.fixture
def bot_db_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"


@contextlib.asynccontextmanager
async def whatsapp_service(
    wa: FakeGraph, db_url: str, tmp: Path, **whatsapp: Any
) -> AsyncIterator[tuple[Service, str]]:
    """The service with WhatsApp pointed at ``wa``; yields it and its webhook URL."""
    values: dict[str, Any] = {
        "access_token": SecretStr(wa.access_token),
        "phone_number_id": wa.phone_number_id,
        "app_secret": SecretStr(wa.app_secret),
        "verify_token": SecretStr(VERIFY_TOKEN),
        "api_base_url": wa.base_url,
        "api_version": wa.api_version,
        # Quick back-off so a throughput storm costs a test seconds, not minutes.
        "retry_base_s": 0.2,
        "retry_max_s": 1.0,
    }
    values.update(whatsapp)
    wa.enforce_window = True  # free-form outside 24 h fails with 131047, as on the real API
    service = Service(settings_for(db_url, tmp, whatsapp=values))
    await service.start()
    try:
        assert "whatsapp" in service.outputs, [c.name for c in service.channels]
        yield service, f"{service.url}{service.settings.whatsapp.webhook_path}"
    finally:
        await service.stop()


def staff(service: Service) -> BackendClient:
    backend = service.settings.backend
    return BackendClient(
        service.backend.base_url,
        backend.service_token.get_secret_value(),
        session=service.http,
        staff_token=backend.staff_token.get_secret_value(),
    )


def whatsapp_input(service: Service) -> Any:
    return next(c for c in service.channels if c.name == "whatsapp")


class WaCitizen(_WaCitizen):
    def __init__(self, wa: FakeGraph, url: str, wa_id: str) -> None:
        super().__init__(wa, url, wa_id, wait_s=WAIT_S)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll an async condition (a database read) until it holds; the timeout only bounds a hung test."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def inbound_count(service: Service, wa_id: str) -> int:
    async with service.db.session() as session:
        return int(
            (
                await session.execute(
                    select(func.count())
                    .select_from(MessageRecord)
                    .join(Citizen, Citizen.id == MessageRecord.citizen_id)
                    .where(
                        Citizen.channel == "whatsapp",
                        Citizen.channel_user_id == wa_id,
                        MessageRecord.direction == MessageDirection.IN,
                    )
                )
            ).scalar_one()
        )


async def file_a_complaint(citizen: WaCitizen) -> str:
    """Complaint -> list menu -> confirm -> location request with reply buttons -> skip -> send now."""
    wa = citizen.wa
    await citizen.says(COMPLAINT)
    understood = await citizen.expect("شكوى", "وزارة الأشغال")
    assert understood["interactive"]["type"] == "list"  # four choices: more than three reply buttons
    assert wa.choices_of(understood) == ["confirm", "chtype", "chag", "cancel"]

    await citizen.presses("confirm")  # a list_reply naming the menu message as its context
    await citizen.expect("📍")
    asked = await citizen.expect("أو اختر")
    kinds = [m["interactive"]["type"] for m in citizen.answers() if m["type"] == "interactive"]
    assert kinds == ["location_request_message", "button"], kinds
    assert wa.choices_of(asked) == ["skip", "send", "cancel"]

    await citizen.presses("skip")  # a button_reply
    photo_prompt = await citizen.expect("📷")
    assert "send" in wa.choices_of(photo_prompt)
    await citizen.presses("send")
    filed = await citizen.expect("TWS-", what="the reference")
    match = REF_RE.search(wa.text_of(filed))
    assert match, wa.text_of(filed)
    return match.group(0)


# -------------------------------------------------------------------------------------------------- tests


async def test_complaint_filed_then_status_notices_inside_and_outside_the_window(
    bot_db_url: str, tmp_path: Path, trained_nlu_dir: Path
) -> None:
    async with FakeGraph() as wa, whatsapp_service(wa, bot_db_url, tmp_path) as (service, url):
        citizen = WaCitizen(wa, url, "97333445501")
        reference = await file_a_complaint(citizen)
        cases = await staff(service).list_cases("whatsapp", citizen.wa_id)
        assert [c.reference for c in cases] == [reference]
        # Each of the four inbound messages got its blue ticks.
        await wait_until(lambda: len(set(wa.reads)) == 4, timeout=WAIT_S, what="four read receipts")

        # Inside the 24-hour window: the notice is free text.
        citizen._act()
        await staff(service).set_status(reference, "under_review", "سيزور الفريق الموقع يوم الأحد")
        notice = await citizen.expect(reference, "قيد المراجعة", what="the free-text notice")
        assert notice["type"] == "text"
        assert "سيزور الفريق الموقع يوم الأحد" in notice["text"]["body"]

        # 25 hours of silence: our record of the last inbound message, and the platform's.
        long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=25)
        async with service.db.session() as session:
            await session.execute(
                update(Citizen)
                .where(Citizen.channel == "whatsapp", Citizen.channel_user_id == citizen.wa_id)
                .values(last_inbound_at=long_ago)
            )
        wa.last_inbound[citizen.wa_id] = long_ago
        requests_before = len(wa.requests)
        citizen._act()
        await staff(service).set_status(reference, "in_progress")
        await wait_until(lambda: len(citizen.answers()) == 1, timeout=WAIT_S, what="the template notice")
        template = citizen.answers()[0]
        assert template["type"] == "template", template
        body = template["template"]
        assert body["name"] == "case_status_update" and body["language"] == {"code": "ar"}
        assert [p["text"] for p in body["components"][0]["parameters"]] == [reference, "قيد المعالجة"]
        # Our window bookkeeping chose the template: no free-form attempt was refused first.
        attempts = [r.body for r in wa.requests[requests_before:] if r.path.endswith("/messages")]
        assert [a["type"] for a in attempts] == ["template"], attempts


async def test_webhook_handshake_signatures_and_malformed_bodies(
    bot_db_url: str, tmp_path: Path, trained_nlu_dir: Path
) -> None:
    async with (
        FakeGraph() as wa,
        whatsapp_service(wa, bot_db_url, tmp_path) as (service, url),
        aiohttp.ClientSession() as http,
    ):
        # Meta's subscription handshake.
        query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
        async with http.get(url, params=query) as resp:
            assert resp.status == 200 and await resp.text() == "1158201444"
        async with http.get(url, params={**query, "hub.verify_token": "guess"}) as resp:
            assert resp.status == 403

        citizen = WaCitizen(wa, url, "97333445502")
        forged = wa.text_message(citizen.wa_id, COMPLAINT)
        raw = json.dumps(forged).encode()
        assert await citizen.delivers(forged, signature="sha256=" + "0" * 64) == 401
        assert await citizen.delivers(raw, signature=wa.sign(raw + b" ")) == 401  # signed a different body
        async with http.post(url, data=raw, headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 401  # no signature at all
        # Correctly signed but unreadable: not JSON, and JSON that is not a WhatsApp webhook.
        assert await citizen.delivers(b'{"object": "whatsapp_business_account", "entry": [') == 400
        assert await citizen.delivers(b'{"object": "whatsapp_business_account", "entry": "nope"}') == 400
        assert await citizen.delivers(b"[1, 2, 3]") == 400

        # The service is fine and nothing above was processed: the next real message is the first one.
        await citizen.says("/help")
        await citizen.expect("/status", "80008001")
        await citizen.expect("اختر من القائمة")
        assert await inbound_count(service, citizen.wa_id) == 1
        assert not any(COMPLAINT[:20] in (r.text or "") for r in await _all_rows(service))
        assert not any("فهمت طلبك" in text for text in citizen.texts()), citizen.texts()
        await wait_until(lambda: len(wa.reads) >= 1, timeout=WAIT_S, what="the read receipt")
        assert len(wa.reads) == 1  # only the real message was marked read


async def _all_rows(service: Service) -> list[MessageRecord]:
    async with service.db.session() as session:
        return list((await session.execute(select(MessageRecord))).scalars())


async def test_redelivered_message_is_answered_once(
    bot_db_url: str, tmp_path: Path, trained_nlu_dir: Path
) -> None:
    async with FakeGraph() as wa, whatsapp_service(wa, bot_db_url, tmp_path) as (service, url):
        citizen = WaCitizen(wa, url, "97333445503")
        body = wa.text_message(citizen.wa_id, "/help")
        assert await citizen.delivers(body) == 200
        await citizen.expect("/status")
        await citizen.expect("اختر من القائمة")  # help, then the menu
        first_answers = citizen.answers()
        assert len(first_answers) == 2
        assert await citizen.delivers(body) == 200  # Meta delivers the same wamid again
        assert await citizen.delivers(body) == 200
        # One citizen's messages run in order, so once a later message is answered the re-deliveries have
        # had every chance to be answered too.
        await citizen.says("شكراً")
        thanks = await citizen.expect("العفو")
        # Nothing came between the first answers and the answer to the later message.
        assert citizen.received().index(thanks) == len(first_answers), citizen.texts()
        assert await inbound_count(service, citizen.wa_id) == 2
        assert whatsapp_input(service).duplicates == 2


async def test_throughput_errors_delay_sends_but_lose_nothing(
    bot_db_url: str, tmp_path: Path, trained_nlu_dir: Path
) -> None:
    async with FakeGraph() as wa, whatsapp_service(wa, bot_db_url, tmp_path, max_retries=2) as (service, url):
        citizen = WaCitizen(wa, url, "97333445504")
        await citizen.says("/start")
        await citizen.expect("اختر من القائمة")
        calm_requests, calm_sent, calm_reads = len(wa.requests), len(wa.sent), len(wa.reads)

        # 130429 (the number's throughput) and 131056 (this pair's rate). Two in-place retries per send,
        # so some messages also go back to the outbox and come out on a later attempt.
        wa.fail(times=3, code=130429)
        wa.fail(times=2, code=131056)
        await citizen.says(COMPLAINT)
        await citizen.expect("فهمت طلبك", "وزارة الأشغال")
        await citizen.presses("cancel")
        await citizen.expect("تم الإلغاء")
        await citizen.expect("اختر من القائمة")

        texts = citizen.texts()
        assert len(texts) == 5, texts
        assert texts[0].startswith("أهلاً بك في تواصل")
        assert texts[1] == texts[4] == "اختر من القائمة أو اكتب رسالتك مباشرة:"
        assert texts[2].startswith("فهمت طلبك")
        assert texts[3].startswith("تم الإلغاء")
        # Every POST was either refused by the storm or accepted (a read receipt that met a refusal is
        # not retried: blue ticks are best effort, messages are not).
        posts = [r for r in wa.requests[calm_requests:] if r.path.endswith("/messages")]
        accepted = (len(wa.sent) - calm_sent) + (len(wa.reads) - calm_reads)
        assert len(posts) == accepted + 5
        assert whatsapp_input(service).client.retries >= 1


async def test_delivery_status_callbacks_update_the_outbound_row(
    bot_db_url: str, tmp_path: Path, trained_nlu_dir: Path
) -> None:
    async with FakeGraph() as wa, whatsapp_service(wa, bot_db_url, tmp_path) as (service, url):
        citizen = WaCitizen(wa, url, "97333445505")
        await citizen.says("/help")
        help_payload = await citizen.expect("/status")
        wamid = help_payload["wamid"]

        async def status_of(message_id: str) -> str | None:
            async with service.db.session() as session:
                return (
                    await session.execute(
                        select(MessageRecord.delivery_status).where(
                            MessageRecord.channel == "whatsapp",
                            MessageRecord.platform_message_id == message_id,
                            MessageRecord.direction == MessageDirection.OUT,
                        )
                    )
                ).scalar_one_or_none()

        async def becomes(expected: str) -> None:
            async def check() -> bool:
                return await status_of(f"wa:{wamid}") == expected

            await eventually(check, f"delivery status {expected}")

        await becomes("sent")  # recorded when the Graph API accepted it
        for status in ("delivered", "read"):
            assert await citizen.delivers(wa.status_update(wamid, citizen.wa_id, status)) == 200
            await becomes(status)
        # A status of a message we do not know is accepted (200) and changes nothing.
        assert await citizen.delivers(wa.status_update("wamid.unknown", citizen.wa_id, "delivered")) == 200
        channel = whatsapp_input(service)
        await wait_until(lambda: channel.pending == 0, timeout=WAIT_S, what="the status handled")
        assert await status_of(f"wa:{wamid}") == "read"
        assert await status_of("wa:wamid.unknown") is None


async def test_out_of_order_status_callbacks_do_not_move_a_message_back(
    bot_db_url: str, tmp_path: Path, trained_nlu_dir: Path
) -> None:
    """Meta does not promise the order of status callbacks: a "delivered" may arrive after the "read"."""
    async with FakeGraph() as wa, whatsapp_service(wa, bot_db_url, tmp_path) as (service, url):
        citizen = WaCitizen(wa, url, "97333445506")
        await citizen.says("/help")
        wamid = (await citizen.expect("/status"))["wamid"]
        channel = whatsapp_input(service)

        async def recorded() -> bool:  # Graph's answer is recorded just after the fake has seen the send
            async with service.db.session() as session:
                found = await session.execute(select(MessageRecord.delivery_status).where(
                    MessageRecord.platform_message_id == f"wa:{wamid}"))
                return found.scalar_one_or_none() == "sent"

        await eventually(recorded, "the reply recorded as sent")
        for status in ("read", "delivered"):
            assert await citizen.delivers(wa.status_update(wamid, citizen.wa_id, status)) == 200
            await wait_until(lambda: channel.pending == 0, timeout=WAIT_S, what=f"status {status} handled")
        async with service.db.session() as session:
            stored = (
                await session.execute(
                    select(MessageRecord.delivery_status).where(
                        MessageRecord.platform_message_id == f"wa:{wamid}"
                    )
                )
            ).scalar_one()
        assert stored == "read"
