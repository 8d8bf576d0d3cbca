"""Helpers of the fault tests: the service and the reference core backend as real subprocesses, a stand-in
for the Telegram platform that delivers webhook updates the way Telegram does (POST with the secret token,
again and again until a 2xx), citizens going through a whole filing, and reads of the core backend."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp
from pydantic import SecretStr

from backend_client.client import BackendClient
from backend_client.models import Case
from config.settings import PROJECT_DIR, ServerSettings, Settings
from tests.fakes import FakeGraph, FakeTelegram, wait_until
from tests.fakes.tg_citizen import TgChat
from tests.fakes.wa_citizen import WaCitizen as SharedWaCitizen
from tests.support import free_port, settings_for

SERVICE_TOKEN = "fault-service-token-0123456789"
STAFF_TOKEN = "fault-staff-token-0123456789"
BACKEND_WEBHOOK_SECRET = "fault-backend-webhook-secret"
TELEGRAM_SECRET = "fault-telegram-secret-0123456789"
COMPLAINT = "السلام عليكم، الشارع اللي جدام بيتنا في سترة مليان حفر وخربت تاير سيارتي، ليش محد يصلحه؟"
REF_RE = re.compile(r"TWS-\d{4}-\d{6}")
# Bounds on a hung test only (start-up imports torch and loads the model; two loaded cores).
START_S = 120.0
WAIT_S = 120.0
# Several workers on one port (SO_REUSEPORT) once the setting exists; separate ports until then.
SHARED_PORT = "reuse_port" in ServerSettings.model_fields


def tawasul_command() -> list[str]:
    """The installed console script next to this interpreter (what `make run` calls)."""
    script = Path(sys.executable).with_name("tawasul")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tawasul.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """No platform or TAWASUL_* variables from the caller; the test's tokens and secrets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAWASUL_", "TELEGRAM_", "WHATSAPP_"))}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_DIR), env.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8",
            "TAWASUL_BACKEND__SERVICE_TOKEN": SERVICE_TOKEN,
            "TAWASUL_BACKEND_STAFF_TOKEN": STAFF_TOKEN,
            "TAWASUL_BACKEND_WEBHOOK_SECRET": BACKEND_WEBHOOK_SECRET,
        }
    )
    env.update(extra)
    return env


