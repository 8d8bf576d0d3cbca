"""The `tawasul` command."""

from __future__ import annotations

import argparse
import sys

from config import ConfigError, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tawasul", description="Tawasul Bot: chat intake for suggestions, complaints and inquiries")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the service")
    sub.add_parser("config", help="validate and print the effective configuration")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"tawasul: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(settings.model_dump_json(indent=2))
        return 0
    print(f"tawasul: would serve on http://{settings.server.host}:{settings.server.port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
