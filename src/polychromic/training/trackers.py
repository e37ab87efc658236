"""Experiment trackers: TensorBoard, Weights & Biases, MLflow, each through its own client.

The local `metrics.jsonl` is always written by `monitor.Monitor`; `tracking.backends` adds these.
Every tracker works without a network or an account: TensorBoard writes event files under
`<run_dir>/tensorboard`, W&B runs in offline mode by default (`wandb sync` uploads later), MLflow
defaults to a file store under `<run_dir>/mlruns`.

A tracker is an extra, never the run's record: one that fails (raising when it starts, on any
log call or when it closes, e.g. an unreachable MLflow server) is dropped with one warning
naming it and the error, recorded in state.json under `trackers_dropped`, and training goes on
with `metrics.jsonl`. Only a tracker package that is not installed stops the start (a setup
error, reported before the run claims to be running; `polychromic preflight` checks it too).

Secrets: trackers receive the resolved config (which holds no secrets, only the *name* of the
judge's key variable) and metric values. Nothing here logs os.environ; a dropped tracker's error
text has the values of the trackers' credential variables masked before it is shown or stored.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from polychromic.config import Config, to_dict, to_yaml
from polychromic.rundir import read_state, write_state

_INSTALL = "pip install {pkg}  (or pip install 'polychromic[trackers]' for all trackers)"


class Tracker(Protocol):
    name: str

    def log(self, step: int, values: dict[str, float]) -> None: ...

    def close(self, status: str) -> None: ...


class TrackerNotInstalled(ImportError):
    """A configured tracker's package cannot be imported: a setup error that stops the start."""


# Credential variables of the trackers' clients; their values are masked in a dropped tracker's error.
CREDENTIAL_VARS = ("WANDB_API_KEY", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME",
                   "DATABRICKS_TOKEN", "AWS_SECRET_ACCESS_KEY", "AZURE_STORAGE_ACCESS_KEY")


def _missing(backend: str, pkg: str, exc: ImportError) -> ImportError:
    return TrackerNotInstalled(
        f"tracking.backends includes {backend!r} but {pkg} cannot be imported ({exc}); install it: "
        + _INSTALL.format(pkg=pkg)
    )


def _tracker_ids(run_dir: Path) -> dict:
    return dict(read_state(run_dir).get("trackers", {}))


def _save_tracker_id(run_dir: Path, key: str, value: str) -> None:
    ids = _tracker_ids(run_dir)
    ids[key] = value
    write_state(run_dir, trackers=ids)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values (MLflow params are flat strings)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, cfg: Config, run_dir: Path, start_step: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise _missing("tensorboard", "tensorboard", exc) from exc
        self.logdir = Path(run_dir) / "tensorboard"
        # On resume, purge events logged after the checkpoint's step by the interrupted attempt,
        # so the curves show each step once. flush_secs: visible in `tensorboard` within 10 s.
        self.writer = SummaryWriter(
            log_dir=str(self.logdir), purge_step=start_step + 1 if start_step > 0 else None, flush_secs=10
        )
        if start_step == 0:
            self.writer.add_text("config", "```yaml\n" + to_yaml(cfg) + "```", 0)

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self, status: str) -> None:
        self.writer.close()


class WandbTracker:
    name = "wandb"

    def __init__(self, cfg: Config, run_dir: Path, start_step: int = 0):
        try:
            import wandb
        except ImportError as exc:
            raise _missing("wandb", "wandb", exc) from exc
        self._wandb = wandb
        ids = _tracker_ids(run_dir)
        # One W&B run per run directory, across resumes: its id is kept in state.json.
        run_id = ids.get("wandb_run_id") or secrets.token_hex(4)  # 8 chars of [0-9a-f], a valid W&B id
        self.run = wandb.init(
            project=cfg.tracking.project,
            name=f"{cfg.experiment}-seed{cfg.seed}",
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            mode=cfg.tracking.wandb_mode,
            config=to_dict(cfg),
            settings=wandb.Settings(save_code=False),
        )
        _save_tracker_id(run_dir, "wandb_run_id", run_id)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "done" else 1)


