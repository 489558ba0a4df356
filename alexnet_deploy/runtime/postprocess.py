"""Softmax and top-k with class names (numpy only)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def to_probabilities(outputs: np.ndarray, output_kind: str = "logits") -> np.ndarray:
    """Model outputs -> probabilities (a ``plain --softmax`` model already emits probabilities)."""
    outputs = np.asarray(outputs, dtype=np.float32)
    return outputs if output_kind == "probabilities" else softmax(outputs)


def topk(probs: np.ndarray, k: int, class_names: Sequence[str]) -> list[list[dict]]:
    """Per row: the k most probable classes as ``{"index", "label", "probability"}``, best first."""
    probs = np.atleast_2d(probs)
    k = max(1, min(int(k), probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    names = list(class_names)
    return [
        [
            {
                "index": int(j),
                "label": names[j] if j < len(names) else str(j),
                "probability": float(row[j]),
            }
            for j in idx
        ]
        for row, idx in zip(probs, order)
    ]
