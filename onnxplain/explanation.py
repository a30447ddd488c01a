"""`Explanation`: what every method returns and every renderer and metric takes."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Explanation:
    """Relevance shaped like the input batch, for the explained output of each sample."""

    relevance: np.ndarray            # (N, *input_shape)
    target: np.ndarray               # (N,) class index, or -1 for a hidden-tensor target
    score: np.ndarray                # (N,) the explained output value f(x)
    method: str
    params: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)

    def __post_init__(self):
        self.relevance = np.asarray(self.relevance)
        self.target = np.asarray(self.target)
        self.score = np.asarray(self.score, dtype=np.float64)

    @property
    def relevance_sum(self) -> np.ndarray:
        return self.relevance.reshape(len(self.relevance), -1).sum(axis=1)
