"""The web chat's pending replies live in the database, so several workers share them: two whole services on
one throwaway PostgreSQL database (what `tawasul run --workers 2` runs), talked to over HTTP on 127.0.0.1.
A reply delivered by one service's outbox loop is returned by a poll on either; concurrent polls on both take
each reply exactly once; the per-sender bound and the purge of abandoned replies hold. Plus: concurrent
migrations on an empty PostgreSQL database (workers started without the supervisor) all succeed."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import insert, select, text

from bot.channel import OutgoingMessage
from bot.webchat import MAX_QUEUED, WebChatOutput
from tawasul.app import Service
from tawasul.db import Database
from tawasul.db.migrate import alembic_config, upgrade_async
from tawasul.db.models import Base, Citizen, MessageDirection, MessageRecord, WebChatReply, utcnow
from tawasul.outbox import Job
from tests.fakes import wait_until
from tests.support import settings_for

WELCOME = "أهلاً بك في تواصل"
PROJECT = Path(__file__).resolve().parents[2]
WAIT_S = 60.0  # bounds a hung test only (two loaded cores)


class Page:
    """A web chat page (or `tawasul shell --url`) talking to one service over HTTP."""

    def __init__(self, http: aiohttp.ClientSession, service: Service, sender: str) -> None:
        self.http = http
        self.url = f"{service.url}/chat/api"
        self.sender = sender

    async def send(self, text_: str) -> list[dict[str, Any]]:
        async with self.http.post(f"{self.url}/send", json={"sender": self.sender, "text": text_}) as resp:
            assert resp.status == 200, await resp.text()
            messages: list[dict[str, Any]] = (await resp.json())["messages"]
            return messages

    async def poll(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.url}/poll", params={"sender": self.sender}) as resp:
            assert resp.status == 200, await resp.text()
            messages: list[dict[str, Any]] = (await resp.json())["messages"]
            return messages


def web_output(service: Service) -> WebChatOutput:
    output = service.outputs["web"]
    assert isinstance(output, WebChatOutput)
    return output


@contextlib.asynccontextmanager
async def services(*started: Service) -> AsyncIterator[tuple[Service, ...]]:
    try:
        # Started together, like workers launched at once: each upgrades the schema at start-up.
        await asyncio.gather(*(service.start() for service in started))
        yield started
    finally:
        for service in started:
            await service.stop()


@pytest.fixture
async def pair(tmp_path: Path, trained_nlu_dir: Path, pg_url: str) -> AsyncIterator[tuple[Service, Service]]:
    """Two services on one PostgreSQL database, each with its own port (the kernel's SO_REUSEPORT choice made
    explicit). A runs no background loops (no outbox loop); B's outbox loop polls every 0.2 s."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Service(settings_for(pg_url, tmp_path / "a"), background=False)
    b = Service(settings_for(pg_url, tmp_path / "b"))
    async with services(a, b) as (service_a, service_b):
        yield service_a, service_b


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def outbox_idle(service: Service) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while (await service.outbox.stats())["pending"]:
        assert loop.time() < deadline, "the outbox never emptied"
        await asyncio.sleep(0.1)


async def delivered_texts(db: Database, sender: str) -> list[str]:
    """What the outbox recorded as delivered to this web chat citizen, in order."""
    async with db.session() as session:
        rows = await session.execute(
            select(MessageRecord.text).join(Citizen, Citizen.id == MessageRecord.citizen_id)
            .where(Citizen.channel == "web", Citizen.channel_user_id == sender,
                   MessageRecord.direction == MessageDirection.OUT)
            .order_by(MessageRecord.id))
    return [t or "" for t in rows.scalars()]


def delivered_count(service: Service) -> float:
    value = service.metrics.registry.get_sample_value("tawasul_replies_out_total", {"channel": "web"})
    return value or 0.0


def texts(messages: list[dict[str, Any]]) -> list[str]:
    return [m["text"] for m in messages]


