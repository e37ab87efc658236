"""Data pipeline: validation reasons, grouped leak-free splits, determinism, atomic outputs, the
CLI, and the one prompt renderer (evaluation prompt = prefix of the training sequence)."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from polychromic.config import DataConfig
from polychromic.data import (
    DataError,
    collate,
    encode_example,
    load_split,
    normalise_prompt,
    prepare,
    render_prompt,
)

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")


def _rows(out: Path) -> dict[str, list[dict]]:
    return {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()] for s in SPLITS}


def _assert_no_leak(rows: dict[str, list[dict]], key) -> None:
    where = defaultdict(set)
    for s, rs in rows.items():
        for r in rs:
            where[key(r)].add(s)
    crossing = {k: v for k, v in where.items() if len(v) > 1}
    assert not crossing, f"in two splits: {list(crossing.items())[:5]}"


def _tweets(n_tweets: int = 40) -> list[dict]:
    """Prior-schema rows; tweet t has t % 7 + 1 replies sharing its tweet_id."""
    out = []
    for t in range(n_tweets):
        for r in range(t % 7 + 1):
            out.append({"tweet_id": 1000 + t, "tweet": f"tweet number {t} about {{braces}}", "reply": f"reply {r} to {t}", "reply_likes": r})
    return out


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _jsonl_cfg(path: Path, **kw) -> DataConfig:
    return DataConfig(source="jsonl", path=str(path), **kw)


# ---------------------------------------------------------------------------------------------
# prepare: outputs, manifest, grouping, determinism


def test_chatterbot_prepare_writes_splits_and_manifest(tmp_path):
    out = tmp_path / "prepared"
    m = prepare(DataConfig(), seed=42, out_dir=str(out))
    assert m["out_dir"] == str(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == {k: v for k, v in m.items() if k != "out_dir"}
    rows = _rows(out)
    assert {s: len(rows[s]) for s in SPLITS} == manifest["rows"]
    n = sum(manifest["rows"].values())
    assert n > 1000 and all(manifest["rows"][s] > 0 for s in SPLITS)
    # row-fraction targets: groups are small, so the fill lands on the target
    assert abs(manifest["rows"]["test"] - 0.1 * n) <= 3
    assert abs(manifest["rows"]["val"] - 0.05 * n) <= 3
    assert manifest["groups"] == {s: len({r["group"] for r in rows[s]}) for s in SPLITS}
    for name, sha in manifest["outputs"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == sha
    assert set(manifest["outputs"]) == {"train.jsonl", "val.jsonl", "test.jsonl", "rejects.jsonl"}
    import chatterbot_corpus

    english = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    assert len(manifest["inputs"]) == len(list(english.glob("*.yml")))
    for key, sha in manifest["inputs"].items():
        assert hashlib.sha256((english / Path(key).name).read_bytes()).hexdigest() == sha
    # the corpus repeats many pairs (tech_support.yml above all); each is kept once
    assert manifest["rejects"]["duplicate"] > 0
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == sum(manifest["rejects"].values())
    all_rows = [r for s in SPLITS for r in rows[s]]
    assert len({(r["prompt"], r["reply"]) for r in all_rows}) == len(all_rows)
    assert len({r["id"] for r in all_rows}) == len(all_rows)
    first = rows["train"][0] if rows["train"][0]["file"] == "ai.yml" else next(r for r in all_rows if r["file"] == "ai.yml")
    assert first["category"] == "AI" and first["group"] == normalise_prompt(first["prompt"])
    _assert_no_leak(rows, lambda r: r["group"])
    _assert_no_leak(rows, lambda r: normalise_prompt(r["prompt"]))


def test_replies_sharing_a_tweet_id_stay_in_one_split(tmp_path):
    rows_in = _tweets()
    # the same tweet text under a second id must not leak either (ids and texts are joined)
    rows_in.append({"tweet_id": 9999, "tweet": "TWEET number 3  about {braces}", "reply": "late reply"})
    src = _write_jsonl(tmp_path / "tweets.jsonl", rows_in)
    m = prepare(_jsonl_cfg(src, val_fraction=0.2, test_fraction=0.2), seed=1, out_dir=str(tmp_path / "out"))
    rows = _rows(tmp_path / "out")
    assert sum(m["rows"].values()) == len(rows_in)
    assert all(m["rows"][s] > 0 for s in SPLITS)
    _assert_no_leak(rows, lambda r: r["group"])
    _assert_no_leak(rows, lambda r: normalise_prompt(r["prompt"]))
    by_id = {r["reply"]: r for s in SPLITS for r in rows[s]}
    late = by_id["late reply"]
    assert late["group"] == "9999" and late["tweet_id"] == 9999
    split_of = {r["reply"]: s for s in SPLITS for r in rows[s]}
    assert split_of["late reply"] == split_of["reply 0 to 3"]
    assert by_id["reply 2 to 5"]["reply_likes"] == 2 and by_id["reply 2 to 5"]["group"] == "1005"


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path):
    src = _write_jsonl(tmp_path / "tweets.jsonl", _tweets())
    cfg = _jsonl_cfg(src)
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        prepare(cfg, seed=seed, out_dir=str(tmp_path / name))
    for f in ("train.jsonl", "val.jsonl", "test.jsonl", "rejects.jsonl", "manifest.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "test.jsonl").read_bytes() != (tmp_path / "c" / "test.jsonl").read_bytes()
    # ids are stable across seeds: the same rows, only assigned differently
    ids = lambda d: sorted(r["id"] for s in SPLITS for r in _rows(tmp_path / d)[s])  # noqa: E731
    assert ids("a") == ids("c")


def test_metadata_kept_and_reserved_names_renamed(tmp_path):
    src = _write_jsonl(tmp_path / "x.jsonl", [{"id": f"orig{i}", "prompt": f"p{i}", "reply": "r", "lang": "en"} for i in range(30)])
    prepare(_jsonl_cfg(src, group_field=None), seed=0, out_dir=str(tmp_path / "out"))
    row = next(r for s in SPLITS for r in _rows(tmp_path / "out")[s] if r["prompt"] == "p3")
    assert row["orig_id"] == "orig3" and row["lang"] == "en" and row["id"] != "orig3"
    assert set(row) == {"id", "group", "prompt", "reply", "orig_id", "lang"}


def test_plain_prompt_reply_schema_is_accepted(tmp_path, caplog):
    src = _write_jsonl(tmp_path / "plain.jsonl", [{"prompt": f"question {i}?", "reply": f"answer {i}"} for i in range(30)])
    with caplog.at_level(logging.INFO, logger="polychromic.data"):
        m = prepare(_jsonl_cfg(src), seed=0, out_dir=str(tmp_path / "out"))
    assert m["fields"]["prompt"] == "prompt" and m["fields"]["reply"] == "reply"
    assert sum(m["rows"].values()) == 30
    assert "plain prompt/reply schema" in caplog.text
    # configured names that are not the defaults are never second-guessed
    with pytest.raises(DataError, match=r"line 1: field 'question': missing"):
        prepare(_jsonl_cfg(src, prompt_field="question"), seed=0, out_dir=str(tmp_path / "out2"))


# ---------------------------------------------------------------------------------------------
# Failures: clear messages, nothing half-written, earlier output intact


def test_broken_third_line_stops_and_leaves_nothing(tmp_path):
    good = _tweets(3)
    src = tmp_path / "broken.jsonl"
    src.write_text(json.dumps(good[0]) + "\n" + json.dumps(good[1]) + "\n" + '{"tweet": "x", "reply": \n' + json.dumps(good[2]) + "\n")
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DataError) as exc:
        prepare(_jsonl_cfg(src), seed=0, out_dir=str(out))
    assert "broken.jsonl" in str(exc.value) and "line 3" in str(exc.value) and "malformed JSON" in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temp folder


def test_failure_never_touches_an_earlier_output(tmp_path):
    src = _write_jsonl(tmp_path / "d.jsonl", _tweets())
    out = tmp_path / "out"
    prepare(_jsonl_cfg(src), seed=0, out_dir=str(out))
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}
    with src.open("a") as f:
        f.write('{"tweet": "t", "reply": 3}\n')
    with pytest.raises(DataError, match=r"d\.jsonl: line \d+: field 'reply': expected a string, got int"):
        prepare(_jsonl_cfg(src), seed=0, out_dir=str(out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "out"]
    # a successful re-run replaces it as a whole (different seed, different split)
    prepare(_jsonl_cfg(src), seed=1, out_dir=str(out), skip_invalid=True)
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "out"]


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    src = _write_jsonl(tmp_path / "d.jsonl", _tweets())
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not a prepared dataset"):
        prepare(_jsonl_cfg(src), seed=0, out_dir=str(home))
    assert (home / "thesis.tex").read_text() == "precious"
    out = tmp_path / "out"
    prepare(_jsonl_cfg(src), seed=0, out_dir=str(out))
    inside = _write_jsonl(out / "raw.jsonl", _tweets())
    with pytest.raises(DataError, match="inside the output folder"):
        prepare(_jsonl_cfg(inside), seed=0, out_dir=str(out))
    assert inside.is_file()


GOOD = {"tweet_id": 1, "tweet": "a tweet", "reply": "a reply"}

# (line 2 bytes, reason, field, message fragment)
BAD_LINES = [
    (b'{"tweet": "t", "reply": "r"', "malformed_json", None, "malformed JSON"),
    (b'["tweet", "reply"]', "not_an_object", None, "expected a JSON object, got list"),
    (b'{"tweet": "t"}', "missing_field", "reply", "field 'reply': missing"),
    (b'{"tweet": "   ", "reply": "r"}', "empty_field", "tweet", "field 'tweet': empty"),
    (b'{"tweet": "t", "reply": ["r"]}', "wrong_type", "reply", "field 'reply': expected a string, got list"),
    (b'{"tweet": "t", "reply": "r", "tweet_id": 1.5}', "wrong_type", "tweet_id", "field 'tweet_id': expected a string or integer id, got float"),
    (b'{"tweet": "t", "reply": "caf\xe9"}', "invalid_utf8", None, "invalid UTF-8"),
    (b'{"tweet": "t", "reply": "' + b"x" * 51 + b'"}', "too_long", "reply", "field 'reply': 51 characters > data.max_chars=50"),
]


def _file_with_line2(tmp_path: Path, bad: bytes) -> Path:
    good = [json.dumps({"tweet_id": i, "tweet": f"tweet {i}", "reply": f"reply {i}"}).encode() for i in range(30)]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join([good[0], bad, *good[1:]]) + b"\n")
    return path


@pytest.mark.parametrize("bad,reason,field,fragment", BAD_LINES, ids=[b[1] + (f"-{b[2]}" if b[2] else "") for b in BAD_LINES])
def test_each_validation_reason_strict_and_skip(tmp_path, bad, reason, field, fragment):
    src = _file_with_line2(tmp_path, bad)
    cfg = _jsonl_cfg(src, max_chars=50)
    with pytest.raises(DataError) as exc:
        prepare(cfg, seed=0, out_dir=str(tmp_path / "strict"))
    assert str(exc.value).startswith(f"{src}: line 2: ") and fragment in str(exc.value)
    assert not (tmp_path / "strict").exists()

    m = prepare(cfg, seed=0, out_dir=str(tmp_path / "skip"), skip_invalid=True)
    assert m["rejects"] == {reason: 1}
    assert sum(m["rows"].values()) == 30
    (rej,) = [json.loads(x) for x in (tmp_path / "skip" / "rejects.jsonl").read_text().splitlines()]
    assert (rej["line"], rej["reason"], rej["field"]) == (2, reason, field)
    assert rej["raw"] and len(rej["raw"]) <= 303


def test_duplicates_are_rejected_without_stopping(tmp_path):
    rows = [GOOD, {**GOOD, "tweet_id": 2}, {**GOOD, "reply": "  a reply "}, {"tweet": "b", "reply": "c"}] + [
        {"tweet": f"t{i}", "reply": "r"} for i in range(20)
    ]
    src = _write_jsonl(tmp_path / "dup.jsonl", rows)
    m = prepare(_jsonl_cfg(src), seed=0, out_dir=str(tmp_path / "out"))  # strict mode: no error
    assert m["rejects"] == {"duplicate": 2}
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [(2, "duplicate"), (3, "duplicate")]
    kept = [r for s in SPLITS for r in _rows(tmp_path / "out")[s] if r["prompt"] == "a tweet"]
    assert len(kept) == 1 and kept[0]["group"] == "1"  # the first one is kept


def test_first_bad_line_is_reported_and_the_rest_counted(tmp_path):
    src = tmp_path / "two.jsonl"
    src.write_text('{"tweet": "t", "reply": "r"}\n{"tweet": "t2"}\nnot json\n')
    with pytest.raises(DataError, match=r"line 2: field 'reply': missing \(1 more invalid line"):
        prepare(_jsonl_cfg(src), seed=0, out_dir=str(tmp_path / "o"))


def test_empty_after_filtering_is_an_error(tmp_path):
    src = tmp_path / "empty.jsonl"
    src.write_text('{"tweet": "", "reply": "r"}\n\n{"tweet": "t"}\n')
    with pytest.raises(DataError, match="no valid rows left"):
        prepare(_jsonl_cfg(src), seed=0, out_dir=str(tmp_path / "o"), skip_invalid=True)
    assert not (tmp_path / "o").exists()
    one = _write_jsonl(tmp_path / "one.jsonl", [{"tweet_id": 1, "tweet": "t", "reply": f"r{i}"} for i in range(10)])
    with pytest.raises(DataError, match="1 prompt group"):
        prepare(_jsonl_cfg(one), seed=0, out_dir=str(tmp_path / "o"))


def test_load_split(tmp_path):
    with pytest.raises(DataError, match="polychromic data prepare"):
        load_split(tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="split must be one of"):
        load_split(tmp_path, "dev")
    src = _write_jsonl(tmp_path / "d.jsonl", _tweets())
    m = prepare(_jsonl_cfg(src), seed=0, out_dir=str(tmp_path / "out"))
    for s in SPLITS:
        rows = load_split(tmp_path / "out", s)
        assert len(rows) == m["rows"][s] and all({"id", "group", "prompt", "reply"} <= set(r) for r in rows)


# ---------------------------------------------------------------------------------------------
# CLI


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polychromic", "data", "prepare", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_prepare_embedded_corpus_and_broken_file(tmp_path):
    r = _cli("--out", "prep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert manifest["source"] == "chatterbot"
    assert f"train {manifest['rows']['train']}" in r.stdout and "rejected" in r.stdout

    (tmp_path / "bad.jsonl").write_text('{"tweet": "a", "reply": "b"}\n{"tweet": "c", "reply": "d"}\n{"tweet": "e"}\n')
    r = _cli("data.source=jsonl", "data.path=bad.jsonl", "--out", "bad_out", cwd=tmp_path)
    assert r.returncode == 2
    assert "error: bad.jsonl: line 3: field 'reply': missing" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad_out").exists()

    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  source: jsonl\n  path: bad.jsonl\n  prepared_dir: from_cfg\n")
    r = _cli(str(cfg), "data.val_fraction=0", "--skip-invalid", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote from_cfg: train 1, val 0, test 1; rejected 1 ({'missing_field': 1})" in r.stdout
    rejects = [json.loads(x) for x in (tmp_path / "from_cfg" / "rejects.jsonl").read_text().splitlines()]
    assert [(x["line"], x["field"]) for x in rejects] == [(3, "reply")]


# ---------------------------------------------------------------------------------------------
# Prompt rendering (tiny model's tokenizer = the real SmolLM2 tokenizer and ChatML template)


@pytest.fixture()
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


PROMPTS = ["Just adopted a puppy!", "code: {x: 1} and {prompt} é 🐶", "  spaced  \n out  "]


@pytest.mark.parametrize("system", [None, "Be brief."])
def test_eval_prompt_is_exact_prefix_and_labels_cover_only_the_reply(tok, system):
    cfg = DataConfig(system_prompt=system)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for prompt in PROMPTS:
        p = render_prompt(tok, cfg, prompt)
        e = encode_example(tok, cfg, prompt, "Congrats, enjoy!")
        ids, labels = e["input_ids"], e["labels"]
        assert ids[: len(p)] == p and len(labels) == len(ids)
        assert labels[: len(p)] == [-100] * len(p)
        assert labels[len(p) :] == ids[len(p) :] and -100 not in labels[len(p) :]
        assert ids[-1] == end and tok.decode(ids[len(p) :]) == "Congrats, enjoy!<|im_end|>"
        text = tok.decode(p)
        user = cfg.template.replace("{prompt}", prompt)
        assert user in text and text.endswith("<|im_start|>assistant\n")
        assert ("<|im_start|>system\nBe brief.<|im_end|>" in text) == (system is not None)
    assert p[0] == tok.convert_tokens_to_ids("<|im_start|>") and p.count(p[0]) == 3  # no doubled BOS


def test_left_truncation_keeps_the_whole_reply(tok):
    cfg = DataConfig(max_length=48)
    full = encode_example(tok, DataConfig(max_length=4096), "word " * 200, "Nice one!")
    e = encode_example(tok, cfg, "word " * 200, "Nice one!")
    assert len(e["input_ids"]) == 48
    reply = [t for t in full["labels"] if t != -100]
    assert e["labels"][-len(reply) :] == reply and e["labels"].count(-100) == 48 - len(reply)
    assert e["input_ids"] == full["input_ids"][-48:]  # cut from the left only
    # a reply longer than the budget is cut at its end; the prompt keeps half the budget
    long = encode_example(tok, cfg, "hi", "word " * 200)
    assert len(long["input_ids"]) == 48 and long["labels"].count(-100) == 24
    assert long["input_ids"][:24] == render_prompt(tok, cfg, "hi")[-24:]


# Qwen3-like: the generation prompt opens an empty think block only when enable_thinking is false.
THINK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' %}<think>\n\n</think>\n\n{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def test_thinking_is_disabled_and_prefix_holds(tok):
    tok.chat_template = THINK_TEMPLATE
    cfg = DataConfig()
    p = render_prompt(tok, cfg, "hello")
    assert tok.decode(p).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    e = encode_example(tok, cfg, "hello", "hi there")
    assert e["input_ids"][: len(p)] == p and tok.decode(e["input_ids"][len(p) :]) == "hi there<|im_end|>"


def test_reply_ends_with_the_templates_own_end_marker_not_eos(tok):
    # a template whose turns end with <|endoftext|> while eos is <|im_end|> (Llama-3-like
    # <|eot_id|> vs <|end_of_text|>): the model must learn the marker its template uses
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|endoftext|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    cfg = DataConfig()
    p = render_prompt(tok, cfg, "hello")
    e = encode_example(tok, cfg, "hello", "hi there")
    assert tok.eos_token == "<|im_end|>"
    assert tok.decode(e["input_ids"][len(p) :]) == "hi there<|endoftext|>"


def test_template_without_prefix_property_falls_back_to_eos(tok):
    # the assistant turn is written differently from the generation prompt
    tok.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    cfg = DataConfig()
    p = render_prompt(tok, cfg, "hello")
    e = encode_example(tok, cfg, "hello", "hi there")
    assert e["input_ids"][: len(p)] == p
    assert e["input_ids"][len(p) :] == tok("hi there", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        render_prompt(tok, cfg, "hello")


def test_collate_pads_right_with_masked_labels(tok):
    import torch

    cfg = DataConfig()
    a, b = encode_example(tok, cfg, "a", "short"), encode_example(tok, cfg, "a much longer prompt here", "a longer reply, too")
    batch = collate([a, b], pad_id=tok.pad_token_id)
    n = len(a["input_ids"])
    width = len(b["input_ids"])
    assert batch["input_ids"].shape == (2, width) and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0, :n].tolist() == a["input_ids"]
    assert batch["input_ids"][0, n:].tolist() == [tok.pad_token_id] * (width - n)
    assert batch["labels"][0, n:].tolist() == [-100] * (width - n) and batch["labels"][1].tolist() == b["labels"]
    assert batch["attention_mask"].sum(dim=1).tolist() == [n, width]
    with pytest.raises(ValueError, match="labels"):
        collate([{"input_ids": [1, 2], "labels": [1]}], pad_id=0)
    # rounded up to a multiple of 16: more padding, the same real tokens, labels and mask sums
    wide = collate([a, b], pad_id=tok.pad_token_id, multiple=16)
    w16 = -(-width // 16) * 16
    assert wide["input_ids"].shape == (2, w16) and w16 % 16 == 0 and w16 >= width
    assert torch.equal(wide["input_ids"][:, :width], batch["input_ids"]) and torch.equal(wide["labels"][:, :width], batch["labels"])
    assert (wide["labels"][:, width:] == -100).all() and wide["attention_mask"].sum(dim=1).tolist() == [n, width]
    with pytest.raises(ValueError, match="pad multiple 0"):
        collate([a], pad_id=0, multiple=0)


def test_collate_packed_lays_examples_end_to_end():
    from polychromic.data import collate_packed

    a = {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}
    b = {"input_ids": [8, 9], "labels": [8, 9]}  # a first label that is not -100 is masked
    c = {"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}
    batch = collate_packed([a, b, c])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 1, 2, 3, 4]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, -100, 3, 4]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert batch["cu_seqlens"].tolist() == [0, 3, 5, 9] and str(batch["cu_seqlens"].dtype) == "torch.int32"
    assert batch["max_len"] == 4 and "attention_mask" not in batch
    assert a["labels"] == [-100, 6, 7] and b["labels"] == [8, 9]  # the examples are not modified
    with pytest.raises(ValueError, match="example 1 has 2 input_ids and 1 labels"):
        collate_packed([a, {"input_ids": [1, 2], "labels": [1]}])
    with pytest.raises(ValueError, match="empty batch"):
        collate_packed([])
