"""Data parallel through accelerate on 2 CPU processes (gloo): `accelerate launch -m polychromic
train` runs unchanged, and 2 processes reproduce the single-process gradient for the same global
batch.

Footgun (docs/objective.md): `accelerate launch --cpu --num_processes 2` starts ONE process unless
an MPI hostfile is given (accelerate's CPU launcher is mpirun); `--multi_gpu --num_processes 2`
goes through torch.distributed.run and, with trainer.device=cpu, gives 2 gloo processes.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

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