async def test_a_reply_delivered_by_another_workers_outbox_reaches_a_poll_on_either(
    pair: tuple[Service, Service], http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    service_a, service_b = pair
    # A commits the turn but gives the replies it leased back instead of delivering them inline (as when that
    # failed and was left to the loops) and runs no outbox loop: the replies can only go out through B's.
    async def give_back(jobs: list[Job]) -> int:
        await service_a.outbox._release(jobs)
        return 0

    async def no_inline_delivery(citizen_id: int, **kwargs: object) -> None:
        return None

    monkeypatch.setattr(service_a.outbox, "run_in_order", give_back)
    monkeypatch.setattr(service_a.engine, "deliver", no_inline_delivery)
    page_a = Page(http, service_a, "shared-citizen-01")
    page_b = Page(http, service_b, "shared-citizen-01")

    got = await page_a.send("مرحبا")  # whatever B delivered before A answered comes back here
    await outbox_idle(service_b)
    got += await page_a.poll()
    delivered = await delivered_texts(service_a.db, page_a.sender)
    assert delivered and delivered[0].startswith(WELCOME), delivered
    assert texts(got) == delivered  # all of them, once, in order
    assert delivered_count(service_b) == len(delivered) and delivered_count(service_a) == 0
    assert await page_a.poll() == [] and await page_b.poll() == []  # taken once

    # The next reply, also delivered by B, is fetched by a poll on B.
    before = len(delivered)
    got = await page_a.send("menu")
    await outbox_idle(service_b)
    got += await page_b.poll()
    delivered = await delivered_texts(service_a.db, page_a.sender)
    assert len(delivered) > before
    assert texts(got) == delivered[before:]
    assert delivered_count(service_b) == len(delivered) and delivered_count(service_a) == 0


async def test_concurrent_polls_on_both_workers_take_each_reply_exactly_once(
    pair: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    service_a, service_b = pair
    sender = "busy-citizen-0001"
    sent = [f"notice {i:03d}" for i in range(150)]
    done = asyncio.Event()

    async def produce() -> None:
        # Delivered alternately by the two workers' outputs, as their outbox loops would.
        for i, body in enumerate(sent):
            await web_output(service_a if i % 2 else service_b).send(sender, OutgoingMessage(text=body))
        done.set()

    async def poller(service: Service) -> list[list[str]]:
        page = Page(http, service, sender)
        responses: list[list[str]] = []
        while not done.is_set():
            responses.append(texts(await page.poll()))
        responses.append(texts(await page.poll()))
        return responses

    pollers = [asyncio.create_task(poller(s)) for s in (service_a, service_b, service_a, service_b)]
    await produce()
    per_poller = await asyncio.gather(*pollers)
    received = [t for responses in per_poller for response in responses for t in response]
    assert sorted(received) == sent, "every reply must be handed out exactly once"
    for responses in per_poller:
        flat = [t for response in responses for t in response]
        assert flat == sorted(flat), "each page sees its replies oldest first"
    assert sum(1 for responses in per_poller for r in responses if r) > 1, "the polls did not interleave"
    async with service_a.db.session() as session:
        assert (await session.execute(select(WebChatReply.id))).first() is None


async def test_the_queue_per_sender_is_bounded_under_concurrent_deliveries(
    pair: tuple[Service, Service], http: aiohttp.ClientSession
) -> None:
    service_a, service_b = pair
    sender = "closed-page-0001"
    per_worker = MAX_QUEUED // 2 + 40  # together more than the bound

    async def deliver(service: Service, tag: str) -> list[str]:
        bodies = [f"{tag} {i:03d}" for i in range(per_worker)]
        for body in bodies:
            await web_output(service).send(sender, OutgoingMessage(text=body))
        return bodies

    await web_output(service_a).send("other-sender-01", OutgoingMessage(text="unrelated"))
    from_a, from_b = await asyncio.gather(deliver(service_a, "a"), deliver(service_b, "b"))
    kept = texts(await Page(http, service_b, sender).poll())
    assert len(kept) == MAX_QUEUED
    # The oldest were dropped: what is kept of each worker's sequence is its newest part, in order.
    for bodies, tag in ((from_a, "a"), (from_b, "b")):
        mine = [t for t in kept if t.startswith(tag)]
        assert mine == bodies[len(bodies) - len(mine):]
    assert texts(await Page(http, service_a, "other-sender-01").poll()) == ["unrelated"]


async def test_replies_nobody_fetched_are_purged_after_a_day(
    db_url: str, tmp_path: Path, trained_nlu_dir: Path, http: aiohttp.ClientSession
) -> None:
    # Replies left by pages closed for good (an abandoned sender never polls again), written before this
    # worker starts: the web chat channel's purge loop removes them at start-up and then hourly.
    await upgrade_async(db_url)
    db = Database(db_url)
    try:
        async with db.session() as session:
            await session.execute(insert(WebChatReply).values([
                {"sender": "gone-for-good-01", "payload": {"text": "stale"},
                 "created_at": utcnow() - dt.timedelta(hours=25)},
                {"sender": "gone-for-good-01", "payload": {"text": "fresh", "language": "en", "dir": "ltr",
                                                           "buttons": []},
                 "created_at": utcnow() - dt.timedelta(hours=23)},
            ]))

        async def stale_left() -> bool:
            async with db.session() as session:
                rows = await session.execute(select(WebChatReply.id).where(
                    WebChatReply.created_at < utcnow() - dt.timedelta(hours=24)))
                return rows.first() is not None

        async with services(Service(settings_for(db_url, tmp_path))) as (service,):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_S
            while await stale_left():
                assert loop.time() < deadline, "the stale reply was never purged"
                await asyncio.sleep(0.05)
            [fresh] = await Page(http, service, "gone-for-good-01").poll()
            assert fresh == {"text": "fresh", "language": "en", "dir": "ltr", "buttons": []}
            assert await web_output(service).purge() == 0  # nothing else was old enough
    finally:
        await db.close()


# A migrating process: imports first, then waits for the go file, so the upgrades really start together.
MIGRATOR = """
import asyncio, sys, time
from pathlib import Path
from tawasul.db.migrate import upgrade_async
url, ready, go = sys.argv[1:4]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.001)
asyncio.run(upgrade_async(url))
"""


async def test_concurrent_upgrades_of_an_empty_postgresql_database_all_succeed(
    pg_url: str, tmp_path: Path
) -> None:
    # Three workers started independently (not by the supervisor) each migrate at start-up. Without the
    # advisory lock they collide creating the same tables (duplicate key in pg_type) and two of them fail.
    ready = [tmp_path / f"ready-{i}" for i in range(3)]
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", MIGRATOR, pg_url, str(flag), str(tmp_path / "go"), cwd=PROJECT,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    ) for flag in ready]
    try:
        await wait_until(lambda: all(flag.exists() for flag in ready), timeout=WAIT_S, what="three migrators")
        (tmp_path / "go").touch()
        results = await asyncio.wait_for(asyncio.gather(*(proc.communicate() for proc in procs)), WAIT_S)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    head = ScriptDirectory.from_config(alembic_config(pg_url)).get_current_head()
    db = Database(pg_url)
    try:
        async with db.engine.connect() as conn:
            versions = list((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars())
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
        assert versions == [head]
        assert diff == []
    finally:
        await db.close()
