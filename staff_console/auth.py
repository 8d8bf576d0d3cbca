"""Staff accounts, sign-in with lock-out, server-side sessions and CSRF tokens.

Passwords are hashed with argon2id (argon2-cffi, RFC 9106 low-memory profile). The session cookie holds a
random token; the database keeps only its SHA-256, so a leaked table does not let anyone sign in. Each
session has its own CSRF token, checked on every state-changing request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from config.settings import StaffSettings
from tawasul.db.models import StaffSession, StaffUser

log = logging.getLogger(__name__)

_hasher = PasswordHasher()
# Verified against when the user does not exist or is locked, so every failed sign-in costs the same time
# (no user enumeration by timing).
_dummy_hash = ""


def configure_hashing(settings: StaffSettings) -> None:
    """Use the configured argon2id cost for new hashes (the service and the CLI call this at start)."""
    global _hasher, _dummy_hash
    if (_hasher.time_cost, _hasher.memory_cost) != (
        settings.password_hash_time_cost,
        settings.password_hash_memory_kib,
    ):
        _hasher = PasswordHasher(
            time_cost=settings.password_hash_time_cost, memory_cost=settings.password_hash_memory_kib
        )
        _dummy_hash = ""


def _dummy() -> str:
    global _dummy_hash
    if not _dummy_hash:
        _dummy_hash = _hasher.hash(secrets.token_urlsafe(16))
    return _dummy_hash


USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.@-]{1,63}$")


class Role(StrEnum):
    REVIEWER = "reviewer"
    ADMIN = "admin"


ROLE_RANK = {Role.REVIEWER: 1, Role.ADMIN: 2}


class UserError(ValueError):
    """An invalid username, role or password; ``code`` is a key of the messages catalogue."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@dataclass(frozen=True, slots=True)
class Staff:
    """The signed-in staff member of one request."""

    user_id: int
    username: str
    role: Role
    csrf_token: str
    token_hash: str

    def has_role(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def normalize_username(username: str) -> str:
    return username.strip().lower()


def validate_new_user(username: str, password: str, role: str, min_length: int) -> tuple[str, Role]:
    name = normalize_username(username)
    if not USERNAME_RE.match(name):
        raise UserError("err_username", "username: 2-64 characters, letters, digits and _ . @ -")
    try:
        parsed_role = Role(role)
    except ValueError:
        raise UserError("err_role", f"role must be one of {', '.join(r.value for r in Role)}") from None
    if len(password) < min_length:
        raise UserError("err_password_short", f"password must have at least {min_length} characters")
    return name, parsed_role


async def create_user(
    session: AsyncSession, username: str, password: str, role: str, *, min_length: int = 10
) -> StaffUser:
    """Add a staff account in the caller's transaction; ``UserError`` for bad input or a taken name."""
    name, parsed_role = validate_new_user(username, password, role, min_length)
    taken = await session.scalar(select(StaffUser.id).where(StaffUser.username == name))
    if taken is not None:
        raise UserError("err_username_taken", f"user {name!r} already exists")
    password_hash = await asyncio.to_thread(hash_password, password)
    user = StaffUser(username=name, password_hash=password_hash, role=parsed_role.value, active=True)
    session.add(user)
    await session.flush()
    return user


async def set_password(session: AsyncSession, user: StaffUser, password: str, *, min_length: int) -> None:
    if len(password) < min_length:
        raise UserError("err_password_short", f"password must have at least {min_length} characters")
    user.password_hash = await asyncio.to_thread(hash_password, password)
    user.failed_attempts = 0
    user.locked_until = None
    # A new password ends every open session of that user.
    await session.execute(delete(StaffSession).where(StaffSession.user_id == user.id))


@dataclass(frozen=True, slots=True)
class SignIn:
    ok: bool
    user_id: int | None = None
    locked: bool = False


async def authenticate(
    sessionmaker: async_sessionmaker[Any], username: str, password: str, settings: StaffSettings
) -> SignIn:
    """Check a username and password, counting failures and locking the account after too many."""
    name = normalize_username(username)
    now = utcnow()
    async with sessionmaker() as session, session.begin():
        user = await session.scalar(select(StaffUser).where(StaffUser.username == name))
        snapshot = None if user is None else (user.id, user.password_hash, user.active, user.locked_until)
    # Hash outside the transaction: argon2 takes tens of milliseconds and SQLite holds a write lock.
    if snapshot is None or not snapshot[2]:
        await asyncio.to_thread(verify_password, _dummy(), password)
        return SignIn(ok=False)
    user_id, password_hash, _active, locked_until = snapshot
    if locked_until is not None and as_utc(locked_until) > now:
        await asyncio.to_thread(verify_password, _dummy(), password)
        return SignIn(ok=False, locked=True)
    good = await asyncio.to_thread(verify_password, password_hash, password)
    new_hash = None
    if good and _hasher.check_needs_rehash(password_hash):
        new_hash = await asyncio.to_thread(hash_password, password)
    async with sessionmaker() as session, session.begin():
        user = await session.get(StaffUser, user_id, with_for_update=True)
        if user is None:
            return SignIn(ok=False)
        if not good:
            user.failed_attempts += 1
            if user.failed_attempts >= settings.lockout_attempts:
                user.failed_attempts = 0
                user.locked_until = now + dt.timedelta(minutes=settings.lockout_minutes)
                log.warning("staff account %s locked after repeated failed sign-ins", user.id)
                return SignIn(ok=False, locked=True)
            return SignIn(ok=False)
        user.failed_attempts = 0
        user.locked_until = None
        if new_hash is not None:
            user.password_hash = new_hash
        return SignIn(ok=True, user_id=user.id)


async def open_session(
    sessionmaker: async_sessionmaker[Any], user_id: int, settings: StaffSettings
) -> tuple[str, str]:
    """Create a session; return (cookie token, CSRF token). Expired sessions are swept on the way."""
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    now = utcnow()
    async with sessionmaker() as session, session.begin():
        await session.execute(delete(StaffSession).where(StaffSession.expires_at < now))
        session.add(
            StaffSession(
                token_hash=token_hash(token),
                user_id=user_id,
                csrf_token=csrf,
                expires_at=now + dt.timedelta(hours=settings.session_hours),
            )
        )
    return token, csrf


async def load_session(sessionmaker: async_sessionmaker[Any], token: str) -> Staff | None:
    """The staff member of a session cookie, or None (unknown, expired, or the account was disabled)."""
    if not token or len(token) > 128:
        return None
    digest = token_hash(token)
    async with sessionmaker() as session:
        row = (
            await session.execute(
                select(StaffSession, StaffUser)
                .join(StaffUser, StaffUser.id == StaffSession.user_id)
                .where(StaffSession.token_hash == digest)
            )
        ).first()
    if row is None:
        return None
    staff_session, user = row
    if not user.active or as_utc(staff_session.expires_at) <= utcnow():
        return None
    try:
        role = Role(user.role)
    except ValueError:
        return None
    return Staff(user.id, user.username, role, staff_session.csrf_token, digest)


async def close_session(sessionmaker: async_sessionmaker[Any], digest: str) -> None:
    async with sessionmaker() as session, session.begin():
        await session.execute(delete(StaffSession).where(StaffSession.token_hash == digest))


def tokens_equal(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return secrets.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))
