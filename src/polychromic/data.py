"""Dataset preparation: validate, de-duplicate, grouped splits.

`prepare` turns a user's JSONL (prior schema `tweet`/`reply`/`tweet_id`, or plain `prompt`/`reply`)
or the English dialogs of the `chatterbot-corpus` package into `train/val/test.jsonl` plus
`manifest.json`. Every line is validated; a bad line stops the run with `file: line N: field 'x':
reason` unless `skip_invalid`, which writes it to `rejects.jsonl` instead. Splits are grouped
(rows sharing a tweet id or a normalised prompt text stay together) so no prompt leaks from train
into test. The output folder is built next to the target and swapped in only after everything
succeeded, so a failure leaves nothing half-written and an earlier output intact.

The prompt renderer lives in `polychromic.prompts` (re-exported here for callers that read a
split and render it in one place).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import random
import shutil
import unicodedata
from collections import Counter
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Sequence

import yaml

from polychromic.config import DataConfig
from polychromic.io import JsonlError, atomic_write_bytes, atomic_write_json, dumps, read_jsonl
from polychromic.prompts import collate, collate_packed, encode_example, render_prompt, reply_ids  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
RESERVED = ("id", "group", "prompt", "reply")
"""Keys of every prepared row; input metadata with these names is kept as `orig_<name>`."""
PRIOR_FIELDS = ("tweet", "reply")
RAW_CHARS = 300
"""How much of a rejected line rejects.jsonl keeps."""


class DataError(ValueError):
    """Bad input data or a missing prepared dataset; the message names file, line and field."""


# ---------------------------------------------------------------------------------------------
# Reading and validating the sources


@dataclass
class Candidate:
    """One (prompt, reply) pair read from a source, before de-duplication and splitting."""

    where: str
    """`file: line N` (JSONL) or `file: conversations[i] turn j` (chatterbot), for messages."""
    line: int | None
    prompt: str
    reply: str
    group: str | None
    """The group field's value as a string, None when the row has none."""
    meta: dict


@dataclass
class Reject:
    where: str
    line: int | None
    reason: str
    field: str | None
    raw: str
    detail: str

    def message(self) -> str:
        at = f"field '{self.field}': " if self.field else ""
        return f"{self.where}: {at}{self.detail}"

    def row(self) -> dict:
        return {"where": self.where, "line": self.line, "reason": self.reason, "field": self.field, "detail": self.detail, "raw": self.raw}


def _clip(text: str) -> str:
    return text if len(text) <= RAW_CHARS else text[:RAW_CHARS] + "..."


