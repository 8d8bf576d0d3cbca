"""User-facing wording, loaded from ``config/messages/<lang>.yml``. Nothing the citizen reads is hard-coded."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from string import Formatter
from typing import Any

import yaml

from config.settings import CONFIG_DIR

LANGUAGES = ("ar", "en")


class Catalog:
    def __init__(self, texts: Mapping[str, Mapping[str, str]]) -> None:
        self._texts = texts

    @classmethod
    def load(cls, directory: Path | None = None) -> Catalog:
        directory = directory or CONFIG_DIR / "messages"
        texts: dict[str, dict[str, str]] = {}
        for lang in LANGUAGES:
            data = yaml.safe_load((directory / f"{lang}.yml").read_text(encoding="utf-8"))
            texts[lang] = {str(k): str(v) for k, v in data.items()}
        keys = [set(t) for t in texts.values()]
        everywhere = set(keys[0]).intersection(*keys[1:])
        missing = set().union(*keys) - everywhere
        if missing:  # caught at start-up, not in front of a citizen
            raise ValueError(f"message keys missing in some language: {sorted(missing)}")
        return cls(texts)

    def __call__(self, lang: str, key: str, **params: Any) -> str:
        template = self._texts[lang if lang in self._texts else "ar"][key]
        return template.format(**params) if params else template

    def keys(self) -> set[str]:
        return set(self._texts["ar"])

    def placeholders(self, lang: str, key: str) -> set[str]:
        return {name for _, name, _, _ in Formatter().parse(self._texts[lang][key]) if name}


def reply_language(detected: str | None, current: str | None, default: str = "ar") -> str:
    """The language the bot answers in: English for English writers, Arabic for Arabic, Arabizi and mixed."""
    if detected == "en":
        return "en"
    if detected in ("ar", "arabizi", "mixed"):
        return "ar"
    return current or default
