import subprocess
import sys

import pytest

from config import ConfigError, load_settings


def test_defaults_load() -> None:
    s = load_settings(env={})
    assert s.server.port == 8080
    assert s.database.url.startswith("sqlite+aiosqlite")


def test_env_overrides() -> None:
    s = load_settings(env={"TAWASUL_SERVER__PORT": "9000", "TAWASUL_DATABASE_URL": "postgresql+asyncpg://x/y"})
    assert s.server.port == 9000
    assert s.database.url == "postgresql+asyncpg://x/y"


def test_bad_value_names_key() -> None:
    with pytest.raises(ConfigError, match="server.port"):
        load_settings(env={"TAWASUL_SERVER__PORT": "abc"})


def test_cli_bad_config_exits_2_with_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tawasul.cli", "config"],
        env={"TAWASUL_SERVER__PORT": "eighty", "PATH": ""},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "server.port" in lines[0]
