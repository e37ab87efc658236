"""The main job: a small experiment on the embedded default, then the full-size result.

On a CPU it runs the shipped `quickstart` experiment (SmolLM2-135M-Instruct, the chatterbot dialogs,
LoRA SFT against the polychromic objective, one seed, a few prompts, the baseline at two
temperatures): every stage of the workflow in minutes, with a report that says it is too small to
detect the target effect. With a GPU it runs the shipped result's recipe (the `calibration` spec:
the dialog experiment's arms on the validation split, so the result's test prompts stay unseen) at
one seed for the SFT baseline and the moderate arm, which shows the real effect.

It ends by writing the full-size result's report, rendered from the committed files of that result
(`polychromic/resources/results/`; no weights), next to the demo's, and says where both are.
Everything lands under `workdir`; a rerun resumes (finished trainings and evaluations are skipped).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from polychromic import resources
from polychromic.experiment.runner import run
from polychromic.config import read_yaml_tree
from polychromic.experiment.spec import ExperimentSpec, spec_from_dict

CPU_SPEC = "quickstart"
GPU_SPEC = "calibration"
GPU_ARMS = ("sft", "polychromic_moderate")
FULL_RESULT = "result"
"""The committed full-size result shown at the end (resources/results/<name>/)."""

# --fast: the smallest sizes that still run every stage (tests).
FAST_TRAIN = {"trainer.max_steps": 3, "trainer.save_every": 2, "rollout.max_generation_length": 32}
FAST_EVAL = {"max_prompts": 4, "k": 3}
FAST_EVAL_CONFIG = {"eval.max_new_tokens": 12}


def _say(msg: str) -> None:
    print(f"[quickstart {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def quickstart_spec(workdir: str | Path, fast: bool = False, gpu: bool = False) -> ExperimentSpec:
    """The spec the main job runs, with every output under `workdir`."""
    path = resources.resolve(GPU_SPEC if gpu else CPU_SPEC, "experiments")
    data = read_yaml_tree(path)
    data["output_dir"] = str(Path(workdir).resolve())
    if gpu:  # one seed of the baseline and the moderate arm; targets on those two only
        data["seeds"] = [0]
        data["arms"] = [a for a in data["arms"] if a["name"] in GPU_ARMS]
        data["targets"] = [t for t in data.get("targets", []) if t["arm"] in GPU_ARMS]
        data["monotone"], data["identical"] = [], []
    if fast:
        data["overrides"] = {**data.get("overrides", {}), **FAST_TRAIN}
        ev = data.setdefault("eval", {})
        ev.update(FAST_EVAL)
        ev["overrides"] = {**ev.get("overrides", {}), **FAST_EVAL_CONFIG}
        data["stats"] = {**data.get("stats", {}), "resamples": 200}
    return spec_from_dict(data, str(path))


def write_full_result(workdir: str | Path) -> Path:
    """Copy the committed full-size result's report and figures into `workdir/full_result/`."""
    src = resources.ROOT / "results" / FULL_RESULT
    if not (src / "report.md").is_file():
        raise FileNotFoundError(f"{src}/report.md is missing from the package: reinstall polychromic")
    out = Path(workdir) / "full_result"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out)
    return out / "report.md"


def quickstart(workdir: str | Path = "quickstart", fast: bool = False, gpu: bool | None = None) -> Path:
    t0 = time.time()
    gpu = _gpu() if gpu is None else gpu
    spec = quickstart_spec(workdir, fast=fast, gpu=gpu)
    what = f"the result's recipe at one seed ({', '.join(GPU_ARMS)}) on the validation split" if gpu else \
        f"the `{CPU_SPEC}` experiment (CPU-sized: too small to detect the target effect)"
    _say(f"running {what}; everything goes to {spec.out}")
    paths = run(spec)
    html = next((p for p in paths if p.suffix == ".html"), paths[0])
    full = write_full_result(workdir)
    _say(f"done in {time.time() - t0:.0f} s")
    _say(f"this run's report:      {html}")
    _say(f"the full-size result:   {full} (the confirmatory run: 6 arms x 3 seeds, 105 test prompts; docs/results.md)")
    return html
