"""Trackers tested for real on this machine, each read back through its own reader: TensorBoard
event files (EventAccumulator), the W&B offline run file (parsed record by record), the MLflow
file store (MlflowClient). Nothing is sent anywhere (W&B offline, its base URL pointed at a closed
local port) and no planted environment secret lands in any file of the run directory."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from polychromic.config import config_from_dict, to_dict
from polychromic.training.monitor import Monitor
from polychromic.rundir import read_state
from polychromic.training.trackers import flatten, open_trackers

SECRETS = {"WANDB_API_KEY": "sk-test-secret-123", "OPENAI_API_KEY": "sk-test-secret-456", "MLFLOW_TRACKING_TOKEN": "sk-test-secret-789"}
STEPS = {
    1: {"train/quality_loss": 2.5, "train/grad_norm": 1.25},
    2: {"train/quality_loss": 2.0, "train/grad_norm": 30.0, "train/diversity_score": 0.4},
    3: {"train/quality_loss": 1.5, "train/grad_norm": 0.75},
}


def _isolated_env(mp: pytest.MonkeyPatch, tmp: Path) -> None:
    for k, v in SECRETS.items():
        mp.setenv(k, v)
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("WANDB_DIR", str(tmp / "wandb_dir"))
    mp.setenv("WANDB_CONFIG_DIR", str(tmp / "wandb_config"))
    mp.setenv("WANDB_CACHE_DIR", str(tmp / "wandb_cache"))
    mp.setenv("WANDB_DATA_DIR", str(tmp / "wandb_data"))
    mp.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: even a bug could not upload
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """One run logging 3 steps to all three trackers through Monitor."""
    tmp = tmp_path_factory.mktemp("trackers")
    run_dir = tmp / "runs" / "trk" / "seed_7"
    with pytest.MonkeyPatch.context() as mp:
        _isolated_env(mp, tmp)
        cfg = config_from_dict(
            {"experiment": "trk", "seed": 7, "runs_dir": str(tmp / "runs"),
             "tracking": {"backends": ["tensorboard", "wandb", "mlflow"], "project": "unit"}}
        )
        mon = Monitor(run_dir, cfg, total_steps=3)
        for step, values in STEPS.items():
            mon.log(step, values)
        mon.close("done")
    return run_dir, cfg


def test_tensorboard_event_files_read_back(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = tracked_run
    logdir = run_dir / "tensorboard"
    assert list(logdir.glob("events.out.tfevents.*"))
    ea = EventAccumulator(str(logdir))
    ea.Reload()
    got = {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}
    assert got["train/quality_loss"] == [(1, 2.5), (2, 2.0), (3, 1.5)]
    assert got["train/grad_norm"] == [(1, 1.25), (2, 30.0), (3, 0.75)]
    assert got["train/diversity_score"] == [(2, pytest.approx(0.4))]
    assert got["alerts/grad_norm_high"] == [(2, 1.0)]  # the red flag is visible in TensorBoard


def _wandb_records(path: Path) -> list[bytes]:
    """Records of a .wandb file: a 7-byte header (':W&B', magic, version), then LevelDB-log
    chunks (crc32c u32, length u16, type u8; FULL=1 FIRST=2 MIDDLE=3 LAST=4) in 32 KiB blocks."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    block, pos, out, parts = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            parts = chunk
        elif kind == 3:
            parts += chunk
        elif kind == 4:
            out.append(parts + chunk)
        elif kind == 0 and length == 0:
            pos += block - pos % block  # zero padding up to the next block
        else:
            raise AssertionError(f"unexpected chunk type {kind} at {pos}")
    return out


def test_wandb_offline_run_written_and_history_read_back(tracked_run):
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    run_dir, _ = tracked_run
    state = read_state(run_dir)
    run_id = state["trackers"]["wandb_run_id"]
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1, list((run_dir / "wandb").iterdir())
    wandb_file = offline[0] / f"run-{run_id}.wandb"
    assert wandb_file.stat().st_size > 0
    history: dict[int, dict] = {}
    config = None
    for raw in _wandb_records(wandb_file):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            history[rec.history.step.num] = row
        elif kind == "run" and rec.run.config.update:
            config = {u.key: json.loads(u.value_json) for u in rec.run.config.update}
    assert sorted(history) == [1, 2, 3]
    for step, values in STEPS.items():
        for k, v in values.items():
            assert history[step][k] == pytest.approx(v)
    assert history[2]["alerts/grad_norm_high"] == 1.0
    assert config is not None and config["experiment"] == "trk" and config["seed"] == 7
    assert config["trainer"]["grad_norm_alert"] == 20.0


def test_mlflow_file_store_read_back(tracked_run):
    from mlflow.tracking import MlflowClient

    run_dir, cfg = tracked_run
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    run = client.get_run(read_state(run_dir)["trackers"]["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "trk-seed7"
    hist = client.get_metric_history(run.info.run_id, "train/quality_loss")
    assert sorted((m.step, m.value) for m in hist) == [(1, 2.5), (2, 2.0), (3, 1.5)]
    params = run.data.params
    assert params["trainer.lr"] == str(cfg.trainer.lr)
    assert params["objective.name"] == "sft"
    assert params["lora.target_modules"] == str(cfg.lora.target_modules)
    assert len(params) == len(flatten(to_dict(cfg)))  # every config field, none dropped


def test_no_environment_secret_in_any_file(tracked_run):
    run_dir, _ = tracked_run
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) > 10  # the trackers really wrote their folders
    for p in files:
        data = p.read_bytes()
        for name, secret in SECRETS.items():
            assert secret.encode() not in data, f"{name} value leaked into {p}"


def test_resume_continues_the_same_tracker_runs(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _isolated_env(monkeypatch, tmp_path)
    cfg = config_from_dict({"experiment": "res", "runs_dir": str(tmp_path / "runs"), "tracking": {"backends": ["tensorboard", "mlflow"]}})
    run_dir = tmp_path / "runs" / "res" / "seed_42"
    mon = Monitor(run_dir, cfg, total_steps=4)
    for step in (1, 2, 3):
        mon.log(step, {"train/quality_loss": float(step)})
    mon.close("failed")
    first_id = read_state(run_dir)["trackers"]["mlflow_run_id"]
    mon = Monitor(run_dir, cfg, total_steps=4, start_step=2)  # checkpoint at step 2
    for step in (3, 4):
        mon.log(step, {"train/quality_loss": 10.0 * step})
    mon.close("done")
    assert read_state(run_dir)["trackers"]["mlflow_run_id"] == first_id
    run = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri()).get_run(first_id)
    assert run.info.status == "FINISHED"
    ea = EventAccumulator(str(run_dir / "tensorboard"))
    ea.Reload()
    # TensorBoard purged the interrupted attempt's step 3: each step shows once, newest values
    assert [(e.step, e.value) for e in ea.Scalars("train/quality_loss")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


@pytest.mark.parametrize(
    "backend,modules,package",
    [
        ("wandb", ["wandb"], "pip install wandb"),
        ("mlflow", ["mlflow", "mlflow.entities", "mlflow.tracking"], "pip install mlflow-skinny"),
        ("tensorboard", ["torch.utils.tensorboard"], "pip install tensorboard"),
    ],
)
def test_missing_package_names_what_to_install(tmp_path, monkeypatch, backend, modules, package):
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)  # makes `import m` raise ImportError
    cfg = config_from_dict({"tracking": {"backends": [backend]}})
    with pytest.raises(ImportError, match=f"tracking.backends includes '{backend}'.*{package}"):
        open_trackers(cfg, tmp_path)
