"""Which channels run, and what the operator is told about the others."""

from __future__ import annotations

import aiohttp

from bot.factory import build_channels, describe_disabled
from config.settings import load_settings


def settings(env: dict[str, str]):  # type: ignore[no-untyped-def]
    return load_settings(env=env)


async def test_no_tokens_no_channels() -> None:
    s = settings({})
    async with aiohttp.ClientSession() as session:
        assert build_channels(s, session) == []
    lines = describe_disabled(s)
    assert len(lines) == 2
    assert "TELEGRAM_BOT_TOKEN" in lines[0]
    assert "WHATSAPP_ACCESS_TOKEN and WHATSAPP_PHONE_NUMBER_ID" in lines[1]


async def test_telegram_token_turns_telegram_on() -> None:
    s = settings({"TELEGRAM_BOT_TOKEN": "123456789:TEST-fake-token-for-tests-only-0001"})
    async with aiohttp.ClientSession() as session:
        (channel,) = build_channels(s, session)
    assert channel.name == "telegram" and channel.output_channel().name == "telegram"
    assert [line for line in describe_disabled(s) if "Telegram" in line] == []


async def test_whatsapp_needs_token_and_number() -> None:
    only_token = settings({"WHATSAPP_ACCESS_TOKEN": "EAAtest"})
    assert "WHATSAPP_PHONE_NUMBER_ID" in describe_disabled(only_token)[1]
    assert "WHATSAPP_ACCESS_TOKEN" not in describe_disabled(only_token)[1]
    both = settings({"WHATSAPP_ACCESS_TOKEN": "EAAtest", "WHATSAPP_PHONE_NUMBER_ID": "1098"})
    async with aiohttp.ClientSession() as session:
        assert build_channels(only_token, session) == []
        (channel,) = build_channels(both, session)
    assert channel.name == "whatsapp"
    # Sends without the webhook secrets, and says how to receive too.
    (line,) = [x for x in describe_disabled(both) if "WhatsApp" in x]
    assert "WHATSAPP_APP_SECRET" in line and "does not receive" in line


async def test_both_channels() -> None:
    s = settings(
        {
            "TELEGRAM_BOT_TOKEN": "123456789:TEST-fake-token-for-tests-only-0001",
            "WHATSAPP_ACCESS_TOKEN": "EAAtest",
            "WHATSAPP_PHONE_NUMBER_ID": "1098",
            "WHATSAPP_APP_SECRET": "s",
            "WHATSAPP_VERIFY_TOKEN": "v",
        }
    )
    async with aiohttp.ClientSession() as session:
        names = [c.name for c in build_channels(s, session)]
    assert names == ["telegram", "whatsapp"]
    assert describe_disabled(s) == []
