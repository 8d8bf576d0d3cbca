"""Splitting, escaping, keyboards and the command menu for Telegram."""

from __future__ import annotations

import pytest

from bot.channel import Button
from bot.telegram_format import (
    COMMANDS,
    TELEGRAM_TEXT_LIMIT,
    bot_commands,
    chosen_html,
    escape_html,
    inline_keyboard,
    reply_keyboard,
)
from bot.text import split_text, utf16_len
from tests.fakes.fake_telegram import TelegramApiError, visible_text


def test_short_text_is_one_piece() -> None:
    assert split_text("مرحبا", 4096) == ["مرحبا"]
    assert split_text("", 4096) == [""]


def test_long_text_splits_at_paragraphs_and_rejoins_exactly() -> None:
    paragraph = ("الطريق مليء بالحفر منذ شهرين. " * 40).strip()
    text = "\n\n".join([paragraph] * 12)
    pieces = split_text(text, TELEGRAM_TEXT_LIMIT, measure=utf16_len)
    assert len(pieces) > 1
    assert "".join(pieces) == text
    assert all(utf16_len(p) <= TELEGRAM_TEXT_LIMIT for p in pieces)
    assert all(p.endswith("\n\n") for p in pieces[:-1])  # cut at paragraph boundaries


def test_text_without_spaces_is_cut_hard() -> None:
    text = "x" * 10_000
    pieces = split_text(text, 4096)
    assert [len(p) for p in pieces] == [4096, 4096, 1808]


def test_split_counts_utf16_units() -> None:
    emoji = "😀"  # two UTF-16 code units, one Python character
    text = emoji * 3000
    pieces = split_text(text, TELEGRAM_TEXT_LIMIT, measure=utf16_len)
    assert [utf16_len(p) for p in pieces] == [4096, 1904]
    assert "".join(pieces) == text


def test_split_rejects_a_nonsense_limit() -> None:
    with pytest.raises(ValueError, match="positive"):
        split_text("abc", 0)


@pytest.mark.parametrize(
    "text",
    [
        "a < b && c > d",
        "<b>not bold</b> & <script>",
        "R&D department: 5 > 3",
        "قال: <مرحبا> & وداعا",
    ],
)
def test_escaped_text_is_shown_exactly_as_written(text: str) -> None:
    escaped = escape_html(text)
    assert visible_text(escaped, "HTML") == text  # the fake parses HTML the way the Bot API does


def test_unescaped_text_would_be_refused() -> None:
    with pytest.raises(TelegramApiError, match="can't parse entities"):
        visible_text("a <script> b", "HTML")
    with pytest.raises(TelegramApiError, match="reserved"):
        visible_text("R&D", "HTML")


def test_chosen_html_shows_the_choice_escaped() -> None:
    assert visible_text(chosen_html("Confirm?", "<Yes & go>"), "HTML") == "Confirm?\n\n✅ <Yes & go>"


def test_inline_keyboard_one_button_per_row() -> None:
    keyboard = inline_keyboard([Button("تأكيد", "confirm"), Button("تعديل", "edit")])
    rows = keyboard.to_dict()["inline_keyboard"]
    assert rows == [
        [{"text": "تأكيد", "callback_data": "confirm"}],
        [{"text": "تعديل", "callback_data": "edit"}],
    ]


def test_callback_data_over_64_bytes_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="64"):
        inline_keyboard([Button("x", "ب" * 33)])  # 66 bytes in UTF-8
    with pytest.raises(ValueError):
        inline_keyboard([Button("x", "")])


def test_location_request_keyboard() -> None:
    keyboard = reply_keyboard([Button("تخطي", "skip")], request_location=True, language="ar").to_dict()
    first, second = keyboard["keyboard"]
    assert first[0]["request_location"] is True and "موقعي" in first[0]["text"]
    assert second == [{"text": "تخطي"}]
    assert keyboard["one_time_keyboard"] is True


@pytest.mark.parametrize("language", ["ar", "en"])
def test_command_menu_has_every_command(language: str) -> None:
    commands = bot_commands(language)
    assert [c.command for c in commands] == list(COMMANDS)
    assert COMMANDS == ("start", "new", "status", "cases", "help", "cancel", "language")
    assert all(1 <= len(c.description) <= 256 for c in commands)
