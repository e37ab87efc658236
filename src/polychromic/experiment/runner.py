"""`polychromic experiment run SPEC`: prepare the split, train every run, evaluate every model at
every declared temperature, write the report. Every stage resumes.

- data: prepared once into `<output_dir>/data` with the spec's split seed (skipped when its
  manifest says it was made with that seed);
- training: each run is its own `python -m polychromic train` subprocess (up to `parallel` at a
  time, e.g. several small models on one GPU), output in `logs/`. A finished run (state done and
  adapter on disk) is skipped; an interrupted one resumes from its last complete checkpoint, so
  the adapter is the one an uninterrupted run makes. A child dies with this process (Linux
  PR_SET_PDEATHSIG), so a killed `experiment run` leaves no orphan writing into a run directory;
  a rerun refuses a run directory whose recorded trainer is still alive. A failed run is resumed
  `retries` more times with half the parallelism (CUDA out-of-memory with many processes);
- evaluation: `polychromic.evaluation.evaluate(cfg)` in this process, one folder per temperature,
  whose sample cache resumes a killed evaluation exactly (docs/evaluation.md);
- report: `polychromic.experiment.report` from the files alone.

A run directory trained with another config than the spec now asks for is refused (the adapter
would belong to neither), as is a prepared split made with another seed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from polychromic import io
from polychromic.config import Config, to_yaml
from polychromic.experiment.plan import LOGS_DIR, SPEC_FILE, Plan, TrainRun, make_plan, train_action
from polychromic.experiment.spec import ExperimentSpec, arm_config, data_dir, eval_config, spec_to_yaml
from polychromic.rundir import CONFIG_FILE, describe_exit, is_finished, previous_attempt, process_alive, read_state

SPLIT_FIELDS = ("source", "path", "prompt_field", "reply_field", "group_field", "val_fraction", "test_fraction",
                "max_chars", "skip_invalid")
"""data fields that decide the split: every arm must agree on them (one prepared split)."""
POLL_SECONDS = 0.5


class ExperimentError(RuntimeError):
    pass


def _say(msg: str) -> None:
    print(f"[experiment {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Data and configs


def _configs(plan: Plan) -> dict[TrainRun, Config]:
    return {r: arm_config(plan.spec, plan.spec.arm(r.arm), r.seed) for r in plan.train}


def prepare_data(spec: ExperimentSpec, configs: dict[TrainRun, Config]) -> Path:
    """The experiment's one split: `data prepare` of the baseline's data section, seeded by
    spec.split_seed; checks every arm splits the same source the same way."""
    from polychromic.data import prepare

    first = next(iter(configs.values())).data
    errors = [f"arm {r.arm}: data.{f} = {getattr(c.data, f)!r} differs from {getattr(first, f)!r} (one split serves every arm)"
              for r, c in configs.items() for f in SPLIT_FIELDS if getattr(c.data, f) != getattr(first, f)]
    if errors:
        raise ExperimentError("\n".join(sorted(set(errors))))
    out = data_dir(spec)
    manifest = out / "manifest.json"
    if manifest.is_file():
        m = io.read_json_object(manifest)
        want = {"seed": spec.split_seed, "source": first.source,
                "fractions": {"val": first.val_fraction, "test": first.test_fraction}}
        diff = [k for k, v in want.items() if m.get(k) != v]
        if diff:
            raise ExperimentError(f"{manifest}: the prepared split differs from the spec ({', '.join(f'{k} {m.get(k)!r} != {want[k]!r}' for k in diff)}); "
                                  "use another output_dir, or delete the experiment folder to start over")
        return out
    m = prepare(first, seed=spec.split_seed, out_dir=str(out), skip_invalid=first.skip_invalid)
    _say(f"data: {out} ({', '.join(f'{k} {v}' for k, v in m['rows'].items())}; split seed {spec.split_seed})")
    return out


def write_configs(configs: dict[TrainRun, Config]) -> None:
    """configs/<model>.yaml for every run; refuses a run directory trained with another config."""
    errors = []
    for r, cfg in configs.items():
        text = to_yaml(cfg)
        old = r.run_dir / CONFIG_FILE
        if previous_attempt(r.run_dir) and old.is_file() and old.read_text(encoding="utf-8") != text:
            errors.append(f"{r.run_dir}: trained with another config than the spec now gives arm {r.arm} "
                          f"(compare {old} with {r.config_file}); use another output_dir or delete that run directory")
            io.atomic_write_text(r.config_file.with_suffix(".new.yaml"), text)
            continue
        io.atomic_write_text(r.config_file, text)
    if errors:
        raise ExperimentError("\n".join(errors))


# ---------------------------------------------------------------------------------------------
# Training


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """The child gets SIGKILL when this process dies, however it dies (Linux; elsewhere a no-op)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


