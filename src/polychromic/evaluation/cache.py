"""The evaluation sample cache: `prompts.jsonl`, `samples.jsonl` and `ref_nll.jsonl`, their row
checks, readers, and the repair of a cache a crash left behind.

Cache rules (docs/evaluation.md): rows are appended as they are made; one (model, prompt) unit is
complete when it holds sample indices 0..k-1 and one greedy reply. A crash can leave a torn last
line or a unit with only some of its rows: `repair` drops both (rewriting the file atomically,
keeping every other line byte for byte), and the evaluation then redoes exactly those units.
Samples made by other tools come in through polychromic.evaluation.importers.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable

from polychromic import io

PROMPTS_FILE = "prompts.jsonl"
SAMPLES_FILE = "samples.jsonl"
REF_NLL_FILE = "ref_nll.jsonl"
CONFIG_FILE = "config.yaml"
KINDS = ("sample", "greedy")

_PROMPT_FIELDS = {"prompt_id": str, "prompt": str}
_SAMPLE_FIELDS = {
    "prompt_id": str, "model": str, "kind": str, "index": int, "text": str, "n_tokens": int, "finished": bool, "decoding": dict,
}
_REF_NLL_FIELDS = {"prompt_id": str, "model": str, "ref_nll": (float, int, type(None)), "n_tokens": int}


class SamplesError(ValueError):
    """A cache or imported file that breaks its format: names the file, the row and the field."""


class EvaluationError(RuntimeError):
    """An evaluation directory that cannot be used as asked: made with a different config,
    holding incomplete units, or naming an adapter that is gone."""


def check_row(row: dict, fields: dict, where: str) -> dict:
    """`row` when every field of `fields` is present with its type; SamplesError naming `where` otherwise."""
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
    return [check_row(r, fields, f"{path}: row {i}") for i, r in enumerate(io.read_jsonl(path, allow_torn_tail=torn_ok), start=1)]


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
