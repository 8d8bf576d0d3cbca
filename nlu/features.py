"""Sparse features of a normalised message.

Blocks, each TF-IDF (sublinear tf, smoothed idf, l2-normalised) and scaled by its weight:

* ``char``: character n-grams inside word boundaries (2-5), robust to typos and clitics;
* ``word``: word uni- and bigrams;
* ``skel``: consonant skeletons of the words (``nlu/skeleton.py``), shared by Arabic script and Arabizi;

plus ``meta``: weighted indicators from the gazetteers (explicit agency mentions, topic terms).

Written out rather than using scikit-learn's ``TfidfVectorizer`` at inference: the vectoriser's per-call
overhead (input validation, sparse matrix assembly) is several times the cost of the arithmetic for one short
message, and the latency budget is 1 ms. The maths is that of ``TfidfVectorizer(analyzer="char_wb",
sublinear_tf=True, smooth_idf=True, norm="l2")`` (a test checks it), and training uses this same code, so
training and serving cannot drift apart. The fitted state is plain dicts and arrays (pickles small, loads
fast, no scikit-learn version coupling).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import repeat

import numpy as np
import numpy.typing as npt
from scipy import sparse

from nlu.language import detect_language
from nlu.skeleton import skeleton
from nlu.types import Language

CHAR_RANGE = (2, 5)
WORD_RANGE = (1, 2)
SKEL_CHAR_RANGE = (3, 4)

Row = tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]


def char_ngrams(text: str, lo: int = CHAR_RANGE[0], hi: int = CHAR_RANGE[1]) -> list[str]:
    """Character n-grams of each space-padded word (scikit-learn's ``char_wb``)."""
    grams: list[str] = []
    for word in text.split():
        grams.extend(_word_char_ngrams(word, lo, hi))
    return grams


# Words repeat from message to message: their n-grams are computed once (bounded, so memory stays flat).
@lru_cache(maxsize=8192)
def _word_char_ngrams(word: str, lo: int, hi: int) -> tuple[str, ...]:
    padded = f" {word} "
    size = len(padded)
    grams: list[str] = []
    for n in range(lo, hi + 1):
        if n > size:
            break
        grams.extend(padded[i : i + n] for i in range(size - n + 1))
    return tuple(grams)


def word_ngrams(text: str, lo: int = WORD_RANGE[0], hi: int = WORD_RANGE[1]) -> list[str]:
    tokens = text.split()
    grams: list[str] = []
    for n in range(lo, hi + 1):
        grams.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return grams


def skeleton_grams(text: str) -> list[str]:
    """Skeleton words and their character 3-4-grams (Latin words only in an Arabizi message)."""
    tokens = text.split()
    skel = skeleton(tokens, latin=detect_language(tokens) is Language.ARABIZI)
    return ["w:" + w for w in skel.split()] + char_ngrams(skel, *SKEL_CHAR_RANGE)


def _skel_word_grams(skel_word: str) -> tuple[str, ...]:
    return ("w:" + skel_word, *_word_char_ngrams(skel_word, *SKEL_CHAR_RANGE))


def _char_word_grams(word: str) -> tuple[str, ...]:
    return _word_char_ngrams(word, *CHAR_RANGE)


_MAX_WORD_CACHE = 50_000


@dataclass(slots=True)
class TfidfBlock:
    vocab: dict[str, int]  # gram -> column within the block
    idf: npt.NDArray[np.float32]
    weight: float = 1.0
    # word -> in-vocabulary columns of its n-grams (serving cache; not pickled)
    _word_cols: dict[str, npt.NDArray[np.intp]] = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict[str, object]:
        return {"vocab": self.vocab, "idf": self.idf, "weight": self.weight}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.vocab = state["vocab"]  # type: ignore[assignment]
        self.idf = state["idf"]  # type: ignore[assignment]
        self.weight = state["weight"]  # type: ignore[assignment]
        self._word_cols = {}

    def doc_cols(self, words: Sequence[str], grams_of: Callable[[str], tuple[str, ...]]) -> npt.NDArray[np.intp]:
        """Columns of all the n-grams of ``words`` (with repeats), from a per-word cache: words recur from
        message to message, so a word's n-grams are generated and looked up once."""
        cache = self._word_cols
        parts: list[npt.NDArray[np.intp]] = []
        for word in words:
            cols = cache.get(word)
            if cols is None:
                grams = grams_of(word)
                found = np.fromiter(map(self.vocab.get, grams, repeat(-1)), dtype=np.intp, count=len(grams))
                cols = found[found >= 0]
                if len(cache) >= _MAX_WORD_CACHE:
                    cache.clear()
                cache[word] = cols
            parts.append(cols)
        return np.concatenate(parts) if parts else _NO_COLS

    def weights_of_cols(self, cols: npt.NDArray[np.intp]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
        """``weights`` for a document given as the columns of its in-vocabulary n-grams."""
        if len(cols) == 0:
            return _NO_COLS, _NO_VALS
        idx, tf = np.unique(cols, return_counts=True)
        vals = self.idf[idx] * (1.0 + np.log(tf.astype(np.float32)))
        norm = float(np.sqrt(vals @ vals))
        if norm > 0:
            vals *= self.weight / norm
        return idx, vals.astype(np.float32, copy=False)

    @classmethod
    def fit(cls, docs: Sequence[list[str]], min_df: int, weight: float = 1.0) -> TfidfBlock:
        df: Counter[str] = Counter()
        for grams in docs:
            df.update(set(grams))
        kept = sorted(g for g, c in df.items() if c >= min_df)
        n = len(docs)
        idf = np.array([math.log((1 + n) / (1 + df[g])) + 1.0 for g in kept], dtype=np.float32)
        return cls({g: i for i, g in enumerate(kept)}, idf, weight)

    def weights(self, grams: list[str]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
        """Columns and l2-normalised (times the block weight) sublinear tf-idf weights of one document."""
        counts = Counter(grams)
        if not counts:
            return _NO_COLS, _NO_VALS
        # Lookups and filtering in C (map / numpy), not in a Python loop: this is the hot path.
        found = np.fromiter(map(self.vocab.get, counts, repeat(-1)), dtype=np.intp, count=len(counts))
        keep = found >= 0
        if not keep.any():
            return _NO_COLS, _NO_VALS
        idx = found[keep]
        tf = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))[keep]
        vals = self.idf[idx] * (1.0 + np.log(tf))
        norm = float(np.sqrt(vals @ vals))
        if norm > 0:
            vals *= self.weight / norm
        return idx, vals.astype(np.float32, copy=False)


_NO_COLS: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
_NO_VALS: npt.NDArray[np.float32] = np.zeros(0, dtype=np.float32)


@dataclass(slots=True)
class FeatureSpace:
    char: TfidfBlock
    word: TfidfBlock
    meta: dict[str, int]  # indicator name -> column within the meta block
    meta_weight: float
    skel: TfidfBlock | None = None
    _offsets: tuple[int, int, int] = field(default=(0, 0, 0))

    def __post_init__(self) -> None:
        n_char, n_word = len(self.char.vocab), len(self.word.vocab)
        n_skel = len(self.skel.vocab) if self.skel is not None else 0
        self._offsets = (n_char, n_char + n_word, n_char + n_word + n_skel)

    @property
    def n_features(self) -> int:
        return self._offsets[2] + len(self.meta)

    def block_mask(self, blocks: Sequence[str]) -> npt.NDArray[np.float32]:
        """1 for the columns of the named blocks (char, word, skel, meta), 0 elsewhere."""
        bounds = {
            "char": (0, self._offsets[0]),
            "word": (self._offsets[0], self._offsets[1]),
            "skel": (self._offsets[1], self._offsets[2]),
            "meta": (self._offsets[2], self.n_features),
        }
        mask = np.zeros(self.n_features, dtype=np.float32)
        for name in blocks:
            lo, hi = bounds[name]
            mask[lo:hi] = 1.0
        return mask

    @classmethod
    def fit_matrix(
        cls,
        texts: Sequence[str],
        metas: Sequence[Sequence[str]],
        meta_names: Sequence[str],
        *,
        char_min_df: int = 2,
        word_min_df: int = 1,
        meta_weight: float = 0.5,
        skel_weight: float = 0.0,
    ) -> tuple[FeatureSpace, sparse.csr_matrix]:
        """Fit on ``texts``; also return the matrix of ``texts`` with ``metas`` (the n-grams are generated
        once for both). ``skel_weight`` 0 leaves the skeleton block out."""
        grams = [cls._grams(t, skel_weight > 0) for t in texts]
        char = TfidfBlock.fit([g[0] for g in grams], char_min_df)
        word = TfidfBlock.fit([g[1] for g in grams], word_min_df)
        skel = TfidfBlock.fit([g[2] for g in grams], char_min_df, skel_weight) if skel_weight > 0 else None
        meta = {name: i for i, name in enumerate(sorted(set(meta_names)))}
        space = cls(char, word, meta, meta_weight, skel)
        rows = [space._row(g, m) for g, m in zip(grams, metas, strict=True)] if metas else []
        return space, space._stack(rows)

    @staticmethod
    def _grams(text: str, with_skeleton: bool) -> tuple[list[str], list[str], list[str]]:
        return char_ngrams(text), word_ngrams(text), skeleton_grams(text) if with_skeleton else []

    def _row(self, grams: tuple[list[str], list[str], list[str]], meta: Sequence[str]) -> Row:
        off_word, off_skel, off_meta = self._offsets
        c_cols, c_vals = self.char.weights(grams[0])
        w_cols, w_vals = self.word.weights(grams[1])
        cols = [c_cols, w_cols + off_word]
        vals = [c_vals, w_vals]
        if self.skel is not None:
            s_cols, s_vals = self.skel.weights(grams[2])
            cols.append(s_cols + off_skel)
            vals.append(s_vals)
        if meta:
            cols.append(self._meta_cols(meta))
            vals.append(self._meta_vals(meta))
        return np.concatenate(cols), np.concatenate(vals)

    def _stack(self, rows: Sequence[Row]) -> sparse.csr_matrix:
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(c) for c, _ in rows], out=indptr[1:])
        indices = np.concatenate([c for c, _ in rows]) if rows else np.zeros(0, np.intp)
        data = np.concatenate([v for _, v in rows]) if rows else np.zeros(0, np.float32)
        return sparse.csr_matrix((data, indices, indptr), shape=(len(rows), self.n_features))

    def vector(self, text: str, meta: Sequence[str] = (), language: Language | None = None) -> Row:
        """(columns, values) of one normalised text and its indicator names (the serving path: same numbers
        as the training path ``fit_matrix``, computed from per-word caches)."""
        off_word, off_skel, off_meta = self._offsets
        tokens = text.split()
        c_cols, c_vals = self.char.weights_of_cols(self.char.doc_cols(tokens, _char_word_grams))
        w_cols, w_vals = self.word.weights(word_ngrams(text))
        cols = [c_cols, w_cols + off_word]
        vals = [c_vals, w_vals]
        if self.skel is not None:
            language = detect_language(tokens) if language is None else language
            skel_words = skeleton(tokens, latin=language is Language.ARABIZI).split()
            s_cols, s_vals = self.skel.weights_of_cols(self.skel.doc_cols(skel_words, _skel_word_grams))
            cols.append(s_cols + off_skel)
            vals.append(s_vals)
        if meta:
            cols.append(self._meta_cols(meta))
            vals.append(self._meta_vals(meta))
        return np.concatenate(cols), np.concatenate(vals)

    def _meta_cols(self, meta: Sequence[str]) -> npt.NDArray[np.intp]:
        off = self._offsets[2]
        return np.array([off + self.meta[m] for m in Counter(meta) if m in self.meta], dtype=np.intp)

    def _meta_vals(self, meta: Sequence[str]) -> npt.NDArray[np.float32]:
        return np.array(
            [self.meta_weight * min(c, 2) for m, c in Counter(meta).items() if m in self.meta], dtype=np.float32
        )

    def matrix(self, texts: Sequence[str], metas: Sequence[Sequence[str]]) -> sparse.csr_matrix:
        return self._stack([self.vector(t, m) for t, m in zip(texts, metas, strict=True)])
