"""`polychromic report EVAL_DIR`: results.json, report.md and a self-contained report.html.

Reads only the files of the evaluation directory (docs/architecture.md, "Evaluation directory"):
config.yaml, env.json, prompts.jsonl, samples.jsonl, per_prompt.jsonl, models.json, and when
present scores.jsonl and judge.jsonl. So any old evaluation can be re-rendered on a CPU, and the
report imports no torch (layering rule).

What it computes (../shared/docs/metrics.md, "Statistics"):
- per model and metric: the mean over prompts, its 95% percentile bootstrap CI (prompts
  resampled), the number of prompts used and excluded (with the reasons);
- per model against the baseline, on the prompts where both have a value: the mean paired
  difference and its bootstrap CI, a sign-flip permutation p and a Wilcoxon p, d_z, the per-prompt
  win rate and the relative gain; Holm's correction over the family of (model, primary metric)
  comparisons, on the permutation p;
- the prior decision tree on the first primary metric (stats.decision_tree);
- DER and the collapse point from the mean pass@k curve on the full k grid.
"""

from __future__ import annotations

import base64
import html
import math
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from polychromic import io
from polychromic.report import plots
from polychromic.metrics import stats
from polychromic.config import Config, load_config, to_dict
from polychromic.metrics import REGISTRY, MetricInfo, Undefined, der, metric_info
from polychromic.evaluation.cache import read_prompts, read_samples

COLLAPSE_THRESHOLD = 0.01
"""Collapse point: the first k where one more sample adds less than 1 point of pass@k."""
CI_LEVEL = 0.95
SAMPLES_SHOWN = 3
"""Prompts per compared model in the 'samples that moved most' section."""

PER_PROMPT_FILE = "per_prompt.jsonl"
MODELS_FILE = "models.json"
SCORES_FILE = "scores.jsonl"
JUDGE_FILE = "judge.jsonl"
ENV_FILE = "env.json"
CONFIG_FILE = "config.yaml"
FIGURES_DIR = "figures"


# ---------------------------------------------------------------------------------------------
# Reading the evaluation directory


