"""Run directories (rundir), `polychromic status` on synthetic runs in every state, the sweep's
planning and config validation, and one real sweep: `polychromic train` subprocesses on the tiny
model, one of them failing, then a second sweep that skips the finished runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from polychromic.config import ConfigError, config_from_dict, to_yaml
from polychromic.io import atomic_write_jsonl, atomic_write_text
from polychromic.rundir import (
    checkpoint_dir,
    init_run_dir,
    latest_checkpoint,
    mark_checkpoint_complete,
    process_identity,
    read_state,
    run_dir_for,
    write_state,
)
from polychromic.training.status import collect_status, print_status
from polychromic.training.sweep import load_all, plan, sweep


def make_cfg(runs: Path, experiment: str = "exp", seed: int = 42):
    return config_from_dict({"experiment": experiment, "seed": seed, "runs_dir": str(runs)})


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_adapter(run_dir: Path) -> None:
    atomic_write_text(run_dir / "adapter" / "adapter_config.json", "{}")
    atomic_write_text(run_dir / "adapter" / "adapter_model.safetensors", "x")


def write_checkpoint(run_dir: Path, step: int, complete: bool = True) -> Path:
    d = checkpoint_dir(run_dir, step)
    atomic_write_text(d / "optimizer.pt", "x")
    if complete:
        mark_checkpoint_complete(d)
    return d


# ---------------------------------------------------------------------------------------------
# rundir


def test_init_run_dir_writes_config_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "sk-test-secret-123")
    cfg = make_cfg(tmp_path / "runs")
    run_dir = init_run_dir(cfg, resume=False)
    assert run_dir == tmp_path / "runs" / "exp" / "seed_42" == run_dir_for(cfg)
    assert (run_dir / "config.yaml").read_text() == to_yaml(cfg)
    env = json.loads((run_dir / "env.json").read_text())
    assert env["packages"]["torch"] and env["packages"]["transformers"] and env["packages"]["peft"]
    assert env["python"] and env["hostname"] and env["device"]["type"] in ("cpu", "cuda")
    assert isinstance(env["command"], list)
    # this test runs from a git checkout: a 40-hex sha; elsewhere null plus the reason
    assert (env["git_sha"] is not None and len(env["git_sha"]) == 40) or env["git_error"]
    assert "sk-test-secret-123" not in (run_dir / "env.json").read_text()


def test_env_info_without_git_gives_reason(monkeypatch):
    import polychromic.rundir as rd

    monkeypatch.setenv("PATH", "/nonexistent")  # no git executable on PATH
    info = rd.env_info()
    assert info["git_sha"] is None and info["git_error"] == "git is not installed"


def test_init_run_dir_refuses_to_start_over_a_run(tmp_path):
    cfg = make_cfg(tmp_path / "runs")
    run_dir = init_run_dir(cfg, resume=False)
    init_run_dir(cfg, resume=False)  # nothing trained yet: starting again is fine
    atomic_write_jsonl(run_dir / "metrics.jsonl", [{"step": 1, "time": 0.0}])
    with pytest.raises(ValueError, match=r"already holds a run \(metrics.jsonl\); pass --resume .* or delete the folder"):
        init_run_dir(cfg, resume=False)
    write_checkpoint(run_dir, 5)
    with pytest.raises(ValueError, match=r"checkpoints/, metrics.jsonl"):
        init_run_dir(cfg, resume=False)
    first = json.loads((run_dir / "env.json").read_text())
    init_run_dir(cfg, resume=True)
    env = json.loads((run_dir / "env.json").read_text())
    assert env["time"] == first["time"] and len(env["resumes"]) == 1


def test_latest_checkpoint_only_complete_ones(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    write_checkpoint(tmp_path, 2)
    write_checkpoint(tmp_path, 10)
    write_checkpoint(tmp_path, 12, complete=False)  # killed mid-save
    (tmp_path / "checkpoints" / ".step-14.tmp").mkdir()
    mark_checkpoint_complete(tmp_path / "checkpoints" / ".step-14.tmp")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-10"  # 10 > 2 numerically


def test_write_state_merges_and_validates(tmp_path):
    assert read_state(tmp_path) == {}
    write_state(tmp_path, status="running", step=1, total_steps=9)
    write_state(tmp_path, step=2, eta_seconds=3.5)
    s = read_state(tmp_path)
    assert (s["status"], s["step"], s["total_steps"], s["eta_seconds"]) == ("running", 2, 9, 3.5)
    assert isinstance(s["updated_at"], float)
    with pytest.raises(ValueError, match="status: must be one of running, done, failed"):
        write_state(tmp_path, status="finished")
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="state.json: invalid JSON"):
        read_state(tmp_path)


# ---------------------------------------------------------------------------------------------
# status


@pytest.fixture
def synthetic_runs(tmp_path):
    runs = tmp_path / "runs"
    me = process_identity()
    # done
    d = init_run_dir(make_cfg(runs, "baseline"), resume=False)
    write_state(d, status="done", step=30, total_steps=30, **me)
    write_adapter(d)
    atomic_write_jsonl(d / "metrics.jsonl", [
        {"step": 29, "time": 1.0, "train/quality_loss": 2.0, "train/grad_norm": 0.5},
        {"step": 30, "time": 2.0, "train/quality_loss": 1.5, "train/grad_norm": 0.25},
    ])
    # failed: crashed before any checkpoint
    d = init_run_dir(make_cfg(runs, "broken"), resume=False)
    write_state(d, status="failed", step=3, total_steps=30, error="RuntimeError: CUDA out of memory", **me)
    # resumable: state still says running but its process died (SIGKILL), a checkpoint exists
    d = init_run_dir(make_cfg(runs, "killed", seed=7), resume=False)
    write_state(d, status="running", step=12, total_steps=30, eta_seconds=50.0, pid=dead_pid(), hostname=me["hostname"])
    write_checkpoint(d, 10)
    # running: this very process
    d = init_run_dir(make_cfg(runs, "live"), resume=False)
    write_state(d, status="running", step=4, total_steps=40, eta_seconds=3725.0, **me)
    atomic_write_jsonl(d / "metrics.jsonl", [
        {"step": 3, "time": 1.0, "train/quality_loss": 3.0, "train/diversity_score": 0.42, "train/grad_norm": 1.0},
        {"step": 4, "time": 2.0, "train/quality_loss": 2.5, "train/grad_norm": "nan"},
    ])
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train/qual')  # a torn line being written right now
    # a crashed run whose state still says running, no checkpoint: failed
    d = init_run_dir(make_cfg(runs, "crashed"), resume=False)
    write_state(d, status="running", step=1, total_steps=30, pid=dead_pid(), hostname=me["hostname"])
    # not runs: an evaluation folder, and a stray folder
    atomic_write_text(runs / "eval" / "demo" / "config.yaml", "x: 1\n")
    (runs / "notes" / "seed_x").mkdir(parents=True)
    return runs


def test_collect_status_states(synthetic_runs):
    got = {(r["experiment"], r["seed"]): r for r in collect_status(synthetic_runs)}
    assert {k: r["state"] for k, r in got.items()} == {
        ("baseline", 42): "done",
        ("broken", 42): "failed",
        ("killed", 7): "failed",
        ("live", 42): "running",
        ("crashed", 42): "failed",
    }
    live = got[("live", 42)]
    assert (live["step"], live["total_steps"], live["eta_seconds"]) == (4, 40, 3725.0)
    # diversity is the last row that had it; grad_norm's last value was non-finite
    assert live["metrics"] == {"train/quality_loss": 2.5, "train/diversity_score": 0.42, "train/grad_norm": "nan"}
    assert got[("killed", 7)]["checkpoint"] == "step-10" and got[("killed", 7)]["eta_seconds"] is None
    assert got[("broken", 42)]["error"] == "RuntimeError: CUDA out of memory"
    assert got[("baseline", 42)]["adapter"] is True and got[("baseline", 42)]["metrics"]["train/quality_loss"] == 1.5


def test_print_status_table(synthetic_runs, capsys):
    assert print_status(synthetic_runs) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["experiment", "seed", "state", "step", "ETA", "quality_loss", "diversity", "grad_norm", "note"]
    by_exp = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(by_exp) == {"baseline", "broken", "killed", "live", "crashed"}
    assert by_exp["baseline"][:8] == ["baseline", "42", "done", "30/30", "-", "1.5", "-", "0.25"]
    assert by_exp["live"][:8] == ["live", "42", "running", "4/40", "1h02m", "2.5", "0.42", "nan"]
    assert by_exp["killed"][2:4] == ["failed", "12/30"] and "resumable from step-10" in " ".join(by_exp["killed"])
    assert by_exp["broken"][2] == "failed" and "CUDA out of memory" in " ".join(by_exp["broken"])
    # columns are aligned: every row's state starts at the header's state column
    col = lines[0].index("state")
    assert all(line[col:].split()[0] in ("done", "failed", "running") for line in lines[1:])


def test_print_status_missing_and_empty(tmp_path, capsys):
    assert print_status(tmp_path / "nope") == 1
    assert "no such runs folder" in capsys.readouterr().err
    assert print_status(tmp_path) == 0
    assert "no runs under" in capsys.readouterr().out


def test_status_cli(synthetic_runs):
    r = subprocess.run([sys.executable, "-m", "polychromic", "status", str(synthetic_runs)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resumable from step-10" in r.stdout and "killed" in r.stdout


# ---------------------------------------------------------------------------------------------
# sweep: planning and validation


def test_plan_skip_resume_start(tmp_path):
    runs = tmp_path / "runs"
    fresh = make_cfg(runs, "fresh")
    assert plan(fresh) == "start"
    done = make_cfg(runs, "done")
    d = init_run_dir(done, resume=False)
    write_state(d, status="done")
    assert plan(done) == "resume"  # state says done but the adapter is missing: not finished
    write_adapter(d)
    assert plan(done) == "skip"
    partial = make_cfg(runs, "partial")
    write_checkpoint(init_run_dir(partial, resume=False), 4)
    assert plan(partial) == "resume"
    crashed = make_cfg(runs, "crashed")
    write_state(init_run_dir(crashed, resume=False), status="failed", error="boom")
    assert plan(crashed) == "resume"  # train --resume restarts from step 0 when no checkpoint exists


def test_sweep_validates_every_config_first(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"experiment": "g", "runs_dir": str(tmp_path / "runs")}))
    bad1 = tmp_path / "bad1.yaml"
    bad1.write_text(yaml.safe_dump({"trainer": {"lr": -1.0}}))
    bad2 = tmp_path / "bad2.yaml"
    bad2.write_text(yaml.safe_dump({"objective": {"diversty_weight": 1.0}}))
    with pytest.raises(ConfigError) as info:
        sweep([str(good), str(bad1), str(bad2), str(tmp_path / "missing.yaml")], [])
    msg = str(info.value)
    assert f"{bad1}: trainer.lr: must be > 0" in msg
    assert f"{bad2}: objective.diversty_weight: unknown key, did you mean diversity_weight?" in msg
    assert "missing.yaml: no such file, and no shipped config of that name" in msg
    assert not (tmp_path / "runs").exists()  # nothing trained
    assert "=== sweep" not in capsys.readouterr().out


def test_sweep_rejects_two_configs_with_one_run_dir(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text(yaml.safe_dump({"experiment": "same", "runs_dir": str(tmp_path / "runs")}))
    b = tmp_path / "b.yaml"
    b.write_text(yaml.safe_dump({"experiment": "same", "runs_dir": str(tmp_path / "runs"), "trainer": {"lr": 1e-3}}))
    with pytest.raises(ConfigError, match="writes the same run directory"):
        load_all([str(a), str(b)], [])
    # the same two files with different seeds are two run directories
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"extends": "b.yaml", "seed": 1}))
    assert [r.cfg.seed for r in load_all([str(a), str(tmp_path / "c.yaml")], [])] == [42, 1]


def test_cli_sweep_reports_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"trainer": {"lr": -1.0}}))
    r = subprocess.run([sys.executable, "-m", "polychromic", "sweep", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "trainer.lr: must be > 0" in r.stderr


# ---------------------------------------------------------------------------------------------
# sweep: real training subprocesses on the tiny model


@pytest.mark.slow
def test_sweep_trains_continues_past_failure_and_skips_finished(tmp_path, tiny_model_dir, capfd):
    from polychromic.config import DataConfig
    from polychromic.data import prepare

    prepared = tmp_path / "prepared"
    prepare(DataConfig(source="chatterbot", prepared_dir=str(prepared), template="{prompt}"), seed=0)
    runs = tmp_path / "runs"
    base = {
        "runs_dir": str(runs),
        "model": {"path": str(tiny_model_dir), "dtype": "float32"},
        "lora": {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "data": {"prepared_dir": str(prepared), "template": "{prompt}", "max_length": 48, "max_train_examples": 8},
        "objective": {"name": "sft"},
        "trainer": {"max_steps": 2, "batch_size": 2, "grad_accum": 1, "save_every": 1, "device": "cpu"},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    configs = []
    for name, extra in (
        ("first", {}),
        ("nodata", {"data": {"prepared_dir": str(tmp_path / "no_such_dataset")}}),
        ("third", {}),
    ):
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump({"extends": "base.yaml", "experiment": name, **extra}))
        configs.append(str(p))

    rc = sweep(configs, ["seed=3"])
    out = capfd.readouterr()
    assert rc == 1, out.out + out.err
    for name in ("first", "third"):
        d = runs / name / "seed_3"
        assert read_state(d)["status"] == "done" and read_state(d)["step"] == 2
        assert (d / "adapter" / "adapter_config.json").is_file()
        assert [json.loads(x)["step"] for x in (d / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    failed_state = read_state(runs / "nodata" / "seed_3")
    assert failed_state["status"] == "failed" and "no_such_dataset" in failed_state["error"]
    assert "1 failed run(s)" in out.out and f"{configs[1]}" in out.out
    assert "no_such_dataset" in out.err  # the child's own error message streamed through
    (summary_path,) = runs.glob("sweep-*.json")
    summary = json.loads(summary_path.read_text())
    assert [(r["experiment"], r["action"], r["result"]) for r in summary["runs"]] == [
        ("first", "start", "done"), ("nodata", "start", "failed"), ("third", "start", "done"),
    ]
    assert summary["runs"][1]["returncode"] == 2 and summary["overrides"] == ["seed=3"]

    adapter = runs / "first" / "seed_3" / "adapter" / "adapter_model.safetensors"
    before = adapter.stat().st_mtime_ns
    rc = sweep(configs, ["seed=3"])
    out = capfd.readouterr()
    assert rc == 1
    assert out.out.count("=== sweep: skip") == 2
    assert adapter.stat().st_mtime_ns == before  # the finished run was not retrained
    second = json.loads(max(runs.glob("sweep-*.json"), key=os.path.getmtime).read_text())
    assert [(r["experiment"], r["action"], r["result"]) for r in second["runs"]] == [
        ("first", "skip", "skipped"), ("nodata", "resume", "failed"), ("third", "skip", "skipped"),
    ]
