"""`polychromic experiment plan|run|report`: the spec, the plan, a 2-arm x 2-seed x 2-temperature
experiment end to end on the tiny random Qwen3 (CPU), SIGKILL during training and during
evaluation then a rerun (byte-identical final files), the report from files without torch, the
trained-on marks, and the shipped specs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from polychromic.config import ConfigError, load_config
from polychromic.experiment.heldout import marks
from polychromic.experiment.plan import make_plan, plan_rows
from polychromic.experiment.spec import load_spec
from polychromic.experiment.targets import compare_adapters
from polychromic.metrics import stats

REPO_SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": str(REPO_SRC)}
SEEDS = [0, 1]


def write_experiment(root: Path, model_dir: Path) -> Path:
    """root/spec.yaml + root/base.yaml + root/dialogs.jsonl: sft baseline and a polychromic
    variant (moderate), seeds 0 and 1, the baseline at T = 0.7 and 1.0, the variant at 0.7.
    Paths in the spec are relative (output_dir "out", base next to the spec), so two copies run
    from their own folders write the same bytes."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [{"tweet_id": f"g{i}", "tweet": f"what do you think about topic {i} and the weather today?",
             "reply": f"I think topic {i} is {'good' if i % 2 else 'bad'}, really {i % 3}."} for i in range(40)]
    (root / "dialogs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {
        "experiment": "unused",
        "model": {"path": str(model_dir), "dtype": "float32"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "data": {"source": "jsonl", "path": str(root / "dialogs.jsonl"), "val_fraction": 0.2, "test_fraction": 0.3,
                 "max_length": 64, "template": "{prompt}"},
        "trainer": {"max_steps": 4, "batch_size": 2, "grad_accum": 1, "lr": 1e-3, "warmup_ratio": 0.0, "save_every": 2,
                    "device": "cpu"},
        "eval": {"max_new_tokens": 8, "batch_size": 3},
    }
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {
        "name": "tiny",
        "description": "a CPU check of the experiment command",
        "base": "base.yaml",
        "seeds": SEEDS,
        "split_seed": 7,
        "output_dir": "out",
        "arms": [
            {"name": "sft", "role": "baseline"},
            {"name": "poly", "role": "variant", "strength": "moderate",
             "overrides": {"objective.name": "polychromic", "objective.diversity_weight": 1.0, "objective.quality": "relevance",
                           "objective.compute_diversity_every_n_steps": 2,
                           "rollout": {"n_generations": 3, "max_examples_for_diversity": 2, "max_generation_length": 6}}},
        ],
        "eval": {"k": 3, "temperatures": [0.7, 1.0], "variant_temperatures": [0.7],
                 "quality_metrics": ["ref_nll", "rouge_l", "relevance"], "matched_metrics": ["relevance"], "max_prompts": 4},
        "stats": {"resamples": 200},
        "targets": [{"arm": "poly", "metric": "distinct_2", "min_gain": 0.15, "ci_excludes_zero": True},
                    {"arm": "poly", "metric": "distinct_2", "matched": "relevance", "min_gain": 0.10},
                    {"arm": "poly", "metric": "ref_nll", "max_drop": 0.05}],
        "monotone": [{"arms": ["sft", "poly"], "metric": "distinct_2"}],
        "identical": [["sft", "poly"]],
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cli(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polychromic", *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


FINAL = ("spec.yaml", "configs", "data", "report", "eval/*/samples.jsonl", "eval/*/ref_nll.jsonl", "eval/*/scores.jsonl",
         "eval/*/per_prompt.jsonl", "eval/*/models.json", "eval/*/prompts.jsonl", "eval/*/config.yaml", "runs/*/*/adapter")
"""The experiment's results; env.json, state.json, metrics.jsonl and the logs record times."""


def final_files(out: Path) -> dict[str, bytes]:
    files = {}
    for pattern in FINAL:
        for p in sorted(out.glob(pattern)):
            for f in ([p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())):
                files[str(f.relative_to(out))] = f.read_bytes()
    return files


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    """One uninterrupted experiment, run through the CLI from its own folder."""
    root = tmp_path_factory.mktemp("experiment_ref")
    write_experiment(root, tiny_model_dir)
    t0 = time.monotonic()
    r = cli(["experiment", "run", "spec.yaml", "--parallel", "2"], root)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return root, r.stdout, time.monotonic() - t0


# ---------------------------------------------------------------------------------------------
# Spec and plan


def test_spec_errors_are_all_reported_with_paths(tmp_path, tiny_model_dir):
    spec = yaml.safe_load(write_experiment(tmp_path, tiny_model_dir).read_text())
    spec["sedes"] = [0]
    spec["arms"][0]["role"] = "variant"  # no baseline left
    spec["arms"][1]["overrides"]["objective.diversty_weight"] = 2.0
    spec["targets"][0]["metric"] = "distinct_9"
    spec["targets"][2]["min_gain"] = 0.1  # and max_drop: both set
    spec["eval"]["temperatures"] = [0.7, -1.0]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as e:
        load_spec(tmp_path / "bad.yaml")
    text = str(e.value)
    for needle in ("sedes: unknown key, did you mean seeds?", "exactly one arm with role baseline",
                   "arms[1] (poly): objective.diversty_weight: unknown key, did you mean diversity_weight?",
                   "targets[0].metric[0]: unknown metric 'distinct_9'", "targets[2]: set exactly one of min_gain and max_drop",
                   "eval.temperatures: temperatures must be > 0"):
        assert needle in text, text


def test_spec_overrides_extends_and_arm_configs(tmp_path, tiny_model_dir):
    path = write_experiment(tmp_path, tiny_model_dir)
    (tmp_path / "child.yaml").write_text("extends: spec.yaml\nname: child\nseeds: [3, 4, 5]\n")
    spec = load_spec(tmp_path / "child.yaml", ["eval.k=5", "overrides.trainer.max_steps=2"])
    assert spec.name == "child" and spec.seeds == [3, 4, 5] and spec.eval.k == 5
    plan = make_plan(spec)
    assert [(r.arm, r.seed) for r in plan.train] == [("sft", 3), ("sft", 4), ("sft", 5), ("poly", 3), ("poly", 4), ("poly", 5)]
    from polychromic.experiment.spec import arm_config, eval_config

    cfg = arm_config(spec, spec.arm("poly"), 4)
    assert (cfg.experiment, cfg.seed, cfg.trainer.max_steps, cfg.objective.name, cfg.rollout.n_generations) == ("poly", 4, 2, "polychromic", 3)
    assert cfg.data.split_seed == 7 and cfg.data.prepared_dir == str(Path("out") / "data") and cfg.runs_dir == str(Path("out") / "runs")
    ev = eval_config(spec, 1.0)  # the baseline alone at a grid temperature, every arm at 0.7
    assert [m.name for m in ev.eval.models] == ["sft_s3", "sft_s4", "sft_s5"] and ev.eval.temperature == 1.0 and ev.eval.k == 5
    assert [m.name for m in eval_config(spec, 0.7).eval.models] == ["sft_s3", "sft_s4", "sft_s5", "poly_s3", "poly_s4", "poly_s5"]
    assert load_spec(path).base == "base.yaml"  # read against the spec's folder, whatever the working directory


def test_plan_json_lists_every_run_and_evaluation(tmp_path, tiny_model_dir):
    write_experiment(tmp_path, tiny_model_dir)
    r = cli(["experiment", "plan", "spec.yaml", "--json"], tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    train = [x for x in rows if x["stage"] == "train"]
    evals = [x for x in rows if x["stage"] == "evaluate"]
    assert [(x["arm"], x["role"], x["seed"]) for x in train] == [("sft", "baseline", 0), ("sft", "baseline", 1),
                                                                 ("poly", "variant", 0), ("poly", "variant", 1)]
    assert all(x["status"] == "start" and x["run_dir"] == f"out/runs/{x['arm']}/seed_{x['seed']}" for x in train)
    assert train[0]["temperatures"] == [0.7, 1.0] and train[2]["temperatures"] == [0.7] and train[2]["strength"] == "moderate"
    assert sorted((x["model"], x["temperature"]) for x in evals) == sorted(
        [("sft_s0", 0.7), ("sft_s1", 0.7), ("poly_s0", 0.7), ("poly_s1", 0.7), ("sft_s0", 1.0), ("sft_s1", 1.0)])
    assert all(x["eval_dir"] == f"out/eval/T{x['temperature']:g}" for x in evals)
    text = cli(["experiment", "plan", "spec.yaml"], tmp_path, timeout=120).stdout
    assert text.count("\ntrain ") == 4 and text.count("\nevaluate ") == 6 and "[start]" in text
    bad = cli(["experiment", "plan", "resutl"], tmp_path, timeout=120)
    assert bad.returncode == 2 and "no shipped experiment of that name; did you mean result" in bad.stderr


def test_shipped_specs_plan(tmp_path):
    spec = load_spec("result")
    rows = plan_rows(make_plan(spec))
    seeds = lambda role, strength=None: {r["seed"] for r in rows if r["stage"] == "train" and r["role"] == role  # noqa: E731
                                         and (strength is None or r["strength"] == strength)}
    assert len(seeds("baseline")) >= 3 and len(seeds("variant", "moderate")) >= 3 and seeds("prior")
    assert spec.identical and spec.eval.split == "test" and spec.eval.k == 10
    assert min(spec.eval.temperatures) == 0.5 and max(spec.eval.temperatures) == 1.2
    r = cli(["experiment", "plan", "result", "--json"], Path.cwd(), timeout=120)
    assert r.returncode == 0, r.stderr
    rows_json = json.loads(r.stdout)
    assert {x["role"] for x in rows_json} == {"baseline", "prior", "control", "variant"}
    # the stage-2 arms start from the SFT arm's adapter of the same seed
    assert {a.name: a.init_from for a in spec.arms if a.init_from} == {
        "stage2_sft": "sft", "polychromic_conservative": "sft", "polychromic_moderate": "sft", "polychromic_aggressive": "sft"}
    cal = load_spec("calibration")
    assert cal.eval.split == "val" and cal.split_seed == spec.split_seed
    r = cli(["experiment", "copy", "calibration", str(tmp_path / "mine.yaml")], tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "polychromic experiment copy" in (tmp_path / "mine.yaml").read_text()
    assert plan_rows(make_plan(load_spec(tmp_path / "mine.yaml"))) == plan_rows(make_plan(cal))
    quick = load_spec("quickstart")
    assert len(quick.seeds) == 1 and len(quick.baseline_temperatures) == 2 and [a.role for a in quick.arms] == ["baseline", "variant"]


def test_data_split_seed_is_independent_of_the_run_seed(tmp_path):
    from polychromic.data import load_split

    outs = []
    for seed in (1, 2):
        out = tmp_path / f"s{seed}"
        r = subprocess.run([sys.executable, "-m", "polychromic", "data", "prepare", f"seed={seed}", "data.split_seed=7", "--out", str(out)],
                           env=ENV, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        outs.append([row["id"] for row in load_split(out, "test")])
    assert outs[0] == outs[1]
    assert load_config(None, ["seed=3"]).split_seed == 3 and load_config(None, ["seed=3", "data.split_seed=9"]).split_seed == 9


def test_decision_tree_reads_declared_roles():
    gains = {"lambda_small": 0.2, "lambda_big": 0.3}
    assert stats.decision_tree(gains)["verdict"] == "no verdict"  # nothing in the names
    tree = stats.decision_tree(gains, roles={"lambda_small": "moderate", "lambda_big": "conservative"})
    assert tree["verdict"] == "workshop" and "lambda_small" in tree["reason"]
    assert stats.decision_tree({"moderate_x": 0.3}, roles={"moderate_x": "aggressive"})["verdict"] == "main track"


def test_trained_on_marks_follow_the_embedders(tmp_path, tiny_model_dir):
    spec = load_spec(write_experiment(tmp_path, tiny_model_dir))
    from polychromic.experiment.spec import arm_config, eval_config

    cfgs = [(a.name, arm_config(spec, a, 0)) for a in spec.arms]
    ev = eval_config(spec, 0.7)
    names = ["mean_pairwise_cosine_distance", "vendi_q1", "distinct_2", "self_bleu", "relevance", "ref_nll", "length_tokens"]
    assert ev.eval.embedder == cfgs[1][1].objective.diversity_encoder_model  # the spec keeps the training's MiniLM
    same = marks(names, cfgs, ev, ev.eval.embedder)
    held = load_spec(tmp_path / "spec.yaml", ["eval.embedder=embedded:multilingual-e5-small"])
    ev_other = eval_config(held, 0.7)
    assert ev_other.eval.embedder == "embedded:multilingual-e5-small"
    other = marks(names, cfgs, ev_other, ev_other.eval.embedder)
    assert same["mean_pairwise_cosine_distance"]["trained_on"] and same["vendi_q1"]["trained_on"] and same["mean_pairwise_cosine_distance"]["arms"] == ["poly"]
    assert other["mean_pairwise_cosine_distance"]["trained_on"] is False and other["vendi_q1"]["trained_on"] is False
    assert same["relevance"]["trained_on"]  # poly's q is relevance
    for m in ("distinct_2", "self_bleu", "ref_nll"):
        assert same[m]["trained_on"] is False and other[m]["trained_on"] is False
    assert same["length_tokens"]["trained_on"] is None
    sft_only = marks(names, cfgs[:1], ev, ev.eval.embedder)  # no reward: everything held out
    assert not any(v["trained_on"] for v in sft_only.values())


# ---------------------------------------------------------------------------------------------
# End to end


def test_run_end_to_end(reference):
    root, stdout, seconds = reference
    out = root / "out"
    print(f"experiment run: {seconds:.0f} s")
    for f in ("results.json", "report.md", "report.html", "frontier.png"):
        assert (out / "report" / f).is_file(), f
    res = json.loads((out / "report" / "results.json").read_text())
    # The numbers are the evaluation's: the pooled mean of an arm is the mean over its seeds'
    # prompt means in per_prompt.jsonl.
    rows = [json.loads(line) for line in (out / "eval" / "T0.7" / "per_prompt.jsonl").read_text().splitlines()]
    assert sorted({r["model"] for r in rows}) == ["poly_s0", "poly_s1", "sft_s0", "sft_s1"]
    assert sorted({r["model"] for r in map(json.loads, (out / "eval" / "T1" / "per_prompt.jsonl").read_text().splitlines())}) == ["sft_s0", "sft_s1"]
    for arm in ("sft", "poly"):
        seed_means = []
        for s in SEEDS:
            vals = [r["metrics"]["distinct_2"] for r in rows if r["model"] == f"{arm}_s{s}" and r["metrics"]["distinct_2"] is not None]
            seed_means.append(sum(vals) / len(vals))
            assert res["means"]["0.7"][arm]["distinct_2"]["per_seed"][str(s)] == pytest.approx(seed_means[-1])
        assert res["means"]["0.7"][arm]["distinct_2"]["mean"] == pytest.approx(sum(seed_means) / 2)
    c = res["comparisons"]["0.7"]["poly"]["distinct_2"]
    assert c["verdict_view"] == "two_level" and c["view"]["method"].startswith("two-level") and set(c["per_seed"]) == {"0", "1"}
    assert c["two_level"]["n_seeds_a"] == 2 and c["pooled"]["n_prompts"] == 4 and "p_holm" in c["pooled"]
    gain = c["two_level"]["relative_delta"]
    assert c["two_level"]["gain"] == pytest.approx(gain)
    assert res["comparisons"]["0.7"]["poly"]["self_bleu"]["higher_is_better"] is False
    f = res["frontier"]["poly"]["0.7"]["relevance"]["distinct_2"]
    assert f["status"] == "ok" and [p[0] for p in f["curve"]] == [0.7, 1.0]
    # held out first: the training reward embeds with the evaluation's embedder and scores relevance
    m = res["held_out"]["marks"]
    assert m["mean_pairwise_cosine_distance"]["trained_on"] and m["relevance"]["trained_on"] and not m["distinct_2"]["trained_on"]
    # each target's status follows from its numbers (the rules are tested on known numbers below)
    for t, declared in zip(res["targets"], [0.15, 0.10, 0.05]):
        assert t["threshold"] == declared
        if t["status"] == "no value":
            assert t["reason"]
        elif t["half_width"] > t["threshold"]:
            assert t["status"] == "underpowered" and "too small to detect" in t["reason"]
        elif t["min_gain"] is not None:
            ok = t["gain"] >= t["min_gain"] and (not t["ci_excludes_zero"] or t["ci"][0] > 0)
            assert t["status"] == ("met" if ok else "missed"), t
        else:
            assert t["status"] == ("met" if t["gain"] >= -t["max_drop"] else "missed"), t
    assert res["targets"][1]["trained_on"]  # matched on relevance, which poly's reward uses
    # the only matched axis (relevance) is trained on: the tree is not fed with it
    assert res["verdict"]["status"] in ("underpowered", "no verdict")
    if res["verdict"]["status"] == "no verdict":
        assert "trained on" in res["verdict"]["reason"]
    ident = res["identical"][0]
    assert ident["status"] == "missed" and not ident["seeds"]["0"]["identical"] and ident["seeds"]["0"]["tensors"] == 8
    md = (out / "report" / "report.md").read_text()
    assert res["verdict"]["status"] in md and "trained on" in md and "held out" in md and "Holm" in md and "![frontier](frontier.png)" in md
    html = (out / "report" / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "data:image/png;base64," in html and "<script" not in html


def test_rerun_skips_everything_and_report_needs_no_torch(reference):
    root, _, _ = reference
    out = root / "out"
    before = final_files(out)
    r = cli(["experiment", "run", "spec.yaml"], root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "training: all 4 run(s) done" in r.stdout and "Loading weights" not in r.stderr  # no model loaded
    assert final_files(out) == before
    # --no-report stops after the evaluations and writes no report
    shutil.rmtree(out / "report")
    r = cli(["experiment", "run", "spec.yaml", "--no-report"], root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "report skipped: polychromic experiment report" in r.stdout and not (out / "report").exists()
    # `report` from the folder alone, with torch made unimportable
    code = ("import sys; from polychromic import cli; rc = cli.main(['experiment', 'report', " + repr(str(out)) + "]); "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'sentence_transformers') if m in sys.modules]; "
            "assert not heavy, heavy; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert final_files(out) == before


def test_adapter_identity_is_tensor_by_tensor(reference, tmp_path):
    root, _, _ = reference
    a = root / "out" / "runs" / "sft" / "seed_0" / "adapter"
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    same = compare_adapters(a, copy)
    assert same["identical"] and same["n_differing"] == 0 and same["sha256"][0] == same["sha256"][1]
    other = compare_adapters(a, root / "out" / "runs" / "sft" / "seed_1" / "adapter")
    assert not other["identical"] and other["n_differing"] > 0 and other["max_abs_diff"] > 0
    with pytest.raises(FileNotFoundError, match="adapter weights not found"):
        compare_adapters(a, tmp_path)


def _wait(proc: subprocess.Popen, ready, what: str, log: Path) -> None:
    deadline = time.monotonic() + 300
    while not ready():
        assert proc.poll() is None, f"exited before {what}: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what} not reached in 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def test_sigkill_in_training_and_in_evaluation_then_rerun_is_byte_identical(reference, tmp_path):
    """The reference experiment minus one training run and every evaluation: the rerun is killed
    in that training, rerun, killed in the evaluation, rerun to the end; every final file equals
    the uninterrupted run's byte for byte. (Relative paths in the spec: the copy writes the same
    bytes from its own folder.)"""
    root_ref, _, _ = reference
    root = tmp_path / "killed"
    shutil.copytree(root_ref, root, ignore=shutil.ignore_patterns("logs"))
    out = root / "out"
    for gone in ("runs/poly/seed_1", "eval", "report", "configs"):
        shutil.rmtree(out / gone)
    log = root / "run.log"
    cmd = [sys.executable, "-m", "polychromic", "experiment", "run", "spec.yaml", "--parallel", "2"]

    # 1. killed as soon as the training has a complete checkpoint (step 2 of 4)
    with open(log, "ab") as f:
        p = subprocess.Popen(cmd, cwd=root, env=ENV, stdout=f, stderr=subprocess.STDOUT)
    run = out / "runs" / "poly" / "seed_1"
    _wait(p, lambda: (run / "checkpoints" / "step-2" / "COMPLETE").is_file(), "a checkpoint", log)
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "running" and not (run / "adapter").exists()
    deadline = time.monotonic() + 30
    while True:  # the training child dies with its parent (PR_SET_PDEATHSIG)
        try:
            os.kill(state["pid"], 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "the training outlived the killed experiment"
        time.sleep(0.1)
    assert not (out / "eval").exists()

    # 2. rerun (the training resumes), killed once the evaluation has written samples
    with open(log, "ab") as f:
        p = subprocess.Popen(cmd, cwd=root, env=ENV, stdout=f, stderr=subprocess.STDOUT)
    samples = out / "eval" / "T0.7" / "samples.jsonl"
    _wait(p, lambda: samples.is_file() and samples.stat().st_size > 0, "evaluation samples", log)
    assert "resume poly_s1" in log.read_text() and not (out / "report").exists()

    # 3. rerun to the end
    r = cli(["experiment", "run", "spec.yaml", "--parallel", "2"], root)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ref, got = final_files(root_ref / "out"), final_files(out)
    assert sorted(got) == sorted(ref) and "runs/poly/seed_1/adapter/adapter_model.safetensors" in got
    differ = [k for k in ref if ref[k] != got[k]]
    assert not differ, differ


def test_evaluations_in_parallel_processes_write_the_same_files(reference, tmp_path):
    """The reference experiment's trainings, its evaluations redone two temperature folders at a
    time in `polychromic evaluate` processes: every final file equals the in-process run's byte
    for byte, each folder has its log, and a rerun evaluates nothing."""
    root_ref, _, _ = reference
    root = tmp_path / "parallel_eval"
    shutil.copytree(root_ref, root, ignore=shutil.ignore_patterns("logs"))
    out = root / "out"
    for gone in ("eval", "report"):
        shutil.rmtree(out / gone)
    r = cli(["experiment", "run", "spec.yaml", "--eval-parallel", "2"], root)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    temps = sorted(p.name for p in (root_ref / "out" / "eval").iterdir())
    assert len(temps) >= 2 and all((out / "logs" / f"eval_{t}.log").is_file() for t in temps)
    assert "evaluate T = " in r.stdout and "(log " in r.stdout
    ref, got = final_files(root_ref / "out"), final_files(out)
    assert sorted(got) == sorted(ref)
    differ = [k for k in ref if ref[k] != got[k]]
    assert not differ, differ
    again = cli(["experiment", "run", "spec.yaml", "--eval-parallel", "2"], root)
    assert again.returncode == 0 and "(log " not in again.stdout and again.stdout.count(": done (") >= len(temps)


# ---------------------------------------------------------------------------------------------
# Targets and verdict on known numbers


def _res(same: tuple, matched: tuple, arm: str = "poly") -> dict:
    """Results holding one arm's distinct_2 gain at T = 0.7, same decoding (gain, half-width) and
    matched on relevance (gain, half-width)."""
    g, hw = same
    mg, mhw = matched
    view = {"gain": g, "gain_ci": [g - hw, g + hw], "gain_half_width": hw, "gain_mde": 1.4 * hw}
    x = {"status": "inside", "relative_gain": mg, "relative_ci": [mg - mhw, mg + mhw], "relative_half_width": mhw,
         "mde_relative": 1.4 * mhw, "matched": 0.8, "temperature": 0.9, "ci_note": None}
    return {"comparisons": {"0.7": {arm: {"distinct_2": {"view": view, "verdict_view": "two_level"}}}},
            "frontier": {arm: {"0.7": {"relevance": {"distinct_2": {"status": "ok", "method": "two-level", "diversity_at_matched_quality": x}}}}},
            "means": {}}


MARKS = {"distinct_2": {"trained_on": False}, "self_bleu": {"trained_on": False}, "mean_pairwise_cosine_distance": {"trained_on": True},
         "relevance": {"trained_on": False}, "ref_nll": {"trained_on": False}, "rouge_l": {"trained_on": False}}


@pytest.fixture
def tiny_spec(tmp_path, tiny_model_dir):
    return load_spec(write_experiment(tmp_path, tiny_model_dir))


@pytest.mark.parametrize("same, matched, status", [
    ((0.20, 0.05), (0.18, 0.04), "workshop"),        # moderate > 15%, CIs narrow enough
    ((0.20, 0.05), (0.18, 0.20), "underpowered"),    # the matched CI is wider than 15%
    ((0.20, 0.30), (0.18, 0.04), "underpowered"),    # so is the same-decoding one
    ((0.10, 0.05), (0.10, 0.05), "preprint"),        # > 8%, judged at 8% with half-widths of 5%
    ((0.03, 0.02), (0.02, 0.02), "negative result"),
])
def test_verdict_walks_the_tree_with_power(tiny_spec, same, matched, status):
    from polychromic.experiment.targets import verdict

    tiny_spec.eval.matched_metrics = ["relevance"]
    v = verdict(tiny_spec, _res(same, matched), MARKS)
    assert v["status"] == status, v["reason"]
    if status == "underpowered":
        assert "too small to detect" in v["reason"] and "minimum detectable effect" in v["reason"]
    else:
        assert v["tree"]["roles"] == {"poly": "moderate"}


def test_verdict_uses_held_out_axes_only(tiny_spec):
    from polychromic.experiment.targets import verdict

    tiny_spec.eval.matched_metrics = ["relevance"]
    v = verdict(tiny_spec, _res((0.4, 0.01), (0.4, 0.01)), {**MARKS, "relevance": {"trained_on": True}})
    assert v["status"] == "no verdict" and "trained on" in v["reason"]
    v = verdict(tiny_spec, _res((0.4, 0.01), (0.4, 0.01)), {**MARKS, "distinct_2": {"trained_on": True}, "self_bleu": {"trained_on": True}})
    assert v["status"] == "no verdict"  # the first held-out primary metric has no matched gain here


@pytest.mark.parametrize("target, same, status", [
    ({"metric": "distinct_2", "min_gain": 0.15, "ci_excludes_zero": True}, (0.20, 0.10), "met"),
    ({"metric": "distinct_2", "min_gain": 0.15, "ci_excludes_zero": True}, (0.20, 0.25), "underpowered"),
    ({"metric": "distinct_2", "min_gain": 0.15}, (0.10, 0.05), "missed"),
    ({"metric": "distinct_2", "min_gain": 0.05, "ci_excludes_zero": True}, (0.06, 0.04), "met"),
    ({"metric": "distinct_2", "min_gain": 0.05, "ci_excludes_zero": True}, (0.05, 0.05), "missed"),  # CI [0, 10%] touches 0
    ({"metric": "distinct_2", "max_drop": 0.05}, (-0.03, 0.01), "met"),
    ({"metric": "distinct_2", "max_drop": 0.05}, (-0.08, 0.01), "missed"),
    ({"metric": "distinct_2", "max_drop": 0.0}, (-0.001, 0.01), "missed"),
    ({"metric": "distinct_2", "matched": "relevance", "min_gain": 0.10}, (0.0, 0.01), "met"),  # reads the matched 0.18
])
def test_targets_on_known_numbers(tiny_spec, target, same, status):
    from polychromic.experiment.spec import TargetSpec
    from polychromic.experiment.targets import judge_target

    t = judge_target(TargetSpec(arm="poly", **target), _res(same, (0.18, 0.04)), tiny_spec, MARKS)
    assert t["status"] == status, t["reason"]
    assert t["trained_on"] is False
    t = judge_target(TargetSpec(arm="poly", **target), _res(same, (0.18, 0.04)), tiny_spec,
                     {**MARKS, "distinct_2": {"trained_on": True}})
    assert t["trained_on"] is True


def test_one_seed_is_too_small_for_a_claim_about_the_recipe(tiny_spec):
    from polychromic.experiment.spec import TargetSpec
    from polychromic.experiment.targets import judge_target, verdict

    tiny_spec.seeds = [0]
    tiny_spec.eval.matched_metrics = ["relevance"]
    res = _res((0.40, 0.01), (0.40, 0.01))  # a large, certain gain at the prompt level
    t = judge_target(TargetSpec(arm="poly", metric="distinct_2", min_gain=0.15), res, tiny_spec, MARKS)
    assert t["status"] == "underpowered" and "1 seed per arm" in t["reason"]
    v = verdict(tiny_spec, res, MARKS)
    assert v["status"] == "underpowered" and "too small to detect" in v["reason"] and "minimum detectable effect" in v["reason"]
    tiny_spec.stats.verdict = "pooled"  # a claim about these adapters only
    assert judge_target(TargetSpec(arm="poly", metric="distinct_2", min_gain=0.15), res, tiny_spec, MARKS)["status"] == "met"
    assert verdict(tiny_spec, res, MARKS)["status"] == "workshop"


def test_reproduce_lines_name_a_shipped_spec_wherever_it_was_installed():
    from dataclasses import replace

    from polychromic.experiment.render import _spec_ref

    spec = load_spec("calibration")
    assert _spec_ref(replace(spec, source="/elsewhere/site-packages/polychromic/resources/experiments/calibration.yaml")) == "calibration"
    assert _spec_ref(replace(spec, source="/home/me/specs/mine.yaml")) == "/home/me/specs/mine.yaml"
    assert _spec_ref(replace(spec, source=None)) == "calibration"
