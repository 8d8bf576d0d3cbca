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


__all__ = ["FakeGraph", "FakeTelegram", "wait_until"]
