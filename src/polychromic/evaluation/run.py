"""`polychromic evaluate`: k samples + one greedy reply per test prompt per model, cached, then scored.

Two phases (docs/evaluation.md):
1. `evaluate(cfg)` generates. Every model of `eval.models` (the base alone = zero-shot, or base +
   a PEFT adapter) samples k replies per prompt plus one greedy reply, batched across prompts and
   samples, and every finished chunk of prompts is appended to `samples.jsonl` at once. The held-out
   NLL of the reference replies goes to `ref_nll.jsonl` the same way. A killed evaluation, rerun,
   keeps every complete (model, prompt) unit and redoes only the rest.
2. `score(eval_dir)` reads only those files (no model, no GPU) and writes `scores.jsonl`,
   `per_prompt.jsonl` and `models.json`; it can be rerun at any time to recompute the metrics.

Reproducibility: prompts are cut into fixed chunks of `eval.batch_size // k` prompts (from the
full prompt list, whatever is already done), and each chunk's sampling seed is derived from
(seed, model name, the chunk's prompt ids). A rerun, or a resumed run, therefore gives the same
samples for the same chunk, and with one prompt per chunk the seed is exactly per (seed, model,
prompt). Changing eval.batch_size changes the chunks and hence the samples drawn for new chunks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from polychromic import io
from polychromic.config import Config, load_config, to_yaml
from polychromic.evaluation.cache import (
    CONFIG_FILE,
    PROMPTS_FILE,
    REF_NLL_FILE,
    SAMPLES_FILE,
    group_units,
    read_prompts,
    read_ref_nll,
    read_samples,
    repair,
    sample_row,
    unit_complete,
)

SCORES_FILE = "scores.jsonl"
PER_PROMPT_FILE = "per_prompt.jsonl"
MODELS_FILE = "models.json"
ENV_FILE = "env.json"
NLL_TOKEN_BUDGET = 8192
"""Tokens per forward pass for the reference NLL: bounds the (tokens x vocab) logits in memory."""

# Fields that decide which samples a cached evaluation holds: a rerun into the same folder must
# agree on all of them (models may be added; a kept model must keep its adapter).
_FINGERPRINT = (
    ("seed",), ("model", "path"), ("model", "gguf_file"), ("model", "load_in_4bit"),
    ("data", "prepared_dir"), ("data", "template"), ("data", "system_prompt"), ("data", "max_length"),
    ("eval", "split"), ("eval", "max_prompts"), ("eval", "k"), ("eval", "temperature"), ("eval", "top_p"),
    ("eval", "top_k"), ("eval", "max_new_tokens"),
)


class EvaluationError(RuntimeError):
    pass


def output_dir(cfg: Config) -> Path:
    return Path(cfg.eval.output_dir) if cfg.eval.output_dir else Path(cfg.runs_dir) / "eval" / cfg.experiment


def _get(cfg: Config, path: tuple[str, ...]):
    obj = cfg
    for p in path:
        obj = getattr(obj, p)
    return obj


def _check_same_evaluation(old: Config, new: Config, where: Path) -> None:
    diff = [".".join(p) for p in _FINGERPRINT if _get(old, p) != _get(new, p)]
    old_adapters = {m.name: m.adapter for m in old.eval.models}
    diff += [f"eval.models[{m.name}].adapter" for m in new.eval.models if m.name in old_adapters and old_adapters[m.name] != m.adapter]
    if diff:
        raise EvaluationError(
            f"{where} holds an evaluation made with a different config ({', '.join(diff)} changed); its cached "
            "samples would be mixed with new ones. Set eval.output_dir to a new folder, or delete this one."
        )


# ---------------------------------------------------------------------------------------------
# Prompts


def prompt_id(group: str) -> str:
    """Stable id of a prompt group (the same group keeps its id across runs)."""
    return hashlib.sha1(group.encode("utf-8")).hexdigest()[:16]


def select_prompts(cfg: Config) -> list[dict]:
    """One row per prompt group of the eval split, in file order, first `max_prompts` groups.
    `reference` is the group's first reply; `references` all of them."""
    from polychromic.data import load_split

    groups: dict[str, dict] = {}
    for r in load_split(cfg.data.prepared_dir, cfg.eval.split):
        g = groups.get(r["group"])
        if g is None:
            if cfg.eval.max_prompts is not None and len(groups) == cfg.eval.max_prompts:
                continue
            groups[r["group"]] = {"prompt_id": prompt_id(r["group"]), "prompt": r["prompt"], "reference": r["reply"],
                                  "references": [r["reply"]], "group": r["group"]}
        else:
            g["references"].append(r["reply"])
    if not groups:
        raise EvaluationError(f"{cfg.data.prepared_dir}: the {cfg.eval.split} split holds no rows")
    return list(groups.values())


