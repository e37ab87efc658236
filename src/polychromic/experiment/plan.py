"""The experiment's plan and directory layout: every training run and every evaluation, in order.

`<output_dir>/` (docs/experiments.md):
    spec.yaml                the resolved spec the run used
    data/                    the prepared split (data.split_seed = spec.split_seed)
    configs/<arm>_s<seed>.yaml   the resolved training config of each run
    runs/<arm>/seed_<seed>/  the run directories (adapter/, checkpoints/, state.json, ...)
    eval/T<t>/               one evaluation directory per decoding temperature
    logs/                    one log per training subprocess
    report/                  results.json, report.md, report.html, frontier.png

No torch here: `plan` and `report` import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from polychromic.experiment.spec import (
    ExperimentSpec,
    eval_dir,
    eval_models,
    model_name,
    runs_dir,
    temperature_tag,
)

CONFIGS_DIR = "configs"
LOGS_DIR = "logs"
REPORT_DIR = "report"
SPEC_FILE = "spec.yaml"


@dataclass(frozen=True)
class TrainRun:
    arm: str
    role: str
    strength: Optional[str]
    seed: int
    run_dir: Path
    config_file: Path
    log_file: Path
    temperatures: tuple[float, ...]
    """The decodings this run's adapter is evaluated at."""
    after: Optional[Path] = None
    """The run this one starts from (a stage-2 arm's `init_from`, same seed): trained first."""

    @property
    def model(self) -> str:
        return model_name(self.arm, self.seed)


@dataclass(frozen=True)
class EvalUnit:
    """One model at one decoding temperature (a model of that temperature's evaluation folder)."""

    arm: str
    role: str
    strength: Optional[str]
    seed: int
    run_dir: Path
    temperature: float
    eval_dir: Path

    @property
    def model(self) -> str:
        return model_name(self.arm, self.seed)


@dataclass(frozen=True)
class Plan:
    spec: ExperimentSpec
    train: list[TrainRun]
    evaluations: list[EvalUnit]

    @property
    def temperatures(self) -> list[float]:
        return self.spec.baseline_temperatures


def make_plan(spec: ExperimentSpec) -> Plan:
    """Training runs arm by arm in spec order (baseline first), seeds within an arm; then the
    evaluations, temperature by temperature."""
    out = spec.out
    temps = spec.baseline_temperatures
    arms = [spec.baseline] + [a for a in spec.arms if a.role != "baseline"]
    train = []
    for a in arms:
        at = tuple(t for t in temps if any(x.name == a.name for x, _ in eval_models(spec, t)))
        for s in spec.seeds:
            train.append(TrainRun(a.name, a.role, a.strength, s, runs_dir(spec) / a.name / f"seed_{s}",
                                  out / CONFIGS_DIR / f"{model_name(a.name, s)}.yaml", out / LOGS_DIR / f"train_{model_name(a.name, s)}.log", at,
                                  runs_dir(spec) / a.init_from / f"seed_{s}" if a.init_from else None))
    evaluations = [EvalUnit(a.name, a.role, a.strength, s, runs_dir(spec) / a.name / f"seed_{s}", t, eval_dir(spec, t))
                   for t in temps for a, s in eval_models(spec, t)]
    return Plan(spec, train, evaluations)


def plan_rows(plan: Plan) -> list[dict]:
    """One object per training run and per (model, temperature) evaluation (`plan --json`)."""
    rows = [{"stage": "train", "arm": r.arm, "role": r.role, "strength": r.strength, "seed": r.seed, "model": r.model,
             "run_dir": str(r.run_dir), "config": str(r.config_file), "temperatures": list(r.temperatures)}
            for r in plan.train]
    rows += [{"stage": "evaluate", "arm": e.arm, "role": e.role, "strength": e.strength, "seed": e.seed, "model": e.model,
              "run_dir": str(e.run_dir), "temperature": e.temperature, "eval_dir": str(e.eval_dir)}
             for e in plan.evaluations]
    return rows


def format_plan(plan: Plan, status: dict[str, str] | None = None) -> str:
    """The plan as text: one line per training run and per evaluation; `status` maps a row key
    (`train <model>` or `evaluate <model> T<t>`) to what a run would do (done / resume / start)."""
    status = status or {}
    s = plan.spec
    lines = [f"experiment {s.name}: {len(plan.train)} training run(s), {len(plan.evaluations)} evaluation(s) "
             f"into {s.out}", f"  seeds {s.seeds}, data split seed {s.split_seed}, eval split {s.eval.split}, k = {s.eval.k}"]
    width = max(len(r.arm) for r in plan.train)
    for r in plan.train:
        role = r.role + (f"/{r.strength}" if r.strength else "")
        st = status.get(f"train {r.model}")
        temps = ", ".join(f"{t:g}" for t in r.temperatures)
        lines.append(f"train     {r.arm:<{width}}  {role:<18} seed {r.seed:<4} {r.run_dir}  T = {temps}" + (f"  [{st}]" if st else ""))
    for e in plan.evaluations:
        role = e.role + (f"/{e.strength}" if e.strength else "")
        st = status.get(f"evaluate {e.model} {temperature_tag(e.temperature)}")
        lines.append(f"evaluate  {e.arm:<{width}}  {role:<18} seed {e.seed:<4} {e.run_dir}  T = {e.temperature:g} -> {e.eval_dir}"
                     + (f"  [{st}]" if st else ""))
    return "\n".join(lines)


def train_action(run_dir: Path) -> str:
    """done | resume | start: what `run` does with this run directory."""
    from polychromic.rundir import is_finished, latest_checkpoint, previous_attempt, read_state

    if is_finished(run_dir):
        return "done"
    if latest_checkpoint(run_dir) is not None or previous_attempt(run_dir) or read_state(run_dir):
        return "resume"
    return "start"


def plan_status(plan: Plan) -> dict[str, str]:
    """What `run` would do with each row: train done / resume / start; evaluate done / to do."""
    from polychromic import io

    out = {f"train {r.model}": train_action(r.run_dir) for r in plan.train}
    scored: dict[Path, set[str]] = {}
    for e in plan.evaluations:
        if e.eval_dir not in scored:
            path = e.eval_dir / "per_prompt.jsonl"
            scored[e.eval_dir] = {row["model"] for row in io.read_jsonl(path)} if path.is_file() else set()
        out[f"evaluate {e.model} {temperature_tag(e.temperature)}"] = "done" if e.model in scored[e.eval_dir] else "to do"
    return out
