"""`tawasul rasa train` / `tawasul rasa serve`, and the process helpers the tests and the benchmark share.

Rasa runs from its own Python 3.10 venv (``.venv-rasa``, built by ``make rasa-setup``), never from the main
one; every Rasa process gets telemetry switched off and the TensorFlow chatter turned down.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Self

from config.settings import PROJECT_DIR, Settings

RASA_VENV = PROJECT_DIR / ".venv-rasa"
RASA_DIR = PROJECT_DIR / "var" / "rasa"
PROJECT_SUBDIR = "project"
MODELS_SUBDIR = "models"


class RasaSetupError(RuntimeError):
    """``.venv-rasa`` is missing or broken."""


def rasa_bin(venv: Path | None = None) -> Path:
    """The ``rasa`` executable of the Rasa venv; a clear error when it has not been built."""
    venv = RASA_VENV if venv is None else venv
    exe = venv / "bin" / "rasa"
    if not exe.is_file() or not os.access(exe, os.X_OK):
        raise RasaSetupError(f"Rasa is not installed: {exe} not found; run `make rasa-setup`")
    return exe


def rasa_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "RASA_TELEMETRY_ENABLED": "false",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "SQLALCHEMY_SILENCE_UBER_WARNING": "1",
            "PYTHONWARNINGS": "ignore",
            # Rasa's Sanic server must not inherit the main venv's site-packages.
            "PYTHONPATH": "",
        }
    )
    env.pop("VIRTUAL_ENV", None)
    return env


def latest_model(models_dir: Path) -> Path | None:
    models = (
        sorted(models_dir.glob("*.tar.gz"), key=lambda p: p.stat().st_mtime) if models_dir.is_dir() else []
    )
    return models[-1] if models else None


@dataclass(frozen=True, slots=True)
class TrainResult:
    model: Path
    seconds: float
    peak_rss_mb: float


def run_measured(
    cmd: Sequence[str], *, cwd: Path, log: IO[str] | None = None
) -> tuple[int, str, float, float]:
    """Run a child to completion: (exit code, output if not logged, seconds, peak RSS of that child in MB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd), cwd=cwd, env=rasa_env(), stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = ""
    if log is None and proc.stdout is not None:
        output = proc.stdout.read()  # drained before waiting, so a chatty child cannot block on a full pipe
    # wait4 reports the resource usage of this child alone (ru_maxrss in KiB on Linux).
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, output, time.perf_counter() - start, usage.ru_maxrss / 1024.0


def train_model(
    project_dir: Path,
    models_dir: Path,
    *,
    name: str | None = None,
    num_threads: int | None = None,
    log: IO[str] | None = None,
    venv: Path | None = None,
) -> TrainResult:
    """``rasa train nlu`` on an exported project; the model lands in ``models_dir``."""
    exe = rasa_bin(venv)
    models_dir.mkdir(parents=True, exist_ok=True)
    if name is None:
        name = f"nlu-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [
        str(exe), "train", "nlu", "--config", "config.yml", "--nlu", "data", "--domain", "domain.yml",
        "--out", str(models_dir.resolve()), "--fixed-model-name", name, "--quiet",
    ]  # fmt: skip
    if num_threads:
        cmd += ["--num-threads", str(num_threads)]
    code, output, seconds, peak_mb = run_measured(cmd, cwd=project_dir, log=log)
    model = models_dir / f"{name}.tar.gz"
    if code != 0 or not model.is_file():
        tail = output[-2000:] if log is None else "(see the log)"
        raise RuntimeError(f"rasa train nlu failed (exit {code}): {tail}")
    return TrainResult(model, seconds, peak_mb)


def serve_command(model: Path, port: int, *, venv: Path | None = None) -> list[str]:
    return [
        str(rasa_bin(venv)), "run", "--enable-api", "-i", "127.0.0.1", "-p", str(port),
        "--model", str(model.resolve()), "--quiet",
    ]  # fmt: skip


