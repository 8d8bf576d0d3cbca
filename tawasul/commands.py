"""Core subcommands: run, config, db."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from config import Settings


def _config(settings: Settings, args: argparse.Namespace) -> int:
    # Secrets print masked (pydantic SecretStr).
    print(settings.model_dump_json(indent=2))
    return 0


def _db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from tawasul.db.migrate import upgrade

    upgrade(settings.database.url, args.revision)
    print(f"database at {_safe_url(settings.database.url)} is at revision {args.revision}")
    return 0


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from tawasul.app import run_service

    workers = args.workers if args.workers is not None else settings.server.workers
    if workers > 1:
        from tawasul.workers import check_workers, supervise

        check_workers(settings, workers)  # ConfigError: one line, exit 2
        return supervise(settings, workers)
    return asyncio.run(run_service(settings, shell=not args.no_shell))


def _shell(settings: Settings, args: argparse.Namespace) -> int:
    """Attach to the running service when one answers; otherwise start one on embedded defaults."""
    from bot.terminal import remote_shell
    from tawasul.app import run_service

    url = args.url or f"http://{settings.server.host}:{settings.server.port}"
    if _alive(url):
        print(f"attached to the service at {url}", file=sys.stderr)
        return asyncio.run(remote_shell(url))
    return asyncio.run(run_service(settings, shell=True, force_terminal=True))


def _alive(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _worker_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 64 (got {text!r})")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser("shell", help="chat with the bot in this terminal, as a citizen")
    p.add_argument("--url", help="a running service to attach to (default: this configuration's server)")
    p.set_defaults(func=_shell)
    p = sub.add_parser("run", help="run the service (webhooks, web, staff console, outbox)")
    p.add_argument("--no-shell", action="store_true", help="do not attach the terminal chat")
    p.add_argument("--workers", type=_worker_count, metavar="N",
                   help="worker processes on one port (default: server.workers); N > 1 needs PostgreSQL, "
                        "backend.mode remote and Telegram in webhook mode")
    p.set_defaults(func=_run)
    p = sub.add_parser("config", help="validate and print the effective configuration (secrets masked)")
    p.set_defaults(func=_config)
    db = sub.add_parser("db", help="database maintenance").add_subparsers(dest="db_command", required=True)
    p = db.add_parser("upgrade", help="apply migrations")
    p.add_argument("revision", nargs="?", default="head")
    p.set_defaults(func=_db_upgrade)
