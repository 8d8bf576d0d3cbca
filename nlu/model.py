"""The embedded model artifact: a feature space and three calibrated linear heads sharing one weight matrix.

Heads: ``intent`` (dialogue intents incl. ``file_case``), ``type`` (complaint / suggestion / inquiry, trained
on case messages only) and ``agency`` (the 22 ids, case messages only). Each head is a linear classifier
whose scores go through a softmax at a temperature fitted on out-of-fold scores (temperature scaling, Guo et
al. 2017), which makes the confidences calibrated probabilities. The heads' weights are stacked column-wise
so one message costs one gather of the rows of its active features and one small matrix-vector product.

Saved with pickle (protocol 5: numpy arrays out of band, fast to load). Artifacts are only ever read from the
project's own model directory, written by ``nlu/training.py``.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from nlu.features import FeatureSpace

MODEL_FILE = "model.pkl"
# Bump whenever the pickled structure changes: the registry then ignores older artifacts.
FORMAT_VERSION = 3


@dataclass(slots=True)
class Head:
    """One classifier over the shared features. Its score is the SVM's decision values, or, when the head
    has a Complement Naive Bayes part, ``svm / svm_scale + nb_weight * nb / nb_scale``: both parts brought to
    a common scale by constants fitted on training data (not per message, so a message with little to go
    by keeps flat scores and a low confidence); probabilities are ``softmax(score / temperature)``."""

    classes: tuple[str, ...]
    start: int  # column slice of the SVM part in the stacked weights
    end: int
    temperature: float
    nb_start: int = -1  # column slice of the Naive Bayes part (-1: none)
    nb_end: int = -1
    nb_weight: float = 0.0
    svm_scale: float = 1.0
    nb_scale: float = 1.0

    def combine(self, scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The head's score from the stacked raw scores (1-d for one message, 2-d for a batch)."""
        svm = scores[..., self.start : self.end]
        if self.nb_start < 0:
            return svm
        nb = scores[..., self.nb_start : self.nb_end]
        out: npt.NDArray[np.float64] = svm / self.svm_scale + self.nb_weight * nb / self.nb_scale
        return out


def spread(scores: npt.NDArray[np.float64]) -> float:
    """Typical spread of a score matrix across classes (std after centring each row); 1.0 if degenerate."""
    centred = scores - scores.mean(axis=-1, keepdims=True)
    value = float(centred.std())
    return value if value > 0 else 1.0


@dataclass(slots=True)
class EmbeddedModel:
    version: str
    features: FeatureSpace
    weights: npt.NDArray[np.float32]  # (n_features, n_outputs), C order: one row per feature
    bias: npt.NDArray[np.float32]  # (n_outputs,)
    heads: dict[str, Head]
    max_model_chars: int
    info: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def scores(self, cols: npt.NDArray[np.intp], vals: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Raw linear scores of every head for one feature vector."""
        if len(cols) == 0:
            return self.bias.copy()
        out: npt.NDArray[np.float32] = vals @ self.weights.take(cols, axis=0) + self.bias
        return out

    def proba(self, head: str, scores: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
        """Calibrated class probabilities of one head, for one message's scores or a (n, outputs) batch."""
        h = self.heads[head]
        return softmax(h.combine(scores.astype(np.float64, copy=False)) / h.temperature)

    def save(self, directory: Path) -> Path:
        path = directory / MODEL_FILE
        with path.open("wb") as fh:
            pickle.dump(self, fh, protocol=5)
        return path

    @classmethod
    def load(cls, directory: Path) -> EmbeddedModel:
        path = directory / MODEL_FILE if directory.is_dir() else directory
        try:
            with path.open("rb") as fh:
                model = pickle.load(fh)  # our own artifact, from the project's model directory
        except (pickle.UnpicklingError, AttributeError, TypeError, KeyError, EOFError, ImportError) as exc:
            raise ValueError(f"{path} is not a loadable embedded NLU model ({type(exc).__name__})") from None
        if not isinstance(model, cls) or getattr(model, "format_version", None) != FORMAT_VERSION:
            raise ValueError(f"{path} is not an embedded NLU model of format {FORMAT_VERSION}")
        return model


def softmax(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: npt.NDArray[np.float64] = e / e.sum(axis=-1, keepdims=True)
    return out
