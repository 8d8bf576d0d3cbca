"""The console's aiohttp application: routes, the security middlewares and template rendering.

Access control is deny-by-default: every route needs a signed-in staff member unless its handler is marked
``@public``; the role defaults to reviewer and admin-only handlers are marked ``@admin_only``. Every
state-changing request (any method but GET/HEAD/OPTIONS) must carry the session's CSRF token, in the form
field ``csrf_token`` or the ``X-CSRF-Token`` header; the sign-in form, before any session exists, uses a
double-submit cookie.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web

from config.agencies import Agency, load_agencies
from staff_console import auth
from staff_console.auth import Role, Staff
from staff_console.deps import StaffDeps
from staff_console.messages import LANGUAGES, translate
from staff_console.training import TrainingRunner

PACKAGE_DIR = Path(__file__).resolve().parent
STATIC_DIR = PACKAGE_DIR / "static"
TEMPLATE_DIR = PACKAGE_DIR / "templates"

SESSION_COOKIE = "tawasul_staff"
LOGIN_CSRF_COOKIE = "tawasul_staff_login_csrf"
LANG_COOKIE = "tawasul_staff_lang"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

DEPS = web.AppKey("staff_deps", StaffDeps)
RUNNER = web.AppKey("staff_training", TrainingRunner)
JINJA = web.AppKey("staff_jinja", jinja2.Environment)
AGENCIES = web.AppKey[dict[str, Agency]]("staff_agencies")
STAFF = web.RequestKey("staff_member", Staff)
LANG = web.RequestKey("staff_lang", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Same-origin only; no inline script or style, so injected markup could not run even if escaping failed.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def public(handler: Handler) -> Handler:
    handler.staff_public = True  # type: ignore[attr-defined]
    return handler


def admin_only(handler: Handler) -> Handler:
    handler.staff_role = Role.ADMIN  # type: ignore[attr-defined]
    return handler


def required_role(handler: Any) -> Role | None:
    """None for a public route, else the least role that may use it."""
    if getattr(handler, "staff_public", False):
        return None
    role = getattr(handler, "staff_role", Role.REVIEWER)
    return role if isinstance(role, Role) else Role.ADMIN  # anything odd: the strictest


# -- helpers used by handlers ---------------------------------------------------------------------------
def deps_of(request: web.Request) -> StaffDeps:
    return request.app[DEPS]


def staff_of(request: web.Request) -> Staff:
    staff: Staff | None = request.get(STAFF)
    if staff is None:  # the middleware lets no such request through; this guards a wiring mistake
        raise web.HTTPUnauthorized()
    return staff


def lang_of(request: web.Request) -> str:
    return str(request.get(LANG, "en"))


def url(request: web.Request, name: str, query: dict[str, Any] | str | None = None, **parts: Any) -> str:
    target = request.app.router[name].url_for(**{k: str(v) for k, v in parts.items()})
    if isinstance(query, str):
        return f"{target}?{query}" if query else str(target)
    if query:
        target = target.with_query({k: str(v) for k, v in query.items() if v not in (None, "")})
    return str(target)


def base_path(request: web.Request) -> str:
    """The console's mount point ("/staff"), used as cookie path."""
    return str(request.app.router["index"].url_for()).rstrip("/") or "/"


def safe_next(request: web.Request, target: str | None) -> str | None:
    """Only a path inside the console: never another host (no open redirect)."""
    if not target or "\\" in target or any(ord(c) < 32 for c in target):
        return None
    parts = urlsplit(target)
    base = base_path(request)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    if base != "/" and not parts.path.startswith(base + "/"):
        return None
    return target


def wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return (
        ("application/json" in accept
        and "text/html" not in accept)
        or request.content_type == "application/json"
    )