def _env(parallel: int) -> dict:
    import polychromic

    env = dict(os.environ)
    src = str(Path(polychromic.__file__).resolve().parents[1])  # the code this process runs
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Fixed string hashing: PEFT writes adapter_config.json's target_modules from a set, whose
    # order would otherwise change from process to process (the same adapter, other bytes).
    env.setdefault("PYTHONHASHSEED", "0")
    # cuBLAS is bit-reproducible run to run with a fixed workspace (the identical-adapter checks).
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if parallel > 1:
        # K trainings share the CPUs; each needs few threads to launch its kernels.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    return env


def _spawn(r: TrainRun, parallel: int) -> subprocess.Popen:
    state = read_state(r.run_dir)
    if state.get("status") == "running" and process_alive(state):
        raise ExperimentError(f"{r.run_dir}: being trained by process {state.get('pid')} on {state.get('hostname')}; "
                              "wait for it or stop it, then rerun")
    cmd = ["train", str(r.config_file)] + (["--resume"] if train_action(r.run_dir) == "resume" else [])
    return _polychromic(cmd, r.log_file, parallel)


def _polychromic(args: list[str], log_file: Path, parallel: int) -> subprocess.Popen:
    """`python -m polychromic ARGS` in the background, its output appended to `log_file`."""
    cmd = [sys.executable, "-m", "polychromic", *args]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:  # a file, not a pipe: a full pipe would block the child
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(parallel), preexec_fn=_die_with_parent)


