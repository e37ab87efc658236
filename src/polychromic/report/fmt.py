"""Number formatting and the small labels report.md and report.html share: significant digits,
signed differences, p-values, percentages, the better/worse arrow of a paired comparison, the
direction mark of a metric and the k of each model as text. Plain strings, no markup.
"""

from __future__ import annotations

import math
from typing import Optional

DASH = "–"
"""Shown for a value that does not exist (never 0, never NaN)."""


def fmt(x: Optional[float], digits: int = 4) -> str:
    """`digits` significant digits, fixed-point (0.9167, 12.35, 2,048); tiny values in e-notation."""
    if x is None:
        return DASH
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a < 1e-3:
        return f"{x:.2g}"
    return f"{x:.{max(0, digits - 1 - math.floor(math.log10(a)))}f}"


def fmt_signed(x: Optional[float]) -> str:
    return DASH if x is None else ("+" if x > 0 else "") + fmt(x)


def fmt_p(p: Optional[float]) -> str:
    if p is None:
        return DASH
    return "<0.0001" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


def fmt_pct(x: Optional[float]) -> str:
    return DASH if x is None else f"{100 * x:+.1f}%"


def significant(c: dict) -> bool:
    """The 95% CI of a paired comparison (a results.json `comparisons` entry) excludes 0."""
    return c["ci_low"] > 0 or c["ci_high"] < 0


def arrow(c: dict) -> tuple[str, str]:
    """(arrow, css class): up/down by the sign of the difference, colored by better/worse."""
    if c["diff"] == 0:
        return "=", "same"
    mark = "▲" if c["diff"] > 0 else "▼"
    hib = c["higher_is_better"]
    if hib is None:
        return mark, "neutral"
    better = (c["diff"] > 0) == hib
    return mark, ("better" if better else "worse") + ("" if significant(c) else " ns")


def direction_mark(hib: Optional[bool]) -> str:
    return {True: "↑", False: "↓"}.get(hib, "·")


def k_text(res: dict) -> str:
    """The k of each model: one list when all models share it, else per model."""
    ks = {m: ", ".join(map(str, k)) for m, k in res["k"].items()}
    if len(set(ks.values())) == 1:
        return next(iter(ks.values()))
    return "; ".join(f"{m}: {k}" for m, k in ks.items())
