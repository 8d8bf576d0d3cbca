"""A WhatsApp citizen for end-to-end tests: writes to the service through Meta-signed webhooks (``FakeGraph``)
and waits for the bot's answers to its last action."""

from __future__ import annotations

from typing import Any

from tests.fakes.fake_graph import FakeGraph
from tests.fakes import wait_for_answer


class WaCitizen:
    """One WhatsApp user writing to the business number, as the fake Graph API sees it."""

    def __init__(self, wa: FakeGraph, url: str, wa_id: str, *, wait_s: float = 45.0) -> None:
        self.wa = wa
        self.wait_s = wait_s
        self.url = url
        self.wa_id = wa_id
        self._mark = 0

    def _act(self) -> None:
        self._mark = len(self.wa.messages_to(self.wa_id))

    async def says(self, text: str) -> None:
        self._act()
        assert await self.wa.user_sends(self.url, self.wa_id, text) == 200

    async def presses(self, choice_id: str) -> None:
        self._act()
        assert await self.wa.user_presses(self.url, self.wa_id, choice_id) == 200

    async def delivers(self, body: dict[str, Any] | bytes, **kwargs: Any) -> int:
        self._act()
        return await self.wa.deliver(self.url, body, **kwargs)

    def received(self) -> list[dict[str, Any]]:
        return self.wa.messages_to(self.wa_id)

    def answers(self) -> list[dict[str, Any]]:
        return self.received()[self._mark :]

    def texts(self) -> list[str]:
        return [self.wa.text_of(m) for m in self.received()]

    async def expect(self, *fragments: str, what: str | None = None) -> dict[str, Any]:
        """Wait for an answer to the last action whose text contains every fragment; return it."""
        return await wait_for_answer(self.answers, self.wa.text_of, fragments, timeout=self.wait_s, what=what)
