"""Embedded engine vs Rasa 3.6 DIET: same training split, same held-out split, same machine, one run.

`make bench-nlu` (needs .venv-rasa: `make rasa-setup`). Prints a table and writes
benchmarks/results/nlu_compare.json and .md.

* Accuracy: ``nlu.training.score_results`` for both engines (type macro-F1 end to end over the held-out case
  messages, agency top-1 accuracy, intent macro-F1; overall and per language style).
* Latency per message: embedded in process (``parse``, in a fresh process that loaded the saved model, as a
  worker does), Rasa over HTTP on loopback through ``RasaEngine``
  (what the service would pay), one message at a time, after both engines parsed the training split once
  (steady state); p50 / p99 / mean; throughput = messages / wall time.
* Training time and peak memory of each training run (each in its own child process, peak RSS of that child
  from ``wait4``); serving memory = RSS of the process holding the loaded model (Rasa: the ``rasa run``
  process tree); model load time (Rasa: ``rasa run`` start until ``/status`` reports the model).

Options: ``--epochs N`` (DIET epochs, default the export's 100), ``--reuse-rasa-model`` (skip Rasa training
when a model of the identical export exists: for re-running the measurement only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "var" / "bench-rasa"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def _latency(ms: list[float], wall_s: float) -> dict[str, float]:
    return {
        "p50_ms": round(_percentile(ms, 50), 3),
        "p99_ms": round(_percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else 0.0,
        "throughput_msg_s": round(len(ms) / wall_s, 1) if wall_s > 0 else 0.0,
    }


# --- embedded side (runs in its own process so its memory is its own) --------------------------------------


def embedded_worker(out: Path) -> None:
    """Train on the training split and save the model (peak memory of this process = training memory)."""
    import resource

    from config import load_settings
    from nlu.dataset import load_dataset
    from nlu.training import fit_model

    settings = load_settings()
    dataset = load_dataset(settings)
    started = time.perf_counter()
    model = fit_model(dataset.train, settings, version="bench-embedded")
    train_s = time.perf_counter() - started
    train_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    model.save(out.parent)
    payload = {"train_s": round(train_s, 2), "train_peak_rss_mb": round(train_peak_mb, 1)}
    out.write_text(json.dumps(payload), encoding="utf-8")


def embedded_server(model_dir: Path, out: Path) -> None:
    """Serve like a worker does: a fresh process that loads the saved model (no training garbage in its
    heap), warms up on a few messages as Rasa does, then parses every held-out message once."""
    from config import load_settings
    from nlu.dataset import load_dataset
    from nlu.engine import EmbeddedEngine

    settings = load_settings()
    dataset = load_dataset(settings)
    started = time.perf_counter()
    engine = EmbeddedEngine.load(model_dir, settings.nlu)
    load_s = time.perf_counter() - started
    texts = [e.text for e in dataset.heldout]
    for text in _warmup_texts(dataset):  # the same warm-up Rasa gets
        engine.parse_sync(text)
    results, ms = [], []

    async def run() -> float:
        wall = time.perf_counter()
        for text in texts:
            t0 = time.perf_counter()
            results.append(await engine.parse(text))
            ms.append((time.perf_counter() - t0) * 1000)
        return time.perf_counter() - wall

    wall_s = asyncio.run(run())
    import psutil

    payload = {
        "load_s": round(load_s, 3),
        "serve_rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
        "latency": _latency(ms, wall_s),
        "results": [r.to_dict() for r in results],
        "model_version": engine.model_version,
    }
    out.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")


def _warmup_texts(dataset: Any) -> list[str]:
    """Both engines see the training messages once before the timed pass: a service in steady state has
    already parsed the everyday vocabulary (the embedded engine caches per-word work; TensorFlow traces its
    graphs). Held-out messages are never part of the warm-up, so their unseen words still cost full price."""
    return [e.text for e in dataset.train]


def _child(*args: str) -> int:
    """Run this script in a child process; return its peak RSS in MB (``wait4``)."""
    proc = subprocess.Popen([sys.executable, __file__, *args], cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{args[0]} child failed with {os.waitstatus_to_exitcode(status)}")
    return round(usage.ru_maxrss / 1024.0, 1)


def run_embedded() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        train_out, serve_out = model_dir / "train.json", model_dir / "serve.json"
        _child("--embedded-worker", str(train_out))
        peak = _child("--embedded-server", str(model_dir), str(serve_out))
        data: dict[str, Any] = json.loads(train_out.read_text(encoding="utf-8"))
        data.update(json.loads(serve_out.read_text(encoding="utf-8")))
    data["process_peak_rss_mb"] = peak
    return data


# --- Rasa side ---------------------------------------------------------------------------------------------


def run_rasa(epochs: int, reuse: bool) -> dict[str, Any]:
    import psutil

    from config import load_settings
    from nlu.dataset import load_dataset
    from nlu.rasa_cli import RasaServer, rasa_bin, train_model
    from nlu.rasa_engine import RasaEngine
    from nlu.rasa_export import export_project, read_summary
    from tests.support import free_port

    rasa_bin()  # a clear error when .venv-rasa is missing
    settings = load_settings()
    dataset = load_dataset(settings)
    project = export_project(settings, WORK / "project", examples=dataset.train, epochs=epochs)
    summary = read_summary(project)
    name = f"bench-{summary.data_hash}"
    model = WORK / "models" / f"{name}.tar.gz"
    train: dict[str, Any]
    info_path = WORK / "models" / f"{name}.json"
    if reuse and model.is_file() and info_path.is_file():
        train = json.loads(info_path.read_text())
        train["reused"] = True
    else:
        print(f"training Rasa DIET on {summary.examples} examples, {summary.intents} intents, {epochs} epochs ...",
              flush=True)  # fmt: skip
        with (WORK / "train.log").open("w") as log:
            result = train_model(project, WORK / "models", name=name, log=log)
        train = {
            "train_s": round(result.seconds, 1),
            "train_peak_rss_mb": round(result.peak_rss_mb, 1),
            # Other jobs on a shared machine slow training down: keep the 1-minute load average with it.
            "train_load_avg": round(os.getloadavg()[0], 2),
        }
        info_path.write_text(json.dumps(train))
    port = free_port()
    started = time.perf_counter()
    server = RasaServer(model, port, log_path=WORK / "serve.log").start(timeout_s=600)
    load_s = time.perf_counter() - started
    try:
        nlu = settings.nlu.model_copy(update={"rasa_url": server.url, "rasa_timeout_s": 30.0})
        engine = RasaEngine(settings.model_copy(update={"nlu": nlu}))
        texts = [e.text for e in dataset.heldout]
        results, ms = [], []

        async def run() -> float:
            for text in _warmup_texts(dataset):  # TensorFlow traces its graph on the first calls
                await engine.parse(text)
            wall = time.perf_counter()
            for text in texts:
                t0 = time.perf_counter()
                results.append(await engine.parse(text))
                ms.append((time.perf_counter() - t0) * 1000)
            wall_s = time.perf_counter() - wall
            await engine.close()
            return wall_s

        wall_s = asyncio.run(run())
        assert server.proc is not None
        root = psutil.Process(server.proc.pid)
        rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
    finally:
        server.stop()
    return {
        **train,
        "epochs": epochs,
        "examples": summary.examples,
        "intents": summary.intents,
        "load_s": round(load_s, 1),
        "serve_rss_mb": round(rss, 1),
        "latency": _latency(ms, wall_s),
        "results": [r.to_dict() for r in results],
        "model_version": engine.model_version,
    }


# --- report ----------------------------------------------------------------------------------------------


def _row(label: str, emb: Any, rasa: Any) -> str:
    return f"| {label} | {emb} | {rasa} |"


def report(emb: dict[str, Any], rasa: dict[str, Any], meta: dict[str, Any]) -> str:
    e, r = emb["scores"], rasa["scores"]
    el, rl = emb["latency"], rasa["latency"]
    lines = [
        "# NLU engines compared: embedded vs Rasa 3.6 DIET",
        "",
        (
            f"Held-out split: {meta['heldout']} messages ({meta['heldout_cases']} case messages), never trained on; "
            f"training split: {meta['train']} examples. Machine: {meta['machine']}. Date: {meta['date']}."
        ),
        (
            f"Rasa: DIET {rasa['epochs']} epochs, {rasa['intents']} intents (type+agency joint labels and dialogue "
            "intents), served by `rasa run --enable-api`, called over HTTP on 127.0.0.1 through `RasaEngine`. "
            "Embedded: in process, in a fresh process that loaded the saved model (as a worker does)."
        ),
        "",
        "| metric | embedded | rasa |",
        "| --- | --- | --- |",
        _row("type macro-F1", f"{e['type_macro_f1']:.3f}", f"{r['type_macro_f1']:.3f}"),
        _row("agency accuracy (top-1)", f"{e['agency_accuracy']:.3f}", f"{r['agency_accuracy']:.3f}"),
        _row("intent macro-F1", f"{e['intent_macro_f1']:.3f}", f"{r['intent_macro_f1']:.3f}"),
    ]
    for style in sorted(set(e["by_style"]) | set(r["by_style"])):
        es, rs = e["by_style"].get(style, {}), r["by_style"].get(style, {})
        lines.append(
            _row(
                f"{style}: type F1 / agency acc (n={es.get('n', 0)})",
                f"{es.get('type_macro_f1', 0):.3f} / {es.get('agency_accuracy', 0):.3f}",
                f"{rs.get('type_macro_f1', 0):.3f} / {rs.get('agency_accuracy', 0):.3f}",
            )
        )
    speedup_p50 = rl["p50_ms"] / el["p50_ms"] if el["p50_ms"] else 0.0
    speedup_mean = rl["mean_ms"] / el["mean_ms"] if el["mean_ms"] else 0.0
    lines += [
        _row("latency p50 (ms/message)", el["p50_ms"], rl["p50_ms"]),
        _row("latency p99 (ms/message)", el["p99_ms"], rl["p99_ms"]),
        _row("throughput (messages/s, one at a time)", el["throughput_msg_s"], rl["throughput_msg_s"]),
        _row("training time (s)", emb["train_s"], rasa["train_s"]),
        _row("training peak memory (MB RSS)", emb["train_peak_rss_mb"], rasa["train_peak_rss_mb"]),
        _row("model load (s)", emb["load_s"], rasa["load_s"]),
        _row("serving memory (MB RSS)", emb["serve_rss_mb"], rasa["serve_rss_mb"]),
        "",
        f"Load average (1 min) at the end of the run: {meta.get('load_avg', '?')}; the machine is shared, so "
        "latency and training time are upper bounds."
        + (
            " Rasa training figures come from the run that trained this exact export (model reused)."
            if rasa.get("reused")
            else ""
        ),
        (
            f"Embedded is {speedup_p50:.0f}x faster per message at p50 and {speedup_mean:.0f}x on the mean "
            f"(Rasa's figure includes the HTTP round trip on loopback the service would pay)."
        ),
    ]
    wins = _rasa_wins(e, r)
    lines.append(
        "Rasa is ahead on: " + "; ".join(wins) + "." if wins else "Rasa is ahead on no accuracy measure."
    )
    return "\n".join(lines) + "\n"


def _rasa_wins(e: dict[str, Any], r: dict[str, Any]) -> list[str]:
    """The accuracy measures (overall and per style) where Rasa scores higher than the embedded engine."""
    measures = ("type_macro_f1", "agency_accuracy", "intent_macro_f1")
    found = [f"{m} overall ({r[m]:.3f} vs {e[m]:.3f})" for m in measures if r.get(m, 0) > e.get(m, 0)]
    for style in sorted(set(e["by_style"]) & set(r["by_style"])):
        es, rs = e["by_style"][style], r["by_style"][style]
        found += [f"{m} for {style} ({rs[m]:.3f} vs {es[m]:.3f})" for m in measures[:2]
                  if rs.get(m, 0) > es.get(m, 0)]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--reuse-rasa-model", action="store_true")
    parser.add_argument("--embedded-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--embedded-server", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.embedded_worker:
        embedded_worker(args.embedded_worker)
        return 0
    if args.embedded_server:
        embedded_server(*args.embedded_server)
        return 0

    from config import load_settings
    from nlu.dataset import load_dataset
    from nlu.training import score_results
    from nlu.types import NLUResult

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    WORK.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(load_settings())
    print(f"embedded: training and evaluating on {len(dataset.heldout)} held-out messages ...", flush=True)
    emb = run_embedded()
    rasa = run_rasa(args.epochs, args.reuse_rasa_model)
    for side in (emb, rasa):
        results = [NLUResult.from_dict(d) for d in side.pop("results")]
        side["scores"] = score_results(dataset.heldout, results)
    meta = {
        "train": len(dataset.train),
        "heldout": len(dataset.heldout),
        "heldout_cases": sum(e.intent == "file_case" for e in dataset.heldout),
        "data_hash": dataset.data_hash,
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()} / Rasa 3.6.21",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg": round(os.getloadavg()[0], 2),
    }
    text = report(emb, rasa, meta)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "nlu_compare.json").write_text(
        json.dumps({"meta": meta, "embedded": emb, "rasa": rasa}, indent=2, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    (RESULTS / "nlu_compare.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
