"""What every metric module shares: `Undefined`, the exclusion signal, and the input checks.

A value that is undefined on a prompt (one sample for a pairwise metric, an empty sample, no
bigrams) raises `Undefined(reason)`; `per_prompt_metrics` records it as None plus the reason, and
the report counts it. Nothing becomes 0.0, nothing becomes NaN. Bad input (mismatched lengths,
NaN embeddings, a non-integer count) raises TypeError or ValueError naming the argument.

No torch here (layering rule, tests/test_layering.py): numpy and the standard library.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class Undefined(Exception):
    """The metric has no value on this input (not an error in the input): the caller records
    `reason` in the per-prompt `excluded` map and the report counts it."""

    @property
    def reason(self) -> str:
        return str(self.args[0]) if self.args else "undefined"


def check_texts(texts: Sequence[str], what: str) -> list[str]:
    """The k samples of one prompt as a non-empty list of str; `what` names the caller in errors."""
    if isinstance(texts, str):
        raise TypeError(f"{what}: expected a list of strings (the k samples of one prompt), got one string")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}: sample {i} is {type(t).__name__}, expected str")
    if not texts:
        raise ValueError(f"{what}: no samples")
    return texts


def check_matrix(x, what: str, ndim: int) -> np.ndarray:
    """`x` as a finite float64 array of exactly `ndim` dimensions."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{what}: expected a {ndim}-d array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what}: contains NaN or infinite values")
    return a


def check_count(value, name: str) -> int:
    """`value` as an int; bools and floats are refused (a float k is a caller's bug)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)
