"""Small pieces both platform channels share: re-delivery detection, resumable multi-part sends, the
background task set that runs the app's handler after a webhook has answered, and the "file too big" error.

Everything here is per process and best effort by design: the database (unique platform message ids,
the outbox) is what makes processing exactly-once; these only make the common cases cheap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from bot.channel import DeliveryFailed
from bot.ratelimit import KeyedLocks

log = logging.getLogger(__name__)


class AttachmentTooLarge(DeliveryFailed):
    """The file is larger than this bot may download. Permanent: asking again cannot make it smaller."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"attachment of {size} bytes exceeds the download limit of {limit} bytes", permanent=True
        )
        self.size = size
        self.limit = limit


class RecentIds:
    """The last ``capacity`` ids seen (insertion order), so a platform's re-delivery is answered without
    running the handler again. ``add`` returns False when the id was already there."""

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, item: str) -> bool:
        if item in self._ids:
            self._ids.move_to_end(item)
            return False
        self._ids[item] = None
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return True

    def discard(self, item: str) -> None:
        """Forget ``item`` (its handling failed before anything was stored: a re-delivery must run)."""
        self._ids.pop(item, None)

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)


class SendProgress:
    """How many parts of a multi-part message already went out, so a retry (the outbox calls ``send``
    again after a failure in the middle) resumes instead of repeating the first parts.

    Keyed by the caller (recipient + a digest of the message). Entries older than ``ttl_s`` are forgotten:
    a retry that late sends the message whole again, which is the safe side of the trade-off.
    """

    def __init__(
        self, ttl_s: float = 900.0, capacity: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl_s
        self._capacity = capacity
        self._clock = clock
        self._done: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def done(self, key: str) -> int:
        entry = self._done.get(key)
        if entry is None or self._clock() - entry[1] > self._ttl:
            self._done.pop(key, None)
            return 0
        return entry[0]

    def advance(self, key: str, count: int) -> None:
        self._done[key] = (count, self._clock())
        self._done.move_to_end(key)
        while len(self._done) > self._capacity:
            self._done.popitem(last=False)

    def finish(self, key: str) -> None:
        self._done.pop(key, None)


class TaskSet:
    """Background work started by a webhook after it answered: one task per item, items with the same key
    (one citizen) run in arrival order, different keys in parallel. ``drain`` waits for all of them
    (cancelling what is still running after ``timeout_s``) and refuses new work afterwards."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks = KeyedLocks()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def spawn(self, key: str, work: Callable[[], Coroutine[Any, Any, None]], label: str) -> bool:
        """Start ``work()`` after earlier work of ``key``; False (nothing started) once draining."""
        if self._closed:
            return False
        # Take the key's place in line now, synchronously: tasks start in spawn order, so the lock
        # queue (FIFO) keeps one sender's items in the order their webhooks arrived.
        task = asyncio.get_running_loop().create_task(
            self._run(key, work, label), name=f"{self._name}:{label}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, key: str, work: Callable[[], Awaitable[None]], label: str) -> None:
        try:
            async with self._locks.hold(key):
                await work()
        except asyncio.CancelledError:
            log.warning("%s: %s cancelled during shutdown", self._name, label)
            raise
        except Exception:
            # The handler persists before anything else; an error here is a bug to see, not to retry.
            log.exception("%s: %s failed", self._name, label)

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout_s: float = 30.0) -> None:
        self._closed = True
        if not self._tasks:
            return
        pending = set(self._tasks)
        _, still = await asyncio.wait(pending, timeout=timeout_s)
        for task in still:
            task.cancel()
        if still:
            log.warning("%s: %d task(s) cancelled after %.0fs at shutdown", self._name, len(still), timeout_s)
            await asyncio.gather(*still, return_exceptions=True)
