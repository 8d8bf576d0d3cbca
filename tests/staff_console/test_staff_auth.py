"""Sign-in, sessions, lock-out and sign-out over real HTTP on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
from http.cookies import SimpleCookie
from pathlib import Path

from sqlalchemy import func, select, update

from staff_console.app import LOGIN_CSRF_COOKIE, SESSION_COOKIE
from staff_console.auth import create_user
from tawasul.db.models import StaffSession, StaffUser
from tests.staff_console.staff_helpers import (
    ADMIN,
    PASSWORD,
    REVIEWER,
    Console,
    csrf_of,
    start_console,
    stop_console,
)


def session_cookie_header(response: object) -> str:
    headers = response.headers.getall("Set-Cookie", [])  # type: ignore[attr-defined]
    found = [h for h in headers if h.startswith(SESSION_COOKIE + "=")]
    assert found, f"no session cookie in {headers}"
    return str(found[0])


async def test_sign_in_sets_a_hardened_session_cookie(console_any_db: Console) -> None:
    c = console_any_db
    response = await c.sign_in(ADMIN)
    assert response.status == 303
    assert response.headers["Location"] == "/staff/queue"
    header = session_cookie_header(response)
    attrs = header.lower()
    assert "httponly" in attrs
    assert "samesite=strict" in attrs
    assert "path=/staff" in attrs
    assert "secure" not in attrs  # plain http, secure_cookies off
    page = await c.get("/queue")
    assert page.status == 200
    assert ADMIN in await page.text()
    # The database keeps only a hash of the token.
    token = SimpleCookie(header)[SESSION_COOKIE].value
    async with c.sessionmaker() as session:
        hashes = (await session.scalars(select(StaffSession.token_hash))).all()
    assert hashes and token not in hashes


async def test_wrong_password_and_unknown_user_fail_alike(console: Console) -> None:
    for username, password in ((ADMIN, "wrong password!"), ("nobody", PASSWORD)):
        response = await console.sign_in(username, password)
        assert response.status == 200
        body = await response.text()
        assert 'id="login-error"' in body
        assert not [
            h for h in response.headers.getall("Set-Cookie", []) if h.startswith(SESSION_COOKIE + "=")
        ]
    assert (await console.get("/queue")).status == 303


async def test_password_is_stored_as_argon2id(console: Console) -> None:
    async with console.sessionmaker() as session:
        user = await session.scalar(select(StaffUser).where(StaffUser.username == ADMIN))
    assert user is not None
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash


async def test_lockout_after_repeated_failures_then_expires(console_any_db: Console) -> None:
    c = console_any_db
    attempts = c.deps.settings.staff.lockout_attempts
    for _ in range(attempts):
        assert 'id="login-error"' in await (await c.sign_in(REVIEWER, "not the password")).text()
    # Locked: even the right password is refused.
    locked = await c.sign_in(REVIEWER, PASSWORD)
    assert locked.status == 200 and 'id="login-error"' in await locked.text()
    async with c.sessionmaker() as session:
        user = await session.scalar(select(StaffUser).where(StaffUser.username == REVIEWER))
        assert user is not None and user.locked_until is not None
    # Another account is not affected.
    assert (await c.sign_in(ADMIN)).status == 303
    c.client.session.cookie_jar.clear()
    # When the lock-out time has passed the right password works again.
    async with c.sessionmaker() as session, session.begin():
        await session.execute(
            update(StaffUser)
            .where(StaffUser.username == REVIEWER)
            .values(locked_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    assert (await c.sign_in(REVIEWER, PASSWORD)).status == 303
    async with c.sessionmaker() as session:
        user = await session.scalar(select(StaffUser).where(StaffUser.username == REVIEWER))
        assert user is not None and user.failed_attempts == 0 and user.locked_until is None


async def test_success_resets_the_failure_count(console: Console) -> None:
    attempts = console.deps.settings.staff.lockout_attempts
    for _ in range(attempts - 1):
        await console.sign_in(REVIEWER, "nope nope nope")
    assert (await console.sign_in(REVIEWER)).status == 303
    console.client.session.cookie_jar.clear()
    for _ in range(attempts - 1):
        await console.sign_in(REVIEWER, "nope nope nope")
    assert (await console.sign_in(REVIEWER)).status == 303  # not locked: the count restarted


async def test_sign_out_ends_the_session_server_side(console: Console) -> None:
    response = await console.sign_in(ADMIN)
    token = SimpleCookie(session_cookie_header(response))[SESSION_COOKIE].value
    csrf = await console.csrf()
    out = await console.post("/logout", data={"csrf_token": csrf})
    assert out.status == 303 and out.headers["Location"] == "/staff/login"
    # Replaying the old cookie does not work: the session row is gone.
    replay = await console.client.get(
        "/staff/queue", allow_redirects=False, headers={"Cookie": f"{SESSION_COOKIE}={token}"}
    )
    assert replay.status == 303 and replay.headers["Location"].startswith("/staff/login")


async def test_expired_session_is_refused(console: Console) -> None:
    await console.sign_in(ADMIN)
    async with console.sessionmaker() as session, session.begin():
        await session.execute(
            update(StaffSession).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
        )
    assert (await console.get("/queue")).status == 303


async def test_disabled_user_loses_sessions_and_cannot_sign_in(console: Console) -> None:
    await console.sign_in(REVIEWER)
    assert (await console.get("/queue")).status == 200
    async with console.sessionmaker() as session, session.begin():
        await session.execute(update(StaffUser).where(StaffUser.username == REVIEWER).values(active=False))
    assert (await console.get("/queue")).status == 303
    assert 'id="login-error"' in await (await console.sign_in(REVIEWER)).text()


async def test_next_parameter_stays_inside_the_console(console: Console) -> None:
    ok = await console.sign_in(ADMIN, next_="/staff/quality")
    assert ok.headers["Location"] == "/staff/quality"
    console.client.session.cookie_jar.clear()
    for evil in (
        "//evil.example/x",
        "https://evil.example/",
        "/other-app",
        "/staff\\..\\x",
        "javascript:alert(1)",
    ):
        response = await console.sign_in(ADMIN, next_=evil)
        assert response.headers["Location"] == "/staff/queue", evil
        console.client.session.cookie_jar.clear()


async def test_unauthenticated_page_redirects_to_sign_in_and_back(console: Console) -> None:
    first = await console.get("/quality?version=x")
    assert first.status == 303
    login_url = first.headers["Location"]
    assert login_url.startswith("/staff/login?next=")
    page = await console.client.get(login_url)
    body = await page.text()
    assert 'name="next" value="/staff/quality?version=x"' in body


async def test_secure_cookie_flag(tmp_path: Path, sqlite_url: str, unused_port: int) -> None:
    c = await start_console(tmp_path, sqlite_url, unused_port, staff={"secure_cookies": True})
    try:
        # aiohttp's client does not send Secure cookies over http: hand the sign-in form's cookie over.
        page = await c.get("/login")
        token = csrf_of(await page.text())
        response = await c.post(
            "/login",
            data={"csrf_token": token, "username": ADMIN, "password": PASSWORD, "next": ""},
            headers={"Cookie": f"{LOGIN_CSRF_COOKIE}={token}"},
        )
        login_cookie = next(h for h in page.headers.getall("Set-Cookie") if h.startswith(LOGIN_CSRF_COOKIE))
        assert "secure" in login_cookie.lower()
        assert "secure" in session_cookie_header(response).lower()
        assert "Strict-Transport-Security" in response.headers
    finally:
        await stop_console(c)


async def test_secure_cookie_behind_https_proxy(console: Console) -> None:
    page = await console.get("/login")
    token = csrf_of(await page.text())
    response = await console.post(
        "/login",
        data={"csrf_token": token, "username": ADMIN, "password": PASSWORD, "next": ""},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert response.status == 303
    assert "secure" in session_cookie_header(response).lower()


async def test_create_user_validates_input(console: Console) -> None:
    import pytest

    from staff_console.auth import UserError

    async with console.sessionmaker() as session, session.begin():
        for name, password, role in (
            ("x", PASSWORD, "reviewer"),  # too short
            ("has space", PASSWORD, "reviewer"),
            ("carol", "short", "reviewer"),
            ("carol", PASSWORD, "superuser"),
            (ADMIN.upper(), PASSWORD, "reviewer"),  # taken (usernames are case-insensitive)
        ):
            with pytest.raises(UserError):
                await create_user(session, name, password, role)
        count = await session.scalar(select(func.count(StaffUser.id)))
    assert count == 2


CHEAP_HASHING = {"password_hash_time_cost": 1, "password_hash_memory_kib": 8192}


def test_default_hash_parameters() -> None:
    from config.settings import StaffSettings
    from staff_console import auth

    try:
        auth.configure_hashing(StaffSettings.model_validate({}))
        digest = auth.hash_password("a password of some length")
        assert digest.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
        assert auth.verify_password(digest, "a password of some length")
        assert not auth.verify_password(digest, "another password")
    finally:
        auth.configure_hashing(StaffSettings.model_validate(CHEAP_HASHING))


async def test_hash_is_upgraded_at_sign_in_when_the_cost_changes(console: Console) -> None:
    from config.settings import StaffSettings
    from staff_console import auth

    async with console.sessionmaker() as session:
        before = await session.scalar(select(StaffUser.password_hash).where(StaffUser.username == ADMIN))
    assert before is not None and ",t=1," in before
    try:
        auth.configure_hashing(StaffSettings.model_validate({**CHEAP_HASHING, "password_hash_time_cost": 2}))
        assert (await console.sign_in(ADMIN)).status == 303
    finally:
        auth.configure_hashing(StaffSettings.model_validate(CHEAP_HASHING))
    async with console.sessionmaker() as session:
        after = await session.scalar(select(StaffUser.password_hash).where(StaffUser.username == ADMIN))
    assert after is not None and ",t=2," in after
