"""Telegram end to end through the whole service: the real python-telegram-bot client (polling, or the
webhook route) against the fake Bot API on 127.0.0.1, the dialogue engine with the trained NLU model, the
outbox, and the embedded reference core backend (filing, staff status changes pushed back as events)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from backend_client.client import BackendClient
from backend_client.models import StatusEvent
from backend_client.webhooks import signed_headers
from tawasul.app import EVENTS_PATH, Service
from tawasul.db.models import MessageRecord, OutboxItem
from tests.fakes import FakeTelegram, wait_until
from tests.fakes.tg_citizen import TgChat
from tests.support import free_port, settings_for

REF_RE = re.compile(r"TWS-\d{4}-\d{6}")
COMPLAINT = "السلام عليكم، الشارع اللي جدام بيتنا في سترة مليان حفر وخربت تاير سيارتي، ليش محد يصلحه؟"
STREET_LIGHT = "عمود الإنارة في شارع ١٢ بمدينة حمد طايح على الرصيف من اسبوع وخطر على الاطفال"
# Generous: two loaded cores, and Telegram's own per-chat pacing (1 message/s after a burst of 3).
WAIT_S = 45.0


@pytest.fixture(params=["sqlite", "postgresql"])
def bot_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def sqlite_bot_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"


def telegram_settings(
    tg: FakeTelegram, db_url: str, tmp: Path, *, server: dict[str, Any] | None = None, **telegram: Any
) -> Any:
    values: dict[str, Any] = {
        "bot_token": SecretStr(tg.token),
        "api_base_url": tg.base_url,
        "api_file_base_url": tg.file_base_url,
        "poll_timeout_s": 1,
    }
    values.update(telegram)
    sections: dict[str, dict[str, Any]] = {"telegram": values}
    if server:
        sections["server"] = server
    return settings_for(db_url, tmp, **sections)


@contextlib.asynccontextmanager
async def running(settings: Any) -> AsyncIterator[Service]:
    service = Service(settings)
    await service.start()
    try:
        assert "telegram" in service.outputs, [c.name for c in service.channels]
        yield service
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


class Citizen(TgChat):
    """A user writing to the bot through the fake (queued there for polling or pushed to the webhook)."""

    def __init__(self, tg: FakeTelegram, chat_id: int) -> None:
        super().__init__(tg, chat_id, wait_s=WAIT_S)

    def says(self, text: str) -> int:
        self._act()
        return self.tg.user_sends(self.chat_id, text)

    def presses(self, payload: str) -> int:
        self._act()
        return self.tg.user_presses(self.chat_id, payload)

    def sends(self, update: dict[str, Any]) -> int:
        self._act()
        return self.tg.push_update(update)

    def reply_keyboard(self) -> list[str]:
        """Titles of the reply keyboard (not inline) on the bot's latest message, if it has one."""
        for sent in reversed(self.tg.sent):
            if sent["chat_id"] == self.chat_id:
                rows = (sent["reply_markup"] or {}).get("keyboard") or []
                return [b["text"] for row in rows for b in row]
        return []


async def outbox_idle(service: Service) -> None:
    """Wait until every outbox item is done (nothing pending, nothing leased)."""

    async def busy() -> int:
        async with service.db.session() as session:
            return int(
                (
                    await session.execute(
                        select(func.count()).select_from(OutboxItem).where(OutboxItem.status != "done")
                    )
                ).scalar_one()
            )

    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while await busy():
        assert loop.time() < deadline, "the outbox did not go idle"
        await asyncio.sleep(0.05)


def telegram_input(service: Service) -> Any:
    return next(c for c in service.channels if c.name == "telegram")


def reference_in(message: dict[str, Any]) -> str:
    match = REF_RE.search(message.get("text") or "")
    assert match, message.get("text")
    return match.group(0)


async def file_inquiry(citizen: Citizen, service: Service) -> str:
    """An English inquiry filed (confirm, then sent at once); its reference, once the outbox is idle."""
    citizen.says("I want to know the opening hours of the passport office in Muharraq on Saturdays")
    await citizen.expect("Inquiry")
    citizen.presses("confirm")
    reference = reference_in(await citizen.expect("TWS-"))
    await outbox_idle(service)
    return reference


@contextlib.contextmanager
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]


# -------------------------------------------------------------------------------------------------- tests


