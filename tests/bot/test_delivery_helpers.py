"""Re-delivery memory, resumable sends and the background task set."""

from __future__ import annotations

import asyncio

import pytest

from bot.delivery import RecentIds, SendProgress, TaskSet


def test_recent_ids_detects_repeats_and_forgets_the_oldest() -> None:
    recent = RecentIds(capacity=2)
    assert recent.add("tg:1") and recent.add("tg:2")
    assert not recent.add("tg:1")
    assert recent.add("tg:3")  # evicts tg:2, the least recently seen
    assert "tg:1" in recent and "tg:2" not in recent and len(recent) == 2


def test_send_progress_resumes_and_expires() -> None:
    now = [0.0]
    progress = SendProgress(ttl_s=60, clock=lambda: now[0])
    assert progress.done("k") == 0
    progress.advance("k", 2)
    assert progress.done("k") == 2
    now[0] = 61
    assert progress.done("k") == 0  # too old: send the whole message again
    progress.advance("k", 1)
    progress.finish("k")
    assert progress.done("k") == 0


async def test_task_set_orders_one_key_and_runs_keys_in_parallel() -> None:
    tasks = TaskSet("test")
    events: list[str] = []
    gate = asyncio.Event()

    def work(name: str, wait: bool = False):  # type: ignore[no-untyped-def]
        async def run() -> None:
            if wait:
                await gate.wait()
            events.append(name)

        return run

    tasks.spawn("citizen-1", work("a1", wait=True), "a1")
    tasks.spawn("citizen-1", work("a2"), "a2")
    tasks.spawn("citizen-2", work("b1"), "b1")
    await asyncio.sleep(0.02)
    assert events == ["b1"]  # a2 waits behind a1; b1 does not
    gate.set()
    await tasks.drain()
    assert events == ["b1", "a1", "a2"]
    assert not tasks.spawn("citizen-1", work("late"), "late")  # closed after drain


async def test_task_set_survives_a_failing_task(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet("test")
    done: list[str] = []

    async def boom() -> None:
        raise RuntimeError("handler bug")

    async def fine() -> None:
        done.append("ok")

    tasks.spawn("k", boom, "boom")
    tasks.spawn("k", fine, "fine")
    await tasks.drain()
    assert done == ["ok"]
    assert "boom failed" in caplog.text


async def test_drain_cancels_what_outlives_the_timeout() -> None:
    tasks = TaskSet("test")
    never = asyncio.Event()

    async def stuck() -> None:
        await never.wait()

    tasks.spawn("k", stuck, "stuck")
    await tasks.drain(timeout_s=0.05)
    assert len(tasks) == 0
