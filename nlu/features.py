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
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise, repeat

import numpy as np
import numpy.typing as npt
from scipy import sparse

from nlu.language import detect_language
from nlu.skeleton import skeleton, stems
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


def stem_grams(text: str) -> list[str]:
    return ["s:" + st for st in stems(text.split())]


def skeleton_grams(text: str) -> list[str]:
    """Skeleton words and their character 3-4-grams (Latin words only in an Arabizi message)."""
    tokens = text.split()
    skel = skeleton(tokens, latin=detect_language(tokens) is Language.ARABIZI)
    return ["w:" + w for w in skel.split()] + char_ngrams(skel, *SKEL_CHAR_RANGE)


_MAX_TOKEN_CACHE = 50_000


@dataclass(slots=True)
class TfidfBlock:
    vocab: dict[str, int]  # gram -> column within the block
    idf: npt.NDArray[np.float32]
    weight: float = 1.0

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
    # Light stems of Arabic words as extra terms in the skeleton block.
    stems: bool = False
    _offsets: tuple[int, int, int] = field(default=(0, 0, 0))
    # Serving state, rebuilt after unpickling: idf of all columns, block weights, per-token column cache.
    _idf: npt.NDArray[np.float32] = field(default_factory=lambda: _NO_VALS, repr=False, compare=False)
    _block_weight: npt.NDArray[np.float32] = field(
        default_factory=lambda: _NO_VALS, repr=False, compare=False
    )
    _bounds: npt.NDArray[np.intp] = field(default_factory=lambda: _NO_COLS, repr=False, compare=False)
    _token_cols: dict[tuple[str, bool], npt.NDArray[np.intp]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        n_char, n_word = len(self.char.vocab), len(self.word.vocab)
        n_skel = len(self.skel.vocab) if self.skel is not None else 0
        self._offsets = (n_char, n_char + n_word, n_char + n_word + n_skel)
        skel_idf = self.skel.idf if self.skel is not None else _NO_VALS
        self._idf = np.concatenate([self.char.idf, self.word.idf, skel_idf]).astype(np.float32)
        skel_weight = self.skel.weight if self.skel is not None else 0.0
        self._block_weight = np.array([self.char.weight, self.word.weight, skel_weight], dtype=np.float32)
        self._bounds = np.array(self._offsets[:2], dtype=np.intp)
        self._token_cols = {}

    def __getstate__(self) -> dict[str, object]:
        return {
            "char": self.char,
            "word": self.word,
            "meta": self.meta,
            "meta_weight": self.meta_weight,
            "skel": self.skel,
            "stems": self.stems,
        }

    def __setstate__(self, state: dict[str, object]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
        self.__post_init__()

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
        use_stems: bool = False,
    ) -> tuple[FeatureSpace, sparse.csr_matrix]:
        """Fit on ``texts``; also return the matrix of ``texts`` with ``metas`` (the n-grams are generated
        once for both). ``skel_weight`` 0 leaves the skeleton block out."""
        grams = [cls._grams(t, skel_weight > 0, use_stems) for t in texts]
        char = TfidfBlock.fit([g[0] for g in grams], char_min_df)
        word = TfidfBlock.fit([g[1] for g in grams], word_min_df)
        skel = TfidfBlock.fit([g[2] for g in grams], char_min_df, skel_weight) if skel_weight > 0 else None
        meta = {name: i for i, name in enumerate(sorted(set(meta_names)))}
        space = cls(char, word, meta, meta_weight, skel, use_stems)
        rows = [space._row(g, m) for g, m in zip(grams, metas, strict=True)] if metas else []
        return space, space._stack(rows)

    @staticmethod
    def _grams(
        text: str, with_skeleton: bool, with_stems: bool = False
    ) -> tuple[list[str], list[str], list[str]]:
        skel = skeleton_grams(text) if with_skeleton else []
        if with_skeleton and with_stems:
            skel += stem_grams(text)
        return char_ngrams(text), word_ngrams(text), skel

    def training_grams(self, text: str) -> tuple[list[str], list[str], list[str]]:
        """The n-grams the training path (``fit_matrix``) uses for ``text`` with this space's settings."""
        return self._grams(text, self.skel is not None, self.stems)

    def _row(self, grams: tuple[list[str], list[str], list[str]], meta: Sequence[str]) -> Row:
        off_word, off_skel, _ = self._offsets
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
        """(columns, values) of one normalised text and its indicator names.

        The serving path: the same numbers as the training path (``fit_matrix``; a test compares them), but
        each token's columns in every block (its character n-grams, its word unigram, its skeleton and stem
        terms) are looked up once and cached, and the tf-idf arithmetic for all blocks is a few numpy calls.
        """
        tokens = text.split()
        if not tokens:
            return self._with_meta(_NO_COLS, _NO_VALS, meta)
        latin = False
        if self.skel is not None:
            latin = (detect_language(tokens) if language is None else language) is Language.ARABIZI
        cache = self._token_cols
        parts: list[npt.NDArray[np.intp]] = []
        for token in tokens:
            cols = cache.get((token, latin))
            if cols is None:
                cols = self._columns_of_token(token, latin)
                if len(cache) >= _MAX_TOKEN_CACHE:
                    cache.clear()
                cache[(token, latin)] = cols
            parts.append(cols)
        if len(tokens) > 1:  # word bigrams span tokens: looked up per message
            get = self.word.vocab.get
            off_word = self._offsets[0]
            bigrams = [c + off_word for c in map(get, map(" ".join, pairwise(tokens))) if c is not None]
            if bigrams:
                parts.append(np.array(bigrams, dtype=np.intp))
        every = np.concatenate(parts)
        if len(every) == 0:
            return self._with_meta(_NO_COLS, _NO_VALS, meta)
        # term frequencies: sort, run starts, run lengths (np.unique without its Python-level overhead)
        ordered = np.sort(every)
        starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        idx = ordered[starts]
        tf = np.diff(np.append(starts, len(ordered))).astype(np.float32)
        vals = self._idf[idx] * (1.0 + np.log(tf))
        # l2 norm per block, then the block's weight
        block = np.searchsorted(self._bounds, idx, side="right")
        norms = np.sqrt(np.bincount(block, weights=vals * vals, minlength=3))
        scale = np.divide(self._block_weight, norms, out=np.zeros(3), where=norms > 0)
        weighted: npt.NDArray[np.float32] = (vals * scale[block]).astype(np.float32)
        return self._with_meta(idx, weighted, meta)

    def _columns_of_token(self, token: str, latin: bool) -> npt.NDArray[np.intp]:
        """Global columns of one token's terms in the char, word (unigram) and skeleton blocks."""
        off_word, off_skel, _ = self._offsets
        cols = [c for c in map(self.char.vocab.get, _word_char_ngrams(token, *CHAR_RANGE)) if c is not None]
        unigram = self.word.vocab.get(token)
        if unigram is not None:
            cols.append(off_word + unigram)
        if self.skel is not None:
            terms: list[str] = []
            sk = skeleton([token], latin)
            if sk:
                terms.append("w:" + sk)
                terms.extend(_word_char_ngrams(sk, *SKEL_CHAR_RANGE))
            if self.stems:
                terms.extend("s:" + st for st in stems([token]))
            get = self.skel.vocab.get
            cols.extend(off_skel + c for c in map(get, terms) if c is not None)
        return np.array(cols, dtype=np.intp)

    def _with_meta(
        self, cols: npt.NDArray[np.intp], vals: npt.NDArray[np.float32], meta: Sequence[str]
    ) -> Row:
        if not meta:
            return cols, vals
        return np.concatenate([cols, self._meta_cols(meta)]), np.concatenate([vals, self._meta_vals(meta)])

    def _meta_cols(self, meta: Sequence[str]) -> npt.NDArray[np.intp]:
        off = self._offsets[2]
        return np.array([off + self.meta[m] for m in Counter(meta) if m in self.meta], dtype=np.intp)

    def _meta_vals(self, meta: Sequence[str]) -> npt.NDArray[np.float32]:
        return np.array(
            [self.meta_weight * min(c, 2) for m, c in Counter(meta).items() if m in self.meta],
            dtype=np.float32,
        )

    def matrix(self, texts: Sequence[str], metas: Sequence[Sequence[str]]) -> sparse.csr_matrix:
        return self._stack([self.vector(t, m) for t, m in zip(texts, metas, strict=True)])