# ---------------------------------------------------------------------------------------------
# Generation


def sampling_params(cfg: Config, greedy: bool):
    """The explicit decoding parameters of eval (generation.SamplingParams)."""
    from polychromic import generation

    e = cfg.eval
    return generation.SamplingParams(temperature=e.temperature, top_p=e.top_p, top_k=e.top_k, max_new_tokens=e.max_new_tokens, greedy=greedy)


def chunk_seed(seed: int, model: str, prompt_ids: Sequence[str]) -> int:
    blob = f"{seed}\x1f{model}\x1f" + "\x1f".join(prompt_ids)
    return int(hashlib.sha256(blob.encode("utf-8")).hexdigest()[:15], 16)


def _chunks(n: int, size: int) -> list[range]:
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


def _decode(tokenizer, completion) -> tuple[str, int]:
    # n_tokens counts the reply without its end-of-turn token.
    n = len(completion.ids) - (1 if completion.finished else 0)
    return tokenizer.decode(completion.ids, skip_special_tokens=True).strip(), n


def _generate_chunk(model, tokenizer, cfg: Config, name: str, prompts: list[dict], ids: list[list[int]]) -> list[dict]:
    """Rows (k samples + greedy per prompt) for one chunk of prompts."""
    from polychromic import generation# through the module attribute, so tests can count calls

    seed = chunk_seed(cfg.seed, name, [p["prompt_id"] for p in prompts])
    sp, gp = sampling_params(cfg, greedy=False), sampling_params(cfg, greedy=True)
    k = cfg.eval.k
    sampled = generation.sample(model, tokenizer, ids, k, sp, seed=seed, batch_size=cfg.eval.batch_size)
    greedy = generation.sample(model, tokenizer, ids, 1, gp, seed=None, batch_size=cfg.eval.batch_size)
    rows = []
    for p, outs, g in zip(prompts, sampled, greedy):
        for j, c in enumerate(outs):
            text, n = _decode(tokenizer, c)
            rows.append(sample_row(p["prompt_id"], name, "sample", j, text, n, c.finished, {**sp.to_dict(), "k": k, "seed": seed}))
        text, n = _decode(tokenizer, g[0])
        rows.append(sample_row(p["prompt_id"], name, "greedy", 0, text, n, g[0].finished, {**gp.to_dict(), "k": k}))
    return rows


def reference_nll(model, tokenizer, cfg: Config, prompts: list[dict]) -> list[dict]:
    """Per prompt: mean token NLL of its reference replies (all of the group's replies, tokens
    pooled) given the rendered prompt, encoded exactly as training encodes them."""
    import torch

    from polychromic.data import collate, encode_example

    examples = [(i, encode_example(tokenizer, cfg.data, p["prompt"], ref)) for i, p in enumerate(prompts) for ref in p["references"]]
    total = np.zeros(len(prompts))
    count = np.zeros(len(prompts), dtype=np.int64)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    examples.sort(key=lambda x: len(x[1]["input_ids"]))  # similar lengths together: less padding
    start = 0
    while start < len(examples):
        width, end = 0, start
        while end < len(examples) and (end == start or max(width, len(examples[end][1]["input_ids"])) * (end - start + 1) <= NLL_TOKEN_BUDGET):
            width = max(width, len(examples[end][1]["input_ids"]))
            end += 1
        batch = collate([e for _, e in examples[start:end]], pad)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
            labels = batch["labels"][:, 1:].to(device)
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
            )
            per_seq = nll.sum(dim=1).double().cpu().numpy()
            per_n = (labels != -100).sum(dim=1).cpu().numpy()
        for (i, _), s, n in zip(examples[start:end], per_seq, per_n):
            total[i] += s
            count[i] += n
        start = end
    return [
        {"prompt_id": p["prompt_id"], "ref_nll": float(total[i] / count[i]) if count[i] else None, "n_tokens": int(count[i]),
         "n_references": len(p["references"])}
        for i, p in enumerate(prompts)
    ]


