"""`tawasul staff add/list/disable/enable` against a real SQLite database, as a subprocess."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from config.settings import PROJECT_DIR
from staff_console.auth import verify_password
from tawasul.db.engine import create_engine
from tawasul.db.migrate import upgrade
from tawasul.db.models import StaffSession, StaffUser

ENV = {"TAWASUL_STAFF__PASSWORD_HASH_TIME_COST": "1", "TAWASUL_STAFF__PASSWORD_HASH_MEMORY_KIB": "8192"}


def run(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "TAWASUL_DATABASE_URL": url,
        **ENV,
    }
    return subprocess.run(
        [sys.executable, "-m", "tawasul.cli", "staff", *args],
        input=stdin,
        text=True,
        check=False,
        capture_output=True,
        cwd=PROJECT_DIR,
        env=env,
        timeout=120,
    )


async def users(url: str) -> dict[str, StaffUser]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(StaffUser))).all()
        return {r.username: r for r in rows}  # type: ignore[misc]
    finally:
        await engine.dispose()


def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """The same command in this process (the subprocess test covers the entry point)."""
    from tawasul.cli import main

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TAWASUL_DATABASE_URL", url)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    try:
        code = main(["staff", *args])
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_add_through_the_entry_point(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'staff.db'}"
    upgrade(url)
    added = run(url, "add", "Carol", "--role", "admin", "--password-stdin", stdin="a long enough secret\n")
    assert added.returncode == 0, added.stderr
    assert "added carol (admin)" in added.stdout
    assert "a long enough secret" not in added.stdout + added.stderr
    assert verify_password(asyncio.run(users(url))["carol"].password_hash, "a long enough secret")


def test_add_list_disable_enable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'staff.db'}"
    upgrade(url)

    def run(url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return cli(monkeypatch, capsys, url, *args, stdin=stdin)

    added = run(url, "add", "Carol", "--role", "admin", "--password-stdin", stdin="a long enough secret\n")
    assert added.returncode == 0, added.stderr
    assert "added carol (admin)" in added.stdout
    assert "a long enough secret" not in added.stdout + added.stderr
    found = asyncio.run(users(url))
    assert verify_password(found["carol"].password_hash, "a long enough secret")
    assert found["carol"].role == "admin" and found["carol"].active

    taken = run(url, "add", "carol", "--role", "reviewer", "--password-stdin", stdin="another secret 123\n")
    assert taken.returncode == 1 and "already exists" in taken.stderr
    short = run(url, "add", "dave", "--role", "reviewer", "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "at least" in short.stderr
    bad_role = run(url, "add", "erin", "--role", "root", "--password-stdin", stdin="a long enough secret\n")
    assert bad_role.returncode == 2
    # Without --password-stdin and without a terminal there is no way to type a password: refuse.
    no_tty = run(url, "add", "frank", "--role", "reviewer", stdin="")
    assert no_tty.returncode == 1 and "--password-stdin" in no_tty.stderr

    listed = run(url, "list")
    assert listed.returncode == 0
    assert "carol" in listed.stdout and "admin" in listed.stdout and "active" in listed.stdout

    async def add_session() -> None:
        import datetime as dt

        engine = create_engine(url)
        async with engine.begin() as conn:
            await conn.execute(
                insert(StaffSession).values(
                    token_hash="x" * 64,
                    user_id=found["carol"].id,
                    csrf_token="y",
                    expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
                )
            )
        await engine.dispose()

    asyncio.run(add_session())
    disabled = run(url, "disable", "carol")
    assert disabled.returncode == 0 and "disabled carol" in disabled.stdout
    assert not asyncio.run(users(url))["carol"].active
    assert "disabled" in run(url, "list").stdout

    async def sessions() -> int:
        engine = create_engine(url)
        async with engine.connect() as conn:
            n = len((await conn.execute(select(StaffSession.token_hash))).all())
        await engine.dispose()
        return n

    assert asyncio.run(sessions()) == 0  # disabling ends open sessions
    assert run(url, "enable", "carol").returncode == 0
    assert asyncio.run(users(url))["carol"].active
    assert run(url, "disable", "nobody").returncode == 1
