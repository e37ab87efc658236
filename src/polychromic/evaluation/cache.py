"""The evaluation sample cache (`prompts.jsonl`, `samples.jsonl`, `ref_nll.jsonl`) and readers for
samples made by other tools.

Cache rules (docs/evaluation.md): rows are appended as they are made; one (model, prompt) unit is
complete when it holds sample indices 0..k-1 and one greedy reply. A crash can leave a torn last
line or a unit with only some of its rows: `repair` drops both (rewriting the file atomically,
keeping every other line byte for byte), and the evaluation then redoes exactly those units.

Foreign formats, turned into an evaluation directory that `evaluate.score` and `report` read:
- NoveltyBench `generations.jsonl`: `{"id", "prompt", "model", "generations": [str, ...]}`.
- lm-evaluation-harness `samples_<task>_<date>.jsonl` (`--log_samples`): `{"doc_id", "doc",
  "arguments", "resps": [[str, ...], ...], "filtered_resps", "target"}`; the prompt is the first
  request's context (`arguments.gen_args_0.arg_0`, or `arguments[0][0]` in older versions), the
  samples are every string of `resps` in order (the raw generations, before the task's filters),
  the reference is `target` when it is a non-empty string.
Imported units have no greedy reply and no reference NLL; score() marks those metrics excluded.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

from polychromic import io
from polychromic.config import Config, EvalModel, config_from_dict, load_config, to_dict, to_yaml

PROMPTS_FILE = "prompts.jsonl"
SAMPLES_FILE = "samples.jsonl"
REF_NLL_FILE = "ref_nll.jsonl"
CONFIG_FILE = "config.yaml"
KINDS = ("sample", "greedy")
FORMATS = ("noveltybench", "lm_eval")

_PROMPT_FIELDS = {"prompt_id": str, "prompt": str}
_SAMPLE_FIELDS = {
    "prompt_id": str, "model": str, "kind": str, "index": int, "text": str, "n_tokens": int, "finished": bool, "decoding": dict,
}
_REF_NLL_FIELDS = {"prompt_id": str, "model": str, "ref_nll": (float, int, type(None)), "n_tokens": int}


class SamplesError(ValueError):
    pass


def _check(row: dict, fields: dict, where: str) -> dict:
    for name, tp in fields.items():
        if name not in row:
            raise SamplesError(f"{where}: field '{name}' is missing")
        value = row[name]
        # bool is an int subclass: a count that is True/False is a bug, not a 1/0.
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise SamplesError(f"{where}: field '{name}' must be {getattr(tp, '__name__', tp)}, got {value!r}")
    return row


def _rows(path: Path, fields: dict, torn_ok: bool) -> list[dict]:
    if not path.is_file():
        return []
    return [_check(r, fields, f"{path}: row {i}") for i, r in enumerate(io.read_jsonl(path, allow_torn_tail=torn_ok), start=1)]


def read_prompts(eval_dir: str | Path) -> list[dict]:
    path = Path(eval_dir) / PROMPTS_FILE
    if not path.is_file():
        raise SamplesError(f"{path} not found: not an evaluation directory (run `polychromic evaluate` or import_samples)")
    rows = _rows(path, _PROMPT_FIELDS, torn_ok=False)
    ids = [r["prompt_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise SamplesError(f"{path}: duplicate prompt_id values")
    return rows


def read_samples(eval_dir: str | Path) -> list[dict]:
    """Rows of samples.jsonl; a torn last line (a crash mid-append) is left out."""
    rows = _rows(Path(eval_dir) / SAMPLES_FILE, _SAMPLE_FIELDS, torn_ok=True)
    for i, r in enumerate(rows, start=1):
        if r["kind"] not in KINDS:
            raise SamplesError(f"{Path(eval_dir) / SAMPLES_FILE}: row {i}: field 'kind' must be one of {KINDS}, got {r['kind']!r}")
    return rows


def read_ref_nll(eval_dir: str | Path) -> dict[tuple[str, str], dict]:
    """{(model, prompt_id): row} of ref_nll.jsonl (absent file: empty)."""
    return {(r["model"], r["prompt_id"]): r for r in _rows(Path(eval_dir) / REF_NLL_FILE, _REF_NLL_FIELDS, torn_ok=True)}


def sample_row(prompt_id: str, model: str, kind: str, index: int, text: str, n_tokens: int, finished: bool, decoding: dict) -> dict:
    return {
        "prompt_id": prompt_id, "model": model, "kind": kind, "index": index, "text": text,
        "n_tokens": n_tokens, "finished": finished, "decoding": decoding,
    }


def group_units(rows: Iterable[dict]) -> dict[tuple[str, str], list[dict]]:
    """Sample rows grouped by (model, prompt_id), in file order."""
    out: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        out[(r["model"], r["prompt_id"])].append(r)
    return out


def unit_complete(rows: list[dict]) -> bool:
    """k samples with indices 0..k-1 (k from the rows' decoding) and exactly one greedy reply;
    imported units (decoding.imported_from) have no greedy reply."""
    samples = [r for r in rows if r["kind"] == "sample"]
    greedy = [r for r in rows if r["kind"] == "greedy"]
    if not samples:
        return False
    ks = {r["decoding"].get("k") for r in samples}
    if len(ks) != 1 or not isinstance(k := next(iter(ks)), int):
        return False
    imported = "imported_from" in samples[0]["decoding"]
    return sorted(r["index"] for r in samples) == list(range(k)) and len(greedy) == (0 if imported else 1)


def repair(path: str | Path, keep: Callable[[dict], bool]) -> int:
    """Drop a torn last line and every row `keep` rejects; other lines stay byte-identical.
    The file is rewritten atomically, and only when something is dropped. Returns lines dropped."""
    import json

    path = Path(path)
    if not path.is_file():
        return 0
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline; else a torn write
    kept, dropped = [], 1 if tail else 0
    for line in lines:
        if not line.strip():
            continue
        if keep(json.loads(line.decode("utf-8"))):
            kept.append(line + b"\n")
        else:
            dropped += 1
    if dropped:
        io.atomic_write_bytes(path, b"".join(kept))
    return dropped


# ---------------------------------------------------------------------------------------------
# Foreign formats


def _read_noveltybench(path: Path) -> list[dict]:
    out = []
    for i, r in enumerate(io.read_jsonl(path), start=1):
        where = f"{path}: line {i}"
        _check(r, {"id": (str, int), "prompt": str, "generations": list}, where)
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
        _check(r, {"doc_id": (int, str), "arguments": (dict, list), "resps": list}, where)
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
    samples, so `evaluate.score` and `report` work on them. Import a second model into the same
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