def _prepare_dir(cfg: Config, out: Path, prompts: list[dict]) -> None:
    from polychromic.rundir import env_info

    cfg_path = out / CONFIG_FILE
    if cfg_path.is_file():
        _check_same_evaluation(load_config(cfg_path), cfg, out)
    p_path = out / PROMPTS_FILE
    if p_path.is_file():
        old = read_prompts(out)
        if [(p["prompt_id"], p["prompt"]) for p in old] != [(p["prompt_id"], p["prompt"]) for p in prompts]:
            raise EvaluationError(f"{p_path}: the prompts differ from the {cfg.eval.split} split of {cfg.data.prepared_dir}; "
                                  "use a new eval.output_dir")
    else:
        io.atomic_write_jsonl(p_path, prompts)
    io.atomic_write_text(cfg_path, to_yaml(cfg))
    io.atomic_write_json(out / ENV_FILE, env_info())


def _check_decoding(rows: list[dict], cfg: Config, path: Path) -> None:
    want = {"sample": {**sampling_params(cfg, False).to_dict(), "k": cfg.eval.k},
            "greedy": {**sampling_params(cfg, True).to_dict(), "k": cfg.eval.k}}
    for r in rows:
        got = {k: v for k, v in r["decoding"].items() if k != "seed"}
        if got != want[r["kind"]]:
            raise EvaluationError(f"{path}: model {r['model']} prompt {r['prompt_id']} was sampled with {got}, "
                                  f"the config asks for {want[r['kind']]}; use a new eval.output_dir")


