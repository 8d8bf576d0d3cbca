"""Request handlers. Access rules are declared with ``@public`` / ``@admin_only`` (see app.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from sqlalchemy import delete, select

from staff_console import auth, quality, review, training
from staff_console.app import (
    AGENCIES,
    LANG_COOKIE,
    LOGIN_CSRF_COOKIE,
    RUNNER,
    SESSION_COOKIE,
    STAFF,
    admin_only,
    delete_cookie,
    deps_of,
    error_response,
    lang_of,
    new_login_csrf,
    public,
    redirect,
    render,
    safe_next,
    see_other,
    set_cookie,
    staff_of,
    url,
    wants_json,
)
from staff_console.auth import Role, UserError
from staff_console.export import export_reviewed
from staff_console.messages import LANGUAGES
from staff_console.review import CASE_TYPES, QueueFilter, ReviewError
from tawasul.db.models import ReviewItem, ReviewReason, ReviewStatus, StaffSession, StaffUser
from tawasul.privacy import redact

log = logging.getLogger(__name__)

MAX_PASSWORD_CHARS = 1024  # argon2 hashes any length; a cap keeps one request from costing much


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", index, name="index")
    r.add_get("/login", login_form, name="login")
    r.add_post("/login", login_submit, name="login_submit")
    r.add_post("/logout", logout, name="logout")
    r.add_get("/lang/{code}", set_language, name="lang")
    r.add_get("/queue", queue, name="queue")
    r.add_post("/queue/accept", queue_bulk_accept, name="bulk_accept")
    r.add_get("/items/{id:\\d+}", item_page, name="item")
    r.add_post("/items/{id:\\d+}", item_action, name="item_action")
    r.add_get("/training", training_page, name="training")
    r.add_get("/training/status", training_status, name="training_status")
    r.add_post("/training/export", training_export, name="training_export")
    r.add_post("/training/retrain", training_retrain, name="training_retrain")
    r.add_post("/training/promote", training_promote, name="training_promote")
    r.add_post("/training/rollback", training_rollback, name="training_rollback")
    r.add_get("/quality", quality_page, name="quality")
    r.add_get("/quality/charts/{chart}.svg", quality_chart, name="chart")
    r.add_get("/users", users_page, name="users")
    r.add_post("/users", users_create, name="users_create")
    r.add_post("/users/{id:\\d+}", users_update, name="users_update")


def _tz(request: web.Request) -> ZoneInfo:
    return ZoneInfo(deps_of(request).settings.staff.timezone)


def _agency_ids(request: web.Request) -> list[str]:
    agencies = request.app[AGENCIES]
    return [str(a) for a in agencies]


async def _form(request: web.Request) -> dict[str, str]:
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


# -- sign in / out, language ----------------------------------------------------------------------------
async def index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(url(request, "queue"))


@public
async def login_form(request: web.Request) -> web.StreamResponse:
    if request.get(STAFF) is not None:
        raise web.HTTPSeeOther(safe_next(request, request.query.get("next")) or url(request, "queue"))
    return _login_page(request)


def _login_page(request: web.Request, error: str | None = None) -> web.Response:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or new_login_csrf()
    response = render(
        request,
        "login.html",
        login_csrf=token,
        error=error,
        next=safe_next(request, request.query.get("next")) or "",
        lockout_minutes=deps_of(request).settings.staff.lockout_minutes,
    )
    set_cookie(request, response, LOGIN_CSRF_COOKIE, token, max_age=3600)
    return response


@public
async def login_submit(request: web.Request) -> web.StreamResponse:
    deps = deps_of(request)
    form = await _form(request)
    username = form.get("username", "")[:64]
    password = form.get("password", "")
    if not username or not password or len(password) > MAX_PASSWORD_CHARS:
        return _login_page(request, "err_signin")
    result = await auth.authenticate(deps.sessionmaker, username, password, deps.settings.staff)
    if not result.ok or result.user_id is None:
        log.info("staff sign-in failed (locked=%s)", result.locked)
        return _login_page(request, "err_signin")
    token, _csrf = await auth.open_session(deps.sessionmaker, result.user_id, deps.settings.staff)
    log.info("staff user %s signed in", result.user_id)
    target = safe_next(request, form.get("next")) or url(request, "queue")
    response = see_other(target)
    set_cookie(request, response, SESSION_COOKIE, token, max_age=deps.settings.staff.session_hours * 3600)
    delete_cookie(request, response, LOGIN_CSRF_COOKIE)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    staff = staff_of(request)
    await auth.close_session(deps_of(request).sessionmaker, staff.token_hash)
    response = see_other(url(request, "login"))
    delete_cookie(request, response, SESSION_COOKIE)
    return response


@public
async def set_language(request: web.Request) -> web.StreamResponse:
    """Only stores an interface preference, so a plain link (GET) is enough."""
    code = request.match_info["code"]
    if code not in LANGUAGES:
        raise web.HTTPNotFound()
    response = see_other(safe_next(request, request.query.get("next")) or url(request, "queue"))
    set_cookie(request, response, LANG_COOKIE, code, max_age=365 * 86400, samesite="Lax")
    return response


# -- review queue ---------------------------------------------------------------------------------------
async def queue(request: web.Request) -> web.StreamResponse:
    deps = deps_of(request)
    flt = QueueFilter.from_query(request.query, _agency_ids(request))
    async with deps.sessionmaker() as session:
        page = await review.load_queue(session, flt, deps.settings.staff.page_size, _tz(request))
    return render(
        request,
        "queue.html",
        page=page,
        flt=flt,
        case_types=CASE_TYPES,
        reasons=[r.value for r in ReviewReason],
        statuses=review.STATUS_FILTERS,
        sorts=review.SORTS,
        agency_ids=_agency_ids(request),
        confidence=_confidence,
        accept_labels=review.accept_labels,
        final_labels=review.final_labels,
        text_preview=_preview,
    )


def _confidence(item: ReviewItem) -> float | None:
    values = [v for v in (item.predicted_type_confidence, item.predicted_agency_confidence) if v is not None]
    return min(values) if values else None


def _preview(text: str) -> str:
    shown = redact(text)
    return shown if len(shown) <= 140 else shown[:139] + "…"


async def queue_bulk_accept(request: web.Request) -> web.StreamResponse:
    deps = deps_of(request)
    staff = staff_of(request)
    form = await request.post()
    ids = [int(v) for v in form.getall("ids", []) if isinstance(v, str) and v.isdigit()][:500]
    back = str(form.get("back", ""))
    async with deps.sessionmaker() as session, session.begin():
        done, skipped = await review.bulk_accept(session, ids, staff.username)
    log.info("staff %s bulk-accepted %d items (%d skipped)", staff.user_id, done, skipped)
    if wants_json(request):
        return web.json_response({"accepted": done, "skipped": skipped})
    target = url(
        request, "queue", QueueFilter.from_query(_parse_qs(back), _agency_ids(request)).query_string()
    )
    return redirect(target, "accepted", done)


def _parse_qs(query: str) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(query[:2000]))


# -- one item -------------------------------------------------------------------------------------------
async def _load_item(request: web.Request, session: Any) -> ReviewItem:
    item = await session.get(ReviewItem, int(request.match_info["id"]))
    if item is None:
        raise web.HTTPNotFound()
    return item  # type: ignore[no-any-return]


async def item_page(request: web.Request) -> web.StreamResponse:
    deps = deps_of(request)
    flt = QueueFilter.from_query(request.query, _agency_ids(request))
    async with deps.sessionmaker() as session:
        item = await _load_item(request, session)
        next_id = await review.next_pending_id(session, flt, item, _tz(request))
    accept_type, accept_agency = review.accept_labels(item)
    final_type, final_agency = review.final_labels(item)
    return render(
        request,
        "item.html",
        item=item,
        flt=flt,
        qs=flt.query_string(),
        text=redact(item.text),
        agency_candidates=review.candidate_rows(item, "agency"),
        type_candidates=review.candidate_rows(item, "type"),
        accept_type=accept_type,
        accept_agency=accept_agency,
        form_type=final_type or accept_type or "",
        form_agency=final_agency or accept_agency or "",
        case_types=CASE_TYPES,
        agency_ids=_agency_ids(request),
        next_id=next_id,
        reviewed=item.status != ReviewStatus.PENDING,
    )


async def item_action(request: web.Request) -> web.StreamResponse:
    deps = deps_of(request)
    staff = staff_of(request)
    form = await _form(request)
    action = form.get("action", "")
    flt = QueueFilter.from_query(request.query, _agency_ids(request))
    try:
        async with deps.sessionmaker() as session, session.begin():
            item = await _load_item(request, session)
            if action == "accept":
                review.accept(item, staff.username)
            elif action == "relabel":
                review.relabel(
                    item,
                    form.get("final_type", ""),
                    form.get("final_agency", ""),
                    _agency_ids(request),
                    staff.username,
                )
            elif action == "not_a_case":
                review.not_a_case(item, staff.username)
            else:
                raise ReviewError("err_bad_action")
            await session.flush()
            next_id = await review.next_pending_id(session, flt, item, _tz(request))
            status = item.status
    except ReviewError as exc:  # raised before anything changed; the transaction is rolled back anyway
        if wants_json(request):
            return web.json_response({"error": exc.code}, status=400)
        return redirect(url(request, "item", flt.query_string(), id=request.match_info["id"]), exc.code)
    log.info("staff %s reviewed item %s: %s", staff.user_id, request.match_info["id"], status)
    if wants_json(request):
        return web.json_response({"status": status, "next": next_id})
    if next_id is not None:
        return redirect(url(request, "item", flt.query_string(), id=next_id), "saved")
    return redirect(url(request, "queue", flt.query_string(page=1)), "queue_done")


# -- training -------------------------------------------------------------------------------------------
def _public_status(status: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "state",
        "stage",
        "fraction",
        "version",
        "error",
        "started_at",
        "finished_at",
        "promote",
        "running",
        "exported",
        "started_by",
    )
    return {k: status.get(k) for k in keys if k in status}


async def training_page(request: web.Request) -> web.StreamResponse:
    deps = deps_of(request)
    async with deps.sessionmaker() as session:
        counts = await review.review_counts(session)
    models: list[Any] = []
    current: str | None = None
    registry_error = None
    try:
        models, current = await asyncio.to_thread(training.models_snapshot, deps.registry_dir)
    except training.REGISTRY_ERRORS as exc:  # a broken or missing registry must not take the page down
        log.warning("cannot list models: %s", type(exc).__name__)
        registry_error = "err_registry"
    return render(
        request,
        "training.html",
        counts=counts,
        models=models,
        current=current,
        registry_error=registry_error,
        status=_public_status(request.app[RUNNER].status()),
        metric_summary=quality.metric_summary,
        heldout_accuracy=quality.heldout_accuracy,
        export_dir=str(deps.reviewed_dir()),
    )


async def training_status(request: web.Request) -> web.StreamResponse:
    return web.json_response(_public_status(request.app[RUNNER].status()))


@admin_only
async def training_export(request: web.Request) -> web.StreamResponse:
    deps = deps_of(request)
    if request.app[RUNNER].running:
        return redirect(url(request, "training"), "err_busy")
    result = await export_reviewed(deps.sessionmaker, deps.reviewed_dir())
    log.info("staff %s exported %d reviewed examples", staff_of(request).user_id, result.examples)
    if wants_json(request):
        return web.json_response({"examples": result.examples})
    return redirect(url(request, "training"), "exported", result.examples)


@admin_only
async def training_retrain(request: web.Request) -> web.StreamResponse:
    staff = staff_of(request)
    if request.content_type == "application/json":
        body = await request.json()
        promote = bool(body.get("promote")) if isinstance(body, dict) else False
    else:
        promote = (await _form(request)).get("promote") == "1"
    started = await request.app[RUNNER].start(promote=promote, started_by=staff.username)
    log.info("staff %s started training (promote=%s): %s", staff.user_id, promote, started)
    if wants_json(request):
        return web.json_response(_public_status(request.app[RUNNER].status()), status=202 if started else 409)
    return redirect(url(request, "training"), "training_started" if started else "err_busy")


async def _after_registry_change(request: web.Request) -> str | None:
    reload = deps_of(request).nlu_reload
    if reload is None:
        return None
    try:
        await reload()
    except Exception as exc:
        log.error("NLU reload failed after a registry change: %s", type(exc).__name__)
        return "err_reload"
    return None


@admin_only
async def training_promote(request: web.Request) -> web.StreamResponse:
    deps = deps_of(request)
    version = (await _form(request)).get("version", "")
    if request.app[RUNNER].running:
        return redirect(url(request, "training"), "err_busy")
    try:
        await asyncio.to_thread(training.promote, deps.registry_dir, version)
    except training.REGISTRY_ERRORS as exc:  # unknown version, registry trouble
        log.warning("promote %r failed: %s", version[:64], type(exc).__name__)
        return redirect(url(request, "training"), "err_promote")
    log.info("staff %s promoted model %s", staff_of(request).user_id, version[:64])
    return redirect(url(request, "training"), await _after_registry_change(request) or "promoted")


@admin_only
async def training_rollback(request: web.Request) -> web.StreamResponse:
    deps = deps_of(request)
    if request.app[RUNNER].running:
        return redirect(url(request, "training"), "err_busy")
    try:
        await asyncio.to_thread(training.rollback, deps.registry_dir)
    except training.REGISTRY_ERRORS as exc:
        log.warning("rollback failed: %s", type(exc).__name__)
        return redirect(url(request, "training"), "err_rollback")
    log.info("staff %s rolled the model back", staff_of(request).user_id)
    return redirect(url(request, "training"), await _after_registry_change(request) or "rolled_back")


# -- quality --------------------------------------------------------------------------------------------
async def _quality_data(request: web.Request) -> dict[str, Any]:
    deps = deps_of(request)
    models: list[Any] = []
    current_version: str | None = None
    try:
        models, current_version = await asyncio.to_thread(training.models_snapshot, deps.registry_dir)
    except training.REGISTRY_ERRORS as exc:
        log.warning("cannot list models: %s", type(exc).__name__)
    versions = [str(m.version) for m in models]
    current = next((m for m in models if str(m.version) == current_version), models[0] if models else None)
    chosen = request.query.get("version", "")
    heldout_model = next((m for m in models if str(m.version) == chosen), current)
    reviewed_version = chosen if chosen in versions else ""
    async with deps.sessionmaker() as session:
        reviewed = {
            k: await quality.reviewed_confusion(session, k, reviewed_version or None) for k in quality.KINDS
        }
        by_version = await quality.reviewed_accuracy_by_version(session)
    metrics = await asyncio.to_thread(quality.full_metrics, heldout_model) if heldout_model else {}
    heldout = {k: quality.heldout_confusion(metrics, k) for k in quality.KINDS}
    chronological = list(reversed(models))
    accuracy_rows = []
    for m in chronological:
        v = str(m.version)
        rv = by_version.get(v, {})
        accuracy_rows.append(
            {
                "version": v,
                "created_at": getattr(m, "created_at", None),
                "current": v == current_version,
                "heldout_type": quality.heldout_accuracy(m.metrics, "type"),
                "heldout_agency": quality.heldout_accuracy(m.metrics, "agency"),
                "reviewed_type": rv.get("type"),
                "reviewed_agency": rv.get("agency"),
                "reviewed_n": rv.get("n", 0),
            }
        )
    return {
        "models": models,
        "versions": versions,
        "chosen": chosen if chosen in versions else "",
        "heldout_version": str(heldout_model.version) if heldout_model else None,
        "reviewed": reviewed,
        "heldout": heldout,
        "accuracy_rows": accuracy_rows,
    }


async def quality_page(request: web.Request) -> web.StreamResponse:
    data = await _quality_data(request)
    return render(request, "quality.html", colours=quality.SERIES_COLOURS, **data)


CHARTS = ("type-reviewed", "agency-reviewed", "type-heldout", "agency-heldout", "accuracy")


async def quality_chart(request: web.Request) -> web.StreamResponse:
    chart = request.match_info["chart"]
    if chart not in CHARTS:
        raise web.HTTPNotFound()
    data = await _quality_data(request)
    if chart == "accuracy":
        rows = data["accuracy_rows"]
        series = {name: [row[name] for row in rows] for name in quality.SERIES_COLOURS}
        svg = await asyncio.to_thread(quality.accuracy_svg, [row["version"] for row in rows], series)
    else:
        kind, source = chart.split("-")
        confusion = data[source][kind] or quality.Confusion()
        svg = await asyncio.to_thread(quality.confusion_svg, confusion)
    response = web.Response(body=svg, content_type="image/svg+xml")
    # Opened directly, the SVG document gets no script at all.
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return response


# -- users ----------------------------------------------------------------------------------------------
@admin_only
async def users_page(request: web.Request) -> web.StreamResponse:
    deps = deps_of(request)
    async with deps.sessionmaker() as session:
        users = (await session.scalars(select(StaffUser).order_by(StaffUser.username))).all()
    return render(
        request,
        "users.html",
        users=users,
        roles=[r.value for r in Role],
        now=auth.utcnow(),
        as_utc=auth.as_utc,
        min_password=deps.settings.staff.min_password_length,
    )


@admin_only
async def users_create(request: web.Request) -> web.StreamResponse:
    deps = deps_of(request)
    form = await _form(request)
    try:
        async with deps.sessionmaker() as session, session.begin():
            user = await auth.create_user(
                session,
                form.get("username", ""),
                form.get("password", "")[:MAX_PASSWORD_CHARS],
                form.get("role", ""),
                min_length=deps.settings.staff.min_password_length,
            )
            new_id = user.id
    except UserError as exc:
        return redirect(url(request, "users"), exc.code)
    log.info("staff %s created staff user %s", staff_of(request).user_id, new_id)
    return redirect(url(request, "users"), "user_created")


@admin_only
async def users_update(request: web.Request) -> web.StreamResponse:
    deps = deps_of(request)
    staff = staff_of(request)
    form = await _form(request)
    action = form.get("action", "")
    target_id = int(request.match_info["id"])
    if target_id == staff.user_id and action in ("disable", "role"):
        return redirect(url(request, "users"), "err_self")  # an admin cannot lock themselves out
    try:
        async with deps.sessionmaker() as session, session.begin():
            user = await session.get(StaffUser, target_id)
            if user is None:
                raise web.HTTPNotFound()
            if action == "disable":
                user.active = False
                await session.execute(delete(StaffSession).where(StaffSession.user_id == user.id))
            elif action == "enable":
                user.active = True
            elif action == "unlock":
                user.failed_attempts = 0
                user.locked_until = None
            elif action == "role" and form.get("role") in [r.value for r in Role]:
                user.role = form["role"]
            elif action == "password":
                await auth.set_password(
                    session,
                    user,
                    form.get("password", "")[:MAX_PASSWORD_CHARS],
                    min_length=deps.settings.staff.min_password_length,
                )
            else:
                return error_response(request, 400, "err_bad_action")
    except UserError as exc:
        return redirect(url(request, "users"), exc.code)
    log.info("staff %s changed staff user %s: %s", staff.user_id, target_id, action)
    return redirect(url(request, "users"), "user_updated")


__all__ = ["add_routes", "lang_of"]
