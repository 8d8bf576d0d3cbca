"""The `tawasul` command line.

Each area owns its subcommands in its own module (``register(subparsers)`` adds them and sets
``func``), so this file only assembles them. Configuration is loaded and validated once, before any
command runs; a bad value exits with status 2 and one line naming the key.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from config import ConfigError, Settings, load_settings

# Modules that contribute subcommands. Each exposes ``register(sub: argparse._SubParsersAction) -> None``
# and sets ``func(settings, args) -> int`` on its parsers. Imported lazily so `--help` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "tawasul.commands",
    "nlu.cli",
    "nlu.rasa_cli",
    "core_backend.cli",
    "backend_client.cli",
    "tawasul.staff_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tawasul",
        description="Tawasul Bot: chat intake for suggestions, complaints and inquiries.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):  # an area not built yet contributes nothing
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings: Settings = load_settings()
    except ConfigError as exc:
        print(f"tawasul: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(settings, args) or 0)
    except ConfigError as exc:
        print(f"tawasul: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
