"""`evaluate`: files and row counts, cached reruns, kill-and-resume, scoring from files alone.

Everything runs on the tiny random Qwen3 (conftest) with a hand-made LoRA adapter, 4 prompts,
k = 3, 8 new tokens; the embedder is the embedded MiniLM (a local package, no network).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polychromic.evaluation import run as ev
from polychromic import generation
from polychromic import io
from polychromic.config import DataConfig, config_from_dict, to_yaml
from polychromic.data import prepare

K, N_PROMPTS, N_MODELS = 3, 4, 2
FILES = ("config.yaml", "env.json", "prompts.jsonl", "samples.jsonl", "ref_nll.jsonl", "scores.jsonl", "per_prompt.jsonl", "models.json")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    rows = []
    for g in range(24):
        rows.append({"tweet_id": f"t{g}", "tweet": f"Tweet number {g} about the weather and coffee", "reply": f"Nice point {g}, I agree!"})
        if g % 2 == 0:  # groups with two replies: references keep both
            rows.append({"tweet_id": f"t{g}", "tweet": f"Tweet number {g} about the weather and coffee", "reply": f"Not sure about {g} though."})
    src = d / "raw.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = d / "prepared"
    prepare(DataConfig(source="jsonl", path=str(src), prepared_dir=str(out), val_fraction=0.1, test_fraction=0.4), seed=0)
    return out


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    import torch

    from polychromic.config import LoraConfig, ModelConfig
    from polychromic.models import attach_lora, load_base_model

    model = attach_lora(load_base_model(ModelConfig(path=str(tiny_model_dir)), torch.device("cpu")), LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:  # PEFT starts B at zero: perturb so the adapter changes the model
                p.normal_(0.0, 0.5)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


def make_cfg(tiny_model_dir, prepared, adapter_dir, out, **eval_overrides):
    e = {
        "models": [{"name": "base"}, {"name": "lora", "adapter": str(adapter_dir)}],
        "k": K, "max_prompts": N_PROMPTS, "max_new_tokens": 8, "batch_size": 6, "temperature": 1.0, "output_dir": str(out),
        **eval_overrides,
    }
    return config_from_dict({
        "seed": 7,
        "model": {"path": str(tiny_model_dir), "dtype": "float32"},
        "data": {"prepared_dir": str(prepared)},
        "trainer": {"device": "cpu"},
        "eval": e,
    })


class CountingSample:
    """Wraps generation.sample, recording the prompts of each call."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def __call__(self, model, tokenizer, prompts, n, params, seed=None, batch_size=None):
        self.calls.append((len(prompts), n, params.greedy))
        return self.real(model, tokenizer, prompts, n, params, seed=seed, batch_size=batch_size)


def evaluate_counting(cfg) -> CountingSample:
    """Runs ev.evaluate(cfg) with generation.sample counted (module-scoped fixtures cannot use
    the function-scoped monkeypatch); returns the counter."""
    counter = CountingSample(generation.sample)
    mp = pytest.MonkeyPatch()
    mp.setattr(generation, "sample", counter)
    try:
        ev.evaluate(cfg)
    finally:
        mp.undo()
    return counter


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, prepared, adapter_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    cfg = make_cfg(tiny_model_dir, prepared, adapter_dir, out)
    return cfg, out, evaluate_counting(cfg)


