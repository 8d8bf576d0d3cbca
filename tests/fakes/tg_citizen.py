"""A Telegram citizen's side of a private chat with the bot, as the fake Bot API sees it: each action marks
where the answers to it start, and ``expect`` waits for one. The tests that hold such a chat add how they
write to the service (updates queued at the fake for polling or its webhook, or delivered straight to a
worker's webhook)."""

from __future__ import annotations

from typing import Any

from tests.fakes import wait_for_answer
from tests.fakes.fake_telegram import FakeTelegram


class TgChat:
    def __init__(self, tg: FakeTelegram, chat_id: int, *, wait_s: float = 45.0) -> None:
        self.tg = tg
        self.chat_id = chat_id
        self.wait_s = wait_s
        self._mark = 0

    def _act(self) -> None:
        self._mark = len(self.tg.messages_to(self.chat_id))

    def messages(self) -> list[dict[str, Any]]:
        return self.tg.messages_to(self.chat_id)

    def texts(self) -> list[str]:
        return self.tg.texts_to(self.chat_id)

    def answers(self) -> list[dict[str, Any]]:
        """Bot messages since the last action (edits of older messages are not answers)."""
        return self.messages()[self._mark :]

    async def expect(self, *fragments: str, what: str | None = None) -> dict[str, Any]:
        """Wait for an answer to the last action that contains every fragment; return it."""
        return await wait_for_answer(self.answers, lambda m: m.get("text") or "", fragments, timeout=self.wait_s,
                                     what=what, who=f"chat {self.chat_id}: ")
