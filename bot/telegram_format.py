"""Outbound formatting for Telegram: HTML escaping, keyboards and the command menu (splitting long text is
``bot.text.split_text``, shared with WhatsApp)."""

from __future__ import annotations

import html
from collections.abc import Sequence

from telegram import (
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    ReplyKeyboardMarkup,
)

from bot.channel import Button

# Bot API: "1-4096 characters after entities parsing"; Telegram counts UTF-16 code units.
TELEGRAM_TEXT_LIMIT = 4096
CALLBACK_DATA_LIMIT = 64  # bytes
COMMANDS = ("start", "new", "status", "cases", "help", "cancel", "language")

_COMMAND_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "ar": {
        "start": "بدء المحادثة",
        "new": "تقديم شكوى أو اقتراح أو استفسار جديد",
        "status": "الاستعلام عن حالة طلب",
        "cases": "طلباتي",
        "help": "المساعدة",
        "cancel": "إلغاء الخطوة الحالية",
        "language": "تغيير اللغة / Change language",
    },
    "en": {
        "start": "Start the conversation",
        "new": "File a new complaint, suggestion or inquiry",
        "status": "Check the status of a case",
        "cases": "My cases",
        "help": "Help",
        "cancel": "Cancel the current step",
        "language": "Change language / تغيير اللغة",
    },
}

_LOCATION_LABEL = {"ar": "📍 إرسال موقعي", "en": "📍 Send my location"}


def escape_html(text: str) -> str:
    """Escape for parse_mode=HTML: the Bot API needs only <, > and & escaped."""
    return html.escape(text, quote=False)


def check_payload(payload: str) -> str:
    if not payload or len(payload.encode("utf-8")) > CALLBACK_DATA_LIMIT:
        raise ValueError(f"button payload must be 1-{CALLBACK_DATA_LIMIT} bytes for Telegram callback_data")
    return payload


def inline_keyboard(buttons: Sequence[Button]) -> InlineKeyboardMarkup:
    """One button per row: titles are full sentences in Arabic or English and must stay readable."""
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(b.title, callback_data=check_payload(b.payload))] for b in buttons]
    )


def reply_keyboard(
    buttons: Sequence[Button], *, request_location: bool, language: str
) -> ReplyKeyboardMarkup:
    """A keyboard under the input field; used when a location is asked for (inline buttons cannot ask)."""
    rows: list[list[KeyboardButton]] = []
    if request_location:
        label = _LOCATION_LABEL.get(language, _LOCATION_LABEL["en"])
        rows.append([KeyboardButton(label, request_location=True)])
    rows.extend([KeyboardButton(b.title)] for b in buttons)
    return ReplyKeyboardMarkup(rows, resize_keyboard=True, one_time_keyboard=True)


def chosen_html(original_html: str, title: str) -> str:
    """The pressed message after the press: its text plus the choice, keyboard gone. A title with its own
    check mark ("تأكيد ✅") is not marked twice."""
    shown = title.replace("✅", "").strip() or title
    return f"{original_html}\n\n✅ <b>{escape_html(shown)}</b>"


def bot_commands(language: str) -> list[BotCommand]:
    descriptions = _COMMAND_DESCRIPTIONS[language]
    return [BotCommand(name, descriptions[name]) for name in COMMANDS]