def test_files_rows_and_fields(evaluated, adapter_dir):
    cfg, out, counter = evaluated
    for name in FILES:
        assert (out / name).is_file(), name
    # 2 prompts per chunk (batch_size 6 // k 3): 2 chunks x (sampled + greedy) x 2 models.
    assert counter.calls == [(2, K, False), (2, 1, True)] * 4

    prompts = list(io.read_jsonl(out / "prompts.jsonl"))
    assert len(prompts) == N_PROMPTS and len({p["prompt_id"] for p in prompts}) == N_PROMPTS
    assert all(p["reference"] == p["references"][0] for p in prompts)
    assert any(len(p["references"]) == 2 for p in prompts), "a two-reply group keeps both references"

    samples = list(io.read_jsonl(out / "samples.jsonl"))
    assert len(samples) == N_MODELS * N_PROMPTS * (K + 1)
    for r in samples:
        assert set(r) == {"prompt_id", "model", "kind", "index", "text", "n_tokens", "finished", "decoding"}
        assert r["decoding"]["max_new_tokens"] == 8 and r["decoding"]["k"] == K
        assert 0 <= r["n_tokens"] <= 8
    sampled = [r for r in samples if r["kind"] == "sample"]
    assert all(r["decoding"]["temperature"] == 1.0 and not r["decoding"]["greedy"] for r in sampled)
    assert all(r["decoding"]["greedy"] for r in samples if r["kind"] == "greedy")
    assert sorted({r["index"] for r in sampled}) == list(range(K))
    # The adapter changes the model: its greedy replies differ from the base model's somewhere.
    greedy = {(r["model"], r["prompt_id"]): r["text"] for r in samples if r["kind"] == "greedy"}
    assert any(greedy[("base", p["prompt_id"])] != greedy[("lora", p["prompt_id"])] for p in prompts)

    scores = list(io.read_jsonl(out / "scores.jsonl"))
    assert len(scores) == len(samples)
    assert all(0.0 <= s["quality"] <= 1.0 and 0.0 <= s["relevance"] <= 1.0 and s["guard"] in (0.0, 1.0) for s in scores)

    per = list(io.read_jsonl(out / "per_prompt.jsonl"))
    assert len(per) == N_MODELS * N_PROMPTS
    for row in per:
        assert set(row) == {"model", "prompt_id", "k", "metrics", "excluded"} and row["k"] == K
        m = row["metrics"]
        for name in ("distinct_1", "length_tokens", "relevance", "quality", "pass_at_1", "max_at_3", "ref_nll", "rouge_l"):
            assert name in m, name
        assert m["ref_nll"] > 0 and 0.0 <= m["rouge_l"] <= 1.0  # random model: the reference is unlikely
        assert set(row["excluded"]) == {k for k, v in m.items() if v is None}

    nll = list(io.read_jsonl(out / "ref_nll.jsonl"))
    assert len(nll) == N_MODELS * N_PROMPTS and all(r["n_references"] >= 1 and r["n_tokens"] > 0 for r in nll)

    models = json.loads((out / "models.json").read_text())
    assert set(models) == {"base", "lora"}
    assert models["base"]["adapter"] is None and models["base"]["lora"] is None
    assert models["lora"]["adapter"] == str(adapter_dir)
    assert models["lora"]["lora"]["summary"]["n_modules"] == 4  # q_proj, v_proj x 2 layers
    assert models["lora"]["lora"]["summary"]["total_frobenius_norm"] > 0
    base_nll = [r["metrics"]["ref_nll"] for r in per if r["model"] == "base"]
    assert models["base"]["ref_nll_mean"] == pytest.approx(sum(base_nll) / len(base_nll))
    assert ev.load_config(out / "config.yaml").eval.k == K
    assert "packages" in json.loads((out / "env.json").read_text())


def test_rerun_generates_nothing_and_loads_no_model(evaluated, monkeypatch):
    cfg, out, _ = evaluated
    before = {n: (out / n).read_bytes() for n in ("samples.jsonl", "ref_nll.jsonl", "per_prompt.jsonl")}
    counter = CountingSample(generation.sample)
    monkeypatch.setattr(generation, "sample", counter)

    def no_model(*a, **k):
        raise AssertionError("a fully cached evaluation must not load a model")

    monkeypatch.setattr("polychromic.models.load_base_model", no_model)
    ev.evaluate(cfg)
    assert counter.calls == []
    for name, data in before.items():
        assert (out / name).read_bytes() == data, name


def test_score_recomputes_from_files_alone(evaluated, monkeypatch):
    _, out, _ = evaluated
    before = {n: (out / n).read_bytes() for n in ("scores.jsonl", "per_prompt.jsonl", "models.json")}
    for n in before:
        (out / n).unlink()
    monkeypatch.setattr("polychromic.models.load_base_model", lambda *a, **k: pytest.fail("score loaded a model"))
    ev.score(out)
    for name, data in before.items():
        assert (out / name).read_bytes() == data, name


