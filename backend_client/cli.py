"""``tawasul cases ...``: staff commands against the core backend at ``backend.url`` with the staff token.

Exit status: 0 done; 1 the backend refused (unknown case, illegal transition, bad token, ...); 2 usage or
configuration error; 3 the backend could not be reached or did not answer. Every failure is one line on
stderr. Free text (Arabic or English) is printed last on its line, so right-to-left text cannot scramble
the columns before it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from backend_client.client import BackendClient
from backend_client.errors import (
    BackendError,
    BackendProtocolError,
    BackendRejected,
    BackendUnavailable,
    Unauthorized,
)
from backend_client.models import Case, CaseStatus
from config import Settings

# Bahrain has no daylight saving time; staff read times in local time.
_BAHRAIN = dt.timezone(dt.timedelta(hours=3))
EXIT_REJECTED = 1
EXIT_UNAVAILABLE = 3

Action = Callable[[BackendClient, argparse.Namespace], Awaitable[str]]


# --- formatting -----------------------------------------------------------------------------------


# Control characters (terminal escape sequences) and bidi overrides in citizens' text must not reach the
# staff member's terminal as such; Arabic letters and the usual marks are untouched.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _safe(text: str) -> str:
    return _UNSAFE.sub("\ufffd", text)


def _one_line(text: str, width: int) -> str:
    flat = " ".join(_safe(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(_BAHRAIN).strftime("%Y-%m-%d %H:%M")


def _identity(case: Case) -> str:
    from tawasul.privacy import mask_id

    return f"{case.channel} {mask_id(case.channel_user_id)}"


def format_list(cases: list[Case]) -> str:
    if not cases:
        return "no cases"
    header = f"{'REFERENCE':<16}  {'STATUS':<19}  {'TYPE':<10}  {'AGENCY':<16}  {'DUE':<10}  DESCRIPTION"
    rows = [
        f"{c.reference:<16}  {c.status.value:<19}  {c.type.value:<10}  {_one_line(c.agency, 16):<16}  "
        f"{c.expected_response_by.isoformat():<10}  {_one_line(c.description, 60)}"
        for c in cases
    ]
    return "\n".join([header, *rows, f"({len(cases)} case{'s' if len(cases) != 1 else ''})"])


def format_case(case: Case) -> str:
    lines = [
        f"{case.reference}  {case.type.value} · {case.agency} · {case.status.value}",
        f"  filed:        {_when(case.created_at)} (Bahrain time) via {_identity(case)}",
        f"  respond by:   {case.expected_response_by.isoformat()}",
        f"  language:     {case.language.value}",
    ]
    if case.location is not None:
        loc = case.location
        parts = []
        if loc.latitude is not None and loc.longitude is not None:
            parts.append(f"{loc.latitude:.5f}, {loc.longitude:.5f}")
        if loc.text:
            parts.append(_one_line(loc.text, 80))
        lines.append(f"  location:     {' | '.join(parts)}")
    if case.nlu is not None:
        n = case.nlu
        lines.append(
            f"  nlu proposal: type {n.type or '?'} ({n.type_confidence:.2f}), agency {n.agency or '?'} "
            f"({n.agency_confidence:.2f}), model {n.model_version}"
        )
    lines.append("  description:")
    lines += [f"    {line}" for line in _safe(case.description).splitlines() or [""]]
    if case.attachments:
        lines.append("  attachments:")
        lines += [
            _safe(
                f"    {a.id}  {a.kind.value:<8}  {a.mime_type:<24}  {a.size} bytes  {a.filename or ''}"
            ).rstrip()
            for a in case.attachments
        ]
    lines.append("  history:")
    for h in case.history:
        agency = f" -> {h.agency}" if h.previous_agency else ""
        line = f"    {_when(h.occurred_at)}  {h.status.value:<19}  {h.actor.value:<7}{agency}"
        if h.question:
            line += f"  question: {_one_line(h.question, 200)}"
        if h.public_note:
            line += f"  note: {_one_line(h.public_note, 200)}"
        lines.append(line.rstrip())
    if case.replies:
        lines.append("  citizen replies:")
        for r in case.replies:
            files = f" [+{len(r.attachment_ids)} file(s)]" if r.attachment_ids else ""
            lines.append(f"    {_when(r.created_at)}{files}  {_one_line(r.text or '', 200)}".rstrip())
    if case.ratings:
        lines.append("  ratings:")
        for rating in case.ratings:
            comment = f"  {_one_line(rating.comment, 200)}" if rating.comment else ""
            lines.append(f"    {_when(rating.created_at)}  {rating.score}/5{comment}")
    return "\n".join(lines)


def _changed(case: Case) -> str:
    last = case.history[-1] if case.history else None
    extra = ""
    if last is not None and last.status is CaseStatus.TRANSFERRED:
        extra = f" (now with {case.agency})"
    return f"{case.reference} is now {case.status.value}{extra}"


# --- actions --------------------------------------------------------------------------------------


async def _list(client: BackendClient, args: argparse.Namespace) -> str:
    cases = await client.list_all_cases(status=args.status, agency=args.agency, limit=args.limit)
    return format_list(cases)


async def _show(client: BackendClient, args: argparse.Namespace) -> str:
    return format_case(await client.get_case(args.reference))


async def _set_status(client: BackendClient, args: argparse.Namespace) -> str:
    return _changed(await client.set_status(args.reference, args.status, args.note))


async def _transfer(client: BackendClient, args: argparse.Namespace) -> str:
    return _changed(await client.transfer(args.reference, args.agency, args.note))


async def _request_info(client: BackendClient, args: argparse.Namespace) -> str:
    case = await client.request_info(args.reference, args.question)
    return f"{_changed(case)}; the citizen will be asked"


def _utf8_safe(stream: TextIO) -> None:
    # A non-UTF-8 terminal must not crash on Arabic text: unencodable characters become "?".
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    reconfigure = getattr(stream, "reconfigure", None)
    if encoding != "utf8" and reconfigure is not None:
        reconfigure(errors="replace")


def _run(action: Action) -> Callable[[Settings, argparse.Namespace], int]:
    def run(settings: Settings, args: argparse.Namespace) -> int:
        _utf8_safe(sys.stdout)
        _utf8_safe(sys.stderr)
        cfg = settings.backend
        url = args.url or cfg.url

        async def go() -> str:
            async with BackendClient(
                url,
                "",  # staff commands use the staff token only
                staff_token=cfg.staff_token.get_secret_value(),
                timeout_s=cfg.timeout_s,
                retries=cfg.retries,
            ) as client:
                return await action(client, args)

        try:
            output = asyncio.run(go())
        except Unauthorized as exc:
            hint = " (check TAWASUL_BACKEND_STAFF_TOKEN)" if type(exc) is Unauthorized else ""
            return _fail(f"{exc.message}{hint}", EXIT_REJECTED)
        except BackendRejected as exc:
            return _fail(exc.message, EXIT_REJECTED)
        except BackendUnavailable as exc:
            return _fail(f"cannot reach the core backend at {url}: {exc}", EXIT_UNAVAILABLE)
        except BackendProtocolError as exc:
            return _fail(f"the core backend at {url} gave an unexpected answer: {exc}", EXIT_UNAVAILABLE)
        except BackendError as exc:
            return _fail(str(exc), EXIT_REJECTED)
        try:
            print(output, flush=True)
        except BrokenPipeError:  # `tawasul cases list | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

    return run


def _fail(message: str, code: int) -> int:
    print(f"tawasul: {' '.join(message.split())}", file=sys.stderr)
    return code


def register(sub: Any) -> None:
    statuses = [s.value for s in CaseStatus]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="core backend base URL (default: backend.url)")
    cases = sub.add_parser(
        "cases",
        help="staff actions on cases in the core backend",
        description="Staff actions on cases in the core backend (backend.url, with the staff token). "
        "Exit status: 0 done, 1 refused by the backend, 2 usage or configuration error, 3 backend unreachable.",
    )
    csub = cases.add_subparsers(dest="cases_command", required=True, metavar="ACTION")

    p = csub.add_parser("list", parents=[common], help="list cases, newest first")
    p.add_argument("--status", choices=statuses, help="only cases in this status")
    p.add_argument("--agency", help="only cases with this agency id")
    p.add_argument("--limit", type=int, default=20, help="at most this many (1-100, default 20)")
    p.set_defaults(func=_run(_list))

    p = csub.add_parser("show", parents=[common], help="one case in full")
    p.add_argument("reference", help="e.g. TWS-2026-000123")
    p.set_defaults(func=_run(_show))

    p = csub.add_parser("set-status", parents=[common], help="move a case to another status (public note)")
    p.add_argument("reference")
    p.add_argument("status", choices=statuses)
    p.add_argument("--note", help="public note the citizen reads (required for answered)")
    p.set_defaults(func=_run(_set_status))

    p = csub.add_parser("transfer", parents=[common], help="re-route a case to another agency")
    p.add_argument("reference")
    p.add_argument("agency", help="agency id, e.g. moh")
    p.add_argument("--note", help="public note the citizen reads")
    p.set_defaults(func=_run(_transfer))

    p = csub.add_parser(
        "request-info", parents=[common], help="ask the citizen a question (more_info_requested)"
    )
    p.add_argument("reference")
    p.add_argument("question")
    p.set_defaults(func=_run(_request_info))
