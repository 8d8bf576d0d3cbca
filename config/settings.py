"""Typed settings, validated once at start-up.

Defaults live in ``config/settings.yml``. Environment variables override them:

* ``TAWASUL_<SECTION>__<KEY>`` for any key, for example ``TAWASUL_SERVER__PORT=8081``;
* short names for the keys operators set most (``TAWASUL_DATABASE_URL``, ``TAWASUL_NLU_ENGINE``, ...);
* the platforms' usual names for their secrets (``TELEGRAM_BOT_TOKEN``, ``WHATSAPP_ACCESS_TOKEN``, ...).

``load_settings`` is the only entry point. Any invalid value raises ``ConfigError`` whose message is one
readable line naming the key; the CLI turns that into exit status 2.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

CONFIG_DIR = Path(__file__).resolve().parent
PROJECT_DIR = CONFIG_DIR.parent
ENV_PREFIX = "TAWASUL_"


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # Public https base URL of this service; webhooks are registered under it when set.
    public_url: str | None = None
    # Largest webhook body accepted; larger ones are answered 413.
    max_body_bytes: int = Field(1_048_576, ge=1024)
    # Bind with SO_REUSEPORT (Linux) so several worker processes share host:port; the kernel spreads
    # connections over them. `tawasul run --workers N` sets it for its children.
    reuse_port: bool = False
    # Worker processes `tawasul run` starts (1: this process serves; more: it supervises that many).
    workers: int = Field(1, ge=1, le=64)


class DatabaseSettings(_Section):
    url: str = "sqlite+aiosqlite:///var/tawasul.db"
    echo: bool = False
    pool_size: int = Field(10, ge=1)
    # PostgreSQL: the usual turn as two hand-written statements (dialogues/pg_turn.py) instead of the locked
    # ORM transaction; off runs every turn the locked way (tests compare the two).
    quick_turns: bool = True

    @field_validator("url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        if not (value.startswith("sqlite+aiosqlite://") or value.startswith("postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = False


class NLUSettings(_Section):
    engine: Literal["embedded", "rasa"] = "embedded"
    model_dir: Path = PROJECT_DIR / "var" / "models"
    # Below these the dialogue asks instead of assuming.
    type_threshold: float = Field(0.55, ge=0.0, le=1.0)
    agency_threshold: float = Field(0.45, ge=0.0, le=1.0)
    intent_threshold: float = Field(0.5, ge=0.0, le=1.0)
    review_threshold: float = Field(0.6, ge=0.0, le=1.0)
    review_sample_rate: float = Field(0.02, ge=0.0, le=1.0)
    rasa_url: str = "http://127.0.0.1:5005"
    rasa_port: int = Field(5005, ge=1, le=65535)
    rasa_timeout_s: float = Field(2.0, gt=0)
    # Embedded engine. Training data (Rasa 3 NLU YAML); reviewed/ under it is training-only.
    data_dir: Path = PROJECT_DIR / "nlu" / "data"
    # Staff-reviewed examples (the staff console writes *.yml here): always trained on, never held out.
    reviewed_data_dir: Path = PROJECT_DIR / "var" / "nlu" / "reviewed"
    # Share of hand-written examples held out for evaluation, chosen by hash (stable across runs).
    heldout_fraction: float = Field(0.2, gt=0.0, lt=0.5)
    split_salt: str = "tawasul-nlu-split-v1"
    # Examples whose normalised word sets overlap at least this much (Jaccard) stay on one side of the split.
    near_duplicate_jaccard: float = Field(0.6, gt=0.0, le=1.0)
    # Longer messages are cut to this many characters for the classifiers (entities look at the first 20,000).
    max_model_chars: int = Field(1000, ge=50)
    # Weight of an explicit agency mention against the topic model (0 = ignore mentions, 1 = mention only).
    explicit_agency_weight: float = Field(0.7, ge=0.0, le=1.0)
    # Train and promote a model at start-up when the registry has none (`make run` on a fresh checkout).
    train_if_missing: bool = True


class BackendSettings(_Section):
    # "embedded" runs the reference core backend inside this process; "remote" talks to `url`.
    mode: Literal["embedded", "remote"] = "embedded"
    url: str = "http://127.0.0.1:8090"
    # Address the reference backend binds (standalone `tawasul backend serve`, and embedded under `make run`).
    host: str = "127.0.0.1"
    port: int = Field(8090, ge=0, le=65535)
    timeout_s: float = Field(10.0, gt=0)
    retries: int = Field(3, ge=0, le=10)
    staff_token: SecretStr = SecretStr("dev-staff-token")
    # Shared secret of the status-change webhooks (HMAC-SHA256).
    webhook_secret: SecretStr = SecretStr("dev-webhook-secret")
    webhook_max_age_s: int = Field(300, ge=1)
    poll_interval_s: float = Field(60.0, gt=0)
    # Bearer token the bot presents to the core backend (citizen actions, reads, event polling).
    service_token: SecretStr = SecretStr("dev-service-token")
    # Reference backend only: where it keeps its cases.
    database_url: str = "sqlite+aiosqlite:///var/core_backend.db"
    response_working_days: dict[str, int] = {"complaint": 14, "suggestion": 14, "inquiry": 14}
    public_holidays: list[dt.date] = []
    # Reference backend only: where status-change webhooks go (the bot's server); None disables pushing
    # (the bot then learns of changes by polling GET /events).
    events_webhook_url: str | None = "http://127.0.0.1:8080/backend/events"
    webhook_retry_base_s: float = Field(1.0, gt=0)
    webhook_retry_max_s: float = Field(300.0, gt=0)
    webhook_timeout_s: float = Field(10.0, gt=0)
    # Reference backend only: largest attachment accepted (413 beyond).
    max_attachment_bytes: int = Field(10 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024)

    @field_validator("database_url")
    @classmethod
    def _backend_async_driver(cls, value: str) -> str:
        if not (value.startswith("sqlite+aiosqlite://") or value.startswith("postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @field_validator("response_working_days")
    @classmethod
    def _known_case_types(cls, value: dict[str, int]) -> dict[str, int]:
        known = {"complaint", "suggestion", "inquiry"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown case type(s) {unknown}; expected {sorted(known)}")
        bad = sorted(k for k, days in value.items() if not 1 <= days <= 365)
        if bad:
            raise ValueError(f"working days must be between 1 and 365 (bad: {bad})")
        return value


class DialogueSettings(_Section):
    idle_timeout_minutes: int = Field(30, ge=1)
    default_language: Literal["ar", "en"] = "ar"
    call_centre: str = "80008001"
    flood_limit_per_minute: int = Field(20, ge=1)
    max_text_chars: int = Field(4000, ge=100)
    max_attachments: int = Field(5, ge=0)
    max_attachment_bytes: int = Field(10 * 1024 * 1024, ge=1024)


class OutboxSettings(_Section):
    poll_interval_s: float = Field(1.0, gt=0)
    max_attempts: int = Field(12, ge=1)
    backoff_base_s: float = Field(2.0, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)
    # How long a claimed item belongs to its worker. A worker that dies holding items (and the later
    # items of those citizens, which wait in order) delays them this long; it must exceed the longest send
    # (platform rate-limit waits in place), or a slow send is made twice.
    lease_s: float = Field(60.0, ge=1)


class TelegramSettings(_Section):
    bot_token: SecretStr | None = None
    # Same meaning as python-telegram-bot's base_url / base_file_url (a local Bot API server may be used).
    api_base_url: str = "https://api.telegram.org/bot"
    api_file_base_url: str = "https://api.telegram.org/file/bot"
    # Checked against X-Telegram-Bot-Api-Secret-Token on webhook calls. When unset, a secret is derived
    # from the bot token, so every worker registers and checks the same value.
    webhook_secret: SecretStr | None = None
    webhook_path: str = "/webhooks/telegram"
    # "auto": a webhook under server.public_url when that is set, else getUpdates polling.
    mode: Literal["auto", "polling", "webhook"] = "auto"
    global_rate_per_s: float = Field(28.0, gt=0)
    per_chat_rate_per_s: float = Field(1.0, gt=0)
    # Messages one chat may receive back to back before the per-chat spacing applies (a split reply).
    per_chat_burst: int = Field(3, ge=1, le=20)
    # A 429 is retried in place up to this many times while its retry_after is at most max_retry_after_s;
    # beyond that the send fails as retryable (DeliveryFailed.retry_after) and the outbox tries again later.
    max_retries: int = Field(5, ge=0, le=20)
    max_retry_after_s: float = Field(10.0, gt=0)
    # On shutdown, updates already taken are finished; work still running after this is cancelled.
    drain_timeout_s: float = Field(30.0, gt=0)
    # "typing…" is shown only when the answer takes longer than this (most answers are out sooner, and a
    # chat action per message would cost a Bot API call each).
    typing_after_s: float = Field(1.0, ge=0)
    # Long-polling timeout of getUpdates (polling mode only).
    poll_timeout_s: int = Field(25, ge=0, le=50)
    # The cloud Bot API serves files up to 20 MB through getFile; a local Bot API server allows more.
    max_file_bytes: int = Field(20 * 1024 * 1024, ge=1024)

    @field_validator("webhook_path")
    @classmethod
    def _telegram_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value

    @property
    def enabled(self) -> bool:
        return self.bot_token is not None and bool(self.bot_token.get_secret_value())


class WhatsAppTemplate(_Section):
    name: str
    # Template language code used when the message's language has no entry in ``languages``.
    language: str = "ar"
    # Our language ("ar", "en") -> the approved template's language code ("ar", "en_US", ...).
    languages: dict[str, str] = {"ar": "ar", "en": "en"}
    # Names of the body parameters of a named-parameter template, in the order of
    # OutgoingMessage.template_params; empty for a positional ({{1}}, {{2}}) template.
    params: tuple[str, ...] = ()


class WhatsAppSettings(_Section):
    access_token: SecretStr | None = None
    app_secret: SecretStr | None = None
    verify_token: SecretStr | None = None
    phone_number_id: str | None = None
    api_base_url: str = "https://graph.facebook.com"
    api_version: str = "v21.0"
    webhook_path: str = "/webhooks/whatsapp"
    rate_per_s: float = Field(76.0, gt=0)
    # Back-off on throughput errors (130429, 131056), 5xx and network errors: base * 2**attempt, capped.
    max_retries: int = Field(5, ge=0, le=20)
    retry_base_s: float = Field(1.0, gt=0)
    retry_max_s: float = Field(60.0, gt=0)
    # Back-off waits up to this long happen inside the send; a longer one fails the send as retryable
    # (DeliveryFailed.retry_after) so the outbox reschedules it instead of holding a worker.
    max_inline_wait_s: float = Field(10.0, ge=0)
    request_timeout_s: float = Field(30.0, gt=0)
    # Cloud API media limit (documents: 100 MB); larger media are refused before download.
    max_media_bytes: int = Field(100 * 1024 * 1024, ge=1024)
    # Approved templates for notices outside the 24-hour customer-service window.
    status_template: WhatsAppTemplate = WhatsAppTemplate(name="case_status_update")
    # The customer-service window, and how close to its end a notice already goes as a template.
    window_hours: float = Field(24.0, gt=0)
    window_margin_s: float = Field(300.0, ge=0)
    # Send read receipts (blue ticks) for inbound messages.
    mark_read: bool = True
    drain_timeout_s: float = Field(30.0, gt=0)

    @field_validator("webhook_path")
    @classmethod
    def _whatsapp_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value

    @property
    def enabled(self) -> bool:
        """Sending works: an access token and a phone number id."""
        return bool(self.access_token and self.access_token.get_secret_value() and self.phone_number_id)

    @property
    def webhook_enabled(self) -> bool:
        """Receiving works: the app secret (signatures) and the verify token (subscription handshake)."""
        return bool(
            self.app_secret and self.app_secret.get_secret_value()
            and self.verify_token and self.verify_token.get_secret_value()
        )


class StaffSettings(_Section):
    session_hours: int = Field(8, ge=1)
    # After this many failed sign-ins in a row the account is locked for lockout_minutes.
    lockout_attempts: int = Field(5, ge=1)
    lockout_minutes: int = Field(15, ge=1)
    # Mark session cookies Secure. They are also Secure whenever a request arrives over https (directly or
    # with X-Forwarded-Proto: https from the reverse proxy).
    secure_cookies: bool = False
    min_password_length: int = Field(10, ge=8, le=128)
    # argon2id cost (RFC 9106 "low memory" profile by default). Existing hashes are upgraded at sign-in
    # when these change.
    password_hash_time_cost: int = Field(3, ge=1, le=20)
    password_hash_memory_kib: int = Field(65536, ge=8192, le=4 * 1024 * 1024)
    page_size: int = Field(25, ge=5, le=500)
    # Interface language when the staff member has not chosen one.
    default_language: Literal["ar", "en"] = "ar"
    # Dates in the console are shown and filtered in this time zone (IANA name).
    timezone: str = "Asia/Bahrain"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    logging: LoggingSettings = LoggingSettings()
    nlu: NLUSettings = NLUSettings()
    backend: BackendSettings = BackendSettings()
    dialogue: DialogueSettings = DialogueSettings()
    outbox: OutboxSettings = OutboxSettings()
    telegram: TelegramSettings = TelegramSettings()
    whatsapp: WhatsAppSettings = WhatsAppSettings()
    staff: StaffSettings = StaffSettings()


# Well-known variable names mapped to settings keys.
ALIASES: dict[str, tuple[str, str]] = {
    "TAWASUL_DATABASE_URL": ("database", "url"),
    "TAWASUL_HOST": ("server", "host"),
    "TAWASUL_PORT": ("server", "port"),
    "TAWASUL_PUBLIC_URL": ("server", "public_url"),
    "TAWASUL_LOG_LEVEL": ("logging", "level"),
    "TAWASUL_NLU_ENGINE": ("nlu", "engine"),
    "TAWASUL_RASA_URL": ("nlu", "rasa_url"),
    "TAWASUL_MODEL_DIR": ("nlu", "model_dir"),
    "TAWASUL_BACKEND_MODE": ("backend", "mode"),
    "TAWASUL_BACKEND_URL": ("backend", "url"),
    "TAWASUL_BACKEND_STAFF_TOKEN": ("backend", "staff_token"),
    "TAWASUL_BACKEND_WEBHOOK_SECRET": ("backend", "webhook_secret"),
    "TELEGRAM_BOT_TOKEN": ("telegram", "bot_token"),
    "TELEGRAM_API_BASE_URL": ("telegram", "api_base_url"),
    "TELEGRAM_API_FILE_BASE_URL": ("telegram", "api_file_base_url"),
    "TELEGRAM_WEBHOOK_SECRET": ("telegram", "webhook_secret"),
    "TELEGRAM_MODE": ("telegram", "mode"),
    "WHATSAPP_ACCESS_TOKEN": ("whatsapp", "access_token"),
    "WHATSAPP_APP_SECRET": ("whatsapp", "app_secret"),
    "WHATSAPP_VERIFY_TOKEN": ("whatsapp", "verify_token"),
    "WHATSAPP_PHONE_NUMBER_ID": ("whatsapp", "phone_number_id"),
    "WHATSAPP_API_BASE_URL": ("whatsapp", "api_base_url"),
    "WHATSAPP_API_VERSION": ("whatsapp", "api_version"),
}


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _env_value(raw: str) -> Any:
    # Lists and mappings may be given as YAML/JSON ("[2026-12-16, 2026-12-17]"); scalars stay strings so
    # pydantic reports a bad number against the right key.
    text = raw.strip()
    if text[:1] in "[{":
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return raw
    return raw


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, raw in env.items():
        if name in ALIASES:
            _set_path(data, ALIASES[name], _env_value(raw))
        elif name.startswith(ENV_PREFIX) and "__" in name:
            path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
            _set_path(data, path, _env_value(raw))


def _describe(err: Mapping[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"])
    value = err.get("input")
    shown = "" if isinstance(value, dict) or value is None else f" (got {str(value)[:60]!r})"
    return f"invalid configuration: {key}: {err['msg']}{shown}"


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read settings.yml, apply environment overrides and validate; raise ConfigError on any problem."""
    path = path or Path(os.environ.get("TAWASUL_CONFIG", CONFIG_DIR / "settings.yml"))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} must hold a mapping of sections")
    _apply_env(data, os.environ if env is None else env)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0])) from None
