"""End to end `train()` on the tiny model: every run-directory file, the logged names, alerts,
checkpoints, a loadable adapter whose weights moved, fail_on_alert, and the CLI in a subprocess."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from polychromic.config import load_config
from polychromic.models import attach_lora, load_base_model
from polychromic.training.monitor import AlertStop
from polychromic.rundir import read_state
from polychromic.training.loop import train
from helpers import write_prepared

REPO_SRC = Path(__file__).resolve().parents[1] / "src"

NAMES = [
    "train/quality_loss", "train/diversity_score", "train/combined_loss", "train/avg_unique_words", "train/grad_norm",
    "train/grad_norm_ce", "train/grad_norm_div", "train/loss", "train/quality_mean", "train/advantage_mean",
    "train/advantage_std", "train/rollout_seconds", "train/tokens_per_second", "train/lr", "train/epoch",
]




def settings(tmp_path, model_dir):
    return {
        "experiment": "e2e",
        "runs_dir": str(tmp_path / "runs"),
        "model": {"path": str(model_dir), "dtype": "float32"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
        "data": {"prepared_dir": str(write_prepared(tmp_path / "prepared")), "max_length": 64},
        "rollout": {"n_generations": 4, "max_examples_for_diversity": 2, "max_generation_length": 6},
        "trainer": {"max_steps": 3, "batch_size": 2, "grad_accum": 2, "lr": 1e-3, "warmup_ratio": 0.0,
                    "save_every": 2, "device": "cpu"},
    }


def cfg_of(data, overrides=()):
    path = Path(data["runs_dir"]).parent / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, list(overrides))


def test_polychromic_end_to_end_writes_every_file(tmp_path, tiny_model_dir):
    cfg = cfg_of(
        settings(tmp_path, tiny_model_dir),
        # relevance only: the random tiny model's replies are truncated, so the guard would zero
        # every quality; a tiny grad_norm_alert makes a red flag fire for alerts.jsonl
        ["objective.name=polychromic", "objective.diversity_weight=1.0", "objective.quality=relevance", "trainer.grad_norm_alert=1e-6"],
    )
    run = train(cfg)
    assert run == tmp_path / "runs" / "e2e" / "seed_42"
    assert yaml.safe_load((run / "config.yaml").read_text())["objective"]["name"] == "polychromic"
    env = json.loads((run / "env.json").read_text())
    assert env["packages"]["torch"] and env["device"]["type"] == "cpu"
    state = read_state(run)
    assert state["status"] == "done" and state["step"] == 3 and state["total_steps"] == 3

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        missing = [n for n in NAMES if n not in r]
        assert not missing, missing
        assert r["train/grad_norm_div"] > 0  # the diversity term has a gradient
        # the total is the norm of the sum of the two measured increments (triangle inequality)
        ce, div, tot = r["train/grad_norm_ce"], r["train/grad_norm_div"], r["train/grad_norm"]
        assert abs(ce - div) - 1e-6 <= tot <= ce + div + 1e-6
        assert r["train/combined_loss"] == pytest.approx(r["train/quality_loss"] - r["train/diversity_score"])
        assert 0 < r["train/diversity_score"] <= 1 and 0 <= r["train/quality_mean"] <= 1
        assert r["train/lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * (r["step"] - 1) / 3)))
    assert rows[-1]["train/epoch"] == pytest.approx(3 * 4 / 24)

    alerts = [json.loads(line) for line in (run / "alerts.jsonl").read_text().splitlines()]
    assert {a["name"] for a in alerts} >= {"grad_norm_high"} and {a["step"] for a in alerts} == {1, 2, 3}

    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-2", "step-3"]  # no temporary folder left behind
    for name in ckpts:
        c = run / "checkpoints" / name
        for f in ("COMPLETE", "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_rank0.pt", "trainer_state.json"):
            assert (c / f).is_file(), f"{c}/{f}"
    assert json.loads((run / "checkpoints" / "step-2" / "trainer_state.json").read_text())["examples_seen"] == 8

    # the final adapter loads with PEFT and its LoRA weights moved from their initialisation
    from accelerate.utils import set_seed
    from peft import PeftModel

    set_seed(42)
    init = attach_lora(load_base_model(cfg.model, torch.device("cpu")), cfg.lora)
    init_w = {n: p.detach().clone() for n, p in init.named_parameters() if "lora_" in n}
    loaded = PeftModel.from_pretrained(load_base_model(cfg.model, torch.device("cpu")), run / "adapter")
    trained = {n.replace(".default", ""): p for n, p in loaded.named_parameters() if "lora_" in n}
    init_w = {n.replace(".default", ""): p for n, p in init_w.items()}
    assert trained.keys() == init_w.keys() and trained
    assert all(not torch.equal(trained[n], init_w[n]) for n in trained if "lora_B" in n)
    assert any(not torch.equal(trained[n], init_w[n]) for n in trained if "lora_A" in n)

    # resuming a finished run does nothing; starting it afresh is refused
    before = (run / "metrics.jsonl").read_bytes()
    assert train(cfg, resume=True) == run and (run / "metrics.jsonl").read_bytes() == before
    with pytest.raises(ValueError, match="--resume"):
        train(cfg)


def test_pad_to_multiple_of_widens_every_training_pass(tmp_path, tiny_model_dir, monkeypatch):
    """trainer.pad_to_multiple_of reaches both passes of a polychromic step: the SFT micro-batches
    (collate) and the policy-gradient recompute (pack); the run still trains."""
    import polychromic.training.loop as loop
    import polychromic.training.objectives.polychromic as poly

    widths = {"sft": [], "pg": []}
    collate, pack = loop.collate, poly.pack

    def spy_collate(*a, **k):
        b = collate(*a, **k)
        widths["sft"].append(b["input_ids"].shape[1])
        return b

    def spy_pack(*a, **k):
        b = pack(*a, **k)
        widths["pg"].append(b["input_ids"].shape[1])
        return b

    monkeypatch.setattr(loop, "collate", spy_collate)
    monkeypatch.setattr(poly, "pack", spy_pack)
    cfg = cfg_of(settings(tmp_path, tiny_model_dir), ["objective.name=polychromic", "objective.diversity_weight=1.0",
                                                       "objective.quality=constant", "trainer.max_steps=2",
                                                       "trainer.pad_to_multiple_of=24"])
    run = train(cfg)
    assert widths["sft"] and widths["pg"] and all(w % 24 == 0 for v in widths.values() for w in v), widths
    assert read_state(run)["status"] == "done" and (run / "adapter" / "adapter_model.safetensors").is_file()


def test_fail_on_alert_stops_and_marks_failed(tmp_path, tiny_model_dir):
    cfg = cfg_of(settings(tmp_path, tiny_model_dir), ["objective.name=sft", "trainer.grad_norm_alert=1e-6", "trainer.fail_on_alert=true"])
    with pytest.raises(AlertStop, match="train/grad_norm .* > trainer.grad_norm_alert"):
        train(cfg)
    state = read_state(cfg.run_dir)
    assert state["status"] == "failed" and "grad_norm" in state["error"] and state["step"] == 1
    assert not (cfg.run_dir / "adapter").exists()


def test_cli_train_subprocess(tmp_path, tiny_model_dir):
    data = settings(tmp_path, tiny_model_dir)
    data["experiment"] = "cli"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    r = subprocess.run(
        [sys.executable, "-m", "polychromic", "train", str(path), "objective.name=sft", "trainer.max_steps=2", "trainer.max_grad_norm=0.1"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO_SRC)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "cli" / "seed_42"
    assert f"run directory: {run}" in r.stdout
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == [1, 2] and "train/diversity_score" not in rows[0]
    for x in rows:  # norms are measured before clipping (0.1 here): SFT's total is its CE norm
        assert x["train/grad_norm_ce"] == pytest.approx(x["train/grad_norm"], rel=1e-6) and x["train/grad_norm"] > 0.1
        assert x["train/combined_loss"] == x["train/quality_loss"] == x["train/loss"]
    assert read_state(run)["status"] == "done"
    # a bad override is reported with its path, no traceback
    bad = subprocess.run([sys.executable, "-m", "polychromic", "train", str(path), "trainer.lr=-1"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_SRC)})
    assert bad.returncode == 2 and "trainer.lr: must be > 0" in bad.stderr


def test_gradient_bookkeeping_known_answers():
    """The loop's per-step bookkeeping: each parameter's gradient is its CE term plus its rollout
    term, the logged norms are the L2 norm over all tensors, and AdamW is torch's fused kernel
    only where the parameters are on CUDA."""
    from polychromic.training.loop import _read, _set_grads, make_optimizer

    def _norm(grads):
        return float(torch.nn.utils.get_total_norm(grads))

    params = [torch.zeros(2, requires_grad=True), torch.zeros(1, 3, requires_grad=True)]
    g_ce = [torch.tensor([1.0, 2.0]), torch.tensor([[2.0, 0.0, 0.0]])]
    g_div = [torch.tensor([0.5, -2.0]), torch.tensor([[0.0, 4.0, 0.0]])]
    assert _norm(g_ce) == pytest.approx(3.0) and _norm(g_div) == pytest.approx(math.sqrt(20.25))
    _set_grads(params, g_ce, None)
    assert params[0].grad is g_ce[0] and params[1].grad is g_ce[1]
    _set_grads(params, g_ce, g_div)
    assert params[0].grad.tolist() == [1.5, 0.0] and params[1].grad.tolist() == [[2.0, 4.0, 0.0]]
    assert _norm([p.grad for p in params]) == pytest.approx(math.sqrt(1.5**2 + 4 + 16))
    # the step's values come off the device in one read, exactly (float64 on the way)
    assert _read([torch.tensor(1.5), torch.tensor([2.25], dtype=torch.float64), torch.tensor(3.0, dtype=torch.bfloat16)]) == [1.5, 2.25, 3.0]
    assert not make_optimizer(params, 1e-3, 0.01).defaults["fused"]
    if torch.cuda.is_available():
        cuda = [torch.zeros(4, device="cuda", requires_grad=True)]
        assert make_optimizer(cuda, 1e-3, 0.01).defaults["fused"]


@pytest.mark.parametrize("packed", [False, True])
def test_first_step_logs_equal_a_recomputation(tmp_path, tiny_model_dir, packed):
    """The step's logged values against the same numbers computed here, on a fresh model: the
    quality loss is the mean token cross-entropy of the step's four rows (two micro-batches, the
    target count taken on the host), and on an SFT step the total gradient norm is the CE term's."""
    import numpy as np
    import torch.nn.functional as F

    from polychromic.data import load_split
    from polychromic.models import load_tokenizer
    from polychromic.prompts import encode_example

    cfg = cfg_of(settings(tmp_path, tiny_model_dir), ["trainer.max_steps=1", "lora.dropout=0.0", f"trainer.packed_sft={packed}"])
    row = json.loads((train(cfg) / "metrics.jsonl").read_text().splitlines()[0])
    rows = load_split(cfg.data.prepared_dir, "train")
    first = np.random.default_rng([cfg.seed, 0]).permutation(len(rows))[:4]  # the step's rows: (seed, epoch 0)
    tok = load_tokenizer(cfg.model)
    model = load_base_model(cfg.model, torch.device("cpu"))  # LoRA's B starts at 0: the same outputs
    ce, n = 0.0, 0
    with torch.no_grad():
        for i in first:
            ex = encode_example(tok, cfg.data, rows[i]["prompt"], rows[i]["reply"])
            logits = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0, :-1]
            labels = torch.tensor(ex["labels"][1:])
            ce += float(F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum"))
            n += int((labels != -100).sum())
    assert row["train/quality_loss"] == pytest.approx(ce / n, rel=1e-5)
    assert row["train/grad_norm"] == pytest.approx(row["train/grad_norm_ce"], rel=1e-6) and row["train/grad_norm"] > 0
