"""Trackers tested for real on this machine, each read back through its own reader: TensorBoard
event files (EventAccumulator), the W&B offline run file (parsed record by record), the MLflow
file store (MlflowClient). Nothing is sent anywhere (W&B offline, its base URL pointed at a closed
local port) and no planted environment secret lands in any file of the run directory."""

from __future__ import annotations

import json
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


# ---------------------------------------------------------------------------------------------
# A failing tracker is dropped, never the run: one warning naming it and the error, metrics.jsonl
# goes on, state.json records the drop (fault: a fake tracker raising at start, on a log call,
# at close; and a real MLflow client pointed at a closed port).


class FailingTracker:
    """Stands in for a tracker client; raises where told, and records what reached it."""

    fail_at: dict = {}
    logged: list = []

    def __init__(self, cfg, run_dir, start_step=0):
        self.name = FailingTracker.fail_at["name"]
        if FailingTracker.fail_at.get("when") == "start":
            raise ConnectionError(f"tracking server unreachable (token {SECRETS['WANDB_API_KEY']})")

    def log(self, step, values):
        if FailingTracker.fail_at.get("when") == "log" and step >= FailingTracker.fail_at["step"]:
            raise TimeoutError(f"log call timed out at step {step}")
        FailingTracker.logged.append(step)

    def close(self, status):
        if FailingTracker.fail_at.get("when") == "close":
            raise RuntimeError("finish failed: HTTP 503")


@pytest.mark.parametrize("backend", ["wandb", "mlflow", "tensorboard"])
@pytest.mark.parametrize("when,step,error", [("start", 0, "ConnectionError: tracking server unreachable"),
                                              ("log", 2, "TimeoutError: log call timed out at step 2"),
                                              ("close", None, "RuntimeError: finish failed: HTTP 503")])
def test_failing_tracker_is_dropped_with_one_warning(tmp_path, monkeypatch, capsys, backend, when, step, error):
    from polychromic.training import trackers

    monkeypatch.setenv("WANDB_API_KEY", SECRETS["WANDB_API_KEY"])
    monkeypatch.setattr(FailingTracker, "fail_at", {"name": backend, "when": when, "step": step})
    monkeypatch.setattr(FailingTracker, "logged", [])
    monkeypatch.setitem(trackers.BACKENDS, backend, FailingTracker)
    cfg = config_from_dict({"experiment": "drop", "runs_dir": str(tmp_path / "runs"), "tracking": {"backends": [backend]}})
    run_dir = tmp_path / "runs" / "drop" / "seed_42"
    mon = Monitor(run_dir, cfg, total_steps=4)
    for s in (1, 2, 3, 4):
        mon.log(s, {"train/quality_loss": 1.0 / s})
    mon.close("done")

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # the run's own record is complete
    assert FailingTracker.logged == {"start": [], "log": [1], "close": [1, 2, 3, 4]}[when]  # nothing after the drop
    state = read_state(run_dir)
    assert state["status"] == "done"
    (dropped,) = state["trackers_dropped"]
    assert (dropped["tracker"], dropped["when"], dropped["step"]) == (backend, when, step)
    assert dropped["error"].startswith(error)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("WARNING tracker")]
    assert len(warnings) == 1 and f"tracker {backend} dropped ({when}" in warnings[0] and error in warnings[0]
    # the credential that the client put into its error message is masked everywhere
    assert SECRETS["WANDB_API_KEY"] not in warnings[0] + json.dumps(state)
    if when == "start":
        assert "<WANDB_API_KEY>" in dropped["error"]


def test_unreachable_mlflow_server_is_dropped_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    import socket

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _isolated_env(monkeypatch, tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config_from_dict({"experiment": "down", "runs_dir": str(tmp_path / "runs"),
                            "tracking": {"backends": ["mlflow", "tensorboard"], "mlflow_tracking_uri": f"http://127.0.0.1:{port}"}})
    run_dir = tmp_path / "runs" / "down" / "seed_42"
    mon = Monitor(run_dir, cfg, total_steps=2)
    mon.log(1, {"train/quality_loss": 2.0})
    mon.log(2, {"train/quality_loss": 1.0})
    mon.close("done")
    (dropped,) = read_state(run_dir)["trackers_dropped"]
    assert dropped["tracker"] == "mlflow" and dropped["when"] == "start" and f"127.0.0.1:{port}" in dropped["error"]
    assert sum(line.startswith("WARNING tracker mlflow dropped") for line in capsys.readouterr().err.splitlines()) == 1
    assert [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    ea = EventAccumulator(str(run_dir / "tensorboard"))
    ea.Reload()
    assert [(e.step, e.value) for e in ea.Scalars("train/quality_loss")] == [(1, 2.0), (2, 1.0)]


def test_training_finishes_when_its_tracker_fails(tmp_path, tiny_model_dir, monkeypatch):
    import yaml

    from helpers import write_prepared
    from polychromic.config import load_config
    from polychromic.training import trackers
    from polychromic.training.loop import train

    monkeypatch.setattr(FailingTracker, "fail_at", {"name": "wandb", "when": "log", "step": 2})
    monkeypatch.setattr(FailingTracker, "logged", [])
    monkeypatch.setitem(trackers.BACKENDS, "wandb", FailingTracker)
    data = {"experiment": "trk_fail", "runs_dir": str(tmp_path / "runs"),
            "model": {"path": str(tiny_model_dir), "dtype": "float32"},
            "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
            "data": {"prepared_dir": str(write_prepared(tmp_path / "prepared")), "max_length": 64},
            "trainer": {"max_steps": 3, "batch_size": 2, "grad_accum": 1, "save_every": 3, "device": "cpu"},
            "tracking": {"backends": ["wandb"]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    run = train(load_config(tmp_path / "c.yaml"))
    state = read_state(run)
    assert state["status"] == "done" and (run / "adapter" / "adapter_model.safetensors").is_file()
    assert [d["step"] for d in state["trackers_dropped"]] == [2] and FailingTracker.logged == [1]
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_close_that_fails_after_a_dropped_log_is_reported_too(tmp_path, capsys, monkeypatch):
    """The log fails (the tracker is dropped), then its close("failed") fails as well: both get a
    warning, the credential masked in each, and the run's own record is unaffected."""
    from polychromic.training.trackers import GuardedTracker

    monkeypatch.setenv("WANDB_API_KEY", SECRETS["WANDB_API_KEY"])

    class Broken:
        name = "wandb"

        def log(self, step, values):
            raise ConnectionError(f"upload refused for key {SECRETS['WANDB_API_KEY']}")

        def close(self, status):
            raise RuntimeError(f"finish failed ({status}) for key {SECRETS['WANDB_API_KEY']}")

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    g = GuardedTracker(Broken(), run_dir)
    g.log(3, {"train/loss": 1.0})
    g.log(4, {"train/loss": 0.5})  # dropped: not called again
    g.close("done")
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("WARNING tracker wandb")]
    assert len(err) == 2 and "dropped (log at step 3 failed: ConnectionError" in err[0]
    assert "closing it after the failure failed too: RuntimeError: finish failed (failed)" in err[1]
    assert SECRETS["WANDB_API_KEY"] not in "".join(err) and "<WANDB_API_KEY>" in err[1]
    assert [d["step"] for d in read_state(run_dir)["trackers_dropped"]] == [3]
