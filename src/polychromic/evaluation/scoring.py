"""Scoring, files in and files out: `score(eval_dir)` reads the evaluation's samples, prompts and
reference NLL (no model, no GPU beyond the sentence embedders) and writes `scores.jsonl` (quality
parts per sample), `per_prompt.jsonl` (every per-prompt metric, with ROUGE-L of the greedy reply
and the reference NLL at T = 1 and at the sampling temperature), `models.json` (per model:
adapter, mean reference NLLs, LoRA analysis, and the judge summary an earlier judging stored) and
`scoring.json` (how the metrics were computed: which embedder, which quality function, the NLL
temperature, and per metric whether the training reward optimised it, metrics.provenance). It
can be rerun at any time.

Two embedders: quality and relevance use objective.diversity_encoder_model, as the training
reward computes them; the semantic diversity metrics use eval.embedder, which may be an encoder
the training never saw (the same instance when the two names agree).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from polychromic import io
from polychromic.config import Config, load_config
from polychromic.evaluation.cache import (
    CONFIG_FILE,
    SAMPLES_FILE,
    EvaluationError,
    group_units,
    read_prompts,
    read_ref_nll,
    read_samples,
    unit_complete,
)

SCORES_FILE = "scores.jsonl"
PER_PROMPT_FILE = "per_prompt.jsonl"
MODELS_FILE = "models.json"
SCORING_FILE = "scoring.json"


class _MemoEmbedder:
    """Embeds each distinct text once (samples repeat across quality and diversity scoring)."""

    def __init__(self, embed: Callable[[Sequence[str]], np.ndarray]):
        self.embed = embed
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            for t, e in zip(new, np.asarray(self.embed(new))):
                self.cache[t] = e
        if not texts:
            return np.zeros((0, 0))
        return np.stack([self.cache[t] for t in texts])


def _rouge_l(prediction: str, reference: str | None) -> tuple[float | None, str | None]:
    from rouge_score import rouge_scorer, tokenize

    if reference is None:
        return None, "no reference reply"
    if not tokenize.tokenize(reference, None):
        return None, "reference has no ROUGE tokens"
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(scorer.score(reference, prediction)["rougeL"].fmeasure), None


def _lora_entries(cfg: Config, out: Path) -> dict[str, dict | None]:
    """LoRA analysis per adapter model, each compared with every other adapter. An adapter folder
    that is gone keeps the analysis an earlier scoring stored in models.json."""
    from polychromic.evaluation.lora_analysis import analyze_adapter, compare_adapters

    old = io.read_json_object(out / MODELS_FILE) if (out / MODELS_FILE).is_file() else {}
    adapters = {m.name: m.adapter for m in cfg.eval.models if m.adapter is not None}
    result: dict[str, dict | None] = {m.name: None for m in cfg.eval.models}
    for name, path in adapters.items():
        if Path(path).is_dir():
            entry = analyze_adapter(path)
            entry["compared_to"] = {other: {k: v for k, v in compare_adapters(path, op).items() if k not in ("a", "b")}
                                    for other, op in adapters.items() if other != name and Path(op).is_dir()}
            result[name] = entry
        elif (old.get(name) or {}).get("adapter") == path and old[name].get("lora"):
            result[name] = old[name]["lora"]
        else:
            raise EvaluationError(f"eval.models[{name}].adapter {path!r} not found, and {out / MODELS_FILE} holds no earlier analysis of it")
    return result


def _nll_temperature(ref: dict, model: str) -> float | None:
    """The sampling temperature of the model's tempered reference NLL rows (None: no rows)."""
    temps = {r.get("temperature") for (m, _), r in ref.items() if m == model}
    if len(temps) > 1:
        raise EvaluationError(f"ref_nll.jsonl: model {model} has tempered NLL rows at several temperatures {sorted(map(str, temps))}")
    return temps.pop() if temps else None


