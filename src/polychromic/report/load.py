"""Reading and validating an evaluation directory for the report: `load_eval_dir` -> `EvalData`.

Reads only the files of the evaluation directory (docs/architecture.md, "Evaluation directory"):
config.yaml, env.json, prompts.jsonl, samples.jsonl, per_prompt.jsonl, models.json, and when
present scores.jsonl and judge.jsonl. A malformed row is a ValueError naming the file, the line
and the field; what is merely missing or uneven (a model not evaluated yet, different k,
truncated samples) becomes a warning the report shows.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from polychromic import io
from polychromic.config import Config, load_config
from polychromic.evaluation.cache import read_prompts, read_samples
from polychromic.metrics import REGISTRY, metric_info

PER_PROMPT_FILE = "per_prompt.jsonl"
MODELS_FILE = "models.json"
SCORES_FILE = "scores.jsonl"
JUDGE_FILE = "judge.jsonl"
ENV_FILE = "env.json"
CONFIG_FILE = "config.yaml"
FIGURES_DIR = "figures"

TRUNCATION_WARNING = 0.2
"""A model with more than this share of samples stopped at max_new_tokens gets a warning."""


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

    def values(self, model: str, metric: str) -> dict[str, float]:
        """prompt_id -> value of `metric` for `model`, on the prompts where it is defined."""
        return {pid: r["metrics"][metric] for pid, r in self.per_prompt[model].items() if r["metrics"].get(metric) is not None}


def is_number(x: Any) -> bool:
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
            if value is not None and not (is_number(value) and math.isfinite(value)):
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
            if n / max(1, total) > TRUNCATION_WARNING:
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
