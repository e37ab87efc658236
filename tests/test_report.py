"""report(): results.json numbers from a synthetic evaluation directory, report.md content, a
self-contained report.html that renders in headless Chromium, and the CLI entry point."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from polychromic import io
from polychromic.config import Config, EvalModel, to_yaml
from polychromic.metrics import per_prompt_metrics
from polychromic.report import report

MODELS = ["baseline", "moderate", "aggressive"]
K = 5
N_PROMPTS = 20
TAU = 0.3
WORDS = ("the a good great fun day night time people love hate think know see game music movie book coffee rain sun "
         "dog cat friend home work city river song idea story plan").split()


def _texts(rng: np.random.Generator, model: str, prompt: str) -> list[str]:
    """Samples whose diversity grows from baseline to aggressive: the baseline mostly repeats one
    reply, the variants draw more of their words at random."""
    fresh = {"baseline": 0.1, "moderate": 0.5, "aggressive": 0.9}[model]
    stem = prompt.split()[:6] + ["is", "nice"]
    out = []
    for i in range(K):
        words = [w if rng.random() > fresh else str(rng.choice(WORDS)) for w in stem]
        out.append(" ".join(words) + ("!" if i % 2 else "."))
    return out


def make_eval_dir(root: Path, models=MODELS, n_prompts=N_PROMPTS, seed=0, empty_first_sample=False) -> Path:
    rng = np.random.default_rng(seed)
    d = root / "eval"
    cfg = Config(experiment="synthetic")
    cfg.eval.models = [EvalModel(name=m, adapter=None if m == "baseline" else f"runs/{m}/adapter") for m in models]
    cfg.eval.baseline = models[0]
    cfg.eval.k = K
    cfg.eval.quality_threshold = TAU
    cfg.eval.bootstrap_resamples = 500
    cfg.eval.primary_metrics = ["mean_pairwise_cosine_distance", "distinct_2"]
    io.atomic_write_text(d / "config.yaml", to_yaml(cfg))
    io.atomic_write_json(d / "env.json", {"git_sha": "0123abcd", "git_dirty": False, "python": "3.12.0", "platform": "linux",
                                          "packages": {"numpy": np.__version__, "torch": "2.13.0"}, "device": {"type": "cpu", "name": "x86_64"}})
    prompts = [{"prompt_id": f"p{i:02d}", "prompt": " ".join(rng.choice(WORDS, size=8)) + "?", "reference": "a reference reply"}
               for i in range(n_prompts)]
    io.atomic_write_jsonl(d / "prompts.jsonl", prompts)
    samples, scores, per_prompt = [], [], []
    spread = {"baseline": 0.2, "moderate": 0.6, "aggressive": 1.2}
    for m in models:
        for p in prompts:
            texts = _texts(rng, m, p["prompt"])
            if empty_first_sample and m == models[-1] and p["prompt_id"] == "p00":
                texts[0] = ""
            n_tokens = [len(t.split()) + 1 for t in texts]
            # embeddings: one direction per prompt plus model-dependent noise (more spread = more diverse)
            center = rng.normal(size=16)
            emb = center + spread.get(m, 0.5) * rng.normal(size=(K, 16))
            q = np.clip(rng.normal(0.5 if m != "aggressive" else 0.4, 0.2, size=K), 0, 1)
            for i, t in enumerate(texts):
                samples.append({"prompt_id": p["prompt_id"], "model": m, "kind": "sample", "index": i, "text": t,
                                "n_tokens": n_tokens[i], "finished": True, "decoding": {"k": K, "temperature": 0.7}})
                scores.append({"prompt_id": p["prompt_id"], "model": m, "kind": "sample", "index": i, "quality": float(q[i]),
                               "relevance": float(q[i]), "guard": 1.0})
            samples.append({"prompt_id": p["prompt_id"], "model": m, "kind": "greedy", "index": 0, "text": texts[0],
                            "n_tokens": n_tokens[0], "finished": True, "decoding": {"k": K, "temperature": 0.0}})
            metrics, excluded = per_prompt_metrics(texts, emb, q, n_tokens, tau=TAU)
            metrics["rouge_l"] = float(rng.random())
            metrics["relevance"] = float(q.mean())
            per_prompt.append({"model": m, "prompt_id": p["prompt_id"], "k": K, "metrics": metrics, "excluded": excluded})
    io.atomic_write_jsonl(d / "samples.jsonl", samples)
    io.atomic_write_jsonl(d / "scores.jsonl", scores)
    io.atomic_write_jsonl(d / "per_prompt.jsonl", per_prompt)
    verdicts = ["win", "win", "loss", "tie", "parse_failure"]
    io.atomic_write_jsonl(d / "judge.jsonl", [
        {"prompt_id": p["prompt_id"], "model": m, "baseline": models[0], "verdict": verdicts[i % len(verdicts)]}
        for m in models[1:] for i, p in enumerate(prompts)])
    io.atomic_write_json(d / "models.json", {
        m: {"adapter": None if m == models[0] else f"runs/{m}/adapter", "ref_nll_mean": 2.5 + 0.1 * i,
            "lora": None if m == models[0] else {"summary": {"n_modules": 4, "r": 8, "total_frobenius_norm": 0.5 * i,
                                                                 "mean_effective_rank": 3.2}}}
        for i, m in enumerate(models)})
    return d


def _per_prompt(d: Path) -> dict[tuple[str, str], dict]:
    return {(r["model"], r["prompt_id"]): r["metrics"] for r in io.read_jsonl(d / "per_prompt.jsonl")}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, list[Path], dict]:
    d = make_eval_dir(tmp_path_factory.mktemp("report"), empty_first_sample=True)
    paths = report(d)
    return d, paths, json.loads((d / "results.json").read_text())


def test_files_written(rendered):
    d, paths, _ = rendered
    names = {p.name for p in paths}
    assert {"results.json", "report.md", "report.html"} <= names
    assert {"diversity.png", "pass_max_at_k.png", "quality_vs_diversity.png", "lengths.png", "differences.png"} <= names
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0


def test_results_numbers_match_per_prompt_rows(rendered):
    d, _, res = rendered
    rows = _per_prompt(d)
    prompts = sorted({pid for _, pid in rows})
    assert res["models"] == MODELS and res["baseline"] == "baseline" and res["n_prompts"] == N_PROMPTS
    for m in MODELS:
        vals = [rows[(m, p)]["distinct_2"] for p in prompts if rows[(m, p)]["distinct_2"] is not None]
        s = res["per_model"][m]["metrics"]["distinct_2"]
        assert s["mean"] == pytest.approx(np.mean(vals), abs=1e-12)
        assert s["ci_low"] <= s["mean"] <= s["ci_high"]
        assert s["n"] == len(vals)
    for m in ("moderate", "aggressive"):
        c = res["comparisons"][m]["distinct_2"]
        common = [p for p in prompts if rows[(m, p)]["distinct_2"] is not None and rows[("baseline", p)]["distinct_2"] is not None]
        diffs = [rows[(m, p)]["distinct_2"] - rows[("baseline", p)]["distinct_2"] for p in common]
        assert c["n"] == len(common)
        assert c["diff"] == pytest.approx(np.mean(diffs), abs=1e-12)
        assert c["ci_low"] <= c["diff"] <= c["ci_high"]
        assert c["win_rate"] == pytest.approx((sum(x > 0 for x in diffs) + 0.5 * sum(x == 0 for x in diffs)) / len(diffs))
        assert c["relative_gain"] == pytest.approx(np.mean(diffs) / c["mean_baseline"])
        # the synthetic variants are clearly more diverse: the paired tests must see it
        assert c["diff"] > 0 and c["p_permutation"] < 0.01 and c["p_wilcoxon"] < 0.01


def test_exclusions_counted_and_holm_applied(rendered):
    _, _, res = rendered
    # the aggressive model's first prompt has an empty sample: every diversity metric excludes it
    s = res["per_model"]["aggressive"]["metrics"]["distinct_2"]
    assert s["n_excluded"] == 1 and s["n"] == N_PROMPTS - 1
    assert s["excluded_reasons"] == {"empty sample(s)": 1}  # per-prompt details grouped away
    assert res["comparisons"]["aggressive"]["distinct_2"]["n"] == N_PROMPTS - 1
    assert res["per_model"]["baseline"]["metrics"]["distinct_2"]["n_excluded"] == 0
    # Holm over 2 models x 2 primary metrics; adjusted p >= raw p; non-primary metrics have none
    assert len(res["holm_family"]) == 4
    for m in ("moderate", "aggressive"):
        for p in ("mean_pairwise_cosine_distance", "distinct_2"):
            c = res["comparisons"][m][p]
            assert c["p_holm"] >= c["p_permutation"]
        assert "p_holm" not in res["comparisons"][m]["self_bleu"]
    raw = sorted(res["comparisons"][m][p]["p_permutation"] for m in ("moderate", "aggressive")
                 for p in ("mean_pairwise_cosine_distance", "distinct_2"))
    assert min(res["comparisons"][m][p]["p_holm"] for m in ("moderate", "aggressive")
               for p in ("mean_pairwise_cosine_distance", "distinct_2")) == pytest.approx(min(1.0, 4 * raw[0]))


def test_verdict_and_reproducibility_fields(rendered):
    _, _, res = rendered
    v = res["verdict"]
    gain = res["comparisons"]["aggressive"]["mean_pairwise_cosine_distance"]["relative_gain"]
    assert v["metric"] == "mean_pairwise_cosine_distance"
    assert gain > 0.25 and v["verdict"] == "main track"
    assert res["env"]["git_sha"] == "0123abcd" and res["env"]["packages"]["torch"] == "2.13.0"
    assert res["bootstrap"]["seed"] == 42 and res["bootstrap"]["resamples"] == 500
    assert res["config"]["eval"]["k"] == K
    pass_k = res["per_model"]["baseline"]["metrics"]
    assert {f"pass_at_{k}" for k in range(1, K + 1)} <= set(pass_k)
    der = res["per_model"]["baseline"]["derived"]["der"]
    assert der["1"] == pytest.approx(1.0)
    curve = [res["per_model"]["baseline"]["metrics"][f"pass_at_{k}"]["mean"] for k in range(1, K + 1)]
    assert der["3"] == pytest.approx(curve[2] / (3 * curve[0]))
    # 20 prompts, verdicts cycle win, win, loss, tie, parse_failure
    assert res["judge"]["moderate"] == {"baseline": "baseline", "win": 8, "loss": 4, "tie": 4, "parse_failure": 4,
                                        "other": 0, "win_rate": pytest.approx(8 / 16)}


def test_markdown_content(rendered):
    d, _, res = rendered
    md = (d / "report.md").read_text()
    assert "# Evaluation report: synthetic" in md
    assert "**main track**" in md
    assert "## aggressive vs baseline" in md and "## moderate vs baseline" in md
    assert "![diversity](figures/diversity.png)" in md
    assert "length_tokens" in md and "## Samples that moved most" in md
    assert "0123abcd" in md


def test_html_is_self_contained(rendered):
    d, _, _ = rendered
    page = (d / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", page), "external resource in report.html"
    assert "<link" not in page and "<script" not in page
    assert page.count("data:image/png;base64,") == 5
    for text in ("main track", "Samples that moved most", "empty sample", "Reproducibility", "0123abcd", "ref_nll_mean", "LLM judge"):
        assert text in page


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian package chromium not installed (apt-get install -y chromium)")
def test_html_renders_in_headless_chromium(rendered, tmp_path):
    from matplotlib import image as mpimg

    d, _, _ = rendered
    shot = tmp_path / "report.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
           (d / "report.html").resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"chromium wrote no screenshot (rc {r.returncode}): {r.stderr[-2000:]}"
    assert shot.stat().st_size > 30_000
    img = mpimg.imread(shot)
    assert img.shape[:2] == (2000, 1280)
    rgb = img[..., :3].reshape(-1, 3)
    # a rendered page has many colors and is not one flat color
    assert rgb.std(axis=0).max() > 0.05
    assert len(np.unique((rgb[::50] * 255).astype(np.uint8), axis=0)) > 50
    shutil.copy(shot, d / "screenshot.png")  # kept next to the report for a human look


def test_single_model_report(tmp_path):
    d = make_eval_dir(tmp_path, models=["baseline"], n_prompts=6)
    report(d)
    res = json.loads((d / "results.json").read_text())
    assert res["comparisons"] == {} and res["verdict"]["verdict"] == "no verdict"
    page = (d / "report.html").read_text()
    assert "One model only" in page


def test_cli_report(tmp_path):
    d = make_eval_dir(tmp_path, n_prompts=6)
    r = subprocess.run([sys.executable, "-m", "polychromic", "report", str(d)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"wrote {d / 'report.html'}" in r.stdout
    assert json.loads((d / "results.json").read_text())["models"] == MODELS


def test_bad_per_prompt_row_names_file_and_line(tmp_path):
    d = make_eval_dir(tmp_path, n_prompts=4)
    lines = (d / "per_prompt.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    row["metrics"]["distinct_1"] = "high"
    lines[2] = json.dumps(row)
    (d / "per_prompt.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"per_prompt.jsonl: line 3: metrics.distinct_1 must be a finite number"):
        report(d)


def test_html_embeds_the_stylesheet_and_escapes_every_text(tmp_path):
    from importlib import resources

    d = make_eval_dir(tmp_path, n_prompts=6)
    prompts = list(io.read_jsonl(d / "prompts.jsonl"))
    for p in prompts:
        p["prompt"] = "<script>alert('x')</script> & " + p["prompt"]
    io.atomic_write_jsonl(d / "prompts.jsonl", prompts)
    rows = list(io.read_jsonl(d / "samples.jsonl"))
    for r in rows:
        r["text"] = "<b>bold</b> " + r["text"]
    io.atomic_write_jsonl(d / "samples.jsonl", rows)
    report(d)
    page = (d / "report.html").read_text()
    css = (resources.files("polychromic.report") / "templates" / "report.css").read_text()
    style = re.search(r"<style>(.*?)</style>", page, flags=re.S)
    assert style is not None and style.group(1).strip() == css.strip()
    assert "<script" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; " in page
    assert "&lt;b&gt;bold&lt;/b&gt; " in page


def test_html_templates_fail_on_an_unknown_name():
    import jinja2

    from polychromic.report.html import environment

    with pytest.raises(jinja2.UndefinedError, match="no_such_field"):
        environment().from_string("{{ res['no_such_field'] }}").render(res={})