def test_same_seed_same_samples_other_seed_differs(evaluated, tiny_model_dir, prepared, adapter_dir, tmp_path):
    cfg, out, _ = evaluated
    # The adapter model first this time: the base model evaluated after it (adapter unloaded)
    # must give exactly the samples it gave alone, and every row must repeat byte for byte.
    again = make_cfg(tiny_model_dir, prepared, adapter_dir, tmp_path / "again",
                     models=[{"name": "lora", "adapter": str(adapter_dir)}, {"name": "base"}])
    ev.generate(again, tmp_path / "again", ev.select_prompts(again))
    assert sorted(lines(tmp_path / "again" / "samples.jsonl")) == sorted(lines(out / "samples.jsonl"))

    other = make_cfg(tiny_model_dir, prepared, adapter_dir, tmp_path / "other", models=[{"name": "base"}])
    other.seed = 8
    ev.generate(other, tmp_path / "other", ev.select_prompts(other))
    texts = lambda p: [r["text"] for r in io.read_jsonl(p) if r["kind"] == "sample"]  # noqa: E731
    base_texts = [r["text"] for r in io.read_jsonl(out / "samples.jsonl") if r["kind"] == "sample" and r["model"] == "base"]
    assert texts(tmp_path / "other" / "samples.jsonl") != base_texts


