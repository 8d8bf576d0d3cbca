"""Helpers of the staff console tests: a real console on 127.0.0.1 over a throwaway database."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from config.settings import PROJECT_DIR, Settings
from staff_console import StaffDeps, create_app
from staff_console.auth import configure_hashing, create_user
from tawasul.db.engine import create_engine
from tawasul.db.models import Base, ReviewItem

PASSWORD = "correct horse battery staple"
ADMIN = "alice"
REVIEWER = "bob"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
ROW_RE = re.compile(r'<tr class="row" data-id="(\d+)"')


def settings_for(tmp: Path, db_url: str, **staff: Any) -> Settings:
    base = Settings()
    nlu = base.nlu.model_copy(
        update={
            "model_dir": tmp / "models",
            "reviewed_data_dir": tmp / "reviewed",
            "data_dir": tmp / "nlu-data",
        }
    )
    # Cheap argon2 parameters keep the suite fast; test_default_hash_parameters checks the real ones.
    staff_settings = base.staff.model_copy(
        update={
            "default_language": "en",
            "password_hash_time_cost": 1,
            "password_hash_memory_kib": 8192,
            **staff,
        }
    )
    database = base.database.model_copy(update={"url": db_url})
    return base.model_copy(update={"nlu": nlu, "staff": staff_settings, "database": database})


def tiny_training_data(target: Path) -> Path:
    """A small slice of the hand-written data, so a real training takes seconds."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("cases_en_1.yml", "cases_en_2.yml", "intents.yml"):
        shutil.copy(PROJECT_DIR / "nlu" / "data" / name, target / name)
    return target


@dataclass
class Console:
    client: TestClient[Any, Any]
    app: web.Application
    deps: StaffDeps
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[Any]
    reloads: list[str] = field(default_factory=list)
    base: str = "/staff"

    def path(self, rest: str) -> str:
        return self.base + rest

    async def get(self, rest: str, **kwargs: Any) -> Any:
        kwargs.setdefault("allow_redirects", False)
        return await self.client.get(self.path(rest), **kwargs)

    async def post(self, rest: str, **kwargs: Any) -> Any:
        kwargs.setdefault("allow_redirects", False)
        return await self.client.post(self.path(rest), **kwargs)

    async def sign_in(self, username: str, password: str = PASSWORD, *, next_: str = "") -> Any:
        page = await self.get("/login")
        token = csrf_of(await page.text())
        data = {"csrf_token": token, "username": username, "password": password, "next": next_}
        return await self.post("/login", data=data)

    async def csrf(self) -> str:
        """The session's CSRF token, as a page of the console hands it out."""
        page = await self.get("/queue")
        assert page.status == 200, page.status
        return csrf_of(await page.text())

    async def add_items(self, *items: dict[str, Any]) -> list[int]:
        ids = []
        async with self.sessionmaker() as session, session.begin():
            for spec in items:
                item = ReviewItem(**{**ITEM_DEFAULTS, **spec})
                session.add(item)
                await session.flush()
                ids.append(item.id)
        return ids

    async def item(self, item_id: int) -> ReviewItem:
        async with self.sessionmaker() as session:
            found = await session.get(ReviewItem, item_id)
            assert isinstance(found, ReviewItem)
            return found


ITEM_DEFAULTS: dict[str, Any] = {
    "reason": "low_confidence",
    "text": "The street lights in our block have been off for two weeks",
    "language": "en",
    "channel": "telegram",
    "model_version": "emb-test",
    "predicted_type": "complaint",
    "predicted_type_confidence": 0.5,
    "predicted_agency": "works",
    "predicted_agency_confidence": 0.4,
    "candidates": {"agency": [["works", 0.4], ["municipalities", 0.3], ["ewa", 0.1]]},
    "citizen_type": "complaint",
    "citizen_agency": "municipalities",
}


def csrf_of(html: str) -> str:
    m = CSRF_RE.search(html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def row_ids(html: str) -> list[int]:
    return [int(x) for x in ROW_RE.findall(html)]


async def start_console(
    tmp: Path,
    db_url: str,
    port: int,
    *,
    trainer: Callable[..., Any] | None = None,
    with_reload: bool = True,
    staff: dict[str, Any] | None = None,
    users: bool = True,
) -> Console:
    settings = settings_for(tmp, db_url, **(staff or {}))
    engine = create_engine(db_url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    reloads: list[str] = []

    async def reload() -> None:
        reloads.append(dt.datetime.now(dt.UTC).isoformat())

    nlu_reload: Callable[[], Awaitable[None]] | None = reload if with_reload else None
    deps = StaffDeps(
        settings=settings,
        sessionmaker=sessionmaker,
        nlu_reload=nlu_reload,
        registry_dir=settings.nlu.model_dir,
        trainer=trainer,
    )
    configure_hashing(settings.staff)
    if users:
        async with sessionmaker() as session, session.begin():
            await create_user(session, ADMIN, PASSWORD, "admin")
            await create_user(session, REVIEWER, PASSWORD, "reviewer")
    # Mounted the way the service mounts it.
    root = web.Application()
    app = create_app(deps)
    root.add_subapp("/staff", app)
    client: TestClient[Any, Any] = TestClient(TestServer(root, host="127.0.0.1", port=port))
    await client.start_server()
    return Console(
        client=client, app=app, deps=deps, engine=engine, sessionmaker=sessionmaker, reloads=reloads
    )


async def stop_console(console: Console) -> None:
    await console.client.close()
    await console.engine.dispose()
