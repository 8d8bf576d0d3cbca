"""The agency catalog (``config/agencies.yml``): the 22 entities a case can be routed to.

``load_agencies()`` reads and validates it once (cached); any problem raises ``ConfigError`` naming the
agency and field, like the settings loader does.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from config.settings import CONFIG_DIR, ConfigError

AGENCIES_FILE = CONFIG_DIR / "agencies.yml"

# The routing contract with the core backend: exactly these ids, no more, no fewer.
AGENCY_IDS: tuple[str, ...] = (
    "housing",
    "health",
    "nhra",
    "education",
    "ewa",
    "works",
    "municipalities",
    "interior",
    "traffic",
    "npra",
    "lmra",
    "labour",
    "sio",
    "social_development",
    "iga",
    "commerce",
    "transportation",
    "tra",
    "justice",
    "environment",
    "customs",
    "slrb",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalizedText(_Model):
    ar: str = Field(min_length=1)
    en: str = Field(min_length=1)

    def get(self, language: str) -> str:
        """Arabic for ar/arabizi/mixed readers, English for en."""
        return self.en if language == "en" else self.ar


class ShortName(LocalizedText):
    ar: str = Field(min_length=1, max_length=20)
    en: str = Field(min_length=1, max_length=20)


class Agency(_Model):
    id: str
    name: LocalizedText
    short: ShortName
    scope: LocalizedText
    aliases: tuple[str, ...] = ()
    location_relevant: bool = False
    photo_relevant: bool = False

    @field_validator("aliases")
    @classmethod
    def _clean_aliases(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(a.strip() for a in value)
        if any(not a for a in cleaned):
            raise ValueError("empty alias")
        return cleaned

    def names(self) -> tuple[str, ...]:
        """Every surface form that names this agency (for the gazetteer)."""
        return (self.name.ar, self.name.en, self.short.ar, self.short.en, *self.aliases)


class _Catalog(_Model):
    agencies: tuple[Agency, ...]


def _parse(path: Path) -> tuple[Agency, ...]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read agency catalog {path}: {exc}".splitlines()[0]) from None
    try:
        catalog = _Catalog.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        # Name the agency by id rather than by list index.
        if len(loc) >= 2 and loc[0] == "agencies" and isinstance(loc[1], int) and isinstance(data, dict):
            try:
                loc[1] = data["agencies"][loc[1]].get("id", loc[1])
            except (KeyError, IndexError, TypeError, AttributeError):
                pass  # no id to show: the error names the list position instead
        key = ".".join(str(p) for p in loc)
        raise ConfigError(f"invalid agency catalog {path.name}: {key}: {err['msg']}") from None
    ids = [a.id for a in catalog.agencies]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"invalid agency catalog {path.name}: duplicate ids {', '.join(duplicates)}")
    missing = sorted(set(AGENCY_IDS) - set(ids))
    unknown = sorted(set(ids) - set(AGENCY_IDS))
    if missing or unknown:
        raise ConfigError(
            f"invalid agency catalog {path.name}: missing ids [{', '.join(missing)}], "
            f"unknown ids [{', '.join(unknown)}]"
        )
    return catalog.agencies


@lru_cache(maxsize=8)
def _load_cached(path: Path, mtime_ns: int) -> tuple[Agency, ...]:
    return _parse(path)


def load_agencies(path: Path | None = None) -> tuple[Agency, ...]:
    """The validated catalog, in file order. Re-read when the file changes."""
    path = (path or AGENCIES_FILE).resolve()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise ConfigError(f"cannot read agency catalog {path}: {exc}") from None
    return _load_cached(path, mtime)


def agencies_by_id(path: Path | None = None) -> dict[str, Agency]:
    return {a.id: a for a in load_agencies(path)}