def test_torn_tail_and_partial_prompt_are_redone(evaluated, tmp_path):
    """A crash mid-append: the last prompt has only some rows and a torn line. The rerun drops
    them, regenerates that prompt only, and ends with the same files as the clean run."""
    cfg, out, _ = evaluated
    import shutil

    d = tmp_path / "torn"
    shutil.copytree(out, d)
    cfg.eval.output_dir = str(d)
    full = (d / "samples.jsonl").read_bytes()
    rows = full.splitlines(keepends=True)
    keep = len(rows) - (K + 1) + 2  # last unit: two complete rows, then half a line
    (d / "samples.jsonl").write_bytes(b"".join(rows[:keep]) + rows[keep][: len(rows[keep]) // 2])
    (d / "per_prompt.jsonl").unlink()
    try:
        counter = evaluate_counting(cfg)
    finally:
        cfg.eval.output_dir = str(out)
    assert counter.calls == [(2, K, False), (2, 1, True)]  # the last chunk of the last model only
    assert (d / "samples.jsonl").read_bytes() == full
    assert (d / "per_prompt.jsonl").read_bytes() == (out / "per_prompt.jsonl").read_bytes()


def test_changed_config_in_same_folder_is_refused(evaluated):
    cfg, out, _ = evaluated
    import copy

    bad = copy.deepcopy(cfg)
    bad.eval.temperature = 0.5
    with pytest.raises(ev.EvaluationError, match=r"eval.temperature"):
        ev.evaluate(bad)


KILL_SCRIPT = """
import sys, time
from polychromic import generation
from polychromic.config import load_config
from polychromic.evaluation.run import evaluate
real = generation.sample
def slow(*a, **k):
    time.sleep(0.4)  # leaves time to kill the process between prompts
    return real(*a, **k)
generation.sample = slow
evaluate(load_config(sys.argv[1]))
"""


@pytest.mark.slow
def test_killed_evaluation_resumes_without_regenerating(tiny_model_dir, prepared, adapter_dir, tmp_path):
    # One prompt per chunk (batch_size = k): every prompt is appended on its own.
    ref_cfg = make_cfg(tiny_model_dir, prepared, adapter_dir, tmp_path / "clean", batch_size=K)
    ev.evaluate(ref_cfg)

    run = tmp_path / "killed"
    cfg = make_cfg(tiny_model_dir, prepared, adapter_dir, run, batch_size=K)
    (tmp_path / "cfg.yaml").write_text(to_yaml(cfg))
    env = {**os.environ, "PYTHONPATH": str(Path(ev.__file__).resolve().parents[2])}  # src/, the tree under test
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "cfg.yaml")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples = run / "samples.jsonl"
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None:
            if samples.is_file() and len(samples.read_bytes().splitlines()) >= K + 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"evaluation ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    first = samples.read_bytes()
    finished = {(r["model"], r["prompt_id"]) for r in io.read_jsonl(samples, allow_torn_tail=True)}
    assert 1 <= len(finished) < N_MODELS * N_PROMPTS, "the kill must land mid-evaluation"
    assert not (run / "per_prompt.jsonl").exists()

    counter = evaluate_counting(cfg)
    complete = len(first.splitlines()) // (K + 1)  # whole prompts written before the kill
    # (a) finished prompts were not generated again: 2 calls (sampled + greedy) per remaining prompt,
    # their lines are untouched and appear once.
    assert len(counter.calls) == 2 * (N_MODELS * N_PROMPTS - complete)
    final = samples.read_bytes()
    kept = b"".join(first.splitlines(keepends=True)[: complete * (K + 1)])
    assert final.startswith(kept)
    keys = [(r["model"], r["prompt_id"], r["kind"], r["index"]) for r in io.read_jsonl(samples)]
    assert len(keys) == len(set(keys)) == N_MODELS * N_PROMPTS * (K + 1)
    # (b) the result equals an uninterrupted run's.
    assert final == (tmp_path / "clean" / "samples.jsonl").read_bytes()
    assert (run / "per_prompt.jsonl").read_bytes() == (tmp_path / "clean" / "per_prompt.jsonl").read_bytes()


def test_judge_runs_after_scoring_and_survives_rescoring(evaluated, tmp_path, monkeypatch):
    import shutil
    import threading
    from http.server import ThreadingHTTPServer

    from test_judge import ENV, KEY, FakeJudge

    cfg, out, _ = evaluated
    d = tmp_path / "judged"
    shutil.copytree(out, d)
    FakeJudge.requests = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv(ENV, KEY)
    import copy

    jc = copy.deepcopy(cfg)
    jc.eval.output_dir = str(d)
    jc.eval.judge.enabled, jc.eval.judge.api_key_env = True, ENV
    jc.eval.judge.base_url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    try:
        ev.evaluate(jc)
    finally:
        srv.shutdown()
        srv.server_close()
    assert len(FakeJudge.requests) == 2 * N_PROMPTS  # lora vs base greedy replies, both orders
    judged = json.loads((d / "models.json").read_text())["lora"]["judge"]
    assert judged["pairs"] == N_PROMPTS and judged["baseline"] == "base"
    assert len(list(io.read_jsonl(d / "judge.jsonl"))) == N_PROMPTS
    ev.score(d)  # rescoring keeps the verdicts (they cost calls to make)
    assert json.loads((d / "models.json").read_text())["lora"]["judge"] == judged
    assert KEY.encode() not in b"".join(p.read_bytes() for p in d.iterdir())


# --------------------------------------------------------------------------------------------
# Reference NLL at the sampling temperature, the evaluation embedder, common random numbers


def test_tempered_reference_nll_and_scoring_provenance(evaluated, tiny_model_dir, prepared, adapter_dir):
    """At T = 1 (the fixture's temperature) the tempered NLL is the NLL; at T = 0.5 it equals a
    one-example-at-a-time log_softmax(logits / T) computed here, and differs from T = 1."""
    import torch

    from polychromic.data import encode_example
    from polychromic.evaluation.nll import reference_nll
    from polychromic.models import load_base_model, load_tokenizer

    cfg, out, _ = evaluated
    per = list(io.read_jsonl(out / "per_prompt.jsonl"))
    assert all(r["metrics"]["ref_nll_tempered"] == r["metrics"]["ref_nll"] for r in per)
    models = json.loads((out / "models.json").read_text())
    assert models["lora"]["ref_nll_temperature"] == 1.0
    assert models["lora"]["ref_nll_tempered_mean"] == pytest.approx(models["lora"]["ref_nll_mean"])
    scoring = json.loads((out / "scoring.json").read_text())
    assert scoring["eval_embedder"] == scoring["train_embedder"] == "embedded:all-minilm-l6-v2"
    assert scoring["train_quality"] == "guard_x_relevance" and scoring["ref_nll_temperature"] == 1.0
    marked = scoring["trained_on"]
    assert marked["mean_pairwise_cosine_distance"] and marked["quality"] and marked["pass_at_1"] and marked["relevance"]
    assert not any(marked[m] for m in ("distinct_2", "self_bleu", "distinct_k", "rouge_l", "ref_nll", "ref_nll_tempered"))

    hot = make_cfg(tiny_model_dir, prepared, adapter_dir, out, temperature=0.5)
    prompts = ev.select_prompts(hot)
    tok = load_tokenizer(hot.model)
    model = load_base_model(hot.model, torch.device("cpu"))
    rows = reference_nll(model, tok, hot, prompts)
    assert all(r["temperature"] == 0.5 for r in rows)
    for p, r in zip(prompts, rows):
        total, count = 0.0, 0
        for ref in p["references"]:
            ex = encode_example(tok, hot.data, p["prompt"], ref)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0, :-1].float()
            labels = torch.tensor(ex["labels"][1:])
            keep = labels != -100
            lp = torch.log_softmax(logits / 0.5, dim=-1)[torch.arange(len(labels)), labels.clamp(min=0)]
            total -= float(lp[keep].sum())
            count += int(keep.sum())
        assert r["ref_nll_tempered"] == pytest.approx(total / count, rel=1e-4)
        assert abs(r["ref_nll_tempered"] - r["ref_nll"]) > 1e-3