def normalise_prompt(text: str) -> str:
    """The group key of a row without a group id: NFKC, lowercase, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def _check_text(value: Any, field: str, max_chars: int) -> tuple[str, str, str] | str:
    """The stripped text, or (reason, field, detail) when it is unusable."""
    if not isinstance(value, str):
        return ("wrong_type", field, f"expected a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        return ("empty_field", field, "empty")
    if len(text) > max_chars:
        return ("too_long", field, f"{len(text)} characters > data.max_chars={max_chars}")
    return text


def _resolve_fields(cfg: DataConfig, objects: list[dict], path: str) -> tuple[str, str]:
    """The prompt/reply field names; the plain schema is accepted when the defaults do not fit."""
    prompt_field, reply_field = cfg.prompt_field, cfg.reply_field
    if (prompt_field, reply_field) == PRIOR_FIELDS:
        has_tweet = any(prompt_field in o for o in objects)
        has_prompt = any("prompt" in o for o in objects)
        if has_prompt and not has_tweet:
            logger.warning("%s: no 'tweet' field but a 'prompt' field: using the plain prompt/reply schema", path)
            prompt_field = "prompt"
    return prompt_field, reply_field


def _read_jsonl_source(cfg: DataConfig) -> tuple[list[Candidate], list[Reject], dict, dict]:
    if not cfg.path:
        raise DataError("data.path: required when data.source is jsonl")
    path = Path(cfg.path)
    if not path.is_file():
        raise DataError(f"data.path {cfg.path!r} does not exist (or is not a file)")
    raw = path.read_bytes()
    name = str(cfg.path)
    # Decode line by line (not the whole file) so one bad byte sequence rejects one line.
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    parsed: list[tuple[int, str, Any]] = []
    rejects: list[Reject] = []
    blank = 0
    for i, b in enumerate(lines, start=1):
        where = f"{name}: line {i}"
        if b.endswith(b"\r"):
            b = b[:-1]
        try:
            text = b.decode("utf-8")
        except UnicodeDecodeError as exc:
            rejects.append(Reject(where, i, "invalid_utf8", None, _clip(b.decode("utf-8", "replace")), f"invalid UTF-8 ({exc.reason} at byte {exc.start})"))
            continue
        if not text.strip():
            blank += 1
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            rejects.append(Reject(where, i, "malformed_json", None, _clip(text), f"malformed JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(obj, dict):
            rejects.append(Reject(where, i, "not_an_object", None, _clip(text), f"expected a JSON object, got {type(obj).__name__}"))
            continue
        parsed.append((i, text, obj))

    prompt_field, reply_field = _resolve_fields(cfg, [o for _, _, o in parsed], name)
    group_field = cfg.group_field
    candidates: list[Candidate] = []
    for i, text, obj in parsed:
        where = f"{name}: line {i}"
        bad: tuple[str, str, str] | None = None
        values = []
        for field in (prompt_field, reply_field):
            if field not in obj:
                bad = ("missing_field", field, "missing")
                break
            checked = _check_text(obj[field], field, cfg.max_chars)
            if isinstance(checked, tuple):
                bad = checked
                break
            values.append(checked)
        group = None
        if bad is None and group_field and obj.get(group_field) is not None:
            g = obj[group_field]
            # Tweet ids arrive as strings or integers; a float or bool id would split one tweet's
            # replies apart (1e18 loses digits), so it is refused.
            if isinstance(g, bool) or not isinstance(g, (str, int)):
                bad = ("wrong_type", group_field, f"expected a string or integer id, got {type(g).__name__}")
            elif isinstance(g, str) and not g.strip():
                bad = ("empty_field", group_field, "empty")
            else:
                group = str(g).strip()
        if bad is not None:
            rejects.append(Reject(where, i, bad[0], bad[1], _clip(text), bad[2]))
            continue
        meta = {k: v for k, v in obj.items() if k not in (prompt_field, reply_field)}
        candidates.append(Candidate(where, i, values[0], values[1], group, meta))
    info = {"fields": {"prompt": prompt_field, "reply": reply_field, "group": group_field}, "blank_lines": blank}
    rejects.sort(key=lambda r: r.line or 0)  # the error names the FIRST bad line of the file
    return candidates, rejects, {name: hashlib.sha256(raw).hexdigest()}, info


def chatterbot_dir() -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.source chatterbot needs the chatterbot-corpus package: pip install chatterbot-corpus")
    d = Path(list(spec.submodule_search_locations)[0]) / "data" / "english"
    if not sorted(d.glob("*.yml")):
        raise DataError(f"{d}: no English dialog files (*.yml); reinstall chatterbot-corpus")
    return d


def _read_chatterbot_source(cfg: DataConfig) -> tuple[list[Candidate], list[Reject], dict, dict]:
    """Consecutive turns of every English conversation as (turn_i -> turn_i+1) pairs.

    The packaged corpus is not the user's file and cannot be fixed by them, so its defects
    (chatterbot-corpus 1.3.3 trivia.yml has one entry that YAML reads as a string, not a list of
    turns) are rejected as `malformed_entry` and counted in both modes instead of stopping.
    """
    d = chatterbot_dir()
    candidates: list[Candidate] = []
    rejects: list[Reject] = []
    inputs: dict[str, str] = {}
    for f in sorted(d.glob("*.yml")):
        raw = f.read_bytes()
        key = f"chatterbot_corpus/data/english/{f.name}"
        inputs[key] = hashlib.sha256(raw).hexdigest()
        try:
            doc = yaml.safe_load(raw.decode("utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            raise DataError(f"{f}: unreadable YAML ({exc}); reinstall chatterbot-corpus") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("conversations"), list):
            raise DataError(f"{f}: expected a mapping with a `conversations` list; reinstall chatterbot-corpus")
        cats = doc.get("categories") or []
        category = str(cats[0]) if cats else f.stem
        for ci, conv in enumerate(doc["conversations"]):
            where = f"{key}: conversations[{ci}]"
            if not isinstance(conv, list) or len(conv) < 2:
                rejects.append(Reject(where, None, "malformed_entry", None, _clip(repr(conv)), "expected a list of at least two turns"))
                continue
            for ti in range(len(conv) - 1):
                w = f"{where} turn {ti}"
                bad = None
                values = []
                for field, value in (("prompt", conv[ti]), ("reply", conv[ti + 1])):
                    checked = _check_text(value, field, cfg.max_chars)
                    if isinstance(checked, tuple):
                        bad = checked
                        break
                    values.append(checked)
                if bad is not None:
                    rejects.append(Reject(w, None, bad[0], bad[1], _clip(repr(conv[ti : ti + 2])), bad[2]))
                    continue
                candidates.append(Candidate(w, None, values[0], values[1], None, {"category": category, "file": f.name}))
    info = {"fields": {"prompt": "turn i", "reply": "turn i+1", "group": None}, "package": f"chatterbot-corpus {version('chatterbot-corpus')}"}
    return candidates, rejects, inputs, info


# ---------------------------------------------------------------------------------------------
# Grouped, leak-free splits


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(self, x: tuple[str, str]) -> tuple[str, str]:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: tuple[str, str], b: tuple[str, str]) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def assign_splits(groups: Sequence[str], prompts: Sequence[str], seed: int, val_fraction: float, test_fraction: float) -> list[str]:
    """The split of each row. Rows sharing a group OR a normalised prompt are one unit, so neither
    a tweet id nor a prompt text can appear in two splits even when ids and texts disagree.

    Units are shuffled (sorted keys, random.Random(seed)) and placed in order: into test while it
    stays within its row target, else into val while it stays within its target, else train.
    A split that ends empty (every unit bigger than its target) takes the smallest train unit.
    """
    uf = _UnionFind()
    for g, p in zip(groups, prompts):
        uf.union(("g", g), ("p", normalise_prompt(p)))
    unit_of = [uf.find(("g", g)) for g in groups]
    sizes = Counter(unit_of)
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    n = len(groups)
    target = {"test": max(1, round(test_fraction * n)), "val": max(1, round(val_fraction * n)) if val_fraction > 0 else 0}
    count = {"train": 0, "val": 0, "test": 0}
    split_of: dict[tuple[str, str], str] = {}
    for u in order:
        s = next((s for s in ("test", "val") if count[s] + sizes[u] <= target[s]), "train")
        split_of[u] = s
        count[s] += sizes[u]
    for s in ("test", "val"):
        if target[s] and count[s] == 0:
            pool = [u for u in order if split_of[u] == "train"]
            if len(pool) > 1:
                u = min(pool, key=lambda x: sizes[x])  # min keeps the first of equal sizes
                split_of[u] = s
                count["train"] -= sizes[u]
                count[s] += sizes[u]
    if count["train"] == 0 or count["test"] == 0:
        raise DataError(
            f"cannot split {n} rows in {len(order)} prompt group(s) into train/val/test without a prompt "
            "appearing in two splits; add data with more distinct prompts"
        )
    return [split_of[u] for u in unit_of]


def row_id(group: str, prompt: str, reply: str) -> str:
    """Stable short id: the same row keeps its id across runs, seeds and splits."""
    return hashlib.sha1(f"{group}\x1f{prompt}\x1f{reply}".encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# prepare


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace `out` with the finished folder `tmp`; the old one is restored if the swap fails."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old)


def prepare(data_cfg: DataConfig, seed: int, out_dir: str | None = None, skip_invalid: bool = False) -> dict:
    """Validate, de-duplicate and split the configured source into `out_dir` (default
    data_cfg.prepared_dir). Returns the manifest plus `out_dir`. Raises DataError on the first
    invalid line unless skip_invalid; duplicates are always rejected (kept once) without stopping.
    """
    shown = str(out_dir or data_cfg.prepared_dir)
    out = Path(shown).resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").is_file())):
        # The whole folder is replaced: never do that to one we did not write.
        raise DataError(f"refusing to write into {out}: it exists and is not a prepared dataset (no manifest.json); choose another --out")
    if data_cfg.source == "jsonl":
        if data_cfg.path and _is_within(Path(data_cfg.path), out):
            raise DataError(f"data.path {data_cfg.path!r} lies inside the output folder {out}, which prepare replaces; move it or choose another --out")
        candidates, rejects, inputs, info = _read_jsonl_source(data_cfg)
    elif data_cfg.source == "chatterbot":
        candidates, rejects, inputs, info = _read_chatterbot_source(data_cfg)
    else:
        raise DataError(f"data.source: unknown source {data_cfg.source!r}")

    hard = [r for r in rejects if r.reason != "malformed_entry"]
    if hard and not skip_invalid:
        raise DataError(hard[0].message() + (f" ({len(hard) - 1} more invalid line(s); --skip-invalid writes them to rejects.jsonl)" if len(hard) > 1 else ""))

    # Exact duplicate pairs are common in scraped data: keep the first, reject the rest, go on.
    seen: dict[tuple[str, str], str] = {}
    kept: list[Candidate] = []
    for c in candidates:
        key = (c.prompt, c.reply)
        if key in seen:
            rejects.append(Reject(c.where, c.line, "duplicate", None, _clip(dumps({"prompt": c.prompt, "reply": c.reply})), f"duplicate of {seen[key]}"))
            continue
        seen[key] = c.where
        kept.append(c)
    if not kept:
        counts = dict(Counter(r.reason for r in rejects))
        raise DataError(f"{next(iter(inputs), data_cfg.source)}: no valid rows left after validation (rejects: {counts})")

    groups = [c.group if c.group is not None else normalise_prompt(c.prompt) for c in kept]
    try:
        splits = assign_splits(groups, [c.prompt for c in kept], seed, data_cfg.val_fraction, data_cfg.test_fraction)
    except DataError as exc:
        raise DataError(f"{next(iter(inputs), data_cfg.source)}: {exc}") from exc
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for c, g, s in zip(kept, groups, splits):
        meta = {(f"orig_{k}" if k in RESERVED else k): v for k, v in c.meta.items()}
        rows[s].append({"id": row_id(g, c.prompt, c.reply), "group": g, "prompt": c.prompt, "reply": c.reply, **meta})
    ids = [r["id"] for s in SPLITS for r in rows[s]]
    if len(set(ids)) != len(ids):  # sha1 prefix collision: would need 2^32 rows
        raise DataError("row id collision; report this as a bug")

    files = {f"{s}.jsonl": "".join(dumps(r) + "\n" for r in rows[s]).encode("utf-8") for s in SPLITS}
    files["rejects.jsonl"] = "".join(dumps(r.row()) + "\n" for r in rejects).encode("utf-8")
    manifest = {
        "source": data_cfg.source,
        **info,
        "seed": seed,
        "fractions": {"val": data_cfg.val_fraction, "test": data_cfg.test_fraction},
        "max_chars": data_cfg.max_chars,
        "skip_invalid": skip_invalid,
        "rows": {s: len(rows[s]) for s in SPLITS},
        "groups": {s: len({r["group"] for r in rows[s]}) for s in SPLITS},
        "rejects": dict(sorted(Counter(r.reason for r in rejects).items())),
        "inputs": inputs,
        "outputs": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    }

    # Build the whole folder beside the target, then swap it in: a crash at any point leaves
    # either the previous output or the new one, never a mix.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for name, data in files.items():
            atomic_write_bytes(tmp / name, data)
        atomic_write_json(tmp / "manifest.json", manifest)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**manifest, "out_dir": shown}


def load_split(prepared_dir: str | Path, split: str) -> list[dict]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(prepared_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path} not found: run `polychromic data prepare CONFIG` first (it writes data.prepared_dir)")
    try:
        return list(read_jsonl(path))
    except JsonlError as exc:
        raise DataError(f"{exc}; re-run `polychromic data prepare`") from exc
