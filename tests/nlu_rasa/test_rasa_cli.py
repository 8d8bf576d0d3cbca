"""`tawasul rasa ...`: wiring and the errors a developer sees before anything is trained."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import PROJECT_DIR
from nlu.rasa_cli import RasaSetupError, latest_model, rasa_bin, serve_command


def _tawasul(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tawasul.cli", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_DIR,
        env=dict(os.environ),
        timeout=120,
        check=False,
    )


def test_missing_venv_names_the_make_target(tmp_path: Path) -> None:
    with pytest.raises(RasaSetupError, match="make rasa-setup"):
        rasa_bin(tmp_path / "no-venv")


def test_rasa_commands_are_registered() -> None:
    proc = _tawasul("rasa", "--help")
    assert proc.returncode == 0 and "train" in proc.stdout and "serve" in proc.stdout


def test_serve_without_a_model_says_how_to_get_one(tmp_path: Path, rasa_ready: Path) -> None:
    proc = _tawasul("rasa", "serve", "--models", str(tmp_path))
    assert proc.returncode == 1
    assert "tawasul rasa train" in proc.stderr


def test_serve_command_binds_loopback_with_the_api(tmp_path: Path, rasa_ready: Path) -> None:
    older, newer = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    older.write_bytes(b"")
    newer.write_bytes(b"")
    os.utime(older, (1, 1))
    assert latest_model(tmp_path) == newer
    cmd = serve_command(newer, 5123)
    assert cmd[0] == str(rasa_ready) and cmd[1:3] == ["run", "--enable-api"]
    assert cmd[cmd.index("-i") + 1] == "127.0.0.1" and cmd[cmd.index("-p") + 1] == "5123"
    assert cmd[cmd.index("--model") + 1] == str(newer.resolve())
