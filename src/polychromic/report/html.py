"""report.html: `render_html(EvalData, results, figures)` through the jinja2 templates in
templates/ (report.html.j2 and its partials), with autoescape on.

The page is one self-contained file: the stylesheet templates/report.css is put into a <style>
element and every figure is an inline base64 PNG, so the report opens from disk, mails as one
attachment and loads nothing from the network.

This module prepares what the templates show (which rows, which caution, which cells), the
templates hold all markup; numbers are formatted by the filters of polychromic.report.fmt.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from typing import Any

import jinja2
import yaml
from markupsafe import Markup

from polychromic.report.fmt import arrow, direction_mark, fmt, fmt_p, fmt_pct, fmt_signed, k_text
from polychromic.report.load import EvalData, is_number
from polychromic.report.results import COLLAPSE_THRESHOLD, metric_groups, metric_meta
from polychromic.report.samples import SAMPLES_SHOWN, moved_prompts, sample_texts

TEMPLATE = "report.html.j2"
STYLESHEET = "report.css"
PROMISING_VERDICTS = ("main track", "workshop", "preprint")
"""Verdicts that claim a gain: the page adds a caution when none is significant after Holm."""


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("polychromic.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name in a template fails the render, never renders ""
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters.update(fmt=fmt, fmt_signed=fmt_signed, fmt_p=fmt_p, fmt_pct=fmt_pct, direction=direction_mark)
    env.globals.update(arrow=arrow, metric_meta=metric_meta)
    return env


def stylesheet() -> str:
    """The text of templates/report.css, as the page embeds it."""
    loader = environment().loader
    assert loader is not None
    return loader.get_source(environment(), STYLESHEET)[0]


def _figure(fig: tuple[bytes, str]) -> dict[str, str]:
    png, caption = fig
    return {"b64": base64.b64encode(png).decode("ascii"), "caption": caption}


def _verdict(res: dict) -> dict[str, Any]:
    v = res["verdict"]
    metric = v.get("metric")
    out: dict[str, Any] = {"v": v, "cls": v["verdict"].replace(" ", "-"), "metric": metric, "rows": None, "caution": False}
    if metric and res["comparisons"]:
        out["rows"] = [{"model": m, "c": comp[metric],
                        "significant": comp[metric].get("p_holm") is not None and comp[metric]["p_holm"] < 0.05}
                       for m, comp in res["comparisons"].items() if comp.get(metric) is not None]
        decisive = [m for m, c in res["comparisons"].items() if c.get(metric, {}).get("p_holm") is not None]
        out["caution"] = v["verdict"] in PROMISING_VERDICTS and not any(
            res["comparisons"][m][metric]["p_holm"] < 0.05 for m in decisive)
    return out


def _kpis(data: EvalData, res: dict, primary: str | None) -> list[dict]:
    cards = []
    for m in data.models:
        s = res["per_model"][m]["metrics"]
        extra = [(label, s[n]["mean"]) for n, label in (("length_tokens", "mean length (tokens)"), ("quality", "mean quality"),
                                                        ("distinct_2", "distinct-2"))
                 if n in s and n != primary and s[n]["mean"] is not None]
        cards.append({"model": m, "s": s, "c": res["comparisons"].get(m, {}).get(primary) if primary else None, "extra": extra})
    return cards


def _samples(data: EvalData, res: dict, primary: str | None) -> list[dict]:
    cards = []
    for m, pid, diff in moved_prompts(data, res):
        cols = []
        for w in ([data.baseline, m] if m != data.baseline else [m]):
            vals = data.per_prompt[w].get(pid, {}).get("metrics", {})
            stat = f"{primary} = {fmt(vals.get(primary))}" if primary else ""
            if "length_tokens" in vals:
                stat += f", length {fmt(vals.get('length_tokens'))}"
            cols.append({"model": w, "stat": stat, "items": sample_texts(data, w, pid)})
        head = f"{m} vs {data.baseline}, Δ {primary} = {fmt_signed(diff)}" if diff is not None else m
        cards.append({"pid": pid, "head": head, "prompt": data.prompts[pid], "cols": cols})
    return cards


def _scalar_table(title_col: str, rows: dict[str, dict]) -> dict | None:
    """A table of the scalar fields of each row (nested values left out), or None without any."""
    keys: list[str] = []
    for r in rows.values():
        keys += [k for k, v in r.items() if k not in keys and (v is None or isinstance(v, (int, float, str, bool)))]
    if not keys:
        return None
    cells = {name: [fmt(r.get(k)) if is_number(r.get(k)) else str(r.get(k) if r.get(k) is not None else "–") for k in keys]
             for name, r in rows.items()}
    return {"title": title_col, "keys": keys, "rows": cells}


def _models(data: EvalData) -> dict | None:
    mj = data.models_json or {}
    if not mj:
        return None
    lora = {m: info["lora"]["summary"] for m, info in mj.items()
            if isinstance(info, dict) and isinstance(info.get("lora"), dict) and isinstance(info["lora"].get("summary"), dict)}
    modules = []
    for m, info in mj.items():
        mods = (info or {}).get("lora", {}).get("modules") if isinstance((info or {}).get("lora"), dict) else None
        if isinstance(mods, dict) and mods:
            modules.append({"model": m, "n": len(mods),
                            "table": _scalar_table("module", {k: v for k, v in mods.items() if isinstance(v, dict)})})
    return {
        "table": _scalar_table("model", {m: {k: v for k, v in (info or {}).items() if k != "lora"} for m, info in mj.items()}),
        "lora": _scalar_table("model", lora) if lora else None,
        "modules": modules,
    }


def _excluded(data: EvalData, res: dict) -> list[dict]:
    rows = []
    for n in data.metric_names:
        counts = [res["per_model"][m]["metrics"][n] for m in data.models]
        if not any(c["n_excluded"] for c in counts):
            continue
        cells = [{"n": c["n_excluded"], "title": "; ".join(f"{r}: {k}" for r, k in c["excluded_reasons"].items()),
                  "top": max(c["excluded_reasons"], key=c["excluded_reasons"].get) if c["excluded_reasons"] else None}
                 for c in counts]
        rows.append({"metric": n, "cells": cells})
    return rows


def render_html(data: EvalData, res: dict, figures: dict[str, tuple[bytes, str]]) -> str:
    groups = metric_groups(data.metric_names)
    primary = res["primary_metrics"][0] if res["primary_metrics"] else None
    env = res["env"]
    context = {
        "data": data,
        "res": res,
        "css": Markup(stylesheet()),  # our own package file, put into <style> unescaped
        "k_text": k_text(res),
        # diversity with the length control right after it: lexical diversity falls as texts get longer
        "div_names": groups["diversity"] + groups["control"],
        "quality_names": groups["quality"] + groups["other"],
        "k_names": groups["k-curves"],
        "figures": {name: _figure(fig) for name, fig in figures.items()},
        "primary": primary,
        "verdict": _verdict(res),
        "kpis": _kpis(data, res, primary),
        "samples": _samples(data, res, primary),
        "models": _models(data),
        "excluded": _excluded(data, res),
        "env": env,
        "packages": ", ".join(f"{k} {v}" for k, v in ((env or {}).get("packages") or {}).items()),
        "device": (env or {}).get("device") or {},
        "cfg_yaml": yaml.safe_dump(res["config"], sort_keys=False, allow_unicode=True),
        "SAMPLES_SHOWN": SAMPLES_SHOWN,
        "COLLAPSE_THRESHOLD": COLLAPSE_THRESHOLD,
    }
    return environment().get_template(TEMPLATE).render(context)


CSS = stylesheet()
"""The page's stylesheet (templates/report.css)."""
