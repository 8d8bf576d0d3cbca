"""`tawasul staff ...`: manage staff console accounts from the command line.

Passwords are read from standard input (``--password-stdin``, one line) or typed at a prompt, never
taken from the command line, where other users could read them in the process list.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from typing import Any

from config import Settings


def _read_password(args: argparse.Namespace, min_length: int) -> str | None:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            print("tawasul staff: no terminal; pass the password with --password-stdin", file=sys.stderr)
            return None
        password = getpass.getpass(f"Password for {args.username} (at least {min_length} characters): ")
        if getpass.getpass("Repeat the password: ") != password:
            print("tawasul staff: the passwords differ", file=sys.stderr)
            return None
    return password


async def _add(settings: Settings, username: str, password: str, role: str) -> int:
    from staff_console.auth import UserError, configure_hashing, create_user
    from tawasul.db import Database

    configure_hashing(settings.staff)
    db = Database(settings.database.url)
    try:
        async with db.session() as session:
            user = await create_user(
                session, username, password, role, min_length=settings.staff.min_password_length
            )
            print(f"added {user.username} ({user.role})")
        return 0
    except UserError as exc:
        print(f"tawasul staff: {exc}", file=sys.stderr)
        return 1
    finally:
        await db.close()


def _cmd_add(settings: Settings, args: argparse.Namespace) -> int:
    password = _read_password(args, settings.staff.min_password_length)
    if password is None:
        return 1
    return asyncio.run(_add(settings, args.username, password, args.role))


async def _list(settings: Settings) -> int:
    from sqlalchemy import select

    from staff_console.auth import as_utc, utcnow
    from tawasul.db import Database
    from tawasul.db.models import StaffUser

    db = Database(settings.database.url)
    try:
        async with db.session() as session:
            users = (await session.scalars(select(StaffUser).order_by(StaffUser.username))).all()
        now = utcnow()
        print(f"{'USERNAME':<24} {'ROLE':<9} STATE")
        for u in users:
            if not u.active:
                state = "disabled"
            elif u.locked_until is not None and as_utc(u.locked_until) > now:
                state = f"locked until {as_utc(u.locked_until):%Y-%m-%d %H:%M} UTC"
            else:
                state = "active"
            print(f"{u.username:<24} {u.role:<9} {state}")
        return 0
    finally:
        await db.close()


async def _set_active(settings: Settings, username: str, active: bool) -> int:
    from sqlalchemy import delete, select

    from staff_console.auth import normalize_username
    from tawasul.db import Database
    from tawasul.db.models import StaffSession, StaffUser

    db = Database(settings.database.url)
    try:
        async with db.session() as session:
            user = await session.scalar(
                select(StaffUser).where(StaffUser.username == normalize_username(username))
            )
            if user is None:
                print(f"tawasul staff: no user {username!r}", file=sys.stderr)
                return 1
            user.active = active
            if not active:  # signed-in sessions end now, not when they expire
                await session.execute(delete(StaffSession).where(StaffSession.user_id == user.id))
            else:
                user.failed_attempts = 0
                user.locked_until = None
        print(f"{'enabled' if active else 'disabled'} {normalize_username(username)}")
        return 0
    finally:
        await db.close()


def register(sub: Any) -> None:
    staff = sub.add_parser("staff", help="staff console accounts").add_subparsers(
        dest="staff_command", required=True, metavar="ACTION"
    )
    p = staff.add_parser("add", help="add a staff account (password from stdin or a prompt)")
    p.add_argument("username")
    p.add_argument("--role", choices=("reviewer", "admin"), required=True)
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.set_defaults(func=_cmd_add)
    p = staff.add_parser("list", help="list staff accounts")
    p.set_defaults(func=lambda settings, args: asyncio.run(_list(settings)))
    p = staff.add_parser("disable", help="disable an account and end its sessions")
    p.add_argument("username")
    p.set_defaults(func=lambda settings, args: asyncio.run(_set_active(settings, args.username, False)))
    p = staff.add_parser("enable", help="enable an account again (and clear a lock-out)")
    p.add_argument("username")
    p.set_defaults(func=lambda settings, args: asyncio.run(_set_active(settings, args.username, True)))
