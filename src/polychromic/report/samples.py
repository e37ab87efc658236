"""Which samples the report shows: per compared model, the prompts whose primary metric moved
most against the baseline, and the labelled texts (with quality scores) of one (model, prompt).
"""

from __future__ import annotations

from typing import Optional

from polychromic.report.load import EvalData

SAMPLES_SHOWN = 3
"""Prompts per compared model in the 'samples that moved most' section."""


def moved_prompts(data: EvalData, res: dict) -> list[tuple[str, str, Optional[float]]]:
    """[(model, prompt_id, diff)]: per compared model, the prompts whose primary metric changed
    most against the baseline (largest |diff|); with one model, the first prompts."""
    primary = res["primary_metrics"][0] if res["primary_metrics"] else None
    out = []
    for m in data.models:
        if m == data.baseline:
            continue
        if primary is None:
            break
        a, b = data.values(m, primary), data.values(data.baseline, primary)
        diffs = sorted(((a[p] - b[p], p) for p in set(a) & set(b)), key=lambda t: (-abs(t[0]), t[1]))
        out += [(m, p, d) for d, p in diffs[:SAMPLES_SHOWN]]
    if not out:
        out = [(data.baseline, p, None) for p in list(data.prompts)[:SAMPLES_SHOWN]]
    return out


def sample_texts(data: EvalData, model: str, pid: str) -> list[tuple[str, str, Optional[float]]]:
    """[(label, text, quality)] for one unit: samples by index, then the greedy reply; '(cut)'
    marks a sample that stopped at max_new_tokens."""
    rows = data.samples.get((model, pid), [])
    out = []
    for r in rows:
        score = data.scores.get((model, pid, r["kind"], r["index"]), {})
        label = f"#{r['index']}" if r["kind"] == "sample" else "greedy"
        if not r["finished"]:
            label += " (cut)"
        out.append((label, r["text"], score.get("quality")))
    return out
