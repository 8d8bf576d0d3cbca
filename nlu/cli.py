"""`tawasul nlu ...`: train, evaluate, parse, predict, check, export-rasa, models, promote, rollback.

``predict`` is a contract other tools rely on: JSON Lines on stdin, each an object with ``text`` (other keys
pass through unchanged); one JSON object per input line on stdout, in order, with the ``NLUResult`` fields
(``text``, ``language``, ``intent``, ``type``, ``type_confidence``, ``agency``, ``agency_confidence``,
``agency_candidates``, ``entities``, ``engine``, ``model_version``, ...). A line that is not a JSON object
with a string ``text`` yields ``{"error": "..."}`` and the rest go on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from config.settings import Settings


def _print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def _progress(stage: str, fraction: float) -> None:
    print(f"[{fraction:4.0%}] {stage}", file=sys.stderr, flush=True)


# --- engines ---------------------------------------------------------------------------------------------


def _embedded(settings: Settings, version: str | None = None) -> Any:
    from nlu.engine import EmbeddedEngine
    from nlu.registry import ModelRegistry
    from nlu.service import ensure_model

    registry = ModelRegistry(settings.nlu.model_dir)
    if version:
        return EmbeddedEngine.load(registry.path_of(version), settings.nlu)
    info = registry.current() or ensure_model(settings)
    return EmbeddedEngine.load(info.path, settings.nlu)


def _engine(settings: Settings, name: str) -> Any:
    if name == "rasa":
        from nlu.rasa_engine import RasaEngine

        return RasaEngine(settings)
    return _embedded(settings)


# --- commands ------------------------------------------------------------------------------------------


def _train(settings: Settings, args: argparse.Namespace) -> int:
    from nlu.registry import ModelRegistry
    from nlu.training import train_model

    registry = ModelRegistry(settings.nlu.model_dir)
    promote = bool(args.promote) or registry.current() is None
    info = train_model(
        settings,
        extra_dirs=[Path(d) for d in args.extra_dir],
        progress=None if args.quiet else _progress,
        promote=promote,
    )
    _print_json(info.to_dict())
    if not promote:
        print(f"not promoted; `tawasul nlu promote {info.version}` to use it", file=sys.stderr)
    return 0


def _evaluate(settings: Settings, args: argparse.Namespace) -> int:
    from nlu.dataset import load_dataset
    from nlu.registry import ModelRegistry
    from nlu.training import evaluate, summary

    registry = ModelRegistry(settings.nlu.model_dir)
    engine = _embedded(settings, args.version)
    dataset = load_dataset(settings)
    info = registry.get(engine.model_version)
    out_dir = Path(args.out) if args.out else info.path / "evaluation"
    metrics = evaluate(engine, dataset.heldout, out_dir=out_dir, settings=settings)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
    if info.data_hash != dataset.data_hash:
        print(
            f"note: the data changed since {info.version} was trained (data hash {info.data_hash} -> "
            f"{dataset.data_hash}); the held-out split is today's",
            file=sys.stderr,
        )
    result = summary(metrics)
    result["per_class"] = metrics["per_class"]
    result["plots"] = metrics.get("plots", [])
    result["metrics_file"] = str(out_dir / "metrics.json")
    result["model_version"] = engine.model_version
    _print_json(result)
    return 0


def _parse(settings: Settings, args: argparse.Namespace) -> int:
    engine = _engine(settings, args.engine)
    try:
        result = asyncio.run(engine.parse(args.text))
    finally:
        _close(engine)
    _print_json(result.to_dict())
    return 0


def _close(engine: Any) -> None:
    close = getattr(engine, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):  # closing a client on the way out must not mask the result
            asyncio.run(close())


def predict_stream(engine: Any, lines: Any, out: TextIO) -> int:
    """The ``predict`` loop over byte lines; returns the number of error lines."""
    from nlu.types import NLUUnavailable

    errors = 0
    loop = asyncio.new_event_loop()
    try:
        for raw in lines:
            record: dict[str, Any]
            try:
                line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise TypeError("line is not a JSON object")
                text = data.get("text")
                if not isinstance(text, str):
                    raise TypeError("missing 'text'" if text is None else "'text' must be a string")
                result = loop.run_until_complete(engine.parse(text))
                record = {**data, **result.to_dict()}
            except (UnicodeDecodeError, ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
                record = {"error": f"invalid input line: {exc}"}
                errors += 1
            except NLUUnavailable as exc:
                record = {"error": f"engine unavailable: {exc}"}
                errors += 1
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
        close = getattr(engine, "close", None)
        if close is not None:
            loop.run_until_complete(close())
    finally:
        loop.close()
    return errors


def _predict(settings: Settings, args: argparse.Namespace) -> int:
    engine = _engine(settings, args.engine)
    lines = (raw.rstrip(b"\r\n") for raw in sys.stdin.buffer)
    predict_stream(engine, lines, sys.stdout)
    return 0


def _check(settings: Settings, args: argparse.Namespace) -> int:
    from nlu.dataset import _yml_files, check_data, load_examples, train_only_dirs

    files = _yml_files(settings.nlu.data_dir)
    for directory in train_only_dirs(settings):
        files.extend(_yml_files(directory))
    examples = load_examples(files)
    issues = check_data(examples, settings.nlu)
    for issue in issues:
        print(issue)
    errors = sum(1 for i in issues if i.severity == "error")
    warnings = len(issues) - errors
    print(
        f"{len(examples)} examples in {len(files)} files: {errors} errors, {warnings} warnings",
        file=sys.stderr,
    )
    return 1 if errors else 0


def _export_rasa(settings: Settings, args: argparse.Namespace) -> int:
    from nlu.rasa_export import export_project

    result = export_project(settings, Path(args.dir))
    if result is not None:
        _print_json(result if isinstance(result, (dict, list, str, int)) else str(result))
    return 0


def _models(settings: Settings, args: argparse.Namespace) -> int:
    from nlu.registry import ModelRegistry

    registry = ModelRegistry(settings.nlu.model_dir)
    current = registry.current()
    rows = []
    for info in registry.list_models():
        m = info.metrics
        rows.append(
            {
                "version": info.version,
                "created_at": info.created_at,
                "current": current is not None and info.version == current.version,
                "promoted": info.promoted,
                "data_hash": info.data_hash,
                "type_macro_f1": m.get("type_macro_f1"),
                "agency_accuracy": m.get("agency_accuracy"),
                "intent_macro_f1": m.get("intent_macro_f1"),
            }
        )
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no models in {settings.nlu.model_dir}")
    for r in rows:
        mark = "*" if r["current"] else ("p" if r["promoted"] else " ")
        print(
            f"{mark} {r['version']}  {r['created_at']}  type-F1 {r['type_macro_f1']}  "
            f"agency {r['agency_accuracy']}  intent-F1 {r['intent_macro_f1']}"
        )
    return 0


def _promote(settings: Settings, args: argparse.Namespace) -> int:
    from nlu.registry import ModelRegistry, RegistryError

    try:
        info = ModelRegistry(settings.nlu.model_dir).promote(args.version)
    except RegistryError as exc:
        print(f"tawasul: {exc}", file=sys.stderr)
        return 1
    print(f"promoted {info.version}")
    return 0


def _rollback(settings: Settings, args: argparse.Namespace) -> int:
    from nlu.registry import ModelRegistry, RegistryError

    try:
        info = ModelRegistry(settings.nlu.model_dir).rollback()
    except RegistryError as exc:
        print(f"tawasul: {exc}", file=sys.stderr)
        return 1
    print(f"current model is now {info.version}")
    return 0


def register(sub: Any) -> None:
    nlu = sub.add_parser("nlu", help="the embedded NLU: train, evaluate, parse, predict, models")
    cmds = nlu.add_subparsers(dest="nlu_command", required=True, metavar="COMMAND")

    p = cmds.add_parser("train", help="train on nlu/data (+ reviewed data), evaluate on the held-out split")
    p.add_argument("--promote", action="store_true", help="make it the current model (default: only if none)")
    p.add_argument(
        "--extra-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="more training-only Rasa NLU YAML (repeatable)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_train)

    p = cmds.add_parser("evaluate", help="metrics and confusion matrices (PNG) on the held-out split")
    p.add_argument("--version", help="model version (default: the current one)")
    p.add_argument("--out", help="directory for metrics.json and PNGs (default: <model>/evaluation)")
    p.set_defaults(func=_evaluate)

    p = cmds.add_parser("parse", help="parse one message and print the result as JSON")
    p.add_argument("text")
    p.add_argument("--engine", choices=("embedded", "rasa"), default="embedded")
    p.set_defaults(func=_parse)

    p = cmds.add_parser("predict", help="JSON Lines in (stdin, objects with 'text'), JSON Lines out")
    p.add_argument("--engine", choices=("embedded", "rasa"), default="embedded")
    p.set_defaults(func=_predict)

    p = cmds.add_parser("check", help="check the training data (duplicates, label conflicts, leakage...)")
    p.set_defaults(func=_check)

    p = cmds.add_parser("export-rasa", help="write the training split as a Rasa project")
    p.add_argument("dir")
    p.set_defaults(func=_export_rasa)

    p = cmds.add_parser("models", help="list trained models (* current, p promoted earlier)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_models)

    p = cmds.add_parser("promote", help="make a trained model the current one")
    p.add_argument("version")
    p.set_defaults(func=_promote)

    p = cmds.add_parser("rollback", help="go back to the previously promoted model")
    p.set_defaults(func=_rollback)
