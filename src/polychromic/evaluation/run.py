"""`polychromic evaluate`: k samples + one greedy reply per test prompt per model, cached, then scored.
This module orchestrates; the cache files are evaluation.cache, the reference NLL evaluation.nll,
the metrics evaluation.scoring.

Two phases (docs/evaluation.md):
1. `evaluate(cfg)` generates. Every model of `eval.models` (the base alone = zero-shot, or base +
   a PEFT adapter) samples k replies per prompt plus one greedy reply, batched across prompts and
   samples, and every finished chunk of prompts is appended to `samples.jsonl` at once. The held-out
   NLL of the reference replies goes to `ref_nll.jsonl` the same way. A killed evaluation, rerun,
   keeps every complete (model, prompt) unit and redoes only the rest.
2. `scoring.score(eval_dir)` reads only those files (no model, no GPU) and writes `scores.jsonl`,
   `per_prompt.jsonl` and `models.json`; it can be rerun at any time to recompute the metrics.

Reproducibility and common random numbers: prompts are cut into fixed chunks of
`eval.batch_size // k` prompts (from the full prompt list, whatever is already done), and each
chunk's sampling seed is derived from (seed, the chunk's prompt ids) alone: NOT from the model.
Every model of the evaluation therefore samples each prompt's k replies from the same random
stream, in the same batch layout, so the difference between two models is not blurred by
sampling noise (common random numbers): two adapters that barely differ give (almost) the same
samples, and a paired per-prompt difference measures the models, not the draws. A rerun, or a
resumed run, gives the same samples for the same chunk. The cached rows record their seed, and a
cache whose seeds are not those of this chunking (another eval.batch_size, or a cache made when
the seed still included the model name) is refused: mixing them would break the pairing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from polychromic import io
from polychromic.config import Config, load_config, to_yaml
from polychromic.evaluation.cache import (
    CONFIG_FILE,
    PROMPTS_FILE,
    REF_NLL_FILE,
    SAMPLES_FILE,
    EvaluationError,
    group_units,
    read_prompts,
    read_ref_nll,
    read_samples,
    repair,
    sample_row,
    unit_complete,
)
from polychromic.evaluation.nll import reference_nll
from polychromic.evaluation.scoring import MODELS_FILE, score

ENV_FILE = "env.json"

# Fields that decide which samples a cached evaluation holds: a rerun into the same folder must
# agree on all of them (models may be added; a kept model must keep its adapter).
_FINGERPRINT = (
    ("seed",), ("model", "path"), ("model", "gguf_file"), ("model", "load_in_4bit"),
    ("data", "prepared_dir"), ("data", "template"), ("data", "system_prompt"), ("data", "max_length"),
    ("eval", "split"), ("eval", "max_prompts"), ("eval", "k"), ("eval", "temperature"), ("eval", "top_p"),
    ("eval", "top_k"), ("eval", "max_new_tokens"),
)


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


def chunk_seed(seed: int, prompt_ids: Sequence[str]) -> int:
    """The sampling seed of a chunk of prompts: the same for every model (common random numbers)."""
    blob = f"{seed}\x1fcrn\x1f" + "\x1f".join(prompt_ids)
    return int(hashlib.sha256(blob.encode("utf-8")).hexdigest()[:15], 16)


def chunk_seeds(cfg: Config, prompts: list[dict]) -> dict[str, int]:
    """{prompt_id: the seed of its chunk} under this config's chunking."""
    size = max(1, cfg.eval.batch_size // cfg.eval.k)
    out = {}
    for chunk in _chunks(len(prompts), size):
        ids = [prompts[i]["prompt_id"] for i in chunk]
        seed = chunk_seed(cfg.seed, ids)
        out.update(dict.fromkeys(ids, seed))
    return out


def _chunks(n: int, size: int) -> list[range]:
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


def _decode(tokenizer, completion) -> tuple[str, int]:
    # n_tokens counts the reply without its end-of-turn token.
    n = len(completion.ids) - (1 if completion.finished else 0)
    return tokenizer.decode(completion.ids, skip_special_tokens=True).strip(), n


def _generate_chunk(model, tokenizer, cfg: Config, name: str, prompts: list[dict], ids: list[list[int]]) -> list[dict]:
    """Rows (k samples + greedy per prompt) for one chunk of prompts."""
    from polychromic import generation  # through the module attribute, so tests can count calls

    seed = chunk_seed(cfg.seed, [p["prompt_id"] for p in prompts])
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


def _check_decoding(rows: list[dict], cfg: Config, path: Path, seeds: dict[str, int]) -> None:
    want = {"sample": {**sampling_params(cfg, False).to_dict(), "k": cfg.eval.k},
            "greedy": {**sampling_params(cfg, True).to_dict(), "k": cfg.eval.k}}
    for r in rows:
        got = {k: v for k, v in r["decoding"].items() if k != "seed"}
        if got != want[r["kind"]]:
            raise EvaluationError(f"{path}: model {r['model']} prompt {r['prompt_id']} was sampled with {got}, "
                                  f"the config asks for {want[r['kind']]}; use a new eval.output_dir")
        if r["kind"] == "sample" and r["decoding"].get("seed") != seeds.get(r["prompt_id"]):
            raise EvaluationError(
                f"{path}: model {r['model']} prompt {r['prompt_id']} was sampled with seed {r['decoding'].get('seed')}, not "
                f"{seeds.get(r['prompt_id'])}, the seed of its chunk under this config (the chunks are eval.batch_size // k "
                "prompts, and the seed is the same for every model); new samples would not share the cached ones' random "
                "numbers. Keep eval.batch_size, or use a new eval.output_dir")


def _todo(cfg: Config, out: Path, prompts: list[dict]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Per model, the prompt ids whose samples and whose reference NLL are still missing.
    Repairs the caches first: torn tails and rows of incomplete units are dropped."""
    s_path, n_path = out / SAMPLES_FILE, out / REF_NLL_FILE
    units = group_units(read_samples(out)) if s_path.is_file() else {}
    complete = {u for u, rows in units.items() if unit_complete(rows)}
    dropped = repair(s_path, lambda r: (r["model"], r["prompt_id"]) in complete)
    # reference NLL rows without the tempered value at this temperature (an older cache) are
    # recomputed: one forward pass per prompt, no sampling
    stale = repair(n_path, lambda r: "ref_nll_tempered" in r and r.get("temperature") == float(cfg.eval.temperature))
    if dropped:
        print(f"{s_path}: dropped {dropped} row(s) of unfinished prompts; they are generated again")
    if stale:
        print(f"{n_path}: {stale} row(s) without the tempered reference NLL at T = {cfg.eval.temperature}; recomputed")
    _check_decoding([r for u in complete for r in units[u]], cfg, s_path, chunk_seeds(cfg, prompts))
    have_nll = set(read_ref_nll(out))
    samples_todo = {m.name: {p["prompt_id"] for p in prompts if (m.name, p["prompt_id"]) not in complete} for m in cfg.eval.models}
    nll_todo = {m.name: {p["prompt_id"] for p in prompts if (m.name, p["prompt_id"]) not in have_nll} for m in cfg.eval.models}
    return samples_todo, nll_todo


def generate(cfg: Config, out: Path, prompts: list[dict]) -> int:
    """Fill samples.jsonl and ref_nll.jsonl for every model; returns the number of prompts done
    now (0 when everything was cached: then no model is even loaded)."""
    from tqdm.auto import tqdm

    from polychromic.data import render_prompt
    from polychromic.models import check_adapter, load_adapter, load_base_model, load_tokenizer, pick_device

    samples_todo, nll_todo = _todo(cfg, out, prompts)
    if not any(samples_todo.values()) and not any(nll_todo.values()):
        return 0
    tokenizer = load_tokenizer(cfg.model)
    base = load_base_model(cfg.model, pick_device(cfg.trainer.device))
    for m in cfg.eval.models:  # every adapter is checked against the base before anything is generated
        if m.adapter is not None and (samples_todo[m.name] or nll_todo[m.name]):
            check_adapter(base, m.adapter, f"eval.models[{m.name}].adapter", cfg.model)
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
        models = io.read_json_object(out / MODELS_FILE)
        for name, s in summary.items():
            models[name]["judge"] = s
            skipped = f", {s['skipped_budget']} skipped (budget eval.judge.max_calls)" if s["skipped_budget"] else ""
            print(f"judge {name} vs {baseline}: {s['wins']} wins, {s['losses']} losses, {s['ties']} ties, "
                  f"{s['parse_failures']} parse failures{skipped}")
        io.atomic_write_json(out / MODELS_FILE, models)
    return out
