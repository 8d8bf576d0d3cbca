"""Typed settings. `load_settings` is the only entry point; it raises ConfigError with one readable line."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONFIG_DIR = Path(__file__).resolve().parent
ENV_PREFIX = "TAWASUL_"


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)


class DatabaseSettings(_Section):
    url: str = "sqlite+aiosqlite:///var/tawasul.db"


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()


# Platform variables keep their usual names; map them to our keys.
ALIASES: dict[str, tuple[str, ...]] = {
    "TAWASUL_DATABASE_URL": ("database", "url"),
    "TAWASUL_PORT": ("server", "port"),
}


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if name in ALIASES:
            path: tuple[str, ...] = ALIASES[name]
        elif name.startswith(ENV_PREFIX) and "__" in name:
            path = tuple(part.lower() for part in name[len(ENV_PREFIX):].split("__"))
        else:
            continue
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    path = path or CONFIG_DIR / "settings.yml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    _apply_env(data, os.environ if env is None else env)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"invalid configuration: {key}: {err['msg']} (got {err.get('input')!r})") from None