def train_all(plan: Plan, parallel: int, retries: int = 1) -> None:
    """Train every unfinished run, `parallel` at a time, in plan order."""
    todo = [r for r in plan.train if train_action(r.run_dir) != "done"]
    done = len(plan.train) - len(todo)
    if not todo:
        _say(f"training: all {len(plan.train)} run(s) done")
        return
    _say(f"training: {len(todo)} run(s) to do ({done} done), {parallel} at a time")
    for attempt in range(retries + 1):
        failed: list[tuple[TrainRun, str]] = []
        running: dict[TrainRun, tuple[subprocess.Popen, float]] = {}
        queue = list(todo)
        try:
            while queue or running:
                while len(running) < parallel:
                    # a stage-2 run waits for the run it starts from; one whose source failed fails too
                    blocked = {r.run_dir for r, _ in failed}
                    for r in [r for r in queue if r.after in blocked]:
                        queue.remove(r)
                        failed.append((r, f"its init_from run {r.after} failed"))
                    ready = [r for r in queue if r.after is None or is_finished(r.after)]
                    if not ready:
                        break
                    r = ready[0]
                    queue.remove(r)
                    _say(f"  {train_action(r.run_dir)} {r.model} -> {r.run_dir} (log {r.log_file})")
                    running[r] = (_spawn(r, parallel), time.monotonic())
                if queue and not running and not any(r.after is None or is_finished(r.after) for r in queue):
                    raise ExperimentError("training: runs wait for runs that are neither done nor scheduled: "
                                          + ", ".join(f"{r.model} after {r.after}" for r in queue))
                time.sleep(POLL_SECONDS)
                for r, (p, t0) in list(running.items()):
                    if p.poll() is None:
                        continue
                    del running[r]
                    ok = p.returncode == 0 and is_finished(r.run_dir)
                    why = "" if ok else (describe_exit(p.returncode) if p.returncode else "exited 0 but the run is not finished")
                    _say(f"  {r.model}: {'done' if ok else 'FAILED: ' + why} ({time.monotonic() - t0:.0f} s)")
                    if not ok:
                        failed.append((r, why))
        except BaseException:
            for p, _ in running.values():  # Ctrl-C reached them too; wait so state.json is final
                p.wait()
            raise
        if not failed:
            return
        todo = [r for r, _ in failed]
        if attempt < retries:
            parallel = max(1, parallel // 2)
            _say(f"retrying {len(todo)} failed run(s) from their last checkpoint, {parallel} at a time")
    raise ExperimentError("training failed:\n" + "\n".join(f"  {r.model}: {why} (see {r.log_file})" for r, why in failed))


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluated(cfg: Config) -> bool:
    """The folder holds this very evaluation, scored: the same config, and per_prompt.jsonl and
    models.json cover every model and prompt (both are written after all samples exist)."""
    out = Path(cfg.eval.output_dir)
    paths = [out / n for n in (CONFIG_FILE, "prompts.jsonl", "per_prompt.jsonl", "models.json")]
    if not all(p.is_file() for p in paths) or paths[0].read_text(encoding="utf-8") != to_yaml(cfg):
        return False
    prompts = {r["prompt_id"] for r in io.read_jsonl(paths[1])}
    have = {(r["model"], r["prompt_id"]) for r in io.read_jsonl(paths[2])}
    models = io.read_json_object(paths[3])
    return all(m.name in models and all((m.name, p) in have for p in prompts) for m in cfg.eval.models)


def evaluate_all(plan: Plan, parallel: int = 1) -> list[Path]:
    """One evaluation folder per temperature (cached: a rerun generates only what is missing,
    and a folder already scored for exactly this config is not even rescored); `parallel` > 1
    evaluates that many folders at a time, each in its own `polychromic evaluate` process."""
    from polychromic.evaluation import run as evaluation

    out, todo = [], []
    for t in plan.temperatures:
        cfg = eval_config(plan.spec, t)
        missing = [m.name for m in cfg.eval.models if not is_finished(Path(m.adapter).parent) or not Path(m.adapter).is_dir()]
        if missing:
            raise ExperimentError(f"evaluation at T = {t:g}: runs not finished: {missing}")
        out.append(Path(cfg.eval.output_dir))
        if evaluated(cfg):
            _say(f"evaluate T = {t:g}: done ({cfg.eval.output_dir})")
        else:
            todo.append((t, cfg))
    if parallel <= 1:
        for t, cfg in todo:
            _say(f"evaluate T = {t:g}: {len(cfg.eval.models)} model(s) -> {cfg.eval.output_dir}")
            evaluation.evaluate(cfg)
        return out
    _evaluate_in_processes(plan.spec, todo, parallel)
    return out


def _evaluate_in_processes(spec: ExperimentSpec, todo: list[tuple[float, Config]], parallel: int) -> None:
    """`polychromic evaluate` on each folder's config, `parallel` at a time; logs/eval_T<t>.log."""
    failed: list[str] = []
    running: dict[float, tuple[subprocess.Popen, float, Path]] = {}
    queue = list(todo)
    try:
        while queue or running:
            while queue and len(running) < parallel:
                t, cfg = queue.pop(0)
                config_file = spec.out / LOGS_DIR / f"eval_T{t:g}.yaml"
                io.atomic_write_text(config_file, to_yaml(cfg))
                log_file = spec.out / LOGS_DIR / f"eval_T{t:g}.log"
                _say(f"evaluate T = {t:g}: {len(cfg.eval.models)} model(s) -> {cfg.eval.output_dir} (log {log_file})")
                running[t] = (_polychromic(["evaluate", str(config_file)], log_file, parallel), time.monotonic(), log_file)
            time.sleep(POLL_SECONDS)
            for t, (p, t0, log_file) in list(running.items()):
                if p.poll() is None:
                    continue
                del running[t]
                ok = p.returncode == 0
                _say(f"  evaluate T = {t:g}: {'done' if ok else 'FAILED: ' + describe_exit(p.returncode)} ({time.monotonic() - t0:.0f} s)")
                if not ok:
                    failed.append(f"  T = {t:g}: {describe_exit(p.returncode)} (see {log_file})")
    except BaseException:
        for p, _, _ in running.values():
            p.wait()
        raise
    if failed:
        raise ExperimentError("evaluation failed:\n" + "\n".join(failed))


# ---------------------------------------------------------------------------------------------
# The whole experiment


def run(spec: ExperimentSpec, parallel: int | None = None, retries: int = 1, write_report: bool = True,
        eval_parallel: int | None = None) -> list[Path]:
    """Every stage, skipping what is done. Returns the report files written (none when
    `write_report` is False: train and evaluate on the GPU machine, render the report elsewhere
    from the folder with `polychromic experiment report DIR`)."""
    from polychromic.experiment.report import report

    plan = make_plan(spec)
    spec.out.mkdir(parents=True, exist_ok=True)
    (spec.out / LOGS_DIR).mkdir(exist_ok=True)
    io.atomic_write_text(spec.out / SPEC_FILE, spec_to_yaml(spec))
    configs = _configs(plan)
    prepare_data(spec, configs)
    write_configs(configs)
    train_all(plan, parallel or spec.parallel, retries)
    evaluate_all(plan, eval_parallel or spec.eval.parallel)
    if not write_report:
        _say(f"evaluations done; report skipped: polychromic experiment report {spec.out}")
        return []
    paths = report(spec)
    _say("report: " + ", ".join(str(p) for p in paths))
    return paths
