"""Sample cache helpers (completeness, repair of a crashed append) and foreign-format import."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from polychromic import io
from polychromic.evaluation.cache import (
    SamplesError,
    group_units,
    read_prompts,
    read_samples,
    repair,
    sample_row,
    unit_complete,
)
from polychromic.evaluation.importers import import_samples
from polychromic.evaluation.scoring import score


def toy_embedder(texts):
    """Bag-of-words hashed into 32 dims, L2-normalised: deterministic, no model."""
    out = np.zeros((len(texts), 32))
    for i, t in enumerate(texts):
        for w in t.lower().split():
            out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % 32] += 1.0
        out[i] /= max(np.linalg.norm(out[i]), 1e-12)
    return out


def unit(model, pid, k=2, greedy=True):
    dec = {"temperature": 1.0, "k": k}
    rows = [sample_row(pid, model, "sample", j, f"text {pid} {j}", 3, True, dec) for j in range(k)]
    return rows + ([sample_row(pid, model, "greedy", 0, f"greedy {pid}", 3, True, {**dec, "greedy": True})] if greedy else [])


def test_unit_complete_rules():
    assert unit_complete(unit("m", "p"))
    assert not unit_complete(unit("m", "p", greedy=False))
    assert not unit_complete(unit("m", "p")[1:])  # sample 0 missing
    assert not unit_complete(unit("m", "p") + unit("m", "p")[:1])  # a duplicate index
    imported = [sample_row("p", "m", "sample", j, "t", 1, True, {"imported_from": "lm_eval", "k": 2}) for j in range(2)]
    assert unit_complete(imported)  # imported units carry no greedy reply


def test_repair_drops_torn_tail_and_partial_units_keeping_bytes(tmp_path):
    path = tmp_path / "samples.jsonl"
    io.append_jsonl(path, unit("m", "p1"))
    io.append_jsonl(path, unit("m", "p2")[:2])  # crash after two of three rows
    good = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"prompt_id": "p2", "mod')  # torn write
    units = group_units(read_samples(tmp_path))  # the torn line is left out when reading
    assert len(units[("m", "p2")]) == 2
    complete = {u for u, rows in units.items() if unit_complete(rows)}
    assert complete == {("m", "p1")}
    assert repair(path, lambda r: (r["model"], r["prompt_id"]) in complete) == 3
    assert path.read_bytes() == good[: len(good) - sum(len(io.dumps(r)) + 1 for r in unit("m", "p2")[:2])]
    assert repair(path, lambda r: True) == 0  # nothing to do: the file is not rewritten


def test_bad_rows_name_file_row_and_field(tmp_path):
    io.append_jsonl(tmp_path / "samples.jsonl", [*unit("m", "p"), {"prompt_id": "p", "model": "m", "kind": "sample"}])
    with pytest.raises(SamplesError, match=r"samples.jsonl: row 4: field 'index' is missing"):
        read_samples(tmp_path)
    (tmp_path / "samples.jsonl").unlink()
    io.append_jsonl(tmp_path / "samples.jsonl", [{**unit("m", "p")[0], "n_tokens": True}])
    with pytest.raises(SamplesError, match=r"row 1: field 'n_tokens' must be int"):
        read_samples(tmp_path)
    with pytest.raises(SamplesError, match="not an evaluation directory"):
        read_prompts(tmp_path)


NOVELTY = [
    {"id": "q1", "prompt": "Name a pet.", "model": "gpt-a", "generations": ["the cat sat", "the cat ran"]},
    {"id": "q2", "prompt": "Say hi.", "model": "gpt-a", "generations": ["hello there friend", "hi", "good day"]},
    {"id": "q1", "prompt": "Name a pet.", "model": "gpt-b", "generations": ["dog", "dog"]},
    {"id": "q2", "prompt": "Say hi.", "model": "gpt-b", "generations": ["hey", "hey you"]},
]


def test_import_noveltybench_two_models_then_score(tmp_path):
    src = tmp_path / "generations.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in NOVELTY))
    out = tmp_path / "eval"
    import_samples(src, "noveltybench", "gpt-a", out)
    import_samples(src, "noveltybench", "gpt-b", out)
    prompts = read_prompts(out)
    assert [(p["prompt_id"], p["prompt"], p["reference"]) for p in prompts] == [("q1", "Name a pet.", None), ("q2", "Say hi.", None)]
    rows = read_samples(out)
    assert len(rows) == 2 + 3 + 2 + 2 and all(r["kind"] == "sample" for r in rows)
    assert rows[0]["decoding"]["imported_from"] == "noveltybench" and rows[0]["n_tokens"] == 3
    with pytest.raises(SamplesError, match="already holds samples of model 'gpt-a'"):
        import_samples(src, "noveltybench", "gpt-a", out)

    score(out, embedder=toy_embedder)
    per = {(r["model"], r["prompt_id"]): r for r in io.read_jsonl(out / "per_prompt.jsonl")}
    assert set(per) == {("gpt-a", "q1"), ("gpt-a", "q2"), ("gpt-b", "q1"), ("gpt-b", "q2")}
    a1 = per[("gpt-a", "q1")]
    assert a1["k"] == 2 and a1["metrics"]["distinct_1"] == pytest.approx(4 / 6) and a1["metrics"]["distinct_2"] == pytest.approx(0.75)
    assert per[("gpt-a", "q2")]["k"] == 3
    assert per[("gpt-b", "q1")]["metrics"]["mean_pairwise_cosine_distance"] == pytest.approx(0.0, abs=1e-9)  # identical samples
    assert a1["metrics"]["rouge_l"] is None and "greedy" in a1["excluded"]["rouge_l"]
    assert a1["metrics"]["ref_nll"] is None and "imported" in a1["excluded"]["ref_nll"]
    models = json.loads((out / "models.json").read_text())
    assert set(models) == {"gpt-a", "gpt-b"} and models["gpt-a"] == {"adapter": None, "ref_nll_mean": None, "ref_nll_tempered_mean": None,
                                                                   "ref_nll_temperature": None, "lora": None}
    assert len(list(io.read_jsonl(out / "scores.jsonl"))) == 9


def test_import_lm_eval_both_argument_layouts(tmp_path):
    rows = [
        {"doc_id": 0, "doc": {"question": "2+2?"}, "target": "4", "filtered_resps": ["4"],
         "arguments": {"gen_args_0": {"arg_0": "Q: 2+2?\nA:", "arg_1": {"until": ["\n"], "do_sample": True}}},
         "resps": [["4", "four", "4."]]},
        {"doc_id": 1, "doc": {"question": "3+3?"}, "target": "",
         "arguments": [["Q: 3+3?\nA:", {"until": ["\n"]}]], "resps": [["6"], ["six"], ["7"]], "filtered_resps": ["6", "six", "7"]},
    ]
    src = tmp_path / "samples_arith_2024-01-01T00-00-00.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = import_samples(src, "lm_eval", "hf-model", tmp_path / "eval")
    prompts = read_prompts(out)
    assert [(p["prompt_id"], p["prompt"], p["reference"]) for p in prompts] == [("0", "Q: 2+2?\nA:", "4"), ("1", "Q: 3+3?\nA:", None)]
    texts = {(r["prompt_id"], r["index"]): r["text"] for r in read_samples(out)}
    assert texts == {("0", 0): "4", ("0", 1): "four", ("0", 2): "4.", ("1", 0): "6", ("1", 1): "six", ("1", 2): "7"}
    score(out, embedder=toy_embedder)
    assert len(list(io.read_jsonl(out / "per_prompt.jsonl"))) == 2


def test_import_errors_are_specific(tmp_path):
    bad = tmp_path / "samples_x.jsonl"
    bad.write_text(json.dumps({"doc_id": 0, "arguments": {"gen_args_0": {"arg_0": "c"}}, "resps": [[0.5, True]]}) + "\n")
    with pytest.raises(SamplesError, match=r"samples_x.jsonl: line 1: field 'resps' must be a list of lists of strings"):
        import_samples(bad, "lm_eval", "m", tmp_path / "e1")
    nb = tmp_path / "gen.jsonl"
    nb.write_text(json.dumps({"id": "a", "prompt": "p", "generations": []}) + "\n")
    with pytest.raises(SamplesError, match=r"gen.jsonl: line 1: field 'generations' must be a non-empty list"):
        import_samples(nb, "noveltybench", "m", tmp_path / "e2")
    with pytest.raises(SamplesError, match="format must be one of"):
        import_samples(nb, "helm", "m", tmp_path / "e3")
    ok = tmp_path / "ok.jsonl"
    ok.write_text(json.dumps({"id": "a", "prompt": "p", "generations": ["x"]}) + "\n")
    import_samples(ok, "noveltybench", "m1", tmp_path / "e4")
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "b", "prompt": "p", "generations": ["x"]}) + "\n")
    with pytest.raises(SamplesError, match="prompt ids differ"):
        import_samples(other, "noveltybench", "m2", tmp_path / "e4")