def _todo(cfg: Config, out: Path, prompts: list[dict]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Per model, the prompt ids whose samples and whose reference NLL are still missing.
    Repairs the caches first: torn tails and rows of incomplete units are dropped."""
    s_path, n_path = out / SAMPLES_FILE, out / REF_NLL_FILE
    units = group_units(read_samples(out)) if s_path.is_file() else {}
    complete = {u for u, rows in units.items() if unit_complete(rows)}
    dropped = repair(s_path, lambda r: (r["model"], r["prompt_id"]) in complete)
    repair(n_path, lambda r: True)
    if dropped:
        print(f"{s_path}: dropped {dropped} row(s) of unfinished prompts; they are generated again")
    _check_decoding([r for u in complete for r in units[u]], cfg, s_path)
    have_nll = set(read_ref_nll(out))
    samples_todo = {m.name: {p["prompt_id"] for p in prompts if (m.name, p["prompt_id"]) not in complete} for m in cfg.eval.models}
    nll_todo = {m.name: {p["prompt_id"] for p in prompts if (m.name, p["prompt_id"]) not in have_nll} for m in cfg.eval.models}
    return samples_todo, nll_todo


def generate(cfg: Config, out: Path, prompts: list[dict]) -> int:
    """Fill samples.jsonl and ref_nll.jsonl for every model; returns the number of prompts done
    now (0 when everything was cached: then no model is even loaded)."""
    from tqdm.auto import tqdm

    from polychromic.data import render_prompt
    from polychromic.models import load_adapter, load_base_model, load_tokenizer, pick_device

    samples_todo, nll_todo = _todo(cfg, out, prompts)
    if not any(samples_todo.values()) and not any(nll_todo.values()):
        return 0
    tokenizer = load_tokenizer(cfg.model)
    base = load_base_model(cfg.model, pick_device(cfg.trainer.device))
    ids = [render_prompt(tokenizer, cfg.data, p["prompt"]) for p in prompts]
    size = max(1, cfg.eval.batch_size // cfg.eval.k)
    done = 0
    for m in cfg.eval.models:
        s_todo, n_todo = samples_todo[m.name], nll_todo[m.name]
        if not s_todo and not n_todo:
            continue
        # One base model per evaluation; each adapter is attached, used, then removed again
        # (unload without merging restores the base modules exactly).
        model = base if m.adapter is None else load_adapter(base, m.adapter, name="evaluated")
        try:
            bar = tqdm(total=len(s_todo | n_todo), desc=f"evaluate {m.name}", unit="prompt")
            for chunk in _chunks(len(prompts), size):
                ps = [prompts[i] for i in chunk]
                need_s = [p for p in ps if p["prompt_id"] in s_todo]
                need_n = [p for p in ps if p["prompt_id"] in n_todo]
                if need_s:
                    # The whole chunk is generated (same seed, same batch: same samples as an
                    # uninterrupted run); only its unfinished prompts are written.
                    rows = _generate_chunk(model, tokenizer, cfg, m.name, ps, [ids[i] for i in chunk])
                    io.append_jsonl(out / SAMPLES_FILE, [r for r in rows if r["prompt_id"] in s_todo])
                if need_n:
                    io.append_jsonl(out / REF_NLL_FILE, [{**r, "model": m.name} for r in reference_nll(model, tokenizer, cfg, need_n)])
                bar.update(len({p["prompt_id"] for p in need_s + need_n}))
                done += len(need_s)
            bar.close()
        finally:
            if m.adapter is not None:
                base = model.unload()
    return done


def evaluate(cfg: Config) -> Path:
    """Generate (cached), score, and judge when enabled. Returns the evaluation directory."""
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    prompts = select_prompts(cfg)
    _prepare_dir(cfg, out, prompts)
    generate(cfg, out, prompts)
    score(out)
    if cfg.eval.judge.enabled:
        from polychromic.evaluation.judge import judge_eval_dir

        baseline = cfg.eval.baseline or cfg.eval.models[0].name
        summary = judge_eval_dir(out, cfg.eval.judge, baseline, models=[m.name for m in cfg.eval.models])
        models = _read_json(out / MODELS_FILE)
        for name, s in summary.items():
            models[name]["judge"] = s
            skipped = f", {s['skipped_budget']} skipped (budget eval.judge.max_calls)" if s["skipped_budget"] else ""
            print(f"judge {name} vs {baseline}: {s['wins']} wins, {s['losses']} losses, {s['ties']} ties, "
                  f"{s['parse_failures']} parse failures{skipped}")
        io.atomic_write_json(out / MODELS_FILE, models)
    return out


# ---------------------------------------------------------------------------------------------
# Scoring: files in, files out


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


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


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

    old = _read_json(out / MODELS_FILE) if (out / MODELS_FILE).is_file() else {}
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


def score(eval_dir: str | Path, embedder: Callable[[Sequence[str]], np.ndarray] | None = None) -> Path:
    """Recompute scores.jsonl, per_prompt.jsonl and models.json from the evaluation's files alone.

    `embedder` (texts -> L2-normalised embeddings) defaults to the configured
    objective.diversity_encoder_model. Every (model, prompt) of the config must be complete.
    """
    from polychromic.metrics import per_prompt_metrics
    from polychromic.rewards import relevance, score_parts

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
                s_texts, embed(s_texts), [float(parts["quality"][i]) for i in s_idx], [rows[i]["n_tokens"] for i in s_idx],
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
            metrics["ref_nll"] = nll["ref_nll"] if nll else None
            if metrics["ref_nll"] is None:
                excluded["ref_nll"] = "reference NLL not computed (imported samples)" if nll is None else "reference has no tokens"
            per_prompt.append({"model": n, "prompt_id": p["prompt_id"], "k": len(s_idx), "metrics": metrics, "excluded": excluded})
    io.atomic_write_jsonl(out / PER_PROMPT_FILE, per_prompt)

    old = _read_json(out / MODELS_FILE) if (out / MODELS_FILE).is_file() else {}
    lora = _lora_entries(cfg, out)
    models = {}
    for m in cfg.eval.models:
        vals = [r["metrics"]["ref_nll"] for r in per_prompt if r["model"] == m.name and r["metrics"]["ref_nll"] is not None]
        models[m.name] = {"adapter": m.adapter, "ref_nll_mean": float(np.mean(vals)) if vals else None, "lora": lora[m.name]}
        if "judge" in (old.get(m.name) or {}):  # judge verdicts are not recomputed here (they cost calls)
            models[m.name]["judge"] = old[m.name]["judge"]
    io.atomic_write_json(out / MODELS_FILE, models)
    return out
