"""Fake platform servers for tests: real aiohttp servers on 127.0.0.1 speaking the documented wire formats.

* ``FakeTelegram`` (``tests.fakes.fake_telegram``): the Bot API subset the bot uses, driven by the real
  python-telegram-bot client pointed at ``fake.base_url`` / ``fake.file_base_url``.
* ``FakeGraph`` (``tests.fakes.fake_graph``): the WhatsApp Cloud API messages and media endpoints, and a
  webhook sender that signs like Meta.

Both record every request, can inject failures (429 storms, 5xx, platform error codes) and have helpers
that play the citizen. ``wait_until`` polls a condition while the event loop runs the code under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.fakes.fake_graph import FakeGraph
from tests.fakes.fake_telegram import FakeTelegram


async def wait_until(
    condition: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """Return as soon as ``condition()`` is true; raise ``AssertionError`` after ``timeout`` seconds.
    The timeout only bounds a hung test; it is not a speed assertion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def wait_for_answer(answers: Callable[[], list[dict[str, Any]]], text_of: Callable[[dict[str, Any]], str],
                          fragments: tuple[str, ...], *, timeout: float, what: str | None = None,
                          who: str = "") -> dict[str, Any]:
    """The first of ``answers()`` whose text contains every fragment, once there is one (the citizen helpers'
    ``expect``); ``AssertionError`` listing what did arrive after ``timeout`` seconds."""

    def found() -> dict[str, Any] | None:
        for answer in answers():
            if all(f in text_of(answer) for f in fragments):
                return answer
        return None

    try:
        await wait_until(lambda: found() is not None, timeout=timeout, what=what or f"reply with {fragments}")
    except AssertionError:
        got = [text_of(a) for a in answers()]
        raise AssertionError(f"{who}no reply containing {fragments}; got {got}") from None
    answer = found()
    assert answer is not None
    return answer


__all__ = ["FakeGraph", "FakeTelegram", "wait_for_answer", "wait_until"]
