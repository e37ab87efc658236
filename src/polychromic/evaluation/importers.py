"""Samples made by other tools, turned into an evaluation directory that `score` and `report`
read: `import_samples(path, format, model_name, out_eval_dir)`.

Formats:
- NoveltyBench `generations.jsonl`: `{"id", "prompt", "model", "generations": [str, ...]}`.
- lm-evaluation-harness `samples_<task>_<date>.jsonl` (`--log_samples`): `{"doc_id", "doc",
  "arguments", "resps": [[str, ...], ...], "filtered_resps", "target"}`; the prompt is the first
  request's context (`arguments.gen_args_0.arg_0`, or `arguments[0][0]` in older versions), the
  samples are every string of `resps` in order (the raw generations, before the task's filters),
  the reference is `target` when it is a non-empty string.
Imported units have no greedy reply and no reference NLL; score() marks those metrics excluded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polychromic import io
from polychromic.config import Config, EvalModel, config_from_dict, load_config, to_dict, to_yaml
from polychromic.evaluation.cache import (
    CONFIG_FILE,
    PROMPTS_FILE,
    SAMPLES_FILE,
    SamplesError,
    check_row,
    read_prompts,
    read_samples,
    sample_row,
)

FORMATS = ("noveltybench", "lm_eval")


def _read_noveltybench(path: Path) -> list[dict]:
    out = []
    for i, r in enumerate(io.read_jsonl(path), start=1):
        where = f"{path}: line {i}"
        check_row(r, {"id": (str, int), "prompt": str, "generations": list}, where)
        gens = r["generations"]
        if not gens or not all(isinstance(g, str) for g in gens):
            raise SamplesError(f"{where}: field 'generations' must be a non-empty list of strings")
        out.append({"prompt_id": str(r["id"]), "prompt": r["prompt"], "reference": None, "texts": gens, "model": r.get("model")})
    return out


def _lm_eval_context(arguments: Any, where: str) -> str:
    if isinstance(arguments, dict):  # lm-eval >= 0.4.3: {"gen_args_0": {"arg_0": context, "arg_1": gen_kwargs}}
        first = arguments.get("gen_args_0")
        ctx = first.get("arg_0") if isinstance(first, dict) else None
    elif isinstance(arguments, list) and arguments and isinstance(arguments[0], list) and arguments[0]:
        ctx = arguments[0][0]  # older: [[context, gen_kwargs], ...]
    else:
        ctx = None
    if not isinstance(ctx, str):
        raise SamplesError(f"{where}: field 'arguments' has no context string (expected gen_args_0.arg_0)")
    return ctx


def _read_lm_eval(path: Path) -> list[dict]:
    out = []
    for i, r in enumerate(io.read_jsonl(path), start=1):
        where = f"{path}: line {i}"
        check_row(r, {"doc_id": (int, str), "arguments": (dict, list), "resps": list}, where)
        texts = []
        for resp in r["resps"]:
            if not isinstance(resp, list) or not all(isinstance(t, str) for t in resp):
                raise SamplesError(f"{where}: field 'resps' must be a list of lists of strings (a generate_until task), got {resp!r:.120}")
            texts.extend(resp)
        if not texts:
            raise SamplesError(f"{where}: field 'resps' holds no generation")
        target = r.get("target")
        out.append({
            "prompt_id": str(r["doc_id"]), "prompt": _lm_eval_context(r["arguments"], where),
            "reference": target if isinstance(target, str) and target else None, "texts": texts, "model": None,
        })
    return out


def import_samples(path: str | Path, format: str, model_name: str, out_eval_dir: str | Path, tokenizer=None) -> Path:
    """Write prompts.jsonl + samples.jsonl (+ config.yaml) of `out_eval_dir` from another tool's
    samples, so `score` and `report` work on them. Import a second model into the same
    folder to compare them; its prompt ids must be the same set.

    `n_tokens` is counted with `tokenizer` (a Hugging Face tokenizer) when given, else as the
    number of lexical tokens (metrics.tokenize), which the docs call out as not model tokens.
    NoveltyBench files hold several models: only rows whose `model` equals `model_name` are taken
    when any row names one.
    """
    from polychromic.metrics import tokenize

    src, out = Path(path), Path(out_eval_dir)
    if format not in FORMATS:
        raise SamplesError(f"format must be one of {FORMATS}, got {format!r}")
    if not src.is_file():
        raise SamplesError(f"{src} not found")
    items = _read_noveltybench(src) if format == "noveltybench" else _read_lm_eval(src)
    if format == "noveltybench" and any(it["model"] for it in items):
        items = [it for it in items if it["model"] == model_name]
        if not items:
            raise SamplesError(f"{src}: no rows with model {model_name!r}")
    ids = [it["prompt_id"] for it in items]
    if len(set(ids)) != len(ids):
        raise SamplesError(f"{src}: duplicate prompt ids (id/doc_id) for model {model_name!r}")

    prompts = [{"prompt_id": it["prompt_id"], "prompt": it["prompt"], "reference": it["reference"],
                "references": [it["reference"]] if it["reference"] else []} for it in items]
    existing = out / PROMPTS_FILE
    if existing.is_file():
        old = read_prompts(out)
        if {p["prompt_id"] for p in old} != set(ids):
            raise SamplesError(f"{src}: its prompt ids differ from those in {existing}; import into a new folder")
        if any(r["model"] == model_name for r in read_samples(out)):
            raise SamplesError(f"{out / SAMPLES_FILE} already holds samples of model {model_name!r}")
        cfg = load_config(out / CONFIG_FILE)
        data = to_dict(cfg)
        data["eval"]["models"].append({"name": model_name, "adapter": None})
        data["eval"]["k"] = max(cfg.eval.k, max(len(it["texts"]) for it in items))
        cfg = config_from_dict(data, str(out / CONFIG_FILE))
    else:
        cfg = Config(experiment=f"import-{model_name}".replace("/", "_"))
        cfg.eval.models = [EvalModel(name=model_name)]
        cfg.eval.k = max(len(it["texts"]) for it in items)
        io.atomic_write_jsonl(existing, prompts)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if tokenizer is not None else len(tokenize(text))

    rows = []
    for it in items:
        decoding = {"imported_from": format, "source": str(src), "k": len(it["texts"]),
                    "n_tokens": "model tokenizer" if tokenizer is not None else "lexical tokens"}
        for j, text in enumerate(it["texts"]):
            # Other tools rarely say whether a reply ended on its own; count it as finished
            # unless empty, so the non-degeneracy guard judges the text itself.
            rows.append(sample_row(it["prompt_id"], model_name, "sample", j, text, count(text), bool(text.strip()), decoding))
    io.append_jsonl(out / SAMPLES_FILE, rows)
    io.atomic_write_text(out / CONFIG_FILE, to_yaml(cfg))
    return out