class MlflowTracker:
    name = "mlflow"
    _PARAMS_PER_CALL = 100  # MLflow's log_batch limits
    _METRICS_PER_CALL = 1000

    def __init__(self, cfg: Config, run_dir: Path, start_step: int = 0):
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise _missing("mlflow", "mlflow-skinny", exc) from exc
        uri = cfg.tracking.mlflow_tracking_uri or (Path(run_dir).resolve() / "mlruns").as_uri()
        if uri.startswith("file:"):
            # MLflow >= 3.7 refuses the file store unless opted in; it is the only local store
            # mlflow-skinny can use (the sqlite store needs sqlalchemy). An explicit user
            # setting of the variable wins.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.tracking_uri = uri
        exp = self.client.get_experiment_by_name(cfg.tracking.project)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(cfg.tracking.project)
        ids = _tracker_ids(run_dir)
        run_id = ids.get("mlflow_run_id")
        if run_id is None:
            run = self.client.create_run(
                exp_id,
                run_name=f"{cfg.experiment}-seed{cfg.seed}",
                tags={"experiment": cfg.experiment, "seed": str(cfg.seed), "run_dir": str(run_dir)},
            )
            run_id = run.info.run_id
            params = [Param(k, str(v)) for k, v in flatten(to_dict(cfg)).items()]
            for i in range(0, len(params), self._PARAMS_PER_CALL):
                self.client.log_batch(run_id, params=params[i : i + self._PARAMS_PER_CALL])
            _save_tracker_id(run_dir, "mlflow_run_id", run_id)
        else:
            # MLflow params are immutable: a resumed run keeps the first start's params (the
            # resolved config of this attempt is in config.yaml).
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        metrics = [Metric(k, v, ts, step) for k, v in values.items()]
        for i in range(0, len(metrics), self._METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + self._METRICS_PER_CALL])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if status == "done" else "FAILED")


BACKENDS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


def _masked(text: str) -> str:
    for var in CREDENTIAL_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, f"<{var}>")
    return text


def _drop(run_dir: Path, name: str, when: str, step: int | None, exc: BaseException) -> None:
    """One warning on stderr and one `trackers_dropped` entry in state.json for a failed tracker."""
    from tqdm.auto import tqdm

    error = _masked(f"{type(exc).__name__}: {exc}")
    at = f" at step {step}" if step is not None else ""
    # tqdm.write: on its own line even while the monitor's progress bar is drawn on stderr.
    tqdm.write(f"WARNING tracker {name} dropped ({when}{at} failed: {error.splitlines()[0][:500]}); "
               f"the run goes on, {Path(run_dir) / 'metrics.jsonl'} keeps every value", file=sys.stderr)
    dropped = list(read_state(run_dir).get("trackers_dropped", []))
    dropped.append({"tracker": name, "when": when, "step": step, "error": error[:2000], "time": time.time()})
    write_state(run_dir, trackers_dropped=dropped)


class GuardedTracker:
    """A tracker whose failures drop it (see the module docstring) instead of stopping the run."""

    def __init__(self, inner: Tracker, run_dir: Path):
        self.inner, self.name, self.run_dir = inner, inner.name, Path(run_dir)
        self.dropped = False

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.dropped:
            return
        try:
            self.inner.log(step, values)
        except Exception as exc:  # noqa: BLE001 - any client error; reported and recorded by _drop
            self.dropped = True
            _drop(self.run_dir, self.name, "log", step, exc)
            try:
                self.inner.close("failed")
            except Exception as close_exc:  # noqa: BLE001 - any client error; the tracker is dropped already
                from tqdm.auto import tqdm

                tqdm.write(f"WARNING tracker {self.name}: closing it after the failure failed too: "
                           f"{_masked(f'{type(close_exc).__name__}: {close_exc}').splitlines()[0][:500]}", file=sys.stderr)

    def close(self, status: str) -> None:
        if self.dropped:
            return
        try:
            self.inner.close(status)
        except Exception as exc:  # noqa: BLE001
            self.dropped = True
            _drop(self.run_dir, self.name, "close", None, exc)


def open_trackers(cfg: Config, run_dir: Path, start_step: int = 0) -> list[Tracker]:
    """One guarded tracker per `tracking.backends` entry that starts; one that fails to start is
    dropped (warning + state.json). A missing package raises TrackerNotInstalled (an ImportError)
    naming what to install; trackers opened before it are closed first."""
    opened: list[Tracker] = []
    try:
        for backend in cfg.tracking.backends:
            try:
                tracker = BACKENDS[backend](cfg, Path(run_dir), start_step=start_step)
            except TrackerNotInstalled:
                raise
            except Exception as exc:  # noqa: BLE001 - any client error at start: dropped, recorded
                _drop(Path(run_dir), backend, "start", start_step, exc)
                continue
            opened.append(GuardedTracker(tracker, Path(run_dir)))
    except BaseException:
        for t in opened:
            t.close("failed")
        raise
    return opened
