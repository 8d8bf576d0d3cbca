"""The Telegram channel end to end: real python-telegram-bot against the fake Bot API over 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from bot.channel import Button, DeliveryFailed, IncomingMessage, OutgoingMessage, OutputChannel
from bot.delivery import AttachmentTooLarge
from bot.telegram import SECRET_HEADER, TelegramInput, TelegramOutput, webhook_secret
from config.settings import ServerSettings, TelegramSettings
from tests.bot.helpers import Recorder, load_fixture, serve
from tests.fakes import FakeTelegram, wait_until

CHAT = 5550001


def settings_for(fake: FakeTelegram, **overrides: Any) -> TelegramSettings:
    values: dict[str, Any] = {
        "bot_token": SecretStr(fake.token),
        "api_base_url": fake.base_url,
        "api_file_base_url": fake.file_base_url,
        "poll_timeout_s": 1,
    }
    values.update(overrides)
    return TelegramSettings(**values)


def polling_channel(fake: FakeTelegram, **overrides: Any) -> TelegramInput:
    return TelegramInput(settings_for(fake, **overrides), ServerSettings())


class MenuBot(Recorder):
    """Answers /start with a two-button menu and a press with a confirmation."""

    async def __call__(self, message: IncomingMessage, output: OutputChannel) -> None:
        await super().__call__(message, output)
        if message.command == "start":
            await output.send(
                message.sender_id,
                OutgoingMessage(
                    text="Send the complaint?",
                    buttons=(Button("Confirm", "confirm"), Button("Cancel", "cancel")),
                ),
            )
        elif message.button is not None:
            await output.send(message.sender_id, OutgoingMessage(text=f"you chose {message.button}"))


async def test_polling_receives_replies_and_confirms_on_stop(
    fake_telegram: FakeTelegram, unused_port: int
) -> None:
    recorder = Recorder(echo=True)
    channel = polling_channel(fake_telegram)
    assert channel.polling
    async with serve(channel, recorder, unused_port):
        first = fake_telegram.user_sends(CHAT, "الشارع مليء بالحفر")
        second = fake_telegram.user_sends(CHAT, "قرب دوار سترة")
        await wait_until(lambda: len(fake_telegram.sent) == 2, what="two echoes")
    assert recorder.ids() == [f"tg:{first}", f"tg:{second}"]  # one chat: in order
    assert [s["text"] for s in fake_telegram.sent] == ["echo: الشارع مليء بالحفر", "echo: قرب دوار سترة"]
    assert fake_telegram.calls_to("deleteWebhook"), "polling must clear any webhook first"
    # The last getUpdates confirmed both updates, so a restart would not fetch them again.
    assert fake_telegram.calls_to("getUpdates")[-1].params["offset"] == second + 1
    assert fake_telegram.updates == []
    assert fake_telegram.chat_actions == []  # answered at once: no "typing…" needed


class SlowEcho(Recorder):
    """Takes a while before answering (a filing waiting for the core backend)."""

    async def __call__(self, message: IncomingMessage, output: OutputChannel) -> None:
        await asyncio.sleep(0.6)
        await super().__call__(message, output)


async def test_typing_is_shown_only_while_an_answer_is_slow(fake_telegram: FakeTelegram, unused_port: int) -> None:
    async with serve(polling_channel(fake_telegram, typing_after_s=0.2), SlowEcho(echo=True), unused_port):
        fake_telegram.user_sends(CHAT, "وين وصل طلبي؟")
        await wait_until(lambda: len(fake_telegram.sent) == 1, what="the slow echo")
        assert fake_telegram.chat_actions == [(CHAT, "typing")]
    async with serve(polling_channel(fake_telegram, typing_after_s=0.2), Recorder(echo=True), unused_port):
        fake_telegram.user_sends(CHAT, "شكرا")
        await wait_until(lambda: len(fake_telegram.sent) == 2, what="the quick echo")
        await asyncio.sleep(0.3)  # past typing_after_s: a cancelled "typing…" would have been sent by now
    assert fake_telegram.chat_actions == [(CHAT, "typing")]  # none for the quick one


async def test_commands_registered_in_arabic_and_english(
    fake_telegram: FakeTelegram, unused_port: int
) -> None:
    async with serve(polling_channel(fake_telegram), Recorder(), unused_port):
        await wait_until(lambda: len(fake_telegram.commands) == 3, what="setMyCommands")
    names = ["start", "new", "status", "cases", "help", "cancel", "language"]
    for language in ("", "ar", "en"):
        assert [c["command"] for c in fake_telegram.commands[language]] == names
    assert fake_telegram.commands["en"][0]["description"] == "Start the conversation"
    assert fake_telegram.commands["ar"][0]["description"] == "بدء المحادثة"


async def test_unreadable_update_is_skipped_not_fatal(fake_telegram: FakeTelegram, unused_port: int) -> None:
    recorder = Recorder()
    channel = polling_channel(fake_telegram)
    async with serve(channel, recorder, unused_port):
        fake_telegram.push_update(load_fixture("telegram", "unreadable_poll_old_api"))
        after = fake_telegram.user_sends(CHAT, "still here")
        await wait_until(lambda: len(recorder.received) == 1, what="the readable update")
    assert recorder.ids() == [f"tg:{after}"]
    assert channel.unreadable == 1


async def test_polling_survives_server_errors(fake_telegram: FakeTelegram, unused_port: int) -> None:
    recorder = Recorder()
    fake_telegram.fail("getUpdates", times=2, status=502)
    async with serve(polling_channel(fake_telegram), recorder, unused_port):
        update_id = fake_telegram.user_sends(CHAT, "hello")
        await wait_until(lambda: len(recorder.received) == 1, what="update after 502s")
    assert recorder.ids() == [f"tg:{update_id}"]


async def test_polling_obeys_flood_control(fake_telegram: FakeTelegram, unused_port: int) -> None:
    recorder = Recorder()
    fake_telegram.fail("getUpdates", times=1, status=429, retry_after=0.3)
    async with serve(polling_channel(fake_telegram), recorder, unused_port):
        fake_telegram.user_sends(CHAT, "hello")
        await wait_until(lambda: len(recorder.received) == 1, what="update after a 429")
    first, second = fake_telegram.calls_to("getUpdates")[:2]
    assert second.at >= first.at + 0.3


# ---------------------------------------------------------------------------------------------- webhook


def webhook_channel(fake: FakeTelegram, port: int, **overrides: Any) -> TelegramInput:
    return TelegramInput(
        settings_for(fake, mode="webhook", **overrides), ServerSettings(public_url=f"http://127.0.0.1:{port}")
    )


async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as resp:
        return resp.status


async def test_webhook_mode_registers_and_accepts_signed_updates(
    fake_telegram: FakeTelegram, unused_port: int
) -> None:
    recorder = Recorder(echo=True)
    channel = webhook_channel(fake_telegram, unused_port)
    async with serve(channel, recorder, unused_port) as base:
        assert fake_telegram.webhook is not None
        assert fake_telegram.webhook["url"] == f"{base}/webhooks/telegram"
        assert fake_telegram.webhook["secret_token"] == webhook_secret(channel._settings)
        assert fake_telegram.webhook["allowed_updates"] == ["message", "callback_query"]
        update = fake_telegram.text_update(CHAT, "via webhook")
        assert await fake_telegram.deliver_webhook(update) == 200
        await wait_until(lambda: len(fake_telegram.sent) == 1, what="echo")
        # The same update again (Telegram retries when it saw no 200 in time): answered, not re-run.
        assert await fake_telegram.deliver_webhook(update) == 200
        await asyncio.sleep(0)
    assert recorder.ids() == [f"tg:{update['update_id']}"]
    assert [s["text"] for s in fake_telegram.sent] == ["echo: via webhook"]
    assert channel.duplicates == 1
    assert not fake_telegram.calls_to("getUpdates")


async def test_webhook_refuses_a_wrong_or_missing_secret(
    fake_telegram: FakeTelegram, unused_port: int
) -> None:
    recorder = Recorder()
    async with serve(webhook_channel(fake_telegram, unused_port), recorder, unused_port) as base:
        update = fake_telegram.text_update(CHAT, "forged")
        assert await fake_telegram.deliver_webhook(update, secret="not-the-secret") == 401
        body = json.dumps(update).encode()
        assert await post(f"{base}/webhooks/telegram", body, {"Content-Type": "application/json"}) == 401
    assert recorder.received == []


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2, 3]",
        b'{"message": {"text": "no update id"}}',
        b'{"update_id": "7", "message": {}}',
        json.dumps(load_fixture("telegram", "unreadable_poll_old_api")).encode(),
    ],
)
async def test_malformed_webhook_body_is_400(
    fake_telegram: FakeTelegram, unused_port: int, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    channel = webhook_channel(fake_telegram, unused_port)
    async with serve(channel, recorder, unused_port) as base:
        headers = {SECRET_HEADER: webhook_secret(channel._settings), "Content-Type": "application/json"}
        assert await post(f"{base}/webhooks/telegram", body, headers) == 400
        # The channel still works afterwards.
        assert await fake_telegram.deliver_webhook(fake_telegram.text_update(CHAT, "ok")) == 200
        await wait_until(lambda: len(recorder.received) == 1, what="a good update after a bad one")
    assert "malformed update rejected" in caplog.text


async def test_oversized_webhook_body_is_413(fake_telegram: FakeTelegram, unused_port: int) -> None:
    channel = TelegramInput(
        settings_for(fake_telegram, mode="webhook"),
        ServerSettings(public_url=f"http://127.0.0.1:{unused_port}", max_body_bytes=2048),
    )
    async with serve(channel, Recorder(), unused_port) as base:
        headers = {SECRET_HEADER: webhook_secret(channel._settings), "Content-Type": "application/json"}
        body = json.dumps(fake_telegram.text_update(CHAT, "x" * 5000)).encode()
        assert await post(f"{base}/webhooks/telegram", body, headers) == 413


# ---------------------------------------------------------------------------------------------- buttons


async def test_press_answers_edits_and_cannot_be_pressed_twice(
    fake_telegram: FakeTelegram, unused_port: int
) -> None:
    bot = MenuBot()
    async with serve(polling_channel(fake_telegram), bot, unused_port):
        fake_telegram.user_sends(CHAT, "/start")
        await wait_until(lambda: len(fake_telegram.sent) == 1, what="the menu")
        menu = fake_telegram.messages_to(CHAT)[0]
        assert fake_telegram.keyboard_of(menu) == ["confirm", "cancel"]
        press = fake_telegram.press_update(CHAT, "confirm")
        again = fake_telegram.press_update(
            CHAT, "cancel", message_id=menu["message_id"]
        )  # a quick second tap
        fake_telegram.push_update(press)
        fake_telegram.push_update(again)
        await wait_until(lambda: len(fake_telegram.callback_answers) == 2, what="both presses answered")
        await wait_until(lambda: len(fake_telegram.sent) == 2, what="the reply to the press")
    assert [m.button for m in bot.received if m.button] == ["confirm"]  # the second tap is not handed on
    edited = fake_telegram.messages_to(CHAT)[0]
    assert "reply_markup" not in edited  # the keyboard is gone
    assert edited["text"] == "Send the complaint?\n\n✅ Confirm"
    assert fake_telegram.sent[-1]["text"] == "you chose confirm"
    pressed = next(m for m in bot.received if m.button)
    assert pressed.message_id == f"tg:{press['update_id']}"
    assert pressed.metadata["button_title"] == "Confirm"


async def test_a_new_menu_removes_the_previous_keyboard(
    fake_telegram: FakeTelegram, unused_port: int
) -> None:
    channel = polling_channel(fake_telegram)
    async with serve(channel, Recorder(), unused_port):
        out = channel.output_channel()
        await out.send_buttons(str(CHAT), "first menu", [Button("A", "a")])
        await out.send_buttons(str(CHAT), "second menu", [Button("B", "b")])
    first, second = fake_telegram.messages_to(CHAT)
    assert fake_telegram.keyboard_of(first) == []
    assert fake_telegram.keyboard_of(second) == ["b"]


async def test_location_request_uses_a_reply_keyboard(fake_telegram: FakeTelegram, unused_port: int) -> None:
    recorder = Recorder()
    channel = polling_channel(fake_telegram)
    async with serve(channel, recorder, unused_port):
        out = channel.output_channel()
        await out.send(
            str(CHAT),
            OutgoingMessage(text="أرسل موقعك", request_location=True, buttons=(Button("تخطي", "skip"),)),
        )
        keyboard = fake_telegram.sent[-1]["reply_markup"]["keyboard"]
        assert keyboard[0][0]["request_location"] is True
        assert keyboard[1][0]["text"] == "تخطي"
        fake_telegram.user_sends(CHAT, "تخطي")  # the citizen taps the reply button
        fake_telegram.push_update(fake_telegram.location_update(CHAT, 26.2235, 50.5876))
        await wait_until(lambda: len(recorder.received) == 2, what="tap and location")
        await out.send_text(str(CHAT), "شكرا")
    skip, location = recorder.received
    assert skip.button == "skip" and skip.text is None
    assert location.location is not None and location.location.latitude == 26.2235
    assert fake_telegram.sent[-1]["reply_markup"] == {"remove_keyboard": True}


# ---------------------------------------------------------------------------------------------- sending


async def test_long_text_is_split_and_escaped(fake_telegram: FakeTelegram, unused_port: int) -> None:
    channel = polling_channel(fake_telegram)
    text = "\n\n".join(f"فقرة {i}: a < b & c > d " + "ن" * 900 for i in range(12))
    async with serve(channel, Recorder(), unused_port):
        await channel.output_channel().send_text(str(CHAT), text)
    pieces = [s["text"] for s in fake_telegram.sent]
    assert len(pieces) >= 3
    assert "".join(pieces) == text  # the fake parsed each piece as HTML: nothing lost or mangled
    assert all(s["parse_mode"] == "HTML" for s in fake_telegram.sent)


async def test_429_storm_delays_but_loses_nothing(fake_telegram: FakeTelegram, unused_port: int) -> None:
    channel = polling_channel(fake_telegram)
    fake_telegram.fail("sendMessage", times=4, status=429, retry_after=0.3)
    async with serve(channel, Recorder(), unused_port):
        out = channel.output_channel()
        await asyncio.gather(*(out.send_text(str(1000 + i), f"notice {i}") for i in range(6)))
    assert sorted(s["text"] for s in fake_telegram.sent) == sorted(f"notice {i}" for i in range(6))
    assert channel.rate_limiter.retries == 4
    calls = fake_telegram.calls_to("sendMessage")
    assert len(calls) == 10  # 4 refused + 6 delivered
    # Every refused message was retried, and not before its retry_after had passed.
    by_chat: dict[int, list[float]] = {}
    for call in calls:
        by_chat.setdefault(call.params["chat_id"], []).append(call.at)
    retried = [times for times in by_chat.values() if len(times) > 1]
    assert len(retried) == 4
    assert all(times[1] >= times[0] + 0.3 for times in retried)


async def test_long_retry_after_is_left_to_the_outbox(fake_telegram: FakeTelegram, unused_port: int) -> None:
    channel = polling_channel(fake_telegram, max_retry_after_s=5)
    fake_telegram.fail("sendMessage", times=1, status=429, retry_after=40)
    async with serve(channel, Recorder(), unused_port):
        with pytest.raises(DeliveryFailed) as caught:
            await channel.output_channel().send_text(str(CHAT), "later please")
    assert caught.value.retry_after == 40 and not caught.value.permanent
    assert fake_telegram.sent == []


@pytest.mark.parametrize(("status", "permanent"), [(403, True), (400, True), (500, False)])
async def test_delivery_errors_are_classified(
    fake_telegram: FakeTelegram, unused_port: int, status: int, permanent: bool
) -> None:
    channel = polling_channel(fake_telegram)
    fake_telegram.fail("sendMessage", times=1, status=status)
    async with serve(channel, Recorder(), unused_port):
        with pytest.raises(DeliveryFailed) as caught:
            await channel.output_channel().send_text(str(CHAT), "hello")
    assert caught.value.permanent is permanent
    assert caught.value.retry_after is None


async def test_retry_after_a_failure_midway_resumes(fake_telegram: FakeTelegram, unused_port: int) -> None:
    channel = polling_channel(fake_telegram, per_chat_burst=5)
    text = "\n\n".join("ن" * 3000 for _ in range(3))  # three pieces
    fake_telegram.fail("sendMessage", times=1, status=502, after=1)  # the second piece fails once
    async with serve(channel, Recorder(), unused_port):
        out = channel.output_channel()
        with pytest.raises(DeliveryFailed) as caught:
            await out.send_text(str(CHAT), text)
        assert not caught.value.permanent
        await out.send_text(str(CHAT), text)  # what the outbox does next
    assert len(fake_telegram.sent) == 3  # the first piece was not sent twice
    assert "".join(s["text"] for s in fake_telegram.sent) == text


# ---------------------------------------------------------------------------------------------- files


async def test_photo_is_received_and_fetched(fake_telegram: FakeTelegram, unused_port: int) -> None:
    recorder = Recorder()
    channel = polling_channel(fake_telegram)
    content = b"\xff\xd8\xff\xe0 fake jpeg bytes"
    async with serve(channel, recorder, unused_port):
        fake_telegram.push_update(fake_telegram.photo_update(CHAT, content, caption="الحفرة"))
        await wait_until(lambda: len(recorder.received) == 1, what="the photo")
        (attachment,) = recorder.received[0].attachments
        assert attachment.size == len(content) and attachment.caption == "الحفرة"
        assert await channel.output_channel().fetch_attachment(attachment) == content


async def test_too_big_files_are_refused_clearly(fake_telegram: FakeTelegram, unused_port: int) -> None:
    channel = polling_channel(fake_telegram, max_file_bytes=1_000_000)
    out: TelegramOutput = channel.output_channel()
    async with serve(channel, Recorder(), unused_port):
        big = fake_telegram.document_update(CHAT, b"%PDF-1.7 small", file_size=5_000_000)
        from telegram import Update

        update = Update.de_json(big, channel.application.bot)
        assert update is not None and update.message is not None
        from bot.telegram_parse import message_to_incoming

        incoming = message_to_incoming(update.update_id, update.message)
        assert incoming is not None
        (attachment,) = incoming.attachments
        assert attachment.size == 5_000_000  # the dialogue can answer "too big" from this alone
        with pytest.raises(AttachmentTooLarge) as caught:
            await out.fetch_attachment(attachment)
        assert caught.value.permanent and caught.value.limit == 1_000_000
        assert not fake_telegram.calls_to("getFile")  # refused before any download
        # Size unknown in the update, but Telegram refuses it: still a clear "too large".
        fake_telegram.file_download_limit = 10
        file_id, _ = fake_telegram.add_file(b"0123456789abcdef")
        from bot.channel import Attachment, AttachmentKind

        with pytest.raises(AttachmentTooLarge):
            await out.fetch_attachment(Attachment(AttachmentKind.DOCUMENT, file_id))