def test_stale_reference_nll_rows_are_recomputed(evaluated, tmp_path):
    import shutil

    cfg, out, _ = evaluated
    d = tmp_path / "stale"
    shutil.copytree(out, d)
    rows = list(io.read_jsonl(d / "ref_nll.jsonl"))
    io.atomic_write_jsonl(d / "ref_nll.jsonl", [{k: v for k, v in r.items() if k not in ("ref_nll_tempered", "temperature")}
                                                for r in rows])
    cfg.eval.output_dir = str(d)
    try:
        counter = evaluate_counting(cfg)
    finally:
        cfg.eval.output_dir = str(out)
    assert counter.calls == []  # samples stay; only the NLL is redone
    again = {(r["model"], r["prompt_id"]): r for r in io.read_jsonl(d / "ref_nll.jsonl")}
    assert len(again) == len(rows) and all(r["temperature"] == 1.0 for r in again.values())
    for r in rows:
        assert again[(r["model"], r["prompt_id"])]["ref_nll"] == pytest.approx(r["ref_nll"], rel=1e-6)


def test_separate_evaluation_embedder(evaluated, tmp_path):
    """eval.embedder = the embedded multilingual-e5-small: semantic diversity changes, lexical
    metrics and quality (still scored with the training MiniLM) do not, and scoring.json no longer
    marks the semantic metrics as trained on."""
    import shutil

    from polychromic.config import EMBEDDED_E5, load_config

    _, out, _ = evaluated
    d = tmp_path / "e5"
    shutil.copytree(out, d)
    cfg = load_config(d / "config.yaml")
    cfg.eval.embedder = EMBEDDED_E5
    cfg.eval.output_dir = str(d)
    (d / "config.yaml").write_text(to_yaml(cfg))
    ev.score(d)
    old = {(r["model"], r["prompt_id"]): r["metrics"] for r in io.read_jsonl(out / "per_prompt.jsonl")}
    new = {(r["model"], r["prompt_id"]): r["metrics"] for r in io.read_jsonl(d / "per_prompt.jsonl")}
    assert any(new[u]["mean_pairwise_cosine_distance"] != pytest.approx(old[u]["mean_pairwise_cosine_distance"], abs=1e-4)
               for u in old if old[u]["mean_pairwise_cosine_distance"] is not None)
    for u in old:
        for m in ("distinct_2", "distinct_k", "quality", "relevance", "ref_nll"):
            assert new[u][m] == old[u][m], (u, m)
    scoring = json.loads((d / "scoring.json").read_text())
    assert scoring["eval_embedder"] == EMBEDDED_E5 and scoring["quality_embedder"] == "embedded:all-minilm-l6-v2"
    assert scoring["trained_on"]["mean_pairwise_cosine_distance"] is False and scoring["trained_on"]["vendi_q1"] is False
    assert scoring["trained_on"]["quality"] is True


@pytest.fixture(scope="module")
def near_adapter_dir(adapter_dir, tmp_path_factory) -> Path:
    """adapter_dir with one LoRA weight moved by 1e-6."""
    import shutil

    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("near") / "adapter"
    shutil.copytree(adapter_dir, out)
    weights = load_file(out / "adapter_model.safetensors")
    name = sorted(n for n in weights if "lora_B" in n)[0]
    weights[name] = weights[name].clone()
    weights[name][0, 0] += 1e-6
    save_file(weights, out / "adapter_model.safetensors")
    return out


