"""`tawasul run` as a real subprocess (what `make run` starts): with no platform tokens it chats on the
terminal (stdin piped) and says how to turn Telegram and WhatsApp on; with TELEGRAM_BOT_TOKEN it serves
Telegram (polling the fake Bot API on 127.0.0.1) until SIGTERM, then exits cleanly."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

from config.settings import PROJECT_DIR
from tests.fakes import FakeTelegram, wait_until
from tests.support import free_port

COMPLAINT = "السلام عليكم، الشارع اللي جدام بيتنا في سترة مليان حفر وخربت تاير سيارتي، ليش محد يصلحه؟"
REF_RE = re.compile(r"TWS-\d{4}-\d{6}")
TELEGRAM_OFF = "Telegram is off: set TELEGRAM_BOT_TOKEN to turn it on"
WHATSAPP_OFF = "WhatsApp is off: set WHATSAPP_ACCESS_TOKEN and WHATSAPP_PHONE_NUMBER_ID to turn it on"
# Bounds on a hung process only (start-up imports torch and loads the model; two loaded cores).
START_S = 90.0


def tawasul_command() -> list[str]:
    """The installed console script next to this interpreter (what `make run` calls)."""
    script = Path(sys.executable).with_name("tawasul")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tawasul.cli"]


def service_env(tmp: Path, model_dir: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no platform or TAWASUL_* variables from the caller, free ports, throwaway
    databases, and the already trained test model (so the command does not train one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAWASUL_", "TELEGRAM_", "WHATSAPP_"))}
    env.update(
        {
            # The project root on the path like pytest's ``pythonpath``: an editable install made before
            # a package was added to pyproject would not map it.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_DIR), env.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "TAWASUL_SERVER__PORT": str(free_port()),
            "TAWASUL_BACKEND__PORT": str(free_port()),
            "TAWASUL_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'bot.db'}",
            "TAWASUL_BACKEND__DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'core_backend.db'}",
            "TAWASUL_NLU__MODEL_DIR": str(model_dir),
            "TAWASUL_NLU__REVIEWED_DATA_DIR": str(tmp / "reviewed"),
        }
    )
    env.update(extra)
    return env


async def test_without_tokens_it_chats_on_the_terminal_and_says_how_to_turn_channels_on(
    tmp_path: Path, trained_nlu_dir: Path
) -> None:
    script = f"مرحبا\n{COMPLAINT}\n1\n1\n2\n"  # confirm, skip the location, send now
    stderr = tmp_path / "stderr.txt"
    with stderr.open("wb") as err_file:
        proc = await asyncio.create_subprocess_exec(
            *tawasul_command(),
            "run",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err_file,
            env=service_env(tmp_path, trained_nlu_dir),
            cwd=tmp_path,
        )
    assert proc.stdin is not None and proc.stdout is not None
    transcript = b""

    async def read_until_the_reference() -> None:
        nonlocal transcript
        assert proc.stdout is not None
        while not REF_RE.search(transcript.decode(errors="replace")):
            chunk = await proc.stdout.read(4096)
            if not chunk:
                return
            transcript += chunk

    try:
        proc.stdin.write(script.encode())
        await proc.stdin.drain()
        # End of input once the last answer is out, as a person at the keyboard would press Ctrl-D.
        # (Closing stdin at once races the filing; see the shutdown-drain test in test_e2e_telegram.)
        await asyncio.wait_for(read_until_the_reference(), START_S)
        proc.stdin.close()
        transcript += await asyncio.wait_for(proc.stdout.read(), START_S)
        await asyncio.wait_for(proc.wait(), START_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out, err = transcript.decode(), stderr.read_text(encoding="utf-8", errors="replace")
    assert proc.returncode == 0, err[-3000:]

    # The bot's answers, in conversation order: welcome, the understood complaint, the questions, the
    # reference; buttons as numbered lines that the piped numbers pressed.
    expected_in_order = [
        "> مرحبا",
        "أهلاً بك في تواصل",
        f"> {COMPLAINT}",
        "فهمت طلبك كالتالي:\nشكوى — وزارة الأشغال",
        "1) تأكيد ✅",
        "📍",
        "📷",
        "✅ تم تسجيل شكوى برقم TWS-",
    ]
    position = 0
    for fragment in expected_in_order:
        found = out.find(fragment, position)
        assert found >= 0, f"{fragment!r} not in the transcript after position {position}:\n{out}"
        position = found + len(fragment)
    assert len(REF_RE.findall(out)) == 1, out
    # How to turn the platforms on, in the start-up banner.
    assert TELEGRAM_OFF in err and WHATSAPP_OFF in err, err[-3000:]
    assert "Terminal chat:" in err
    assert "Traceback" not in err, err[-3000:]


async def test_with_a_telegram_token_it_serves_telegram_until_sigterm(
    tmp_path: Path, trained_nlu_dir: Path
) -> None:
    chat = 5_550_901
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    async with FakeTelegram() as tg:
        env = service_env(
            tmp_path,
            trained_nlu_dir,
            TELEGRAM_BOT_TOKEN=tg.token,
            TELEGRAM_API_BASE_URL=tg.base_url,
            TELEGRAM_API_FILE_BASE_URL=tg.file_base_url,
            TAWASUL_TELEGRAM__POLL_TIMEOUT_S="1",
        )
        with stdout.open("wb") as out_file, stderr.open("wb") as err_file:
            proc = await asyncio.create_subprocess_exec(
                *tawasul_command(),
                "run",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_file,
                stderr=err_file,
                env=env,
                cwd=tmp_path,
            )
        try:

            def err_text() -> str:
                return stderr.read_text(encoding="utf-8", errors="replace")

            def alive_and(condition: bool) -> bool:
                assert proc.returncode is None, f"exited with {proc.returncode}:\n{err_text()[-3000:]}"
                return condition

            update_id = tg.user_sends(chat, "/start")  # queued until the bot's first getUpdates
            await wait_until(
                lambda: alive_and(any("اختر من القائمة" in t for t in tg.texts_to(chat))),
                timeout=START_S,
                what="the bot's answer on Telegram",
            )
            await wait_until(
                lambda: alive_and("Tawasul Bot is running on" in err_text()),
                timeout=START_S,
                what="the banner",
            )
            assert tg.texts_to(chat)[0].startswith("أهلاً بك في تواصل")
            assert tg.calls_to("deleteWebhook"), "polling mode (no public URL)"

            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), START_S) == 0, err_text()[-3000:]
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    err = err_text()
    assert TELEGRAM_OFF not in err and WHATSAPP_OFF in err, err[-3000:]
    assert "Terminal chat:" not in err  # a platform is on: no terminal chat
    assert "Traceback" not in err and " ERROR " not in err, err[-3000:]
    # On the way out the last getUpdates confirmed the /start, so a restart would not answer it again.
    assert tg.calls_to("getUpdates")[-1].params.get("offset") == update_id + 1