@dataclass
class EvalData:
    eval_dir: Path
    cfg: Config
    env: Optional[dict]
    prompts: dict[str, dict]
    models: list[str]
    baseline: str
    per_prompt: dict[str, dict[str, dict]]
    """model -> prompt_id -> {"k", "metrics", "excluded"}"""
    metric_names: list[str]
    samples: dict[tuple[str, str], list[dict]] = field(default_factory=dict)
    """(model, prompt_id) -> sample rows sorted by kind (greedy last) and index"""
    scores: dict[tuple[str, str, str, int], dict] = field(default_factory=dict)
    models_json: Optional[dict] = None
    judge_rows: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _read_per_prompt(path: Path) -> dict[str, dict[str, dict]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `polychromic evaluate` first (it writes the per-prompt metrics)")
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for line, row in enumerate(io.read_jsonl(path), start=1):
        where = f"{path}: line {line}"
        for name, tp in (("model", str), ("prompt_id", str), ("metrics", dict), ("excluded", dict)):
            if not isinstance(row.get(name), tp):
                raise ValueError(f"{where}: field '{name}' must be {tp.__name__}, got {row.get(name)!r}")
        if not isinstance(row.get("k"), int) or isinstance(row.get("k"), bool):
            raise ValueError(f"{where}: field 'k' must be an integer, got {row.get('k')!r}")
        for name, value in row["metrics"].items():
            if value is not None and not (_is_number(value) and math.isfinite(value)):
                raise ValueError(f"{where}: metrics.{name} must be a finite number or null, got {value!r}")
            if value is None and name not in row["excluded"]:
                raise ValueError(f"{where}: metrics.{name} is null without a reason in 'excluded'")
        model, pid = row["model"], row["prompt_id"]
        if pid in out[model]:
            raise ValueError(f"{where}: second row for model {model!r}, prompt {pid!r}")
        out[model][pid] = {"k": row["k"], "metrics": row["metrics"], "excluded": row["excluded"]}
    if not out:
        raise ValueError(f"{path}: no rows")
    return dict(out)


def _metric_order(names: set[str]) -> list[str]:
    """Registry order (diversity, control, quality, pass/max by k), unknown names last."""
    registry = list(REGISTRY)

    def key(name: str) -> tuple:
        if name in REGISTRY:
            return (0, registry.index(name), name)
        try:
            info = metric_info(name)
        except KeyError:
            return (2, 0, name)
        return (1, int(info.name.rsplit("_", 1)[1]), name)

    return sorted(names, key=key)


def load_eval_dir(eval_dir: str | Path) -> EvalData:
    d = Path(eval_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: evaluation directory not found")
    cfg_path = d / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: not an evaluation directory")
    cfg = load_config(cfg_path)
    env = io.read_json_object(d / ENV_FILE) if (d / ENV_FILE).is_file() else None
    prompts = {p["prompt_id"]: p for p in read_prompts(d)}
    per_prompt = _read_per_prompt(d / PER_PROMPT_FILE)
    warnings: list[str] = []

    configured = [m.name for m in cfg.eval.models]
    models = [m for m in configured if m in per_prompt] + [m for m in per_prompt if m not in configured]
    missing = [m for m in configured if m not in per_prompt]
    if missing:
        warnings.append(f"models in config.yaml without per-prompt rows (not evaluated yet?): {', '.join(missing)}")
    baseline = cfg.eval.baseline or models[0]
    if baseline not in per_prompt:
        raise ValueError(f"{d / PER_PROMPT_FILE}: no rows for the baseline model {baseline!r} (eval.baseline in {cfg_path})")
    unknown_prompts = sorted({pid for rows in per_prompt.values() for pid in rows} - set(prompts))
    if unknown_prompts:
        raise ValueError(f"{d / PER_PROMPT_FILE}: prompt ids not in prompts.jsonl: {unknown_prompts[:5]}")

    ks = {m: sorted({r["k"] for r in per_prompt[m].values()}) for m in models}
    if len({tuple(v) for v in ks.values()}) > 1 or any(len(v) > 1 for v in ks.values()):
        warnings.append(f"models were scored with different k ({ks}): diversity is only comparable at equal k")
    for m in models:
        if len(per_prompt[m]) != len(prompts):
            warnings.append(f"{m}: per-prompt rows for {len(per_prompt[m])} of {len(prompts)} prompts")

    names = _metric_order({n for rows in per_prompt.values() for r in rows.values() for n in r["metrics"]})
    data = EvalData(d, cfg, env, prompts, models, baseline, per_prompt, names, warnings=warnings)

    if (d / "samples.jsonl").is_file():
        grouped: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for r in read_samples(d):
            grouped[(r["model"], r["prompt_id"])].append(r)
        data.samples = {key: sorted(rows, key=lambda r: (r["kind"] == "greedy", r["index"])) for key, rows in grouped.items()}
        unfinished = Counter(r["model"] for rows in grouped.values() for r in rows if r["kind"] == "sample" and not r["finished"])
        for m, n in unfinished.items():
            total = sum(1 for (mm, _), rows in grouped.items() if mm == m for r in rows if r["kind"] == "sample")
            if n / max(1, total) > 0.2:
                warnings.append(f"{m}: {n} of {total} samples stopped at max_new_tokens (truncated; lengths and "
                                "lexical diversity are affected)")
    else:
        warnings.append("samples.jsonl not found: no length distributions or sample texts in this report")
    if (d / SCORES_FILE).is_file():
        for r in io.read_jsonl(d / SCORES_FILE, allow_torn_tail=True):
            data.scores[(r.get("model"), r.get("prompt_id"), r.get("kind"), r.get("index"))] = r
    if (d / MODELS_FILE).is_file():
        data.models_json = io.read_json_object(d / MODELS_FILE)
    if (d / JUDGE_FILE).is_file():
        for line, r in enumerate(io.read_jsonl(d / JUDGE_FILE, allow_torn_tail=True), start=1):
            for name in ("model", "baseline", "verdict"):
                if not isinstance(r.get(name), str):
                    raise ValueError(f"{d / JUDGE_FILE}: line {line}: field '{name}' must be a string, got {r.get(name)!r}")
            data.judge_rows.append(r)
    return data


# ---------------------------------------------------------------------------------------------
# Statistics


def _values(data: EvalData, model: str, metric: str) -> dict[str, float]:
    return {pid: r["metrics"][metric] for pid, r in data.per_prompt[model].items() if r["metrics"].get(metric) is not None}


def _exclusions(data: EvalData, model: str, metric: str) -> Counter:
    """Reasons for the prompts without a value, counted; per-prompt details in parentheses (which
    sample was empty) are dropped so that the same reason is counted once."""
    reasons: Counter = Counter()
    for r in data.per_prompt[model].values():
        if r["metrics"].get(metric) is None:
            reason = r["excluded"].get(metric, "metric not computed for this prompt")
            reasons[re.sub(r"\s+\([^)]*\)", "", reason)] += 1
    return reasons


def _info(name: str) -> MetricInfo:
    try:
        return metric_info(name)
    except KeyError:
        # A metric evaluate added that the registry does not know: shown, with no direction.
        return MetricInfo(name, None, "prompt", "other", "not in metrics.REGISTRY (no direction)")


def _model_summary(data: EvalData, model: str, resamples: int, seed: int) -> dict:
    out: dict[str, dict] = {}
    for name in data.metric_names:
        vals = _values(data, model, name)
        reasons = _exclusions(data, model, name)
        entry: dict[str, Any] = {"n": len(vals), "n_excluded": sum(reasons.values()), "excluded_reasons": dict(reasons),
                                 "mean": None, "ci_low": None, "ci_high": None}
        if vals:
            ci = stats.bootstrap_ci(list(vals.values()), resamples=resamples, seed=seed, level=CI_LEVEL)
            entry.update(mean=ci["mean"], ci_low=ci["ci_low"], ci_high=ci["ci_high"])
        out[name] = entry
    return out


def _compare(data: EvalData, model: str, metric: str, resamples: int, seed: int) -> Optional[dict]:
    a, b = _values(data, model, metric), _values(data, data.baseline, metric)
    common = sorted(set(a) & set(b))
    if not common:
        return None
    va = np.array([a[p] for p in common])
    vb = np.array([b[p] for p in common])
    diffs = va - vb
    hib = _info(metric).higher_is_better
    boot = stats.paired_bootstrap(va, vb, resamples=resamples, seed=seed, level=CI_LEVEL)
    perm = stats.sign_flip_permutation_p(diffs, resamples=resamples, seed=seed)
    wil = stats.wilcoxon_p(diffs)
    out: dict[str, Any] = {
        "n": len(common), "mean_model": boot["mean_a"], "mean_baseline": boot["mean_b"], "diff": boot["diff"],
        "ci_low": boot["ci_low"], "ci_high": boot["ci_high"], "p_permutation": perm["p"],
        "permutation_method": perm["method"], "p_wilcoxon": wil["p"], "wilcoxon_note": wil["note"],
        "higher_is_better": hib, "d_z": None, "d_z_note": None, "win_rate": None, "wins": None, "ties": None,
        "losses": None, "relative_gain": None, "relative_gain_note": None,
    }
    try:
        out["d_z"] = stats.cohens_dz(diffs)
    except Undefined as exc:
        out["d_z_note"] = exc.reason
    if hib is not None:
        w = stats.win_rate(va, vb, hib)
        out.update(win_rate=w["rate"], wins=w["wins"], ties=w["ties"], losses=w["losses"])
        try:
            out["relative_gain"] = stats.relative_gain(boot["mean_a"], boot["mean_b"], hib)
        except Undefined as exc:
            out["relative_gain_note"] = exc.reason
    return out


def _k_curve(summary: dict, prefix: str) -> tuple[list[int], list[float], list[list[float]]]:
    ks, ys, cis = [], [], []
    for name, s in summary.items():
        if name.startswith(prefix) and s["mean"] is not None:
            ks.append(int(name.rsplit("_", 1)[1]))
            ys.append(s["mean"])
            cis.append([s["ci_low"], s["ci_high"]])
    order = np.argsort(ks)
    return [ks[i] for i in order], [ys[i] for i in order], [cis[i] for i in order]


def _derived(summary: dict) -> dict:
    """DER@k and the collapse point from the mean pass@k curve (model level)."""
    ks, curve, _ = _k_curve(summary, "pass_at_")
    out: dict[str, Any] = {"der": {}, "der_note": None, "collapse_point": None, "collapse_note": None,
                           "collapse_threshold": COLLAPSE_THRESHOLD}
    if not ks:
        out["der_note"] = out["collapse_note"] = "no pass@k values"
        return out
    if ks != list(range(1, len(ks) + 1)):
        out["collapse_note"] = f"pass@k not on the full grid 1..{max(ks)} (have {ks})"
    else:
        gains = np.diff(curve)
        below = np.flatnonzero(gains < COLLAPSE_THRESHOLD)
        if below.size:
            out["collapse_point"] = int(below[0]) + 1
        else:
            out["collapse_note"] = f"gain per extra sample stays >= {COLLAPSE_THRESHOLD} up to k = {ks[-1]}"
    if ks[0] == 1:
        for k, v in zip(ks, curve):
            try:
                out["der"][str(k)] = der(v, curve[0], k)
            except Undefined as exc:
                out["der_note"] = exc.reason
                break
    return out


def _judge_summary(rows: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for r in rows:
        s = out.setdefault(r["model"], {"baseline": r["baseline"], "win": 0, "loss": 0, "tie": 0, "parse_failure": 0, "other": 0})
        s[r["verdict"] if r["verdict"] in ("win", "loss", "tie", "parse_failure") else "other"] += 1
    for s in out.values():
        judged = s["win"] + s["loss"] + s["tie"]
        s["win_rate"] = s["win"] / judged if judged else None
    return out


def compute_results(data: EvalData) -> dict:
    ev = data.cfg.eval
    resamples, seed = ev.bootstrap_resamples, data.cfg.seed
    summaries = {m: _model_summary(data, m, resamples, seed) for m in data.models}
    primary = [p for p in ev.primary_metrics if p in data.metric_names]
    missing_primary = [p for p in ev.primary_metrics if p not in data.metric_names]
    if missing_primary:
        data.warnings.append(f"primary metric(s) {missing_primary} not in per_prompt.jsonl")
    others = [m for m in data.models if m != data.baseline]
    comparisons: dict[str, dict] = {}
    for m in others:
        comparisons[m] = {}
        for name in data.metric_names:
            c = _compare(data, m, name, resamples, seed)
            if c is not None:
                comparisons[m][name] = c
    # Holm over the whole family of primary comparisons (every model x every primary metric):
    # adding a model to the evaluation rightly makes each claim need more evidence.
    family = [(m, p) for m in others for p in primary if p in comparisons[m]]
    for (m, p), adj in zip(family, stats.holm([comparisons[m][p]["p_permutation"] for m, p in family]) if family else []):
        comparisons[m][p]["p_holm"] = adj
        comparisons[m][p]["primary"] = True

    verdict: dict[str, Any]
    if not primary:
        verdict = {"verdict": "no verdict", "reason": "no primary metric was scored", "metric": None}
    elif not others:
        verdict = {"verdict": "no verdict", "reason": "one model only: nothing to compare", "metric": primary[0]}
    else:
        gains = {m: comparisons[m].get(primary[0], {}).get("relative_gain") for m in others}
        verdict = {**stats.decision_tree(gains), "metric": primary[0]}

    return {
        "eval_dir": str(data.eval_dir),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "experiment": data.cfg.experiment,
        "models": data.models,
        "baseline": data.baseline,
        "primary_metrics": primary,
        "n_prompts": len(data.prompts),
        "k": {m: sorted({r["k"] for r in data.per_prompt[m].values()}) for m in data.models},
        "quality_threshold": ev.quality_threshold,
        "bootstrap": {"resamples": resamples, "seed": seed, "level": CI_LEVEL, "method": "percentile, prompts resampled (paired)"},
        "permutation": {"method": f"sign flip, exact for n <= {stats.EXACT_PERMUTATION_MAX_N}, else {resamples} flips", "seed": seed},
        "holm_family": [f"{m}:{p}" for m, p in family],
        "metrics": {n: {"higher_is_better": _info(n).higher_is_better, "kind": _info(n).kind, "description": _info(n).description}
                    for n in data.metric_names},
        "per_model": {m: {"n_prompts": len(data.per_prompt[m]), "metrics": summaries[m], "derived": _derived(summaries[m]),
                          "model_info": (data.models_json or {}).get(m)} for m in data.models},
        "comparisons": comparisons,
        "verdict": verdict,
        "judge": _judge_summary(data.judge_rows) if data.judge_rows else None,
        "warnings": data.warnings,
        "config": to_dict(data.cfg),
        "env": {k: (data.env or {}).get(k) for k in ("git_sha", "git_dirty", "packages", "python", "platform", "device")}
        if data.env else None,
    }


# ---------------------------------------------------------------------------------------------
# Formatting helpers


def fmt(x: Optional[float], digits: int = 4) -> str:
    """`digits` significant digits, fixed-point (0.9167, 12.35, 2,048); tiny values in e-notation."""
    if x is None:
        return "–"
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
    return "–" if x is None else ("+" if x > 0 else "") + fmt(x)


def fmt_p(p: Optional[float]) -> str:
    if p is None:
        return "–"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


def fmt_pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:+.1f}%"


def _significant(c: dict) -> bool:
    return c["ci_low"] > 0 or c["ci_high"] < 0


def _arrow(c: dict) -> tuple[str, str]:
    """(arrow, css class): up/down by the sign of the difference, colored by better/worse."""
    if c["diff"] == 0:
        return "=", "same"
    arrow = "▲" if c["diff"] > 0 else "▼"
    hib = c["higher_is_better"]
    if hib is None:
        return arrow, "neutral"
    better = (c["diff"] > 0) == hib
    return arrow, ("better" if better else "worse") + ("" if _significant(c) else " ns")


def _direction_mark(hib: Optional[bool]) -> str:
    return {True: "↑", False: "↓"}.get(hib, "·")


def _groups(names: list[str]) -> dict[str, list[str]]:
    g: dict[str, list[str]] = {"diversity": [], "control": [], "quality": [], "k-curves": [], "other": []}
    for n in names:
        info = _info(n)
        if n.startswith(("pass_at_", "max_at_")):
            g["k-curves"].append(n)
        else:
            g.get(info.kind, g["other"]).append(n)
    return g


# ---------------------------------------------------------------------------------------------
# Figures


def make_figures(data: EvalData, res: dict) -> dict[str, tuple[bytes, str]]:
    """{file stem: (png bytes, caption)}."""
    figs: dict[str, tuple[bytes, str]] = {}
    models, per_model = data.models, res["per_model"]
    summary = {m: per_model[m]["metrics"] for m in models}
    groups = _groups(data.metric_names)
    div = groups["diversity"]
    if div:
        png = plots.diversity_with_ci(summary, div, {n: _info(n).higher_is_better for n in div}, models)
        figs["diversity"] = (png, "Mean per-prompt diversity of each model, with 95% bootstrap CIs over prompts.")
    curves = {}
    for m in models:
        k, p, pci = _k_curve(summary[m], "pass_at_")
        k2, mx, mci = _k_curve(summary[m], "max_at_")
        if k and k == k2:
            curves[m] = {"k": k, "pass": p, "pass_ci": pci, "max": mx, "max_ci": mci}
    if curves:
        figs["pass_max_at_k"] = (plots.pass_max_curves(curves, res["quality_threshold"], models),
                                 "pass@k and max@k against k on the full grid (bands: 95% bootstrap CIs).")
    primary = res["primary_metrics"][0] if res["primary_metrics"] else (div[0] if div else None)
    ymetric = next((q for q in ("quality", "relevance", "rouge_l") if q in data.metric_names), None)
    if primary and ymetric:
        pts, means = {}, {}
        for m in models:
            x, y = _values(data, m, primary), _values(data, m, ymetric)
            both = sorted(set(x) & set(y))
            if both:
                pts[m] = ([x[p] for p in both], [y[p] for p in both])
                means[m] = (float(np.mean(pts[m][0])), float(np.mean(pts[m][1])))
        if means:
            png, front = plots.quality_vs_diversity(pts, means, primary, ymetric, _info(primary).higher_is_better is not False,
                                                    _info(ymetric).higher_is_better is not False, models)
            figs["quality_vs_diversity"] = (png, f"{ymetric} against {primary}; Pareto front of the model means: {', '.join(front)}.")
    lengths = {m: [r["n_tokens"] for (mm, _), rows in data.samples.items() if mm == m for r in rows if r["kind"] == "sample"]
               for m in models}
    if any(lengths.values()):
        figs["lengths"] = (plots.length_distributions(lengths, models), "Completion length of the samples (model tokens).")
    if primary and res["comparisons"]:
        diffs, cis = {}, {}
        for m, comp in res["comparisons"].items():
            if primary in comp:
                a, b = _values(data, m, primary), _values(data, data.baseline, primary)
                common = sorted(set(a) & set(b))
                diffs[m] = [a[p] - b[p] for p in common]
                cis[m] = (comp[primary]["ci_low"], comp[primary]["ci_high"])
        if diffs:
            figs["differences"] = (plots.difference_histograms(diffs, cis, primary, data.baseline, _info(primary).higher_is_better, models),
                                   f"Per-prompt differences in {primary} against {data.baseline}.")
    return figs


# ---------------------------------------------------------------------------------------------
# Samples that moved most


def _moved_prompts(data: EvalData, res: dict) -> list[tuple[str, str, Optional[float]]]:
    """[(model, prompt_id, diff)]: per compared model, the prompts whose primary metric changed
    most against the baseline (largest |diff|); with one model, the first prompts."""
    primary = res["primary_metrics"][0] if res["primary_metrics"] else None
    out = []
    for m in data.models:
        if m == data.baseline:
            continue
        if primary is None:
            break
        a, b = _values(data, m, primary), _values(data, data.baseline, primary)
        diffs = sorted(((a[p] - b[p], p) for p in set(a) & set(b)), key=lambda t: (-abs(t[0]), t[1]))
        out += [(m, p, d) for d, p in diffs[:SAMPLES_SHOWN]]
    if not out:
        out = [(data.baseline, p, None) for p in list(data.prompts)[:SAMPLES_SHOWN]]
    return out


def _sample_texts(data: EvalData, model: str, pid: str) -> list[tuple[str, str, Optional[float]]]:
    """[(label, text, quality)] for one unit: samples by index, then the greedy reply."""
    rows = data.samples.get((model, pid), [])
    out = []
    for r in rows:
        score = data.scores.get((model, pid, r["kind"], r["index"]), {})
        label = f"#{r['index']}" if r["kind"] == "sample" else "greedy"
        if not r["finished"]:
            label += " (cut)"
        out.append((label, r["text"], score.get("quality")))
    return out


# ---------------------------------------------------------------------------------------------
# report.md


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _cell_md(s: dict) -> str:
    if s["mean"] is None:
        return "–"
    return f"{fmt(s['mean'])} [{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]"


def _delta_md(c: Optional[dict]) -> str:
    if c is None:
        return ""
    arrow, _ = _arrow(c)
    return f" {arrow}{fmt_signed(c['diff'])}{'*' if _significant(c) else ''}"


def render_markdown(data: EvalData, res: dict, figure_files: dict[str, str]) -> str:
    v = res["verdict"]
    models, base = data.models, data.baseline
    L = [f"# Evaluation report: {res['experiment']}", "",
         f"{res['n_prompts']} prompts, k = {_k_text(res)}; baseline **{base}**; "
         f"primary metrics: {', '.join(res['primary_metrics']) or 'none'}; created {res['created']}.", "",
         "## Verdict", "", f"**{v['verdict']}** on `{v.get('metric')}`: {v['reason']}.", ""]
    if res["warnings"]:
        L += ["## Warnings", ""] + [f"- {w}" for w in res["warnings"]] + [""]
    L += ["## Metrics", "", "Mean over prompts [95% bootstrap CI]; for the other models, Δ = paired difference against the "
          "baseline, * when its 95% CI excludes 0. ↑ higher is better, ↓ lower is better.", ""]
    for group, names in _groups(data.metric_names).items():
        if not names:
            continue
        rows = []
        for n in names:
            row = [f"{n} {_direction_mark(_info(n).higher_is_better)}"]
            for m in models:
                c = res["comparisons"].get(m, {}).get(n)
                row.append(_cell_md(res["per_model"][m]["metrics"][n]) + _delta_md(c))
            rows.append(row)
        L += [f"### {group}", "", _md_table(["metric", *models], rows), ""]
    for m, comp in res["comparisons"].items():
        rows = [[n, fmt(c["diff"]), f"[{fmt(c['ci_low'])}, {fmt(c['ci_high'])}]", fmt_p(c["p_permutation"]), fmt_p(c["p_wilcoxon"]),
                 fmt_p(c.get("p_holm")), fmt(c["d_z"]), fmt(c["win_rate"]), fmt_pct(c["relative_gain"]), str(c["n"])]
                for n, c in comp.items() if not n.startswith(("pass_at_", "max_at_"))]
        L += [f"## {m} vs {base}", "",
              _md_table(["metric", "Δ", "95% CI", "p perm", "p Wilcoxon", "p Holm", "d_z", "win rate", "rel. gain", "n"], rows), ""]
    L += ["## pass@k, DER, collapse point", ""]
    rows = []
    for m in models:
        dv = res["per_model"][m]["derived"]
        ders = ", ".join(f"{k}: {fmt(x)}" for k, x in dv["der"].items()) or (dv["der_note"] or "–")
        cp = str(dv["collapse_point"]) if dv["collapse_point"] is not None else (dv["collapse_note"] or "–")
        rows.append([m, cp, ders])
    L += [_md_table(["model", f"collapse point (gain < {COLLAPSE_THRESHOLD})", "DER@k = pass@k / (k pass@1)"], rows), "",
          "DER is a function of pass@1 and k; it is reported, not a target.", ""]
    if figure_files:
        L += ["## Figures", ""] + [f"![{name}]({path})" for name, path in figure_files.items()] + [""]
    L += ["## Samples that moved most", ""]
    for m, pid, diff in _moved_prompts(data, res):
        p = data.prompts[pid]
        L += [f"### {pid}: {m}" + (f" (Δ {res['primary_metrics'][0]} = {fmt_signed(diff)})" if diff is not None else ""), "",
              f"> {p['prompt']}".replace("\n", "\n> "), ""]
        for who in ([data.baseline, m] if m != data.baseline else [m]):
            L += [f"**{who}**", ""] + [f"- {lab}: {t!r}" for lab, t, _ in _sample_texts(data, who, pid)] + [""]
    L += ["## Excluded (prompts without a value)", ""]
    rows = [[n, *[str(res["per_model"][m]["metrics"][n]["n_excluded"]) for m in models]] for n in data.metric_names
            if any(res["per_model"][m]["metrics"][n]["n_excluded"] for m in models)]
    L += [_md_table(["metric", *models], rows) if rows else "None.", ""]
    env = res["env"] or {}
    L += ["## Reproducibility", "", f"- git sha: {env.get('git_sha') or 'not recorded'}" + (" (dirty)" if env.get("git_dirty") else ""),
          f"- packages: {env.get('packages') or 'not recorded'}",
          f"- bootstrap: {res['bootstrap']['resamples']} resamples, seed {res['bootstrap']['seed']}",
          f"- re-render: `polychromic report {data.eval_dir}`", ""]
    return "\n".join(L)


# ---------------------------------------------------------------------------------------------
# report.html


CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#e3e6ec; --bg:#f6f7f9; --card:#fff; --good:#13795b; --bad:#c0392b; --accent:#2d5bd7; }
* { box-sizing:border-box; }
body { margin:0; font:14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color:var(--fg); background:var(--bg); }
main { max-width:1180px; margin:0 auto; padding:24px 28px 60px; }
h1 { font-size:26px; margin:8px 0 4px; } h2 { font-size:19px; margin:34px 0 10px; padding-bottom:6px; border-bottom:2px solid var(--line); }
h3 { font-size:15px; margin:18px 0 8px; } .muted { color:var(--muted); } code { background:#eef0f4; padding:1px 4px; border-radius:3px; }
nav { font-size:13px; margin:10px 0 0; } nav a { color:var(--accent); margin-right:14px; text-decoration:none; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:16px 20px; margin:12px 0; box-shadow:0 1px 2px rgba(0,0,0,.03); }
.verdict { display:flex; gap:22px; align-items:center; }
.badge { font-size:20px; font-weight:700; padding:12px 20px; border-radius:10px; color:#fff; background:#6b7280; white-space:nowrap; text-transform:uppercase; letter-spacing:.03em; }
.badge.main-track { background:#13795b; } .badge.workshop { background:#2d7d9a; } .badge.preprint { background:#b7791f; } .badge.negative-result { background:#c0392b; }
table { border-collapse:collapse; width:100%; font-size:13px; background:var(--card); }
th, td { padding:6px 9px; border-bottom:1px solid var(--line); text-align:right; vertical-align:top; }
th { background:#eef1f6; font-weight:600; position:sticky; top:0; } td:first-child, th:first-child { text-align:left; }
tr:hover td { background:#fafbfd; } .ci { color:var(--muted); font-size:12px; white-space:nowrap; }
.better { color:var(--good); font-weight:600; } .worse { color:var(--bad); font-weight:600; } .ns { font-weight:400; opacity:.65; }
.neutral, .same { color:var(--muted); } .primary td { background:#f4f7ff; } .tag { font-size:11px; color:var(--accent); border:1px solid var(--accent); border-radius:4px; padding:0 4px; margin-left:4px; }
.warn { background:#fff8e6; border-color:#f0d48a; } .warn li { margin:3px 0; }
figure { margin:14px 0; background:var(--card); border:1px solid var(--line); border-radius:10px; padding:12px; }
figure img { max-width:100%; display:block; margin:0 auto; } figcaption { color:var(--muted); font-size:12.5px; margin-top:6px; text-align:center; }
.pair { display:grid; grid-template-columns:1fr 1fr; gap:14px; } .samples ol { margin:4px 0; padding-left:22px; } .samples li { margin:4px 0; white-space:pre-wrap; word-break:break-word; }
.prompt { background:#eef1f6; border-left:4px solid var(--accent); padding:8px 12px; border-radius:4px; white-space:pre-wrap; }
.q { color:var(--muted); font-size:11.5px; margin-left:6px; } details summary { cursor:pointer; color:var(--accent); }
pre { background:#0f172a; color:#e2e8f0; padding:12px; border-radius:8px; overflow:auto; font-size:12px; }
.kpis { display:grid; grid-template-columns:repeat(auto-fit, minmax(210px, 1fr)); gap:12px; }
.kpi { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:12px 14px; } .kpi .name { font-weight:700; }
.kpi .big { font-size:22px; font-weight:700; } .kpi .sub { color:var(--muted); font-size:12px; }
footer { margin-top:40px; font-size:12px; color:var(--muted); }
"""


def _k_text(res: dict) -> str:
    ks = {m: ", ".join(map(str, k)) for m, k in res["k"].items()}
    if len(set(ks.values())) == 1:
        return next(iter(ks.values()))
    return "; ".join(f"{m}: {k}" for m, k in ks.items())


def _e(x: Any) -> str:
    return html.escape(str(x))


def _cell_html(s: dict, c: Optional[dict]) -> str:
    if s["mean"] is None:
        return "<td class='muted'>–</td>"
    out = f"{fmt(s['mean'])}<br><span class='ci'>[{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]</span>"
    if c is not None:
        arrow, cls = _arrow(c)
        out += f"<br><span class='{cls}' title='difference vs baseline (faded: 95% CI includes 0)'>{arrow} {fmt_signed(c['diff'])}</span>"
    return f"<td>{out}</td>"


def _metrics_table(data: EvalData, res: dict, names: list[str]) -> str:
    models = data.models
    head = "".join(f"<th>{_e(m)}{' <span class=tag>baseline</span>' if m == data.baseline else ''}</th>" for m in models)
    rows = []
    for n in names:
        info = _info(n)
        prim = " class='primary'" if n in res["primary_metrics"] else ""
        tag = " <span class='tag'>primary</span>" if n in res["primary_metrics"] else ""
        cells = "".join(_cell_html(res["per_model"][m]["metrics"][n], res["comparisons"].get(m, {}).get(n)) for m in models)
        rows.append(f"<tr{prim}><td title='{_e(info.description)}'><b>{_e(n)}</b> {_direction_mark(info.higher_is_better)}{tag}"
                    f"<br><span class='ci'>{_e(info.description)}</span></td>{cells}</tr>")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def _comparison_table(res: dict, model: str) -> str:
    rows = []
    for n, c in res["comparisons"][model].items():
        if n.startswith(("pass_at_", "max_at_")):
            continue
        arrow, cls = _arrow(c)
        prim = " class='primary'" if c.get("primary") else ""
        rows.append(
            f"<tr{prim}><td>{_e(n)} {_direction_mark(c['higher_is_better'])}</td><td class='{cls}'>{arrow} {fmt_signed(c['diff'])}</td>"
            f"<td class='ci'>[{fmt(c['ci_low'])}, {fmt(c['ci_high'])}]</td><td>{fmt_p(c['p_permutation'])}</td>"
            f"<td>{fmt_p(c['p_wilcoxon'])}</td><td>{fmt_p(c.get('p_holm'))}</td><td>{fmt(c['d_z'])}</td>"
            f"<td>{fmt(c['win_rate'])}</td><td>{fmt_pct(c['relative_gain'])}</td><td>{c['n']}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ["metric", "Δ (model − baseline)", "95% CI", "p perm.", "p Wilcoxon", "p Holm",
                                               "d<sub>z</sub>", "win rate", "rel. gain", "prompts"])
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _kpis(data: EvalData, res: dict) -> str:
    primary = res["primary_metrics"][0] if res["primary_metrics"] else None
    cards = []
    for m in data.models:
        s = res["per_model"][m]["metrics"]
        lines = []
        if primary:
            c = res["comparisons"].get(m, {}).get(primary)
            delta = ""
            if c is not None:
                arrow, cls = _arrow(c)
                delta = f" <span class='{cls}'>{arrow} {fmt_pct(c['relative_gain'])}</span>"
            lines.append(f"<div class='big'>{fmt(s[primary]['mean'])}{delta}</div><div class='sub'>{_e(primary)} "
                         f"[{fmt(s[primary]['ci_low'])}, {fmt(s[primary]['ci_high'])}]</div>")
        for n, label in (("length_tokens", "mean length (tokens)"), ("quality", "mean quality"), ("distinct_2", "distinct-2")):
            if n in s and n != primary and s[n]["mean"] is not None:
                lines.append(f"<div class='sub'>{label}: <b>{fmt(s[n]['mean'])}</b></div>")
        tag = " <span class='tag'>baseline</span>" if m == data.baseline else ""
        cards.append(f"<div class='kpi'><div class='name'>{_e(m)}{tag}</div>{''.join(lines)}</div>")
    return f"<div class='kpis'>{''.join(cards)}</div>"


def _verdict_html(res: dict) -> str:
    v = res["verdict"]
    cls = v["verdict"].replace(" ", "-")
    extra = ""
    metric = v.get("metric")
    if metric and res["comparisons"]:
        rows = []
        for m, comp in res["comparisons"].items():
            c = comp.get(metric)
            if c is None:
                continue
            arrow, acls = _arrow(c)
            sig = "yes" if c.get("p_holm") is not None and c["p_holm"] < 0.05 else "no"
            rows.append(f"<tr><td>{_e(m)}</td><td class='{acls}'>{fmt_pct(c['relative_gain'])}</td><td class='{acls}'>{arrow} {fmt_signed(c['diff'])}</td>"
                        f"<td class='ci'>[{fmt(c['ci_low'])}, {fmt(c['ci_high'])}]</td><td>{fmt_p(c.get('p_holm'))}</td><td>{sig}</td></tr>")
        extra = ("<table style='margin-top:10px'><tr><th>model</th><th>relative gain</th><th>Δ</th><th>95% CI</th><th>p (Holm)</th>"
                 f"<th>significant at 5%</th></tr>{''.join(rows)}</table>")
        decisive = [m for m, c in res["comparisons"].items() if c.get(metric, {}).get("p_holm") is not None]
        if v["verdict"] in ("main track", "workshop", "preprint") and not any(
                res["comparisons"][m][metric]["p_holm"] < 0.05 for m in decisive):
            extra += ("<p class='worse'>Caution: no gain on this metric is significant after Holm's correction; "
                      "the prior tree looks at the size of the gain only.</p>")
    success = ""
    if "success" in v:
        success = f"<div class='muted'>Prior success criterion (some variant &gt; 15% better): <b>{'met' if v['success'] else 'not met'}</b></div>"
    return (f"<div class='card'><div class='verdict'><div class='badge {cls}'>{_e(v['verdict'])}</div><div>"
            f"<div>Prior decision tree on <code>{_e(metric)}</code>: aggressive &gt; 25% → main track; moderate &gt; 15% → workshop; "
            f"either &gt; 8% → preprint; else negative result.</div><div style='margin-top:6px'><b>{_e(v['reason'])}</b></div>"
            f"{success}</div></div>{extra}</div>")


def _samples_html(data: EvalData, res: dict) -> str:
    primary = res["primary_metrics"][0] if res["primary_metrics"] else None
    out = []
    for m, pid, diff in _moved_prompts(data, res):
        p = data.prompts[pid]
        who = [data.baseline, m] if m != data.baseline else [m]
        cols = []
        for w in who:
            vals = data.per_prompt[w].get(pid, {}).get("metrics", {})
            stat = f"{_e(primary)} = {fmt(vals.get(primary))}" if primary else ""
            if "length_tokens" in vals:
                stat += f", length {fmt(vals.get('length_tokens'))}"
            items = "".join(f"<li><b>{_e(lab)}</b> {_e(t) if t.strip() else '<i class=muted>(empty)</i>'}"
                            + (f"<span class='q'>q = {fmt(q)}</span>" if q is not None else "") + "</li>"
                            for lab, t, q in _sample_texts(data, w, pid))
            cols.append(f"<div><h3>{_e(w)} <span class='ci'>{stat}</span></h3><ol style='list-style:none;padding-left:0'>"
                        f"{items or '<li class=muted>no samples in samples.jsonl</li>'}</ol></div>")
        head = f"{_e(m)} vs {_e(data.baseline)}, Δ {_e(primary)} = {fmt_signed(diff)}" if diff is not None else _e(m)
        ref = p.get("reference")
        ref_html = f"<div class='ci' style='margin-top:6px'>reference: {_e(ref)}</div>" if ref else ""
        out.append(f"<div class='card samples'><div class='muted'>prompt <code>{_e(pid)}</code> · {head}</div>"
                   f"<div class='prompt'>{_e(p['prompt'])}</div>{ref_html}<div class='pair'>{''.join(cols)}</div></div>")
    return "".join(out)


def _excluded_html(data: EvalData, res: dict) -> str:
    rows = []
    for n in data.metric_names:
        counts = [res["per_model"][m]["metrics"][n] for m in data.models]
        if not any(c["n_excluded"] for c in counts):
            continue
        cells = "".join(
            f"<td title='{_e('; '.join(f'{r}: {k}' for r, k in c['excluded_reasons'].items()))}'>{c['n_excluded']}"
            + (f"<br><span class='ci'>{_e(max(c['excluded_reasons'], key=c['excluded_reasons'].get))}</span>" if c["excluded_reasons"] else "")
            + "</td>" for c in counts)
        rows.append(f"<tr><td>{_e(n)}</td>{cells}</tr>")
    if not rows:
        return "<p>No prompt was excluded from any metric.</p>"
    head = "".join(f"<th>{_e(m)}</th>" for m in data.models)
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def _scalar_table(title_col: str, rows: dict[str, dict]) -> str:
    keys: list[str] = []
    for r in rows.values():
        keys += [k for k, v in r.items() if k not in keys and (v is None or isinstance(v, (int, float, str, bool)))]
    if not keys:
        return ""
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    body = "".join(f"<tr><td>{_e(name)}</td>" + "".join(
        f"<td>{fmt(r.get(k)) if _is_number(r.get(k)) else _e(r.get(k) if r.get(k) is not None else '–')}</td>" for k in keys) + "</tr>"
        for name, r in rows.items())
    return f"<table><tr><th>{_e(title_col)}</th>{head}</tr>{body}</table>"


def _models_html(data: EvalData) -> str:
    mj = data.models_json or {}
    if not mj:
        return "<p class='muted'>models.json not found.</p>"
    parts = [_scalar_table("model", {m: {k: v for k, v in (info or {}).items() if k != "lora"} for m, info in mj.items()})]
    lora = {m: info["lora"]["summary"] for m, info in mj.items()
            if isinstance(info, dict) and isinstance(info.get("lora"), dict) and isinstance(info["lora"].get("summary"), dict)}
    if lora:
        parts.append("<h3>LoRA updates (per adapter)</h3>" + _scalar_table("model", lora))
    for m, info in mj.items():
        modules = (info or {}).get("lora", {}).get("modules") if isinstance((info or {}).get("lora"), dict) else None
        if isinstance(modules, dict) and modules:
            parts.append(f"<details><summary>{_e(m)}: {len(modules)} modules</summary>"
                         + _scalar_table("module", {k: v for k, v in modules.items() if isinstance(v, dict)}) + "</details>")
    return "".join(parts)


def _judge_html(res: dict) -> str:
    j = res["judge"]
    if not j:
        return ""
    rows = "".join(f"<tr><td>{_e(m)}</td><td>{_e(s['baseline'])}</td><td>{s['win']}</td><td>{s['loss']}</td><td>{s['tie']}</td>"
                   f"<td>{s['parse_failure']}</td><td>{fmt(s['win_rate'])}</td></tr>" for m, s in j.items())
    return ("<h2 id='judge'>LLM judge (pairwise, both orders; a flip is a tie)</h2><table><tr><th>model</th><th>against</th>"
            f"<th>wins</th><th>losses</th><th>ties</th><th>parse failures</th><th>win rate</th></tr>{rows}</table>")


def _derived_html(data: EvalData, res: dict) -> str:
    rows = []
    for m in data.models:
        dv = res["per_model"][m]["derived"]
        cp = str(dv["collapse_point"]) if dv["collapse_point"] is not None else _e(dv["collapse_note"] or "–")
        ders = ", ".join(f"{k}: {fmt(x)}" for k, x in dv["der"].items()) or _e(dv["der_note"] or "–")
        rows.append(f"<tr><td>{_e(m)}</td><td>{cp}</td><td style='text-align:left'>{ders}</td></tr>")
    return (f"<table><tr><th>model</th><th>collapse point (pass@k gain &lt; {COLLAPSE_THRESHOLD})</th>"
            f"<th style='text-align:left'>DER@k = pass@k / (k · pass@1)</th></tr>{''.join(rows)}</table>"
            "<p class='muted'>DER is a function of pass@1 and k alone; it is reported for continuity with the prior "
            "system, not as a target. The collapse point uses the full integer k grid.</p>")


def render_html(data: EvalData, res: dict, figures: dict[str, tuple[bytes, str]]) -> str:
    groups = _groups(data.metric_names)
    # diversity with the length control right after it: lexical diversity falls as texts get longer
    div_names = groups["diversity"] + groups["control"]
    k_names = [n for n in groups["k-curves"]]
    sections = [f"<header><h1>Evaluation report: {_e(res['experiment'])}</h1><div class='muted'>{res['n_prompts']} prompts · "
                f"k = {_e(_k_text(res))} · baseline <b>{_e(data.baseline)}</b> · "
                f"primary: {_e(', '.join(res['primary_metrics']) or 'none')} · {res['created']} · <code>{_e(data.eval_dir)}</code></div>"
                "<nav><a href='#summary'>Summary</a><a href='#diversity'>Diversity</a><a href='#quality'>Quality</a>"
                "<a href='#stats'>Statistics</a><a href='#figures'>Figures</a><a href='#samples'>Samples</a>"
                "<a href='#models'>Models</a><a href='#excluded'>Excluded</a><a href='#repro'>Reproducibility</a></nav></header>"]
    sections.append(f"<h2 id='summary'>Summary</h2>{_verdict_html(res)}{_kpis(data, res)}")
    if res["warnings"]:
        sections.append("<div class='card warn'><b>Warnings</b><ul>" + "".join(f"<li>{_e(w)}</li>" for w in res["warnings"]) + "</ul></div>")
    legend = ("<p class='muted'>Mean over prompts with its 95% bootstrap CI; under each non-baseline model, the paired "
              "difference against the baseline: <span class='better'>▲/▼ better</span>, <span class='worse'>▲/▼ worse</span> "
              "(faded when its 95% CI includes 0). ↑ higher is better, ↓ lower is better, · no direction.</p>")
    sections.append(f"<h2 id='diversity'>Diversity (with length)</h2>{legend}{_metrics_table(data, res, div_names)}")
    if "diversity" in figures:
        sections.append(_figure(figures["diversity"]))
    qnames = groups["quality"] + groups["other"]
    sections.append(f"<h2 id='quality'>Quality</h2>{_metrics_table(data, res, qnames) if qnames else '<p>No quality metrics.</p>'}")
    if "pass_max_at_k" in figures:
        sections.append(_figure(figures["pass_max_at_k"]))
    sections.append(_derived_html(data, res))
    if k_names:
        sections.append(f"<details><summary>pass@k and max@k table ({len(k_names)} rows)</summary>{_metrics_table(data, res, k_names)}</details>")
    if res["comparisons"]:
        st = [f"<h2 id='stats'>Statistics against {_e(data.baseline)}</h2><p class='muted'>Paired over prompts where both models have "
              f"a value. CI: percentile bootstrap ({res['bootstrap']['resamples']} resamples of prompts, seed {res['bootstrap']['seed']}). "
              "p perm.: two-sided sign-flip permutation test; p Wilcoxon: signed-rank test; p Holm: Holm-adjusted permutation p over "
              f"the {len(res['holm_family'])} primary comparisons (highlighted). d<sub>z</sub> = mean / sd of the per-prompt differences; "
              "win rate counts ties as half; relative gain is signed so that positive is better.</p>"]
        for m in res["comparisons"]:
            st.append(f"<h3>{_e(m)} vs {_e(data.baseline)}</h3>{_comparison_table(res, m)}")
        sections.append("".join(st))
    else:
        sections.append("<h2 id='stats'>Statistics</h2><p>One model only: no comparisons.</p>")
    sections.append("<h2 id='figures'>Figures</h2>" + "".join(_figure(figures[n]) for n in ("quality_vs_diversity", "lengths", "differences") if n in figures))
    primary = res["primary_metrics"][0] if res["primary_metrics"] else "the primary metric"
    sections.append(f"<h2 id='samples'>Samples that moved most</h2><p class='muted'>Per compared model, the {SAMPLES_SHOWN} prompts "
                    f"whose {_e(primary)} changed most against the baseline; all samples side by side (q = quality score, "
                    f"(cut) = stopped at max_new_tokens).</p>{_samples_html(data, res)}")
    sections.append(_judge_html(res))
    sections.append(f"<h2 id='models'>Models</h2>{_models_html(data)}")
    sections.append(f"<h2 id='excluded'>Excluded prompts</h2><p class='muted'>Prompts on which a metric is undefined (e.g. an empty "
                    f"sample, a single sample) are left out of its mean and of the paired tests, never counted as 0.</p>{_excluded_html(data, res)}")
    sections.append(_repro_html(data, res))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>Evaluation report: {_e(res['experiment'])}</title><style>{CSS}</style></head><body><main>"
            + "".join(sections) + "</main></body></html>")


def _figure(fig: tuple[bytes, str]) -> str:
    png, caption = fig
    b64 = base64.b64encode(png).decode("ascii")
    return f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{b64}'><figcaption>{_e(caption)}</figcaption></figure>"


def _repro_html(data: EvalData, res: dict) -> str:
    env = res["env"]
    if env:
        pk = env.get("packages") or {}
        dev = env.get("device") or {}
        env_rows = (f"<tr><td>git sha</td><td style='text-align:left'><code>{_e(env.get('git_sha') or 'unknown')}</code>"
                    f"{' (uncommitted changes)' if env.get('git_dirty') else ''}</td></tr>"
                    f"<tr><td>python / platform</td><td style='text-align:left'>{_e(env.get('python'))} / {_e(env.get('platform'))}</td></tr>"
                    f"<tr><td>device</td><td style='text-align:left'>{_e(dev.get('type'))} {_e(dev.get('name'))}</td></tr>"
                    f"<tr><td>packages</td><td style='text-align:left'>{_e(', '.join(f'{k} {v}' for k, v in pk.items()))}</td></tr>")
    else:
        env_rows = "<tr><td>environment</td><td style='text-align:left'>env.json not found: not recorded</td></tr>"
    cfg_yaml = yaml.safe_dump(res["config"], sort_keys=False, allow_unicode=True)
    return (f"<h2 id='repro'>Reproducibility</h2><table>{env_rows}"
            f"<tr><td>statistics</td><td style='text-align:left'>bootstrap {res['bootstrap']['resamples']} resamples, seed "
            f"{res['bootstrap']['seed']}; {_e(res['permutation']['method'])}</td></tr>"
            f"<tr><td>re-render</td><td style='text-align:left'><code>polychromic report {_e(data.eval_dir)}</code></td></tr></table>"
            f"<details><summary>resolved config.yaml</summary><pre>{_e(cfg_yaml)}</pre></details>"
            f"<footer>Written by polychromic report from the files of the evaluation directory only; numbers in results.json.</footer>")


# ---------------------------------------------------------------------------------------------


def report(eval_dir: str | Path) -> list[Path]:
    """Write results.json, report.md, report.html and figures/*.png into `eval_dir`; return the
    paths written."""
    data = load_eval_dir(eval_dir)
    res = compute_results(data)
    figures = make_figures(data, res)
    d = data.eval_dir
    written = []
    figure_files = {}
    for name, (png, _) in figures.items():
        written.append(io.atomic_write_bytes(d / FIGURES_DIR / f"{name}.png", png))
        figure_files[name] = f"{FIGURES_DIR}/{name}.png"
    written.append(io.atomic_write_json(d / "results.json", res))
    written.append(io.atomic_write_text(d / "report.md", render_markdown(data, res, figure_files)))
    written.append(io.atomic_write_text(d / "report.html", render_html(data, res, figures)))
    return written