async def test_complaint_filed_then_staff_status_reaches_the_citizen(
    bot_db_url: str, tmp_path: Path, trained_nlu_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with FakeTelegram() as tg, running(telegram_settings(tg, bot_db_url, tmp_path)) as service:
        with no_errors_logged(caplog):
            citizen = Citizen(tg, 5_550_101)
            citizen.says(COMPLAINT)
            understood = await citizen.expect("شكوى", "وزارة الأشغال")
            assert tg.keyboard_of(understood) == ["confirm", "chtype", "chag", "cancel"]

            citizen.presses("confirm")
            await citizen.expect("📍")
            # The press was answered and the pressed keyboard is gone (its text shows the choice instead).
            assert tg.callback_answers, "the callback query must be answered"
            pressed = next(m for m in citizen.messages() if m["message_id"] == understood["message_id"])
            assert tg.keyboard_of(pressed) == []
            assert pressed["text"].endswith("\n\n✅ تأكيد") and "edit_date" in pressed, pressed["text"]
            # The location question is a reply keyboard (only those can ask for a location).
            keyboard = citizen.reply_keyboard()
            assert "تخطي" in keyboard and any("موقع" in title for title in keyboard), keyboard

            citizen.says("تخطي")  # the reply-keyboard button's title comes back as text
            photo_prompt = await citizen.expect("📷")
            assert "send" in tg.keyboard_of(photo_prompt)
            citizen.presses("send")
            filed = await citizen.expect("TWS-", what="the reference")
            reference = reference_in(filed)

            cases = await staff(service).list_cases("telegram", str(citizen.chat_id))
            assert [c.reference for c in cases] == [reference]
            assert str(cases[0].type) == "complaint" and cases[0].agency == "works"

            citizen._act()
            note = "سيزور الفريق الموقع يوم الأحد"
            await staff(service).set_status(reference, "under_review", note)
            notice = await citizen.expect(reference, "قيد المراجعة", note, what="the status notice")
            assert notice["text"] == f"طلبك {reference} قيد المراجعة الآن.\nالرد: «{note}»"
            assert len(citizen.answers()) == 1


async def test_redelivered_update_is_answered_once_even_after_a_restart(
    sqlite_bot_url: str, tmp_path: Path, trained_nlu_dir: Path
) -> None:
    """Webhook mode: Telegram posts an update again when it did not get a 200 in time. The same process
    knows the update_id; a restarted process relies on the database's unique platform message id."""
    port = free_port()
    async with FakeTelegram() as tg:
        settings = telegram_settings(
            tg,
            sqlite_bot_url,
            tmp_path,
            server={"port": port, "public_url": f"http://127.0.0.1:{port}"},
        )
        citizen = Citizen(tg, 5_550_202)
        update = tg.text_update(citizen.chat_id, COMPLAINT)
        async with running(settings) as service:
            assert (
                tg.webhook is not None and tg.webhook["url"] == f"http://127.0.0.1:{port}/webhooks/telegram"
            )
            citizen._act()
            assert await tg.deliver_webhook(update) == 200
            await citizen.expect("شكوى", "وزارة الأشغال")
            assert await tg.deliver_webhook(update) == 200  # the same update_id again
            assert await tg.deliver_webhook(update, secret="wrong") == 401
            # A later message of the same chat is processed after the duplicate (one chat runs in order),
            # so once its answers are here the duplicate has had every chance to answer too. /help in a
            # draft answers with the help and the draft's pending question again.
            citizen._act()
            assert await tg.deliver_webhook(tg.text_update(citizen.chat_id, "/help")) == 200
            await citizen.expect("شكوى", "وزارة الأشغال", what="the draft question after the help")
            help_answers = [m["text"] for m in citizen.answers()]
            assert len(help_answers) == 2 and "/status" in help_answers[0], help_answers
            assert telegram_input(service).duplicates == 1
            # This test is about re-delivery, not shutdown: stop an idle service (see the drain test).
            await outbox_idle(service)

        async with running(settings) as service:  # a new process: only the database remembers
            citizen._act()
            assert await tg.deliver_webhook(update) == 200
            assert await tg.deliver_webhook(tg.text_update(citizen.chat_id, "/help")) == 200
            await citizen.expect("شكوى", "وزارة الأشغال", what="the draft question after the help")
            assert [m["text"] for m in citizen.answers()] == help_answers
            assert telegram_input(service).duplicates == 0  # it got past the channel: the engine refused it
            async with service.db.session() as session:
                rows = (
                    await session.execute(
                        select(func.count()).where(
                            MessageRecord.platform_message_id == f"tg:{update['update_id']}"
                        )
                    )
                ).scalar()
            assert rows == 1
        understood = [t for t in citizen.texts() if t.startswith("فهمت طلبك")]
        assert len(understood) == 3, "the complaint once, then the draft question after each /help"


async def test_flood_control_storm_delays_but_loses_nothing(
    sqlite_bot_url: str, tmp_path: Path, trained_nlu_dir: Path
) -> None:
    """Telegram answers 429 with retry_after: sends wait it out in place, and past ``max_retries`` the
    outbox takes the message back and tries later; every message still arrives, in order within each chat."""
    async with FakeTelegram() as tg:
        settings = telegram_settings(tg, sqlite_bot_url, tmp_path, max_retries=2)
        async with running(settings) as service:
            first, second = Citizen(tg, 5_550_301), Citizen(tg, 5_550_302)
            for citizen in (first, second):
                citizen.says("/start")
            for citizen in (first, second):
                await citizen.expect("اختر من القائمة")
            calm = len(tg.calls_to("sendMessage"))

            # Six refusals. A send retries in place at most twice (max_retries=2), and at most one send per
            # chat is in flight, so two chats absorb at most four in place: at least one send goes back to
            # the outbox with the platform's retry_after and is delivered on a later attempt.
            tg.fail("sendMessage", times=6, status=429, retry_after=1)
            first.says(COMPLAINT)
            second.says(STREET_LIGHT)
            await first.expect("فهمت طلبك", "وزارة الأشغال")
            await second.expect("فهمت طلبك", "وزارة الأشغال")
            first.presses("cancel")
            second.presses("cancel")
            for citizen in (first, second):
                await citizen.expect("تم الإلغاء")
                await citizen.expect("اختر من القائمة")

            calls = tg.calls_to("sendMessage")[calm:]
            refused, accepted = calls[:6], calls[6:]
            assert len(tg.calls_to("sendMessage")) == len(tg.sent) + 6, "exactly six sends were refused"
            # At most one send per chat is in flight, so the first send after the storm began waited at
            # least one retry_after after the first refusal (a lower bound: never flaky on a slow machine).
            assert accepted[0].at >= refused[0].at + 1.0
            assert telegram_input(service).rate_limiter.retries >= 1, "some 429s were absorbed in place"
            async with service.db.session() as session:
                attempts = list((await session.execute(select(OutboxItem.attempts))).scalars())
            assert max(attempts) >= 2, "one message went back to the outbox and was retried"

        # Nothing lost or doubled: each chat got exactly its messages, in dialogue order.
        for citizen in (first, second):
            texts = citizen.texts()
            assert len(texts) == 5, texts
            assert texts[0].startswith("أهلاً بك في تواصل")
            assert texts[1] == texts[4] == "اختر من القائمة أو اكتب رسالتك مباشرة:"
            # The pressed menu was edited to show the choice.
            assert texts[2].startswith("فهمت طلبك") and texts[2].endswith("إلغاء"), texts[2]
            assert texts[3].startswith("تم الإلغاء")
        assert len(tg.sent) == 10


async def test_shutdown_lets_the_outbox_finish_a_notice_it_is_sending(
    sqlite_bot_url: str, tmp_path: Path, trained_nlu_dir: Path
) -> None:
    """SIGTERM while the background outbox loop is sending a status notice (held by a short 429): the
    notice still goes out before the process ends, instead of waiting a lease out after the restart."""
    async with FakeTelegram() as tg:
        settings = telegram_settings(tg, sqlite_bot_url, tmp_path, max_retry_after_s=1.0)
        service = Service(settings)
        await service.start()
        try:
            citizen = Citizen(tg, 5_550_601)
            reference = await file_inquiry(citizen, service)

            # The inline attempt meets a 429 longer than max_retry_after_s and hands the notice back to
            # the outbox; the background loop's attempt meets a 1 s 429 and waits it out in place.
            tg.fail("sendMessage", times=1, status=429, retry_after=2)
            tg.fail("sendMessage", times=1, status=429, retry_after=1)
            sends_before = len(tg.calls_to("sendMessage"))
            citizen._act()
            await staff(service).set_status(reference, "under_review")
            await wait_until(
                lambda: len(tg.calls_to("sendMessage")) == sends_before + 2,
                timeout=WAIT_S,
                what="the outbox loop's attempt",
            )
        finally:
            await service.stop()  # while the loop waits out the second 429
        assert any(reference in m["text"] for m in citizen.answers()), citizen.texts()


async def test_status_event_webhook_answers_before_the_notice_waits_out_a_429(
    bot_db_url: str, tmp_path: Path, trained_nlu_dir: Path
) -> None:
    """The backend's webhook call waits for the event's commit, not for the platform: with Telegram holding
    the notice behind a 2 s 429, the webhook is answered while the notice is still unsent, and the notice
    then arrives once (a second delivery of the same event changes nothing)."""
    async with FakeTelegram() as tg, running(telegram_settings(tg, bot_db_url, tmp_path)) as service:
        citizen = Citizen(tg, 5_550_701)
        reference = await file_inquiry(citizen, service)
        case = await staff(service).get_case(reference)

        event = StatusEvent(
            event_id=uuid.uuid4().hex, sequence=1_000_000, reference=reference, status="in_progress",
            previous_status=case.status, agency=case.agency, channel="telegram",
            channel_user_id=str(citizen.chat_id), language="en", occurred_at=dt.datetime.now(dt.UTC),
        )
        body = event.model_dump_json().encode()
        secret = service.settings.backend.webhook_secret
        citizen._act()
        tg.fail("sendMessage", times=1, status=429, retry_after=2)  # waited out in place (max_retry_after_s 10)
        for attempt in range(2):
            async with service.http.post(f"{service.url}{EVENTS_PATH}", data=body,
                                         headers=signed_headers(secret, body)) as response:
                assert response.status == 200, await response.text()
            if attempt == 0:
                assert citizen.answers() == [], "the webhook answer waited for the notice"
        notice = await citizen.expect(reference, what="the status notice")
        await outbox_idle(service)
        assert [m["message_id"] for m in citizen.answers()] == [notice["message_id"]]


async def test_photo_sent_during_the_draft_is_attached_to_the_backend_case(
    sqlite_bot_url: str, tmp_path: Path, trained_nlu_dir: Path
) -> None:
    photo = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8  # a small "JPEG"
    async with FakeTelegram() as tg, running(telegram_settings(tg, sqlite_bot_url, tmp_path)) as service:
        citizen = Citizen(tg, 5_550_401)
        citizen.says(STREET_LIGHT)
        await citizen.expect("وزارة الأشغال")
        citizen.sends(tg.photo_update(citizen.chat_id, photo, caption="الصورة من الموقع"))
        await citizen.expect("تم إرفاق الصورة")
        citizen.presses("confirm")
        await citizen.expect("📍")
        citizen.says("تخطي")  # a photo is attached already, so no photo question: filed at once
        reference = reference_in(await citizen.expect("TWS-"))

        case = await staff(service).get_case(reference)
        assert len(case.attachments) == 1, case.attachments
        attachment = case.attachments[0]
        assert attachment.size == len(photo)
        assert await staff(service).download_attachment(attachment.id) == photo
        # The largest size was fetched once (getFile, then the file URL), not the thumbnail.
        fetched = [c.params["file_id"] for c in tg.calls_to("getFile")]
        assert len(fetched) == 1 and not fetched[0].endswith("-thumb"), fetched


async def test_start_help_and_an_unsupported_sticker(
    sqlite_bot_url: str, tmp_path: Path, trained_nlu_dir: Path
) -> None:
    async with FakeTelegram() as tg, running(telegram_settings(tg, sqlite_bot_url, tmp_path)):
        citizen = Citizen(tg, 5_550_501)
        citizen.says("/start")
        await citizen.expect("أهلاً بك في تواصل")
        menu = await citizen.expect("اختر من القائمة")
        assert tg.keyboard_of(menu) == ["menu:new", "menu:status", "menu:cases", "menu:help"]
        # The command menu was registered in both languages.
        assert [c["command"] for c in tg.commands["en"]][:2] == ["start", "new"]

        citizen.says("/help")
        help_text = await citizen.expect("/status", "/cancel")
        assert "80008001" in help_text["text"]

        sticker = {
            "file_id": "CAACAgIAAxkBAAIBVmVvY2tlcgAB",
            "file_unique_id": "AgADsticker",
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
            "emoji": "👍",
        }
        citizen.sends(tg.message_update(citizen.chat_id, sticker=sticker))
        polite = await citizen.expect("عذراً، لا أستطيع قراءة هذا النوع من الرسائل")
        assert "(sticker)" in polite["text"], polite["text"]
