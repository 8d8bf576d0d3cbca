"""Training data: Rasa 3 NLU YAML under ``nlu/data/`` -> labelled examples, a held-out split, a data check.

Label mapping: a block whose intent is a case type (complaint / suggestion / inquiry) becomes intent
``file_case`` with that ``type``; dialogue intents (greet, cancel, ...) keep their name and have no type.

The held-out split is chosen by a salted hash of the normalised text, so an example stays on its side when
files are added or reordered. Near-duplicates (normalised word sets with Jaccard >= the configured
threshold) are grouped and a group goes to one side as a whole, so the held-out set never contains a
paraphrase of a training example. Staff-reviewed data (``extra_dirs``, ``settings.nlu.reviewed_data_dir``
and ``data_dir/reviewed``) is training-only; a hand-written held-out example that near-duplicates it moves
to the training side.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from config.agencies import AGENCY_IDS
from config.settings import NLUSettings, Settings
from nlu.language import detect_language
from nlu.normalize import normalize
from nlu.types import CaseType, Intent, Language

CASE_TYPES: frozenset[str] = frozenset(t.value for t in CaseType)
DIALOGUE_INTENTS: frozenset[str] = frozenset(i.value for i in Intent if i is not Intent.FILE_CASE)
STYLES: tuple[str, ...] = ("gulf", "msa", "en", "arabizi", "mixed")
STYLE_LANGUAGE: dict[str, Language] = {
    "gulf": Language.AR,
    "msa": Language.AR,
    "en": Language.EN,
    "arabizi": Language.ARABIZI,
    "mixed": Language.MIXED,
}
# Rasa inline entity annotations "[text](entity)" / "[text]{...}": the model sees only the text.
_ANNOTATION_RE = re.compile(r"\[([^\]\n]+)\](?:\([^)\n]*\)|\{[^}\n]*\})")
_EXAMPLE_LINE_RE = re.compile(r"^\s*-\s?(.*)$")


class DataError(Exception):
    """A training data file cannot be read (the message names the file)."""


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    intent: str  # "file_case" or a dialogue intent
    type: str | None  # complaint | suggestion | inquiry for file_case, else None
    agency: str | None
    style: str | None
    source: str  # "path:line" (path relative to the project when possible)

    @property
    def label(self) -> tuple[str, str | None, str | None]:
        return (self.intent, self.type, self.agency)

    @property
    def language(self) -> Language | None:
        """The language the style implies (None when the block has no style)."""
        return STYLE_LANGUAGE.get(self.style or "")


@dataclass(frozen=True, slots=True)
class DataIssue:
    kind: str  # duplicate | label_conflict | near_duplicate_split | unknown_agency | missing_agency |
    # unknown_intent | unknown_style | style_language | empty
    severity: str  # "error" (would mislead training/evaluation) or "warning"
    message: str
    sources: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.severity}: {self.kind}: {self.message} [{', '.join(self.sources)}]"


@dataclass(slots=True)
class Dataset:
    train: list[Example]
    heldout: list[Example]
    files: list[str] = field(default_factory=list)
    data_hash: str = ""
    # Hand-written held-out examples moved to train because reviewed data near-duplicates them.
    moved_to_train: int = 0

    @property
    def examples(self) -> list[Example]:
        return [*self.train, *self.heldout]


# --- loading -------------------------------------------------------------------------------------------


def _display(path: Path) -> str:
    from config.settings import PROJECT_DIR

    try:
        return str(path.resolve().relative_to(PROJECT_DIR))
    except ValueError:
        return str(path)


def _clean_text(text: str) -> str:
    return _ANNOTATION_RE.sub(r"\1", text).strip()


def _examples_of_block(block: Any, node: yaml.Node | None) -> list[tuple[str, int | None]]:
    """(text, 0-based file line) of the examples of one block (block-scalar or list-of-dicts form)."""
    raw = block.get("examples")
    out: list[tuple[str, int | None]] = []
    examples_node: yaml.Node | None = None
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if getattr(key_node, "value", None) == "examples":
                examples_node = value_node
    if isinstance(raw, str):
        # A literal block scalar maps its value lines one to one onto the file lines after the indicator.
        first_line = None
        if isinstance(examples_node, yaml.ScalarNode) and examples_node.style in ("|", ">"):
            first_line = examples_node.start_mark.line + 1
        for offset, line in enumerate(raw.splitlines()):
            m = _EXAMPLE_LINE_RE.match(line)
            if m is None:
                continue
            out.append((m.group(1), None if first_line is None else first_line + offset))
    elif isinstance(raw, list):
        items = examples_node.value if isinstance(examples_node, yaml.SequenceNode) else []
        for i, item in enumerate(raw):
            value = item.get("text") if isinstance(item, dict) else item
            if isinstance(value, str):
                item_line: int | None = items[i].start_mark.line if i < len(items) else None
                out.append((value, item_line))
    return out


_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _node_value(node: yaml.Node | None) -> Any:
    """Plain Python value of a composed node (scalars stay strings: all we read are strings)."""
    if node is None:
        return None
    if isinstance(node, yaml.MappingNode):
        return {_node_value(k): _node_value(v) for k, v in node.value}
    if isinstance(node, yaml.SequenceNode):
        return [_node_value(v) for v in node.value]
    if node.tag.endswith(":null") or (node.value in ("", "~", "null") and not getattr(node, "style", None)):
        return None
    return node.value


def load_examples(paths: Iterable[Path]) -> list[Example]:
    """Every example of the given Rasa NLU YAML files, in file order, labels mapped (see module doc).

    Nothing is dropped here (unknown intents and agencies are kept as written) so ``check_data`` can report
    them; ``load_dataset`` keeps only usable examples. An unreadable file raises ``DataError``.
    """
    examples: list[Example] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
            # One parse: the node tree gives both the values and the line numbers.
            root = yaml.compose(text, Loader=_LOADER)
            data = _node_value(root)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise DataError(f"cannot read NLU data {_display(path)}: {exc}".splitlines()[0]) from None
        if data is None:
            continue
        if not isinstance(data, dict):
            raise DataError(f"NLU data {_display(path)}: top level must be a mapping with key 'nlu'")
        blocks = data.get("nlu") or []
        if not isinstance(blocks, list):
            raise DataError(f"NLU data {_display(path)}: 'nlu' must be a list of blocks")
        block_nodes: list[yaml.Node] = []
        if isinstance(root, yaml.MappingNode):
            for key_node, value_node in root.value:
                if getattr(key_node, "value", None) == "nlu" and isinstance(value_node, yaml.SequenceNode):
                    block_nodes = list(value_node.value)
        name = _display(path)
        for b, block in enumerate(blocks):
            if not isinstance(block, dict) or "intent" not in block:
                continue  # synonyms, regexes, lookups: not examples
            raw_intent = str(block["intent"]).strip()
            raw_metadata = block.get("metadata")
            metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
            agency = metadata.get("agency")
            style = metadata.get("style")
            if raw_intent in CASE_TYPES:
                intent, case_type = Intent.FILE_CASE.value, raw_intent
            else:
                intent, case_type = raw_intent, None
            node = block_nodes[b] if b < len(block_nodes) else None
            for example_text, line in _examples_of_block(block, node):
                examples.append(
                    Example(
                        text=_clean_text(example_text),
                        intent=intent,
                        type=case_type,
                        agency=None if agency is None else str(agency),
                        style=None if style is None else str(style),
                        source=f"{name}:{'?' if line is None else line + 1}",
                    )
                )
    return examples


def _usable(example: Example) -> bool:
    if not example.text.strip():
        return False
    if example.intent == Intent.FILE_CASE.value:
        return example.type in CASE_TYPES and example.agency in AGENCY_IDS
    return example.intent in DIALOGUE_INTENTS


def _yml_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.yml") if p.is_file())


# --- split ---------------------------------------------------------------------------------------------


def example_key(example: Example | str) -> str:
    """The normalised text that identifies an example (duplicates share it); punctuation does not count."""
    text = normalize(example if isinstance(example, str) else example.text)
    return " ".join(t for t in text.split() if t not in ("?", "!")) or text


def _unit_hash(key: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def near_duplicate_pairs(keys: Sequence[str], threshold: float) -> list[tuple[int, int]]:
    """Index pairs whose word sets have Jaccard >= threshold.

    All-pairs similarity join with prefix filtering (Bayardo et al. 2007): two sets reaching the threshold
    must share a word among their rarest ``|s| - ceil(t*|s|) + 1`` words, so only those are indexed.
    Hand-written because it is 30 lines and avoids an O(n^2) scan or an approximate MinHash library.
    """
    sets = [frozenset(k.split()) for k in keys]
    freq: Counter[str] = Counter(w for s in sets for w in s)
    index: dict[str, list[int]] = defaultdict(list)
    pairs: list[tuple[int, int]] = []
    order = sorted(range(len(sets)), key=lambda i: len(sets[i]))
    for i in order:
        s = sets[i]
        if not s:
            continue
        words = sorted(s, key=lambda w: (freq[w], w))
        prefix = len(s) - math.ceil(threshold * len(s)) + 1
        candidates: set[int] = set()
        for w in words[:prefix]:
            candidates.update(index[w])
            index[w].append(i)
        for j in candidates:
            other = sets[j]
            if len(other) < threshold * len(s):
                continue
            inter = len(s & other)
            if inter / (len(s) + len(other) - inter) >= threshold:
                pairs.append((min(i, j), max(i, j)))
    return pairs


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def duplicate_groups(examples: Sequence[Example], threshold: float) -> list[int]:
    """Group id per example: exact and near-duplicates (transitively) share one (for grouped CV folds)."""
    keys = [example_key(e) for e in examples]
    uf = _UnionFind(len(keys))
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k in first:
            uf.union(first[k], i)
        else:
            first[k] = i
    for a, b in near_duplicate_pairs(keys, threshold):
        uf.union(a, b)
    return [uf.find(i) for i in range(len(keys))]


def split_examples(
    examples: Sequence[Example], nlu: NLUSettings, extra: Sequence[Example] = ()
) -> tuple[list[Example], list[Example], int]:
    """(train, heldout, moved) for hand-written ``examples`` plus train-only ``extra``. Deterministic."""
    keys = [example_key(e) for e in examples]
    extra_keys = [example_key(e) for e in extra]
    all_keys = keys + extra_keys
    n = len(keys)
    uf = _UnionFind(len(all_keys))
    # Exact duplicates (same key) are near-duplicates too.
    first: dict[str, int] = {}
    for i, k in enumerate(all_keys):
        if k in first:
            uf.union(first[k], i)
        else:
            first[k] = i
    for a, b in near_duplicate_pairs(all_keys, nlu.near_duplicate_jaccard):
        uf.union(a, b)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(all_keys)):
        groups[uf.find(i)].append(i)
    heldout_groups: set[int] = set()
    moved = 0
    group_hash: dict[int, float] = {}
    for root, members in groups.items():
        group_hash[root] = min(_unit_hash(all_keys[i], nlu.split_salt) for i in members)
        if group_hash[root] < nlu.heldout_fraction:
            if any(i >= n for i in members):
                moved += sum(1 for i in members if i < n)
                continue
            heldout_groups.add(root)
    # Coverage: every agency and every style appears in held-out; add the group with the lowest hash
    # (hand-written only) for any that is missing.
    for attr, values in (("agency", AGENCY_IDS), ("style", STYLES)):
        present = {getattr(examples[i], attr) for r in heldout_groups for i in groups[r]}
        for value in values:
            if value in present:
                continue
            options = [
                r
                for r, members in groups.items()
                if r not in heldout_groups
                and all(i < n for i in members)
                and any(getattr(examples[i], attr) == value for i in members)
            ]
            if options:
                chosen = min(options, key=lambda r: group_hash[r])
                heldout_groups.add(chosen)
                present.update(getattr(examples[i], attr) for i in groups[chosen])
    train: list[Example] = []
    heldout: list[Example] = []
    for i, example in enumerate(examples):
        (heldout if uf.find(i) in heldout_groups else train).append(example)
    train.extend(extra)
    return train, heldout, moved


def _hash_examples(train: Sequence[Example], heldout: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for side, items in (("train", train), ("heldout", heldout)):
        for e in sorted(items, key=lambda e: (e.text, e.intent, e.type or "", e.agency or "", e.style or "")):
            h.update(f"{side}\x1f{e.text}\x1f{e.intent}\x1f{e.type}\x1f{e.agency}\x1f{e.style}\x1e".encode())
    return h.hexdigest()[:16]


def train_only_dirs(settings: Settings, extra_dirs: Sequence[Path] = ()) -> list[Path]:
    dirs = [settings.nlu.data_dir / "reviewed", settings.nlu.reviewed_data_dir, *extra_dirs]
    unique: list[Path] = []
    for d in dirs:
        if d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def load_dataset(settings: Settings, extra_dirs: Sequence[Path] = ()) -> Dataset:
    """Every ``data_dir/*.yml`` (split train/held-out) plus the train-only reviewed data.

    Unusable examples (unknown intent or agency, empty text) are left out; ``check_data`` reports them.
    A reviewed file that cannot be read is skipped (staff data must not stop training); a hand-written one
    raises ``DataError``.
    """
    nlu = settings.nlu
    files = _yml_files(nlu.data_dir)
    handwritten = [e for e in load_examples(files) if _usable(e)]
    extra: list[Example] = []
    extra_files: list[Path] = []
    for directory in train_only_dirs(settings, extra_dirs):
        for path in _yml_files(directory):
            try:
                extra.extend(e for e in load_examples([path]) if _usable(e))
                extra_files.append(path)
            except DataError:
                import logging

                logging.getLogger(__name__).warning("skipping unreadable reviewed NLU data %s", path)
    train, heldout, moved = split_examples(handwritten, nlu, extra)
    return Dataset(
        train=train,
        heldout=heldout,
        files=[_display(p) for p in [*files, *extra_files]],
        data_hash=_hash_examples(train, heldout),
        moved_to_train=moved,
    )


# --- check ---------------------------------------------------------------------------------------------


def check_data(examples: Sequence[Example], nlu: NLUSettings | None = None) -> list[DataIssue]:
    """Problems in the data: errors mislead training or evaluation, warnings deserve a look.

    errors: label conflicts (same normalised text, different labels), unknown intent / agency / style,
    a case example without agency, an empty example, near-duplicates on both sides of the split;
    warnings: exact duplicates after normalisation, style metadata contradicting the detected language.
    """
    nlu = nlu or NLUSettings()
    issues: list[DataIssue] = []
    by_key: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        key = example_key(e)
        if not key:
            issues.append(DataIssue("empty", "error", "example is empty after normalisation", (e.source,)))
            continue
        by_key[key].append(e)
        if e.intent != Intent.FILE_CASE.value and e.intent not in DIALOGUE_INTENTS:
            issues.append(DataIssue("unknown_intent", "error", f"unknown intent {e.intent!r}", (e.source,)))
        if e.intent == Intent.FILE_CASE.value and e.agency is None:
            issues.append(DataIssue("missing_agency", "error", f"{e.type} without agency", (e.source,)))
        if e.agency is not None and e.agency not in AGENCY_IDS:
            issues.append(DataIssue("unknown_agency", "error", f"unknown agency {e.agency!r}", (e.source,)))
        if e.style is not None and e.style not in STYLE_LANGUAGE:
            issues.append(DataIssue("unknown_style", "error", f"unknown style {e.style!r}", (e.source,)))
        elif e.style is not None:
            detected = detect_language(key.split())
            expected = STYLE_LANGUAGE[e.style]
            if detected is not expected:
                issues.append(
                    DataIssue(
                        "style_language",
                        "warning",
                        f"style {e.style} but language detected as {detected.value}: {e.text[:60]!r}",
                        (e.source,),
                    )
                )
    for key, group in by_key.items():
        if len(group) < 2:
            continue
        labels = {e.label for e in group}
        sources = tuple(e.source for e in group)
        if len(labels) > 1:
            shown = "; ".join(sorted(f"{i}/{t}/{a}" for i, t, a in labels))
            issues.append(DataIssue("label_conflict", "error", f"{key[:60]!r} labelled {shown}", sources))
        else:
            issues.append(
                DataIssue("duplicate", "warning", f"{key[:60]!r} appears {len(group)} times", sources)
            )
    usable = [e for e in examples if _usable(e)]
    train, heldout, _ = split_examples(usable, nlu)
    train_keys = [example_key(e) for e in train]
    heldout_keys = [example_key(e) for e in heldout]
    for a, b in near_duplicate_pairs(train_keys + heldout_keys, nlu.near_duplicate_jaccard):
        if (a < len(train)) != (b < len(train)):
            ta, hb = (a, b - len(train)) if a < len(train) else (b, a - len(train))
            issues.append(
                DataIssue(
                    "near_duplicate_split",
                    "error",
                    "near-duplicates on both sides of the train/held-out split",
                    (train[ta].source, heldout[hb].source),
                )
            )
    return issues
