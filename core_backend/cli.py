"""``tawasul backend serve``: run the reference core backend standalone."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from config import Settings


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from tawasul.logging import setup_logging

    setup_logging(settings.logging)
    return asyncio.run(_serve_async(settings, args))


async def _serve_async(settings: Settings, args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from core_backend.embedded import EmbeddedBackend

    cfg = settings.backend
    if args.no_webhooks:
        cfg = cfg.model_copy(update={"events_webhook_url": None})
    backend = EmbeddedBackend(
        cfg, args.port, host=args.host or cfg.host, webhook_url=None if args.no_webhooks else args.webhook_url
    )
    try:
        await backend.start()
    except OSError as exc:
        print(
            f"tawasul: cannot listen on {backend.host}:{backend.port}: {exc.strerror or exc}", file=sys.stderr
        )
        return 1
    except Exception as exc:
        db = make_url(cfg.database_url).render_as_string(hide_password=True)
        reason = " ".join(str(exc).split())[:200]
        print(
            f"tawasul: cannot start the core backend on {db}: {type(exc).__name__}: {reason}", file=sys.stderr
        )
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    db = make_url(cfg.database_url).render_as_string(hide_password=True)
    push = (
        "off (poll GET /events)"
        if args.no_webhooks
        else (args.webhook_url or cfg.events_webhook_url or "off")
    )
    # The first line is machine-readable on purpose: scripts and tests wait for it.
    print(f"core backend listening on {backend.url}", flush=True)
    print(f"  database: {db}\n  webhooks: {push}\n  contract: {backend.url}/openapi.yaml", flush=True)
    try:
        await stop.wait()
    finally:
        await backend.stop()
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("backend", help="the reference core case-management backend")
    backend_sub = p.add_subparsers(dest="backend_command", required=True, metavar="ACTION")
    serve = backend_sub.add_parser("serve", help="run it standalone (settings: backend.*)")
    serve.add_argument("--host", help="address to bind (default: backend.host)")
    serve.add_argument("--port", type=int, help="port to bind (default: backend.port; 0 picks a free one)")
    serve.add_argument("--webhook-url", help="push status events here (default: backend.events_webhook_url)")
    serve.add_argument("--no-webhooks", action="store_true", help="do not push events; the bot polls instead")
    serve.set_defaults(func=_serve)