class RasaServer:
    """A ``rasa run --enable-api`` child process on 127.0.0.1 (tests, benchmark). ``start()`` waits until
    ``/status`` reports the model loaded; ``stop()`` ends the process group."""

    def __init__(
        self, model: Path, port: int, *, cwd: Path | None = None, log_path: Path | None = None
    ) -> None:
        self.model = model
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._cwd = cwd or model.parent
        self._log_path = log_path
        self._log: IO[str] | None = None
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 240.0) -> Self:
        cmd = serve_command(self.model, self.port)
        self._log = open(self._log_path, "w") if self._log_path else None  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            cwd=self._cwd,
            env=rasa_env(),
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: stop() reaches Sanic's workers too
        )
        asyncio.run(self._wait_ready(timeout_s))
        return self

    async def _wait_ready(self, timeout_s: float) -> None:
        import aiohttp

        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(
                        f"rasa run exited with {self.proc and self.proc.returncode}; {self._hint()}"
                    )
                try:
                    async with session.get(self.url + "/status") as resp:
                        if resp.status == 200 and (await resp.json()).get("model_file"):
                            return
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    pass  # not up yet (Rasa loads its model for tens of seconds): poll again
                await asyncio.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"rasa run did not load {self.model.name} within {timeout_s:.0f} s; {self._hint()}"
        )

    def _hint(self) -> str:
        return f"log: {self._log_path}" if self._log_path else "run `tawasul rasa serve` to see its output"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass  # it exited on its own between the checks
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- commands --------------------------------------------------------------------------------------------


def _cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    from nlu.rasa_export import export_project, read_summary

    try:
        rasa_bin()
    except RasaSetupError as exc:
        print(f"tawasul: {exc}", file=sys.stderr)
        return 1
    project = export_project(settings, args.project, epochs=args.epochs)
    summary = read_summary(project)
    print(f"exported {summary.examples} examples, {summary.intents} intents to {project}")
    name = f"nlu-{summary.data_hash}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        result = train_model(project, args.out, name=name, log=None if args.quiet else sys.stdout)
    except RuntimeError as exc:
        print(f"tawasul: {exc}", file=sys.stderr)
        return 1
    print(f"trained {result.model} in {result.seconds:.0f} s (peak memory {result.peak_rss_mb:.0f} MB)")
    return 0


def _cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    try:
        model = args.model or latest_model(args.models)
        if model is None:
            print(f"tawasul: no Rasa model in {args.models}; run `tawasul rasa train`", file=sys.stderr)
            return 1
        cmd = serve_command(model, args.port or settings.nlu.rasa_port)
    except RasaSetupError as exc:
        print(f"tawasul: {exc}", file=sys.stderr)
        return 1
    print(f"serving {model} on http://127.0.0.1:{args.port or settings.nlu.rasa_port}", flush=True)
    try:
        return subprocess.call(cmd, cwd=model.parent, env=rasa_env())
    except KeyboardInterrupt:
        return 130


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("rasa", help="the Rasa NLU server (second engine): train, serve")
    rsub = parser.add_subparsers(dest="rasa_command", required=True, metavar="ACTION")
    train = rsub.add_parser("train", help="export nlu/data to a Rasa project and train an NLU model")
    train.add_argument("--project", type=Path, default=RASA_DIR / PROJECT_SUBDIR, help="project directory")
    train.add_argument("--out", type=Path, default=RASA_DIR / MODELS_SUBDIR, help="models directory")
    train.add_argument("--epochs", type=int, default=100, help="DIET epochs (default 100)")
    train.add_argument("--quiet", action="store_true", help="hide Rasa's training output")
    train.set_defaults(func=_cmd_train)
    serve = rsub.add_parser("serve", help="run `rasa run --enable-api` on 127.0.0.1")
    serve.add_argument("--model", type=Path, help="model file (default: the newest in --models)")
    serve.add_argument("--models", type=Path, default=RASA_DIR / MODELS_SUBDIR, help="models directory")
    serve.add_argument("--port", type=int, help="port (default: nlu.rasa_port)")
    serve.set_defaults(func=_cmd_serve)


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - `python -m nlu.rasa_cli`
    from tawasul.cli import main as tawasul_main

    return tawasul_main(["rasa", *(argv if argv is not None else sys.argv[1:])])