class Proc:
    """A `tawasul ...` subprocess whose output goes to a file (a pipe nobody reads could stall it)."""

    ready_line = ""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = list(args)
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None
        self._offset = 0
        self.starts = 0

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def this_run(self) -> str:
        """Output of the current run only (the log file is appended to across restarts)."""
        return self.log()[self._offset :]

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        self._offset = len(self.log())
        self._log_file = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *tawasul_command(),
            *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            env=self.env,
            cwd=PROJECT_DIR,
            start_new_session=True,  # a signal to the test's process group does not reach it
        )
        self.starts += 1

    async def ready(self) -> None:
        def up() -> bool:
            if not self.alive:
                raise AssertionError(f"{self.name} exited with {self.returncode}:\n{self.this_run()[-4000:]}")
            return self.ready_line in self.this_run()

        await wait_until(up, timeout=START_S, what=f"{self.name} to start")

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when the machine or the OOM killer takes the process."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        self._close_log()

    async def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; the exit status."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._close_log()
        return self.returncode

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class BackendProc(Proc):
    """``tawasul backend serve`` on a fixed port, so a restart is found at the same address."""

    ready_line = "core backend listening on "

    def __init__(self, log_dir: Path, database_url: str, *, webhook_url: str | None = None) -> None:
        self.port = free_port()
        args = ["backend", "serve", "--port", str(self.port)]
        args += ["--webhook-url", webhook_url] if webhook_url else ["--no-webhooks"]
        env = clean_env(
            TAWASUL_BACKEND__DATABASE_URL=database_url,
            TAWASUL_BACKEND__WEBHOOK_RETRY_BASE_S="0.2",
            TAWASUL_BACKEND__WEBHOOK_RETRY_MAX_S="1.0",
            TAWASUL_LOG_LEVEL="WARNING",
        )
        super().__init__("backend", args, env, log_dir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def staff(self, session: aiohttp.ClientSession) -> BackendClient:
        return staff_client(self.url, session)


def staff_client(url: str, session: aiohttp.ClientSession) -> BackendClient:
    """The core backend at ``url`` with the staff token (reads every case)."""
    return BackendClient(url, SERVICE_TOKEN, session=session, staff_token=STAFF_TOKEN)


class WorkerProc(Proc):
    """``tawasul run --no-shell``: Telegram in webhook mode against the fake Bot API, the core backend
    remote, the bot's database shared with the other workers."""

    ready_line = "Tawasul Bot is running on "

    def __init__(
        self, name: str, log_dir: Path, *, port: int, db_url: str, backend: BackendProc, tg: FakeTelegram,
        model_dir: Path, **extra: str,
    ) -> None:
        self.port = port
        env = clean_env(
            TAWASUL_DATABASE_URL=db_url,
            TAWASUL_DATABASE__POOL_SIZE="5",  # PostgreSQL's 100 connections are shared with other test runs
            TAWASUL_SERVER__PORT=str(port),
            TAWASUL_PUBLIC_URL=f"http://127.0.0.1:{port}",
            TAWASUL_BACKEND_MODE="remote",
            TAWASUL_BACKEND_URL=backend.url,
            TAWASUL_BACKEND__POLL_INTERVAL_S="3600",
            TAWASUL_BACKEND__RETRIES="1",
            TAWASUL_BACKEND__TIMEOUT_S="5",
            TAWASUL_NLU__MODEL_DIR=str(model_dir),
            TAWASUL_NLU__TRAIN_IF_MISSING="false",
            TAWASUL_NLU__REVIEWED_DATA_DIR=str(log_dir / "reviewed"),
            TAWASUL_OUTBOX__POLL_INTERVAL_S="0.2",
            TAWASUL_OUTBOX__BACKOFF_BASE_S="0.2",
            TAWASUL_OUTBOX__BACKOFF_MAX_S="1.0",
            # A killed worker's claimed items wait out their lease; shorter than the default keeps the test
            # short, and still far above any send here (no rate-limit waits longer than a second or two).
            TAWASUL_OUTBOX__LEASE_S="15",
            TELEGRAM_BOT_TOKEN=tg.token,
            TELEGRAM_API_BASE_URL=tg.base_url,
            TELEGRAM_API_FILE_BASE_URL=tg.file_base_url,
            TELEGRAM_WEBHOOK_SECRET=TELEGRAM_SECRET,
            TELEGRAM_MODE="webhook",
        )
        if SHARED_PORT:
            env["TAWASUL_SERVER__REUSE_PORT"] = "true"
        env.update(extra)
        super().__init__(name, ["run", "--no-shell"], env, log_dir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def worker_cluster(tmp: Path, db_url: str, tg: FakeTelegram, model_dir: Path, *,
                         workers: int = 2) -> AsyncIterator[tuple[BackendProc, list[WorkerProc]]]:
    """The core backend and ``workers`` independent `tawasul run` processes on one database, started
    together (one shared port once SO_REUSEPORT is available); stopped with SIGTERM at the end. On an
    error the end of every log is printed."""
    backend = BackendProc(tmp, f"sqlite+aiosqlite:///{tmp / 'core_backend.db'}")
    shared = free_port()
    procs = [
        WorkerProc(f"worker-{i}", tmp, port=shared if SHARED_PORT else free_port(), db_url=db_url,
                   backend=backend, tg=tg, model_dir=model_dir)
        for i in range(workers)
    ]
    try:
        for proc in (backend, *procs):
            await proc.start()
        for proc in (backend, *procs):
            await proc.ready()
        yield backend, procs
    except BaseException:
        print(log_tail(backend, *procs))
        raise
    finally:
        for proc in (*procs, backend):
            await proc.stop()


class TelegramPlatform:
    """Telegram's side of the webhook: each update is POSTed with the secret token until a worker answers
    2xx. A refused connection, a reset or a 5xx is retried a moment later (on the next worker when they
    listen on separate ports), as Telegram retries an update it could not deliver. A 2xx is final: an
    update the bot acknowledged and then lost is never sent again."""

    def __init__(self, urls: Callable[[], Sequence[str]], session: aiohttp.ClientSession,
                 path: str = "/webhooks/telegram") -> None:
        self._urls = urls
        self._session = session
        self._path = path
        self.retries = 0
        self.delivered = 0

    async def deliver(self, update: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        attempt = 0
        while True:
            urls = self._urls()
            status: int | None = None
            if urls:
                url = urls[(update["update_id"] + attempt) % len(urls)] + self._path
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with self._session.post(
                        url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET},
                        timeout=aiohttp.ClientTimeout(total=30),
                    ) as resp:
                        status = resp.status
            if status is not None and 200 <= status < 300:
                self.delivered += 1
                return
            if status is not None and status < 500:
                raise AssertionError(f"the bot refused update {update['update_id']} with {status}")
            if loop.time() > deadline:
                raise AssertionError(f"update {update['update_id']} could not be delivered")
            attempt += 1
            self.retries += 1
            await asyncio.sleep(0.2)


class TgCitizen(TgChat):
    """One Telegram user in a private chat with the bot; every action waits for the webhook's answer,
    ``expect`` for the bot's (here: the text of the answer)."""

    def __init__(self, tg: FakeTelegram, platform: TelegramPlatform, chat_id: int) -> None:
        super().__init__(tg, chat_id, wait_s=WAIT_S)
        self.platform = platform
        self.sent_updates = 0

    async def _send(self, update: dict[str, Any]) -> None:
        self._act()
        self.sent_updates += 1
        await self.platform.deliver(update)

    async def says(self, text: str) -> None:
        await self._send(self.tg.text_update(self.chat_id, text))

    async def presses(self, payload: str) -> None:
        await self._send(self.tg.press_update(self.chat_id, payload))

    async def expect(self, *fragments: str, what: str | None = None) -> str:  # type: ignore[override]
        return str((await super().expect(*fragments, what=what)).get("text") or "")

    async def start_filing(self) -> None:
        """Complaint -> confirm -> skip the location (reply keyboard): the photo question is on screen."""
        await self.says(COMPLAINT)
        await self.expect("فهمت طلبك", "وزارة الأشغال")
        await self.presses("confirm")
        await self.expect("📍")
        await self.says("تخطي")  # the reply keyboard's button: its title comes back as text
        await self.expect("📷")

    async def file_complaint(self) -> str:
        """``start_filing``, then "send now"; the reference."""
        await self.start_filing()
        await self.presses("send")
        match = REF_RE.search(await self.expect("TWS-"))
        assert match is not None
        return match.group(0)


class WaCitizen(SharedWaCitizen):
    """One WhatsApp user writing to the business number (Meta-signed webhooks into the service); every
    action waits for the webhook's answer, ``expect`` for the bot's (here: the text of the answer)."""

    def __init__(self, wa: FakeGraph, url: str, wa_id: str) -> None:
        super().__init__(wa, url, wa_id, wait_s=WAIT_S)

    async def expect(self, *fragments: str, what: str | None = None) -> str:  # type: ignore[override]
        return self.wa.text_of(await super().expect(*fragments, what=what))

    async def file_complaint(self) -> str:
        """Complaint -> confirm (list reply) -> skip the location (button) -> send now; the reference."""
        await self.says(COMPLAINT)
        await self.expect("فهمت طلبك", "وزارة الأشغال")
        await self.presses("confirm")
        await self.expect("أو اختر")
        await self.presses("skip")
        await self.expect("📷")
        await self.presses("send")
        match = REF_RE.search(await self.expect("TWS-"))
        assert match is not None
        return match.group(0)


def sent_texts(tg: FakeTelegram, chat_id: int) -> list[str]:
    """Every sendMessage to the chat that Telegram accepted, in order, as sent (before later edits)."""
    return [s["text"] for s in tg.sent if s["chat_id"] == chat_id]


def assert_filing_transcript(citizen: TgCitizen, reference: str, *, repeats: int = 0) -> int:
    """The chat got the four answers of a filing in dialogue order and the reference exactly once.

    ``repeats``: how many answers may come twice in a row. Delivery is at least once: a worker killed after
    Telegram accepted a message but before it marked the message sent leaves it to be sent again (no Bot
    API call is idempotent). Returns how many answers came twice."""
    texts = sent_texts(citizen.tg, citizen.chat_id)
    expected = ("فهمت طلبك", "📍", "📷", f"برقم {reference}")
    collapsed = [t for i, t in enumerate(texts) if i == 0 or t != texts[i - 1]]
    repeated = len(texts) - len(collapsed)
    assert repeated <= repeats, f"chat {citizen.chat_id}: {repeated} answers came twice: {texts}"
    assert len(collapsed) == len(expected), f"chat {citizen.chat_id}: {texts}"
    for text, fragment in zip(collapsed, expected, strict=True):
        assert fragment in text, f"chat {citizen.chat_id}: {fragment!r} expected in order; got {texts}"
    assert sum(reference in t for t in texts) == 1, f"chat {citizen.chat_id}: the reference was not sent once"
    return repeated


async def all_cases(backend: BackendClient, channel: str) -> list[Case]:
    """Every case of a channel in the core backend (staff listing, page by page)."""
    cases: list[Case] = []
    while True:
        page = await backend.list_all_cases(limit=100, offset=len(cases))
        cases.extend(page)
        if len(page) < 100:
            return [c for c in cases if c.channel == channel]


def inprocess_settings(db_url: str, tmp: Path, *, port: int, tg: FakeTelegram | None = None,
                       remote: BackendProc | None = None, **sections: dict[str, Any]) -> Settings:
    """Settings of an in-process ``Service`` on a fixed port: Telegram in webhook mode against ``tg``, the
    core backend ``remote`` or embedded; ``sections`` override fields."""
    values: dict[str, dict[str, Any]] = {
        "server": {"port": port, "public_url": f"http://127.0.0.1:{port}"},
        "backend": {"service_token": SecretStr(SERVICE_TOKEN), "staff_token": SecretStr(STAFF_TOKEN),
                    "webhook_secret": SecretStr(BACKEND_WEBHOOK_SECRET)},
    }
    if remote is not None:
        values["backend"].update({"mode": "remote", "url": remote.url, "retries": 1, "timeout_s": 5.0})
    if tg is not None:
        values["telegram"] = {
            "bot_token": SecretStr(tg.token), "api_base_url": tg.base_url, "api_file_base_url": tg.file_base_url,
            "webhook_secret": SecretStr(TELEGRAM_SECRET), "mode": "webhook",
        }
    for name, update in sections.items():
        values.setdefault(name, {}).update(update)
    return settings_for(db_url, tmp, **values)


def log_tail(*procs: Proc, chars: int = 3000) -> str:
    return "\n".join(f"--- {p.name} (starts {p.starts}, rc {p.returncode}):\n{p.log()[-chars:]}" for p in procs)
