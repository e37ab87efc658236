"""`polychromic sweep CONFIG [CONFIG ...] [--set key=value ...]`: train several configs in order.

The prior system's `train_polychromic_variants.sh` trained the variants one after the other and
a crash in one lost the night. Here:
- every config is loaded and validated first, and all errors of all configs are reported at once
  before anything trains (also two configs writing to the same run directory);
- a finished run (state done and adapter on disk) is skipped, a run with an earlier attempt is
  resumed (`--resume`: from its latest COMPLETE checkpoint, or from step 0 when none was saved);
- each training is its own subprocess `python -m polychromic train CONFIG ... [--resume]`, whose
  output streams straight to this terminal, so even a SIGKILL or an out-of-memory kill of one run
  cannot take the sweep down; the sweep goes on with the next config;
- at the end a summary table is printed and written atomically to `<runs_dir>/sweep-<time>.json`,
  failures are listed, and the exit code is 1 when any run failed (130 when interrupted).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from polychromic.config import Config, ConfigError, load_config
from polychromic.io import atomic_write_json
from polychromic.rundir import describe_exit, is_finished, latest_checkpoint, previous_attempt, read_state, run_dir_for
from polychromic.training.status import format_duration, format_table


@dataclass
class SweepRun:
    config: str
    cfg: Config
    action: str = ""
    """skip (finished), resume (earlier attempt found), start (fresh)."""
    result: str = "pending"
    """done | failed | skipped | interrupted | not run"""
    returncode: int | None = None
    seconds: float = 0.0
    error: str | None = None

    @property
    def run_dir(self) -> Path:
        return run_dir_for(self.cfg)


def load_all(config_paths: list[str], overrides: list[str]) -> list[SweepRun]:
    """Load every config; raise one ConfigError listing the problems of all of them."""
    errors: list[str] = []
    runs: list[SweepRun] = []
    for path in config_paths:
        try:
            runs.append(SweepRun(config=path, cfg=load_config(path, overrides)))
        except ConfigError as exc:
            errors += [f"{path}: {e}" for e in exc.errors]
    seen: dict[Path, str] = {}
    for r in runs:
        d = r.run_dir.resolve()
        if d in seen:
            errors.append(f"{r.config}: writes the same run directory {r.run_dir} as {seen[d]} (change experiment or seed)")
        seen.setdefault(d, r.config)
    if errors:
        raise ConfigError(errors, "sweep")
    return runs


def plan(cfg: Config) -> str:
    """skip: finished; resume: an earlier attempt left checkpoints/metrics/state; start: fresh."""
    run_dir = run_dir_for(cfg)
    if is_finished(run_dir):
        return "skip"
    if latest_checkpoint(run_dir) is not None or previous_attempt(run_dir) or read_state(run_dir):
        return "resume"
    return "start"


def _train(r: SweepRun, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "polychromic", "train", r.config, *overrides]
    if r.action == "resume":
        cmd.append("--resume")
    print(f"\n=== sweep: {r.action} {r.cfg.experiment} seed {r.cfg.seed} ({r.config}) ===", flush=True)
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.monotonic()
    # stdout/stderr are inherited: the run's output (progress bar, alerts) streams live.
    proc = subprocess.Popen(cmd)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C reaches the child too (same process group); let it finish writing its state.
        code = proc.wait()
        r.returncode, r.seconds = code, time.monotonic() - t0
        r.result, r.error = "interrupted", "interrupted by the user"
        raise
    r.returncode, r.seconds = code, time.monotonic() - t0
    if code == 0 and is_finished(r.run_dir):
        r.result = "done"
    elif code == 0:
        r.result, r.error = "failed", f"train exited 0 but {r.run_dir} is not finished (state done + adapter/)"
    else:
        state = read_state(r.run_dir)
        r.result = "failed"
        r.error = describe_exit(code) + (f": {state['error']}" if state.get("error") else "")


def sweep(config_paths: list[str], overrides: list[str]) -> int:
    """Train `config_paths` in order with `overrides` applied to each; see the module docstring.
    Returns 0 when every run is done, 1 when any failed, 130 when interrupted."""
    runs = load_all(config_paths, overrides)
    for r in runs:
        r.action = plan(r.cfg)
    started = time.strftime("%Y%m%d-%H%M%S")
    interrupted = False
    for r in runs:
        if r.action == "skip":
            r.result = "skipped"
            print(f"=== sweep: skip {r.cfg.experiment} seed {r.cfg.seed}: finished ({r.run_dir}) ===", flush=True)
            continue
        try:
            _train(r, overrides)
        except KeyboardInterrupt:
            interrupted = True
            break
    for r in runs:
        if r.result == "pending":
            r.result = "not run"
    _summarise(runs, started, overrides)
    if interrupted:
        return 130
    return 1 if any(r.result == "failed" for r in runs) else 0


def _summarise(runs: list[SweepRun], started: str, overrides: list[str]) -> None:
    rows = []
    for r in runs:
        state = read_state(r.run_dir)
        rows.append(
            {
                "config": r.config,
                "experiment": r.cfg.experiment,
                "seed": r.cfg.seed,
                "run_dir": str(r.run_dir),
                "action": r.action,
                "result": r.result,
                "returncode": r.returncode,
                "seconds": round(r.seconds, 1),
                "step": state.get("step"),
                "total_steps": state.get("total_steps"),
                "error": r.error,
            }
        )
    header = ["config", "experiment", "seed", "action", "result", "step", "time"]
    table = [
        [x["config"], x["experiment"], str(x["seed"]), x["action"], x["result"],
         f"{x['step'] if x['step'] is not None else '-'}/{x['total_steps'] if x['total_steps'] is not None else '-'}",
         format_duration(x["seconds"]) if x["returncode"] is not None else "-"]
        for x in rows
    ]
    print("\n=== sweep summary ===")
    print(format_table(header, table))
    failed = [x for x in rows if x["result"] == "failed"]
    if failed:
        print(f"\n{len(failed)} failed run(s):")
        for x in failed:
            print(f"  {x['config']} ({x['run_dir']}): {x['error']}")
    summary = {"started": started, "finished": time.strftime("%Y%m%d-%H%M%S"), "overrides": overrides, "runs": rows}
    for runs_dir in sorted({r.cfg.runs_dir for r in runs}):
        path = Path(runs_dir) / f"sweep-{started}.json"
        n = 2
        while path.exists():  # two sweeps started in the same second keep both summaries
            path = Path(runs_dir) / f"sweep-{started}-{n}.json"
            n += 1
        atomic_write_json(path, summary)
        print(f"summary: {path}")
