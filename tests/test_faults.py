"""SIGKILL during training at three different points, then resume: the final adapter is bit-identical
to an uninterrupted run's, and metrics.jsonl holds each step once with the same numbers.

The three points, on an 8-step run with checkpoints every 3 steps (3, 6, and the final 8) and
rollouts on steps 1, 3, 5, 7:
  after_first_checkpoint  killed from outside as soon as checkpoints/step-3 is complete
  mid_step                killed from outside once step 4 is logged, i.e. inside step 5 (a step
                          with rollouts), so step 4's logged row is lost work that must be redone;
                          resumed through the CLI's --resume
  during_checkpoint_write the process kills itself while writing optimizer.pt of step 6's
                          checkpoint, leaving a half-written file in the temporary folder
Each resumes from step 3, with 0, 1 and 3 logged steps to drop and redo.

One uninterrupted reference run is shared by the three cases (module fixture)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import resume_config

from polychromic.config import load_config
from polychromic.rundir import latest_checkpoint, read_state
from polychromic.training.loop import train

REPO_SRC = Path(__file__).resolve().parents[1] / "src"
STEPS, SAVE_EVERY = 8, 3
COMPARED = ("train/quality_loss", "train/grad_norm", "train/grad_norm_ce", "train/lr", "train/diversity_score", "train/advantage_std")

# Runs `polychromic train CONFIG`; with a second argument N, the process SIGKILLs itself halfway
# through writing optimizer.pt of the step-N checkpoint (torch.save is looked up at call time).
DRIVER = r"""
import os, signal, sys
from pathlib import Path
import torch
from polychromic import cli

if len(sys.argv) > 2:
    kill_dir, real_save = f".step-{int(sys.argv[2])}.tmp", torch.save

    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        p = Path(f)
        if p.name == "optimizer.pt" and p.parent.name == kill_dir:
            data = p.read_bytes()
            p.write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save
sys.exit(cli.main(["train", sys.argv[1]]))
"""




def config_file(root: Path, model_dir: Path, name: str) -> Path:
    return resume_config(root, model_dir, name, "faults", STEPS, SAVE_EVERY)


def logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    # a row being appended right now may be torn: count complete lines only
    return [json.loads(line)["step"] for line in path.read_text().split("\n")[:-1]]


def checkpoint_step(run: Path) -> int | None:
    ckpt = latest_checkpoint(run)
    return None if ckpt is None else int(ckpt.name.split("-")[1])


WAIT_FOR = {
    "after_first_checkpoint": lambda run: checkpoint_step(run) is not None,
    "mid_step": lambda run: SAVE_EVERY + 1 in logged_steps(run),
}


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_ref")
    run = train(load_config(config_file(root, tiny_model_dir, "reference")))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return load_file(str(run / "adapter" / "adapter_model.safetensors")), rows


def kill_training(cfg: Path, run: Path, point: str, log_path: Path) -> subprocess.Popen:
    extra = [str(2 * SAVE_EVERY)] if point == "during_checkpoint_write" else []
    with open(log_path, "wb") as log:  # a file, not a pipe: a full pipe would block the run
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(cfg), *extra], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO_SRC)})
        try:
            if point in WAIT_FOR:
                deadline = time.monotonic() + 240
                while not WAIT_FOR[point](run):
                    assert proc.poll() is None, f"training exited before {point}: {log_path.read_text()[-3000:]}"
                    assert time.monotonic() < deadline, f"{point} not reached within 240 s"
                    time.sleep(0.01)
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"not killed (rc {proc.returncode}): {log_path.read_text()[-3000:]}"
    return proc


@pytest.mark.parametrize("point", ["after_first_checkpoint", "mid_step", "during_checkpoint_write"])
def test_sigkill_then_resume_is_bit_identical(point, tmp_path, tiny_model_dir, reference):
    cfg = config_file(tmp_path, tiny_model_dir, "killed")
    run = tmp_path / "killed" / "faults" / "seed_42"
    kill_training(cfg, run, point, tmp_path / "killed.log")

    # The state the kill left behind is the one this case is about.
    state = read_state(run)
    assert state["status"] == "running" and not (run / "adapter").exists()
    ckpt, logged = checkpoint_step(run), logged_steps(run)
    assert ckpt == SAVE_EVERY, f"{point}: latest complete checkpoint is step {ckpt}"
    if point == "mid_step":
        assert SAVE_EVERY < max(logged) < 2 * SAVE_EVERY  # logged work past the checkpoint is lost and redone
    if point == "during_checkpoint_write":
        torn = run / "checkpoints" / f".step-{2 * SAVE_EVERY}.tmp"
        assert (torn / "adapter").is_dir() and (torn / "optimizer.pt").is_file() and not (torn / "COMPLETE").exists()
        assert not (run / "checkpoints" / f"step-{2 * SAVE_EVERY}").exists()
        assert max(logged) == 2 * SAVE_EVERY

    if point == "mid_step":  # through the command line flag
        done = subprocess.run([sys.executable, "-m", "polychromic", "train", str(cfg), "--resume"], capture_output=True, text=True,
                              timeout=240, env={**os.environ, "PYTHONPATH": str(REPO_SRC)})
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    else:
        assert train(load_config(cfg), resume=True) == run

    ref_adapter, ref_rows = reference
    a = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == ref_adapter.keys() and a
    for k in a:
        assert torch.equal(a[k], ref_adapter[k]), f"{k} differs after resuming from step {ckpt} ({point})"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) == [r["step"] for r in ref_rows]
    for key in COMPARED:
        assert [r.get(key) for r in rows] == [r.get(key) for r in ref_rows], key
    assert read_state(run)["status"] == "done"
    assert len(json.loads((run / "env.json").read_text())["resumes"]) == 1
    # the half-written temporary folder was replaced; the kept checkpoints are complete ones
    assert {p.name for p in (run / "checkpoints").iterdir()} == {f"step-{2 * SAVE_EVERY}", f"step-{STEPS}"}