def score(eval_dir: str | Path, embedder: Callable[[Sequence[str]], np.ndarray] | None = None,
          eval_embedder: Callable[[Sequence[str]], np.ndarray] | None = None) -> Path:
    """Recompute scores.jsonl, per_prompt.jsonl, models.json and scoring.json from the
    evaluation's files alone.

    `embedder` (texts -> L2-normalised embeddings; quality and relevance) defaults to the
    configured objective.diversity_encoder_model, `eval_embedder` (semantic diversity) to
    eval.embedder, and is `embedder` itself when the two names agree. Every (model, prompt) of the
    config must be complete.
    """
    from polychromic.metrics import per_prompt_metrics
    from polychromic.metrics.provenance import provenance
    from polychromic.rewards import needs_embedder, relevance, score_parts

    out = Path(eval_dir)
    cfg = load_config(out / CONFIG_FILE)
    prompts = read_prompts(out)
    units = group_units(read_samples(out))
    names = [m.name for m in cfg.eval.models]
    missing = [f"{n}/{p['prompt_id']}" for n in names for p in prompts if not unit_complete(units.get((n, p["prompt_id"]), []))]
    if missing:
        raise EvaluationError(f"{out / SAMPLES_FILE}: {len(missing)} (model, prompt) unit(s) incomplete (e.g. {missing[:3]}); "
                              "rerun `polychromic evaluate` with the same config to finish them")
    ref = read_ref_nll(out)
    if embedder is None:
        from polychromic.models import load_embedder

        embedder = load_embedder(cfg.objective.diversity_encoder_model)
    embed = _MemoEmbedder(embedder)
    if eval_embedder is None and cfg.eval.embedder != cfg.objective.diversity_encoder_model:
        from polychromic.models import load_embedder

        eval_embedder = load_embedder(cfg.eval.embedder)
    eval_embed = embed if eval_embedder is None else _MemoEmbedder(eval_embedder)

    by_id = {p["prompt_id"]: p for p in prompts}
    rows = [r for n in names for p in prompts for r in sorted(units[(n, p["prompt_id"])], key=lambda r: (r["kind"] != "sample", r["index"]))]
    p_texts = [by_id[r["prompt_id"]]["prompt"] for r in rows]
    texts = [r["text"] for r in rows]
    parts = score_parts(p_texts, texts, [r["finished"] for r in rows], embed, cfg.objective)
    rel = parts["relevance"] if not np.any(np.isnan(parts["relevance"])) else relevance(p_texts, texts, embed)
    scores = [{"prompt_id": r["prompt_id"], "model": r["model"], "kind": r["kind"], "index": r["index"],
               "quality": float(q), "relevance": float(v), "guard": float(g)}
              for r, q, v, g in zip(rows, parts["quality"], rel, parts["guard"])]
    io.atomic_write_jsonl(out / SCORES_FILE, scores)

    # every sample text in one call (then per prompt from the memo): an encoder that runs one
    # batch at a time (E5 on the CPU) is ~5x faster on one large batch than on k texts per call
    eval_embed([t for r, t in zip(rows, texts) if r["kind"] == "sample"])
    per_prompt = []
    at = 0
    for n in names:
        for p in prompts:
            unit = rows[at : at + len(units[(n, p["prompt_id"])])]
            idx = range(at, at + len(unit))
            at += len(unit)
            s_idx = [i for i in idx if rows[i]["kind"] == "sample"]
            s_texts = [texts[i] for i in s_idx]
            metrics, excluded = per_prompt_metrics(
                s_texts, eval_embed(s_texts), [float(parts["quality"][i]) for i in s_idx], [rows[i]["n_tokens"] for i in s_idx],
                tau=cfg.eval.quality_threshold,
            )
            metrics["relevance"] = float(np.mean(rel[s_idx]))
            greedy = [rows[i]["text"] for i in idx if rows[i]["kind"] == "greedy"]
            if greedy:
                metrics["rouge_l"], why = _rouge_l(greedy[0], p.get("reference"))
            else:
                metrics["rouge_l"], why = None, "no greedy reply (imported samples)"
            if why:
                excluded["rouge_l"] = why
            nll = ref.get((n, p["prompt_id"]))
            for key in ("ref_nll", "ref_nll_tempered"):
                metrics[key] = nll.get(key) if nll else None
                if metrics[key] is None:
                    excluded[key] = ("reference NLL not computed (imported samples)" if nll is None else
                                     "reference has no tokens" if key in nll else "not in ref_nll.jsonl (rerun evaluate)")
            per_prompt.append({"model": n, "prompt_id": p["prompt_id"], "k": len(s_idx), "metrics": metrics, "excluded": excluded})
    io.atomic_write_jsonl(out / PER_PROMPT_FILE, per_prompt)

    old = io.read_json_object(out / MODELS_FILE) if (out / MODELS_FILE).is_file() else {}
    lora = _lora_entries(cfg, out)
    models = {}
    def mean_of(model: str, key: str) -> float | None:
        vals = [r["metrics"][key] for r in per_prompt if r["model"] == model and r["metrics"][key] is not None]
        return float(np.mean(vals)) if vals else None

    for m in cfg.eval.models:
        models[m.name] = {"adapter": m.adapter, "ref_nll_mean": mean_of(m.name, "ref_nll"),
                          "ref_nll_tempered_mean": mean_of(m.name, "ref_nll_tempered"),
                          "ref_nll_temperature": _nll_temperature(ref, m.name), "lora": lora[m.name]}
        if "judge" in (old.get(m.name) or {}):  # judge verdicts are not recomputed here (they cost calls)
            models[m.name]["judge"] = old[m.name]["judge"]
    io.atomic_write_json(out / MODELS_FILE, models)
    o = cfg.objective
    io.atomic_write_json(out / SCORING_FILE, {
        **provenance(sorted({k for r in per_prompt for k in r["metrics"]}), cfg.eval.embedder,
                     o.diversity_encoder_model if needs_embedder(o) else None, o.quality, train_distance=o.diversity_metric),
        "quality_embedder": o.diversity_encoder_model,
        "ref_nll_temperature": float(cfg.eval.temperature),
        "note": "trained_on is relative to this config's objective (the reward the evaluated variants were trained with)",
    })
    return out