def test_common_random_numbers_across_models(evaluated, tiny_model_dir, prepared, adapter_dir, near_adapter_dir, tmp_path):
    """Every model samples a prompt from the same seed: two adapters 1e-6 apart give the same
    samples and the same per-prompt metrics, while the base model (really different) does not;
    a cache whose seeds are not those of this chunking is refused."""
    base_cfg, base_out, _ = evaluated
    cfg = make_cfg(tiny_model_dir, prepared, adapter_dir, tmp_path / "crn",
                   models=[{"name": "near", "adapter": str(near_adapter_dir)}, {"name": "lora", "adapter": str(adapter_dir)}])
    ev.evaluate(cfg)
    rows = list(io.read_jsonl(tmp_path / "crn" / "samples.jsonl")) + list(io.read_jsonl(base_out / "samples.jsonl"))
    text = {(r["model"], r["prompt_id"], r["kind"], r["index"]): r["text"] for r in rows}
    seed = {(r["model"], r["prompt_id"]): r["decoding"]["seed"] for r in rows if r["kind"] == "sample"}
    prompts = ev.select_prompts(cfg)
    want = ev.chunk_seeds(cfg, prompts)
    assert len(set(want.values())) == 2  # two chunks of two prompts
    for p in prompts:
        pid = p["prompt_id"]
        assert seed[("near", pid)] == seed[("lora", pid)] == seed[("base", pid)] == want[pid]
    samples = [k for k in text if k[0] == "near" and k[2] == "sample"]
    assert len(samples) == N_PROMPTS * K
    assert all(text[k] == text[("lora", *k[1:])] for k in samples)
    assert any(text[("base", *k[1:])] != text[k] for k in samples)  # the test can fail: samples depend on the model
    per = {(r["model"], r["prompt_id"]): r["metrics"] for r in io.read_jsonl(tmp_path / "crn" / "per_prompt.jsonl")}
    for p in prompts:
        a, b = per[("near", p["prompt_id"])], per[("lora", p["prompt_id"])]
        for m in ("distinct_2", "distinct_k", "mean_pairwise_cosine_distance", "quality"):
            assert a[m] == b[m], m
        assert a["ref_nll"] == pytest.approx(b["ref_nll"], rel=1e-5)

    # another chunking (batch_size 3 // k = 1 prompt per chunk) would draw other numbers: refused
    other = make_cfg(tiny_model_dir, prepared, adapter_dir, tmp_path / "crn",
                     models=[{"name": "near", "adapter": str(near_adapter_dir)}, {"name": "lora", "adapter": str(adapter_dir)}],
                     batch_size=3)
    with pytest.raises(ev.EvaluationError, match="was sampled with seed .* Keep eval.batch_size"):
        ev.evaluate(other)


def test_evaluation_embedder_gets_every_sample_in_one_call(evaluated, tmp_path):
    """The semantic metrics' encoder is called once with every sample text (an encoder that runs
    one batch at a time, E5 on the CPU, is much faster so), and the metrics equal those of an
    encoder that embeds each text alone."""
    import shutil

    import numpy as np

    from polychromic.models import load_embedder

    _, out, _ = evaluated
    d = tmp_path / "batched"
    shutil.copytree(out, d)
    minilm = load_embedder()
    calls: list[int] = []

    def counting(texts):
        calls.append(len(texts))
        return np.concatenate([minilm([t]) for t in texts]) if texts else minilm(texts)

    ev.score(d, eval_embedder=counting)
    n_samples = sum(1 for r in io.read_jsonl(d / "samples.jsonl") if r["kind"] == "sample")
    distinct = len({r["text"] for r in io.read_jsonl(d / "samples.jsonl") if r["kind"] == "sample"})
    assert calls == [distinct] and distinct <= n_samples
    old = {(r["model"], r["prompt_id"]): r["metrics"] for r in io.read_jsonl(out / "per_prompt.jsonl")}
    new = {(r["model"], r["prompt_id"]): r["metrics"] for r in io.read_jsonl(d / "per_prompt.jsonl")}
    for u in old:
        if old[u]["mean_pairwise_cosine_distance"] is not None:
            assert new[u]["mean_pairwise_cosine_distance"] == pytest.approx(old[u]["mean_pairwise_cosine_distance"], abs=1e-5)
