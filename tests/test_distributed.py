"""Data parallel through accelerate on 2 CPU processes (gloo): `accelerate launch -m polychromic
train` runs unchanged, 2 processes reproduce the single-process gradient for the same global
batch, and a run one of whose processes is killed fails in bounded time and resumes exactly.

Footgun (docs/objective.md): `accelerate launch --cpu --num_processes 2` starts ONE process unless
an MPI hostfile is given (accelerate's CPU launcher is mpirun); `--multi_gpu --num_processes 2`
goes through torch.distributed.run and, with trainer.device=cpu, gives 2 gloo processes.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from polychromic.config import load_config
from polychromic.rundir import read_state
from polychromic.training.loop import train

REPO_SRC = Path(__file__).resolve().parents[1] / "src"


def write_prepared(folder, n_rows=24):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": f"r{i}", "group": f"g{i // 2}", "prompt": f"what do you think of topic number {i // 2} today?",
         "reply": f"I like topic {i // 2}, it is fine number {i % 5}." + " ok" * (i % 4)}
        for i in range(n_rows)
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def config_file(tmp_path, model_dir, name, **sections):
    data = {
        "experiment": name,
        "runs_dir": str(tmp_path / "runs"),
        "model": {"path": str(model_dir), "dtype": "float32"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "data": {"prepared_dir": str(write_prepared(tmp_path / "prepared")), "max_length": 64},
        "rollout": {"n_generations": 4, "max_examples_for_diversity": 2, "max_generation_length": 6},
        "trainer": {"max_steps": 2, "batch_size": 2, "grad_accum": 1, "lr": 1e-3, "warmup_ratio": 0.0, "save_every": 1, "device": "cpu"},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: Path, *overrides: str) -> subprocess.CompletedProcess:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert accelerate, "the accelerate command is not installed next to this Python"
    env = {**os.environ, "PYTHONPATH": str(REPO_SRC), "OMP_NUM_THREADS": "1"}
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "polychromic", "train", str(config), *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def rows_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_polychromic(tmp_path, tiny_model_dir):
    cfg = config_file(tmp_path, tiny_model_dir, "ddp_poly",
                      objective={"name": "polychromic", "diversity_weight": 1.0, "quality": "relevance"})
    r = launch(cfg)
    assert r.returncode == 0, r.stderr[-4000:]
    run = tmp_path / "runs" / "ddp_poly" / "seed_42"
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and read_state(run)["status"] == "done"
    rows = rows_of(run)
    assert [x["step"] for x in rows] == [1, 2]  # one writer: the main process
    assert all(x["train/grad_norm_div"] > 0 for x in rows)
    assert rows[-1]["train/epoch"] == 2 * 4 / 24  # global batch = 2 processes x 2 rows
    ckpt = run / "checkpoints" / "step-2"
    assert (ckpt / "rng_rank0.pt").is_file() and (ckpt / "rng_rank1.pt").is_file()
    assert json.loads((ckpt / "trainer_state.json").read_text())["world_size"] == 2


def test_two_processes_reproduce_the_single_process_gradient(tmp_path, tiny_model_dir):
    # same global batch of 4 rows per step: 2 processes x 2 rows vs 1 process x 4 rows
    two = config_file(tmp_path, tiny_model_dir, "two", objective={"name": "sft"})
    r = launch(two)
    assert r.returncode == 0, r.stderr[-4000:]
    one = train(load_config(config_file(tmp_path, tiny_model_dir, "one", objective={"name": "sft"}, trainer={"batch_size": 4})))
    two_run = tmp_path / "runs" / "two" / "seed_42"
    r2, r1 = rows_of(two_run), rows_of(one)
    for a, b in zip(r2, r1):
        for key in ("train/quality_loss", "train/grad_norm", "train/grad_norm_ce", "train/epoch"):
            assert abs(a[key] - b[key]) <= 1e-5 * abs(b[key]), (key, a[key], b[key])
    wa = load_file(str(two_run / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(one / "adapter" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=2e-6, rtol=1e-4, msg=k)
    assert any("lora_B" in k and wb[k].abs().max() > 1e-4 for k in wb)  # the adapter did move


# ---------------------------------------------------------------------------------------------
# One process of a 2-process run SIGKILLed after the step-4 checkpoint, inside step 5: the other
# exits within a bounded time (the dead peer's closed sockets fail its next collective; the
# launcher then stops everything), the run is recorded as failed, and `--resume` ends with the
# adapter of an uninterrupted 2-process run, bit for bit.

KILL_STEPS, KILL_AFTER = 6, 4
EXIT_WITHIN_S = 60


def kill_config(tmp_path, model_dir, name):
    return config_file(tmp_path, model_dir, name, objective={"name": "polychromic", "diversity_weight": 1.0, "quality": "relevance"},
                       lora={"dropout": 0.1}, trainer={"max_steps": KILL_STEPS, "save_every": 2, "keep_checkpoints": 2})


def launch_cmd(config: Path, *extra: str) -> list[str]:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    return [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "polychromic", "train", str(config), *extra]


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the launcher's worker processes (their environment holds RANK)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) != launcher_pid:
                continue
            env = dict(kv.split("=", 1) for kv in (d / "environ").read_bytes().decode(errors="replace").split("\0") if "=" in kv)
        except (OSError, ValueError):
            continue
        if "RANK" in env:
            out[int(env["RANK"])] = int(d.name)
    return out


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_ref")
    r = launch(kill_config(root, tiny_model_dir, "ref"))
    assert r.returncode == 0, r.stderr[-4000:]
    return load_file(str(root / "runs" / "ref" / "seed_42" / "adapter" / "adapter_model.safetensors"))


def signal_after_checkpoint(cfg: Path, run: Path, victim: int, sig: int, log_path: Path, exit_within: float):
    """Launch 2 processes, send `sig` to rank `victim` once checkpoint step-KILL_AFTER is complete;
    return (launcher exit code, seconds from the signal to the other rank's exit, {rank: pid}).
    A stopped victim is killed once the other rank has exited (the launcher would wait 30 s)."""
    from polychromic.rundir import latest_checkpoint

    env = {**os.environ, "PYTHONPATH": str(REPO_SRC), "OMP_NUM_THREADS": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(launch_cmd(cfg), stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 240
            while (ck := latest_checkpoint(run)) is None or ck.name != f"step-{KILL_AFTER}":
                assert proc.poll() is None, f"training exited early: {log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no step-{KILL_AFTER} checkpoint within 240 s"
                time.sleep(0.02)
            pids = rank_pids(proc.pid)
            assert sorted(pids) == [0, 1], pids
            os.kill(pids[victim], sig)
            hit_at, other = time.monotonic(), pids[1 - victim]
            while other in rank_pids(proc.pid).values() and proc.poll() is None:
                assert time.monotonic() - hit_at < exit_within, f"rank {1 - victim} still runs {exit_within} s after signal {sig} to rank {victim}"
                time.sleep(0.05)
            took = time.monotonic() - hit_at
            if sig == signal.SIGSTOP and proc.poll() is None:
                os.kill(pids[victim], signal.SIGKILL)
            return proc.wait(timeout=60), took, pids
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("victim", [1, 0], ids=["rank1_killed", "rank0_killed"])
def test_killed_process_fails_the_run_in_bounded_time_and_resume_is_bit_identical(tmp_path, tiny_model_dir, uninterrupted, victim):
    cfg = kill_config(tmp_path, tiny_model_dir, "killed")
    run = tmp_path / "runs" / "killed" / "seed_42"
    env = {**os.environ, "PYTHONPATH": str(REPO_SRC), "OMP_NUM_THREADS": "1"}
    rc, took, pids = signal_after_checkpoint(cfg, run, victim, signal.SIGKILL, tmp_path / "killed.log", EXIT_WITHIN_S)
    assert rc != 0 and took < EXIT_WITHIN_S, (rc, took)
    state = read_state(run)
    assert state["status"] == "failed", state
    if victim == 0:  # the dead main process could not write; the survivor did, naming it
        assert state["error"].startswith(f"the main process (pid {pids[0]}) died; process {pids[1]} stopped with ")
    else:
        assert state["error"]  # the main process recorded the collective's failure itself
    assert not (run / "adapter").exists() and KILL_AFTER <= state["step"] < KILL_STEPS
    shown = subprocess.run([sys.executable, "-m", "polychromic", "status", str(tmp_path / "runs")], capture_output=True,
                           text=True, env=env)
    row = next(line for line in shown.stdout.splitlines() if line.startswith("killed"))
    # failed, not running; resumable from its checkpoint, the failure in the note
    assert row.split()[2] == "failed" and f"resumable from step-{KILL_AFTER}; " in row, shown.stdout

    if victim == 1:
        return  # one resume is enough for the bit-identity; the rank-0 case exercises the survivor's record
    r = subprocess.run(launch_cmd(cfg, "--resume"), capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    assert read_state(run)["status"] == "done"
    a = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == uninterrupted.keys() and a
    for k in a:
        assert torch.equal(a[k], uninterrupted[k]), f"{k} differs from the uninterrupted run after resuming (rank {victim} killed)"


def test_hung_process_times_out_the_run(tmp_path, tiny_model_dir):
    """A process that hangs (SIGSTOP) instead of dying: the other fails its next collective after
    trainer.collective_timeout_s, records the run failed and exits non-zero (the launcher would then
    stop the hung one: SIGTERM, and SIGKILL after its 30 s grace)."""
    timeout = 10
    cfg = config_file(tmp_path, tiny_model_dir, "hung", objective={"name": "polychromic", "diversity_weight": 1.0, "quality": "relevance"},
                      trainer={"max_steps": KILL_STEPS, "save_every": 2, "collective_timeout_s": timeout})
    run = tmp_path / "runs" / "hung" / "seed_42"
    rc, took, _ = signal_after_checkpoint(cfg, run, 1, signal.SIGSTOP, tmp_path / "hung.log", timeout + EXIT_WITHIN_S)
    assert rc != 0 and took >= timeout, (rc, took)
    state = read_state(run)
    assert state["status"] == "failed" and "timed out" in state["error"].lower(), state