def is_https(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip() == "https"


def set_cookie(
    request: web.Request,
    response: web.StreamResponse,
    name: str,
    value: str,
    *,
    max_age: int | None = None,
    samesite: str = "Strict",
) -> None:
    settings = deps_of(request).settings.staff
    response.set_cookie(
        name,
        value,
        path=base_path(request),
        httponly=True,
        samesite=samesite,
        max_age=max_age,
        secure=settings.secure_cookies or is_https(request),
    )


def delete_cookie(request: web.Request, response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path=base_path(request))


def agency_label(agencies: dict[str, Agency], agency_id: str | None, lang: str) -> str:
    if not agency_id:
        return "—"
    agency = agencies.get(agency_id)
    return agency.short.get(lang) if agency else agency_id


def render(request: web.Request, template: str, *, http_status: int = 200, **context: Any) -> web.Response:
    env = request.app[JINJA]
    lang = lang_of(request)
    deps = deps_of(request)
    tz = ZoneInfo(deps.settings.staff.timezone)
    agencies = request.app[AGENCIES]
    staff: Staff | None = request.get(STAFF)

    def t(key: str, **kwargs: Any) -> str:
        return translate(lang, key, **kwargs)

    def fmt_dt(value: dt.datetime | str | None) -> str:
        if value is None or value == "":
            return "—"
        if isinstance(value, str):
            try:
                parsed = dt.datetime.fromisoformat(value)
            except ValueError:
                return value
        else:
            parsed = value
        return auth.as_utc(parsed).astimezone(tz).strftime("%Y-%m-%d %H:%M")

    def pct(value: float | None) -> str:
        return "—" if value is None else f"{value * 100:.1f}%"

    ctx = {
        "lang": lang,
        "dir": "rtl" if lang == "ar" else "ltr",
        "t": t,
        "staff": staff,
        "is_admin": staff is not None and staff.has_role(Role.ADMIN),
        "csrf": staff.csrf_token if staff else context.pop("login_csrf", ""),
        "url": lambda name, query=None, **parts: url(request, name, query, **parts),
        "static": lambda name: str(request.app.router["static"].url_for(filename=name)),
        "here": request.path_qs,
        "agency_name": lambda a: agency_label(agencies, a, lang),
        "type_name": lambda v: t(f"type_{v}") if v else "—",
        "fmt_dt": fmt_dt,
        "pct": pct,
        "flash": _flash(request, lang),
        "languages": LANGUAGES,
        **context,
    }
    body = env.get_template(template).render(ctx)
    return web.Response(text=body, status=http_status, content_type="text/html", charset="utf-8")


def _flash(request: web.Request, lang: str) -> tuple[str, str] | None:
    """A one-line notice named by ?msg= (a catalogue key, never free text from the URL)."""
    key = request.query.get("msg", "")
    if not key.replace("_", "").isalnum():
        return None
    text = translate(lang, f"flash_{key}", n=request.query.get("n", ""), default="")
    if not text:
        return None
    return ("error" if key.startswith("err") else "ok", text)


def see_other(location: str) -> web.Response:
    # A response, not web.HTTPSeeOther: aiohttp deprecates returning exceptions, and cookies go on it.
    return web.Response(status=303, headers={"Location": location})


def redirect(location: str, msg: str | None = None, n: Any = None) -> web.Response:
    if msg:
        sep = "&" if "?" in location else "?"
        location += f"{sep}msg={msg}" + (f"&n={int(n)}" if n is not None else "")
    return see_other(location)


def error_response(request: web.Request, status: int, key: str) -> web.Response:
    if (
        wants_json(request)
        or (request.method not in SAFE_METHODS
        and request.content_type == "application/json")
    ):
        return web.json_response({"error": key}, status=status)
    return render(request, "error.html", http_status=status, message_key=key, status_code=status)


# -- middlewares ----------------------------------------------------------------------------------------
def _pick_language(request: web.Request, default: str) -> str:
    chosen = request.cookies.get(LANG_COOKIE, "")
    return chosen if chosen in LANGUAGES else default


async def _csrf_token_of(request: web.Request) -> str | None:
    header = request.headers.get("X-CSRF-Token")
    if header:
        return header
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()  # cached: the handler reads the same form
        value = form.get("csrf_token")
        return value if isinstance(value, str) else None
    return None


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    deps = request.app[DEPS]
    request[LANG] = _pick_language(request, deps.settings.staff.default_language)
    route = request.match_info.route
    is_static = isinstance(route.resource, web.StaticResource)
    role = None if is_static else required_role(route.handler)
    token = request.cookies.get(SESSION_COOKIE, "")
    staff = await auth.load_session(deps.sessionmaker, token) if token else None
    if staff is not None:
        request[STAFF] = staff

    if role is not None and staff is None:
        if request.method in ("GET", "HEAD") and not wants_json(request):
            login = url(request, "login", {"next": request.path_qs})
            response: web.StreamResponse = see_other(login)
        else:
            response = web.json_response({"error": "unauthenticated"}, status=401)
        if token:  # a stale cookie: drop it
            delete_cookie(request, response, SESSION_COOKIE)
        return response

    if request.method not in SAFE_METHODS:
        given = await _csrf_token_of(request)
        expected = (
            request.cookies.get(LOGIN_CSRF_COOKIE) if role is None else staff.csrf_token if staff else None
        )
        if not auth.tokens_equal(expected, given):
            return error_response(request, 403, "err_csrf")

    if role is not None and staff is not None and not staff.has_role(role):
        return error_response(request, 403, "err_forbidden")
    return await handler(request)


@web.middleware
async def headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _harden(request, exc)
        raise
    _harden(request, response)
    return response


def _harden(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Content-Security-Policy", CSP)
    if not isinstance(request.match_info.route.resource, web.StaticResource):
        headers.setdefault("Cache-Control", "no-store")
    if is_https(request) or deps_of(request).settings.staff.secure_cookies:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")


# -- the application ------------------------------------------------------------------------------------
def new_login_csrf() -> str:
    return secrets.token_urlsafe(32)


def create_app(deps: StaffDeps) -> web.Application:
    """The console as an aiohttp application, to mount with ``app.add_subapp("/staff", ...)``."""
    from staff_console import views

    auth.configure_hashing(deps.settings.staff)
    app = web.Application(middlewares=[headers_middleware, security_middleware], client_max_size=256 * 1024)
    app[DEPS] = deps
    app[RUNNER] = TrainingRunner(deps)
    app[AGENCIES] = {a.id: a for a in load_agencies()}
    app[JINJA] = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    views.add_routes(app)
    app.router.add_static("/static", STATIC_DIR, name="static", append_version=True)

    async def _close(app: web.Application) -> None:
        await app[RUNNER].close()

    app.on_cleanup.append(_close)
    return app
