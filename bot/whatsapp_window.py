"""The WhatsApp customer-service window: free-form messages may be sent for 24 hours after the citizen's
last message; outside it only an approved template may open the conversation.

``WindowTracker`` is the small protocol the WhatsApp channel needs. The channel calls ``record_inbound``
for every inbound message (before the app's handler) and asks ``last_inbound`` before sending a
notification. ``InMemoryWindowTracker`` suits one process and tests; a database-backed tracker
(``citizens.last_inbound_at``) can make ``record_inbound`` a no-op when the app's handler already stores
that time.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from typing import Protocol


class WindowTracker(Protocol):
    async def last_inbound(self, wa_id: str) -> dt.datetime | None:
        """When the citizen last wrote (timezone-aware), or None if never / unknown."""

    async def record_inbound(self, wa_id: str, at: dt.datetime) -> None:
        """The citizen wrote at ``at``."""


class InMemoryWindowTracker:
    """Last inbound time per WhatsApp id, for the ``capacity`` most recently active citizens."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._last: OrderedDict[str, dt.datetime] = OrderedDict()

    async def last_inbound(self, wa_id: str) -> dt.datetime | None:
        return self._last.get(wa_id)

    async def record_inbound(self, wa_id: str, at: dt.datetime) -> None:
        previous = self._last.get(wa_id)
        if previous is None or at > previous:
            self._last[wa_id] = at
        self._last.move_to_end(wa_id)
        while len(self._last) > self._capacity:
            self._last.popitem(last=False)


def in_window(
    last: dt.datetime | None, now: dt.datetime, *, hours: float = 24.0, margin_s: float = 0.0
) -> bool:
    """True when a free-form message sent ``now`` is still inside the window (with ``margin_s`` to spare,
    so a message that takes a while to go out does not land just after the window closed)."""
    if last is None:
        return False
    if last.tzinfo is None:
        last = last.replace(tzinfo=dt.UTC)
    return now - last < dt.timedelta(hours=hours) - dt.timedelta(seconds=margin_s)
