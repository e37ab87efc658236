"""The main job on the embedded default: prepare the chatterbot dialogs, train the LoRA SFT
baseline and a polychromic variant of SmolLM2-135M-Instruct, evaluate base + both adapters with
k samples per held-out prompt, and write the report. Sized for a 2-core CPU (minutes).

Everything lands under `workdir` (data/, runs/, eval/); a rerun resumes: finished runs are
skipped and cached samples are not regenerated.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from polychromic.config import Config, load_config
from polychromic.data import prepare
from polychromic.evaluation.run import evaluate
from polychromic.report import report
from polychromic.rundir import read_state, run_dir_for
from polychromic.training.loop import train


# --fast: the smallest sizes that still exercise every stage (tests).
FAST = ["trainer.max_steps=3", "trainer.save_every=2", "eval.max_prompts=4", "eval.k=3", "eval.max_new_tokens=12",
        "rollout.max_generation_length=12", "eval.bootstrap_resamples=200"]


def _say(msg: str) -> None:
    print(f"[quickstart {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def demo_configs(workdir: str | Path, fast: bool = False) -> tuple[Config, Config, Config]:
    """(baseline, polychromic, evaluation) configs, with every path under `workdir`."""
    w = Path(workdir).resolve()
    common = [f"runs_dir={w / 'runs'}", f"data.prepared_dir={w / 'data'}", f"eval.output_dir={w / 'eval'}"] + (FAST if fast else [])
    base = load_config("demo/baseline", common)
    poly = load_config("demo/polychromic", common)
    # lambda = 1.0 is the prior "moderate" variant: the name gives the report's decision tree its role.
    models = (
        "[{name: base}, "
        f"{{name: sft_baseline, adapter: '{run_dir_for(base) / 'adapter'}'}}, "
        f"{{name: polychromic_moderate, adapter: '{run_dir_for(poly) / 'adapter'}'}}]"
    )
    ev = load_config("demo/baseline", common + [f"eval.models={models}", "eval.baseline=sft_baseline", "experiment=demo_eval"])
    return base, poly, ev


def quickstart(workdir: str | Path = "quickstart", fast: bool = False) -> Path:
    t0 = time.time()
    base, poly, ev = demo_configs(workdir, fast)
    _say("1/4 preparing the chatterbot-corpus dialogs (grouped, leak-free splits)")
    manifest = prepare(base.data, seed=base.seed)
    _say(f"    {manifest['rows']}")
    for i, cfg in enumerate((base, poly), start=2):
        state = read_state(run_dir_for(cfg)) if (run_dir_for(cfg) / "state.json").is_file() else {}
        if state.get("status") == "done":
            _say(f"{i}/4 {cfg.experiment}: already trained, skipping ({run_dir_for(cfg)})")
            continue
        _say(f"{i}/4 training {cfg.experiment} (objective {cfg.objective.name}, lambda {cfg.objective.diversity_weight})")
        train(cfg, resume=bool(state))
    _say(f"4/4 evaluating {[m.name for m in ev.eval.models]} with k={ev.eval.k} samples on {ev.eval.max_prompts} held-out prompts")
    eval_dir = evaluate(ev)
    paths = report(eval_dir)
    for p in paths:
        _say(f"wrote {p}")
    _say(f"done in {time.time() - t0:.0f} s; open {eval_dir / 'report.html'}")
    return eval_dir
