"""Structured logging with PII redaction on every line.

Redaction happens in the LogRecord itself (``getMessage``) and again on the formatted output (tracebacks),
so every handler — ours, pytest's, a library's — sees masked text.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from config.settings import LoggingSettings
from tawasul.privacy import redact

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class RedactingLogRecord(logging.LogRecord):
    def getMessage(self) -> str:
        return redact(super().getMessage())


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra fields passed with ``extra=`` are kept (and redacted)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value if isinstance(value, int | float | bool) or value is None else str(value)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(data, ensure_ascii=False))


def install_record_factory() -> None:
    logging.setLogRecordFactory(RedactingLogRecord)


def setup_logging(settings: LoggingSettings) -> None:
    install_record_factory()
    handler = logging.StreamHandler(sys.stderr)
    if settings.json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.set_name("tawasul")
    root = logging.getLogger()
    # Replace only our own handler, so repeated set-up (tests, reloads) keeps others' handlers.
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "tawasul"] + [handler]
    root.setLevel(settings.level)
    # Library chatter at INFO would log full request URLs (which carry the Telegram token).
    for noisy in ("httpx", "httpcore", "telegram.ext.Updater", "aiohttp.access", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# Importing the project turns on redaction for every record, also before setup_logging runs.
install_record_factory()
