"""A webhook acknowledges an update only once it is stored. When the handler fails before that (the
database is away), the platform hears 503 and sends the update again, and the re-delivery is handled:
not dropped as a duplicate, and for a Telegram button press not dropped as a second press of the same
keyboard. Channels over real aiohttp servers on 127.0.0.1 and the fake platforms; the handler stands in for
the dialogue engine (``accepted()`` is what the engine calls after its commit)."""

from __future__ import annotations

import aiohttp
import pytest
from pydantic import SecretStr

from bot.channel import Button, IncomingMessage, OutgoingMessage, OutputChannel, accepted
from bot.telegram import TelegramInput
from bot.whatsapp import WhatsAppInput
from config.settings import ServerSettings, TelegramSettings, WhatsAppSettings
from tests.bot.helpers import serve
from tests.fakes import FakeGraph, FakeTelegram

pytestmark = pytest.mark.faults

CHAT = 5_610_001
WA_ID = "97336610001"


class StoreAwayOnce:
    """A handler that fails the first time it sees a message, before storing anything (the database
    refused the connection), and stores it the next time."""

    def __init__(self) -> None:
        self.calls: list[IncomingMessage] = []
        self.stored: list[IncomingMessage] = []

    async def __call__(self, message: IncomingMessage, output: OutputChannel) -> None:
        first = all(m.message_id != message.message_id for m in self.calls)
        self.calls.append(message)
        if first:
            raise ConnectionRefusedError("the database is away")
        self.stored.append(message)
        accepted()


async def test_telegram_update_and_press_not_stored_are_refused_then_handled(unused_port: int) -> None:
    handler = StoreAwayOnce()
    async with FakeTelegram() as tg:
        settings = TelegramSettings(bot_token=SecretStr(tg.token), api_base_url=tg.base_url,
                                    api_file_base_url=tg.file_base_url, mode="webhook")
        channel = TelegramInput(settings, ServerSettings(public_url=f"http://127.0.0.1:{unused_port}"))
        async with serve(channel, handler, unused_port):
            update = tg.text_update(CHAT, "مرحبا")
            assert await tg.deliver_webhook(update) == 503  # not stored: Telegram must send it again
            assert await tg.deliver_webhook(update) == 200
            assert await tg.deliver_webhook(update) == 200  # stored now: a duplicate
            assert [m.text for m in handler.stored] == ["مرحبا"]
            assert len(handler.calls) == 2 and channel.duplicates == 1

            question = OutgoingMessage(text="أكيد؟", buttons=(Button("نعم", "yes"),))
            await channel.output_channel().send(str(CHAT), question)
            press = tg.press_update(CHAT, "yes")
            assert await tg.deliver_webhook(press) == 503
            assert await tg.deliver_webhook(press) == 200  # the press counts, though its keyboard was used
            assert [m.button for m in handler.stored] == [None, "yes"]
            assert len(handler.calls) == 4


async def test_whatsapp_message_not_stored_is_refused_then_handled(unused_port: int) -> None:
    handler = StoreAwayOnce()
    async with FakeGraph() as wa, aiohttp.ClientSession() as http:
        settings = WhatsAppSettings(
            access_token=SecretStr(wa.access_token), phone_number_id=wa.phone_number_id,
            app_secret=SecretStr(wa.app_secret), verify_token=SecretStr("fault-verify"),
            api_base_url=wa.base_url, api_version=wa.api_version, mark_read=False,
        )
        channel = WhatsAppInput(settings, ServerSettings(), http)
        async with serve(channel, handler, unused_port) as base:
            url = f"{base}{settings.webhook_path}"
            body = wa.text_message(WA_ID, "مرحبا")
            assert await wa.deliver(url, body) == 503  # Meta sends the webhook again later
            assert await wa.deliver(url, body) == 200
            assert await wa.deliver(url, body) == 200
            assert [m.text for m in handler.stored] == ["مرحبا"]
            assert len(handler.calls) == 2 and channel.duplicates == 1
