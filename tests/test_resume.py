"""A run killed with SIGKILL after its first checkpoint and resumed with --resume ends with the
same adapter, bit for bit, and the same logged numbers as an uninterrupted run with the same seed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from polychromic.config import load_config
from polychromic.rundir import latest_checkpoint, read_state
from polychromic.training.loop import train
from helpers import resume_config

REPO_SRC = Path(__file__).resolve().parents[1] / "src"
STEPS = 10




def config_file(tmp_path, model_dir, runs):
    return resume_config(tmp_path, model_dir, runs.name, "resume", STEPS, save_every=2)


def test_sigkill_then_resume_is_bit_identical(tmp_path, tiny_model_dir):
    killed_cfg = config_file(tmp_path, tiny_model_dir, tmp_path / "killed")
    run = tmp_path / "killed" / "resume" / "seed_42"
    log = open(tmp_path / "killed.log", "wb")  # a file, not a pipe: a full pipe would block the run
    proc = subprocess.Popen(
        [sys.executable, "-m", "polychromic", "train", str(killed_cfg)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO_SRC)},
    )
    try:
        deadline = time.monotonic() + 240
        while latest_checkpoint(run) is None:
            assert proc.poll() is None, f"training exited before its first checkpoint: {(tmp_path / 'killed.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    state = read_state(run)
    assert state["status"] == "running" and not (run / "adapter").exists()
    killed_at = int(latest_checkpoint(run).name.split("-")[1])
    assert killed_at < STEPS, "the run finished before it could be killed: make it longer"

    resumed = train(load_config(killed_cfg), resume=True)
    reference = train(load_config(config_file(tmp_path, tiny_model_dir, tmp_path / "reference")))

    a = load_file(str(resumed / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume from step {killed_at}"

    # metrics.jsonl: each step once, and the same numbers as the uninterrupted run
    rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) == [r["step"] for r in ref]
    for key in ("train/quality_loss", "train/grad_norm", "train/grad_norm_ce", "train/lr", "train/diversity_score", "train/advantage_std"):
        assert [r.get(key) for r in rows] == [r.get(key) for r in ref], key
    assert "train/diversity_score" in rows[2] and "train/diversity_score" not in rows[1]
    assert read_state(resumed)["status"] == "done"
    env = json.loads((resumed / "env.json").read_text())
    assert len(env["resumes"]) == 1  # the restart is recorded
