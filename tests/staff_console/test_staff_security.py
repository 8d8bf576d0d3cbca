"""Access control, CSRF, escaping and security headers, checked on every route of the console's router."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import func, select

from staff_console.app import LOGIN_CSRF_COOKIE, SESSION_COOKIE, required_role
from staff_console.auth import Role
from staff_console.training import STATUS_FILE
from tawasul.db.models import ReviewItem, StaffUser
from tests.staff_console.staff_helpers import (
    ADMIN,
    PASSWORD,
    REVIEWER,
    Console,
    csrf_of,
    start_console,
    stop_console,
)

PARAMS = {"id": "1", "chart": "accuracy", "code": "en"}
PUBLIC = {("GET", "login"), ("POST", "login_submit"), ("GET", "lang"), ("GET", "static")}
ADMIN_ONLY = {
    "training_export",
    "training_retrain",
    "training_promote",
    "training_rollback",
    "users",
    "users_create",
    "users_update",
}


def routes(app: web.Application) -> list[tuple[str, str, str, Any]]:
    """(method, concrete path, route name, handler) of every route, HEAD left out (it mirrors GET)."""
    out = []
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        resource = route.resource
        assert resource is not None
        if isinstance(resource, web.StaticResource):
            path = str(resource.url_for(filename="console.css"))
        else:
            path = re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: PARAMS[m.group(1)], resource.canonical)
        out.append((route.method, path, resource.name or "", route.handler))
    return out


def protected(app: web.Application) -> list[tuple[str, str, str, Any]]:
    return [r for r in routes(app) if (r[0], r[2]) not in PUBLIC]


async def test_router_has_the_expected_public_and_admin_routes(console: Console) -> None:
    all_routes = routes(console.app)
    assert len(all_routes) >= 20
    public = {(m, name) for m, _, name, h in all_routes if name == "static" or required_role(h) is None}
    assert public == PUBLIC
    admin = {name for _, _, name, h in all_routes if name != "static" and required_role(h) is Role.ADMIN}
    assert admin == ADMIN_ONLY


async def test_every_route_needs_a_session(console: Console) -> None:
    await console.add_items({})
    checked = 0
    for method, path, name, _ in protected(console.app):
        for cookie in ({}, {"Cookie": f"{SESSION_COOKIE}=forged-token"}):
            response = await console.client.request(method, path, allow_redirects=False, headers=cookie)
            body = await response.text()
            if method == "GET":
                assert response.status == 303, (method, path)
                assert response.headers["Location"].startswith("/staff/login?next="), path
            else:
                assert response.status == 401, (method, path)
                assert response.content_type == "application/json"
            # Nothing of a citizen in the answer.
            assert "street lights" not in body, path
            checked += 1
    assert checked >= 2 * 16
    # JSON clients get 401 on GET too.
    status = await console.client.get("/staff/training/status", headers={"Accept": "application/json"})
    assert status.status == 401


async def test_unknown_paths_do_not_reveal_anything_without_a_session(console: Console) -> None:
    response = await console.get("/no-such-page")
    assert response.status == 303


async def test_reviewer_cannot_use_admin_routes(console: Console) -> None:
    await console.add_items({"status": "accepted", "final_type": "complaint", "final_agency": "works"})
    assert (await console.sign_in(REVIEWER)).status == 303
    token = await console.csrf()
    denied = 0
    for method, path, name, _ in protected(console.app):
        if name not in ADMIN_ONLY:
            continue
        data = {
            "csrf_token": token,
            "username": "mallory",
            "password": PASSWORD,
            "role": "admin",
            "version": "x",
            "action": "disable",
            "promote": "1",
        }
        response = await console.client.request(
            method, path, data=data if method == "POST" else None, allow_redirects=False
        )
        assert response.status == 403, (method, path)
        assert "err_forbidden" in await response.text() or "Your role does not allow" in await response.text()
        denied += 1
    assert denied == len(ADMIN_ONLY)
    # None of it happened.
    async with console.sessionmaker() as session:
        assert await session.scalar(select(func.count(StaffUser.id))) == 2
        admin = await session.scalar(select(StaffUser).where(StaffUser.username == ADMIN))
        assert admin is not None and admin.active
        exported = await session.scalar(
            select(func.count(ReviewItem.id)).where(ReviewItem.exported_at.is_not(None))
        )
        assert exported == 0
    assert not (console.deps.reviewed_dir()).exists()
    assert not (console.deps.registry_dir / STATUS_FILE).exists()
    # The admin-only controls are not even shown to a reviewer.
    page = await (await console.get("/training")).text()
    assert 'id="retrain-btn"' not in page and 'id="export-btn"' not in page
    assert 'id="nav-users"' not in await (await console.get("/queue")).text()


async def test_reviewer_can_use_reviewer_routes(console: Console) -> None:
    [item_id] = await console.add_items({})
    await console.sign_in(REVIEWER)
    for path in (
        "/queue",
        f"/items/{item_id}",
        "/training",
        "/quality",
        "/quality/charts/type-reviewed.svg",
        "/training/status",
    ):
        response = await console.get(path)
        assert response.status == 200, path
    token = await console.csrf()
    done = await console.post(f"/items/{item_id}", data={"csrf_token": token, "action": "accept"})
    assert done.status == 303
    assert (await console.item(item_id)).status == "accepted"


async def test_every_state_changing_route_needs_the_csrf_token(console: Console) -> None:
    [item_id] = await console.add_items({})
    await console.sign_in(ADMIN)
    good = await console.csrf()
    posts = [r for r in protected(console.app) if r[0] == "POST"]
    assert len(posts) >= 9
    for _, path, name, _ in posts:
        for data in ({}, {"csrf_token": ""}, {"csrf_token": "wrong"}, {"csrf_token": good[:-1] + "x"}):
            payload = {
                **data,
                "action": "not_a_case",
                "ids": str(item_id),
                "username": "carol",
                "password": PASSWORD,
                "role": "reviewer",
                "version": "v",
            }
            response = await console.client.post(path, data=payload, allow_redirects=False)
            assert response.status == 403, (path, data)
        wrong_header = await console.client.post(
            path, json={"promote": False}, allow_redirects=False, headers={"X-CSRF-Token": "wrong"}
        )
        assert wrong_header.status == 403, path
    # Nothing changed.
    assert (await console.item(item_id)).status == "pending"
    async with console.sessionmaker() as session:
        assert await session.scalar(select(func.count(StaffUser.id))) == 2
    # The same request with the right token works.
    ok = await console.post(f"/items/{item_id}", data={"csrf_token": good, "action": "not_a_case"})
    assert ok.status == 303
    assert (await console.item(item_id)).status == "not_a_case"


async def test_another_sessions_token_is_refused(tmp_path: Path, sqlite_url: str, unused_port: int) -> None:
    c = await start_console(tmp_path, sqlite_url, unused_port)
    try:
        [item_id] = await c.add_items({})
        await c.sign_in(REVIEWER)
        reviewer_token = await c.csrf()
        c.client.session.cookie_jar.clear()
        await c.sign_in(ADMIN)
        response = await c.post(f"/items/{item_id}", data={"csrf_token": reviewer_token, "action": "accept"})
        assert response.status == 403
    finally:
        await stop_console(c)


async def test_sign_in_form_has_its_own_csrf_check(console: Console) -> None:
    page = await console.get("/login")
    token = csrf_of(await page.text())
    creds = {"username": ADMIN, "password": PASSWORD}
    assert (await console.post("/login", data=creds)).status == 403
    assert (await console.post("/login", data={**creds, "csrf_token": "forged"})).status == 403
    # Right form token but no matching cookie (a cross-site form post cannot set it).
    console.client.session.cookie_jar.clear()
    assert (await console.post("/login", data={**creds, "csrf_token": token})).status == 403
    assert (await console.sign_in(ADMIN)).status == 303
    assert LOGIN_CSRF_COOKIE  # the cookie name is part of the contract with the template


XSS = '<script>alert("pwned")</script><img src=x onerror="alert(1)">'


async def test_script_in_citizen_data_shows_as_text(console: Console) -> None:
    [item_id] = await console.add_items(
        {
            "text": f"hello {XSS} bye",
            "channel": "<b>tg</b>",
            "language": '"><svg onload=alert(1)>',
            "model_version": "<script>v</script>",
            "case_reference": "<i>ref</i>",
            "candidates": {"agency": [["<img src=y onerror=alert(3)>", 0.9]]},
            "backend_agency": "<u>x</u>",
        }
    )
    await console.sign_in(ADMIN)
    for path in ("/queue", f"/items/{item_id}", "/queue?status=all&channel=%3Cb%3Etg%3C%2Fb%3E"):
        body = await (await console.get(path)).text()
        assert "<script>alert" not in body, path
        assert "<img src=x" not in body and "<img src=y" not in body, path
        assert "<svg onload" not in body and "<b>tg</b>" not in body, path
    item_page = await (await console.get(f"/items/{item_id}")).text()
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in item_page
    assert "&lt;i&gt;ref&lt;/i&gt;" in item_page
    assert "&lt;img src=y onerror=alert(3)&gt;" in item_page


async def test_message_is_redacted_when_shown(console: Console) -> None:
    [item_id] = await console.add_items({"text": "my CPR is 880112345 and mobile +973 3999 1234, help"})
    await console.sign_in(REVIEWER)
    for path in ("/queue", f"/items/{item_id}"):
        body = await (await console.get(path)).text()
        assert "880112345" not in body and "3999 1234" not in body
        assert "[CPR]" in body and "[PHONE]" in body


async def test_security_headers(console: Console) -> None:
    login = await console.get("/login")
    static = await console.get("/static/console.css")
    await console.sign_in(ADMIN)
    page = await console.get("/queue")
    missing = await console.get("/items/999999")
    for response in (login, page, missing, static):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert missing.status == 404
    for response in (login, page):
        assert response.headers["Cache-Control"] == "no-store"
    chart = await console.get("/quality/charts/type-reviewed.svg")
    assert chart.headers["Content-Type"].startswith("image/svg+xml")
    assert chart.headers["Content-Security-Policy"].startswith("default-src 'none'")


async def test_role_changes_apply_to_open_sessions(console: Console) -> None:
    await console.sign_in(ADMIN)
    assert (await console.get("/users")).status == 200
    from sqlalchemy import update

    async with console.sessionmaker() as session, session.begin():
        await session.execute(update(StaffUser).where(StaffUser.username == ADMIN).values(role="reviewer"))
    assert (await console.get("/users")).status == 403
