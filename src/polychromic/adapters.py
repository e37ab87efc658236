"""Is a LoRA adapter folder usable on this base model? Checked before it is used, so a corrupt file
or an adapter trained on another base is a clear error naming the file, not a deep PEFT one.

`check_adapter` (called by models.load_adapter, and by `evaluate` for every adapter before any
generation) reads adapter_config.json and adapter_model.safetensors in full, refuses non-finite
tensors, matches every LoRA matrix against its module of the base model, and, for an adapter one
of our runs wrote, compares that run's model settings with the evaluating config's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from polychromic.config import ModelConfig

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


class ModelNotFoundError(FileNotFoundError):
    """A model, adapter or embedder path that does not exist or lacks its files."""


class AdapterError(ValueError):
    """An adapter folder that cannot be used with this base model; the message names the file."""


def check_adapter(model, adapter_dir: str | Path, what: str = "adapter", model_cfg: ModelConfig | None = None) -> dict:
    """Check an adapter before it is used; return its adapter_config.json.

    - adapter_config.json is a JSON object and adapter_model.safetensors reads in full (a
      truncated or overwritten file fails here, named);
    - every tensor is finite;
    - every LoRA matrix fits its module of `model`: lora_A (r, in_features), lora_B
      (out_features, r), the same r for both (an adapter of another base model, e.g. another
      hidden size, names its first mismatching matrices);
    - with `model_cfg`, when the adapter was written by one of our runs, that run's model.path,
      gguf_file and init_adapter are this config's (`adapter_provenance_problem`)."""
    from safetensors.torch import load_file

    d = Path(adapter_dir).expanduser()
    cfg_path, weights = d / ADAPTER_CONFIG, d / ADAPTER_WEIGHTS
    if not cfg_path.is_file():
        raise ModelNotFoundError(f"{what} {str(adapter_dir)!r}: no {ADAPTER_CONFIG} (expected a PEFT adapter folder, e.g. a run's adapter/)")
    try:
        conf = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{what} {cfg_path}: not valid JSON ({exc}); the file is corrupt") from exc
    if not isinstance(conf, dict):
        raise AdapterError(f"{what} {cfg_path}: expected a JSON object, got {type(conf).__name__}")
    if not weights.is_file():
        raise ModelNotFoundError(f"{what} {str(adapter_dir)!r}: no {ADAPTER_WEIGHTS} (re-save the adapter with PEFT)")
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for a bad header or short data
        raise AdapterError(f"{what} {weights}: cannot be read ({type(exc).__name__}: {exc}); the file is corrupt or "
                           "truncated: re-save or re-train the adapter") from exc
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise AdapterError(f"{what} {weights}: non-finite values in {len(bad)} tensor(s), e.g. {bad[:3]}")
    lora = {}
    for key, t in tensors.items():
        if ".lora_A." in key or ".lora_B." in key:
            mod, rest = key.removeprefix("base_model.model.").split(".lora_", 1)
            lora[f"{mod}.lora_{rest[0]}"] = t
    if not lora:
        raise AdapterError(f"{what} {weights}: holds no LoRA matrices ({len(tensors)} tensors, e.g. {sorted(tensors)[:3]})")
    problems = lora_fit_problems(model, lora)
    if problems:
        trained_on = conf.get("base_model_name_or_path")
        raise AdapterError(
            f"{what} {d} does not fit the base model"
            + (f" (its {ADAPTER_CONFIG} names base {trained_on!r})" if trained_on else "") + ": "
            + "; ".join(problems[:4]) + (f" (+{len(problems) - 4} more)" if len(problems) > 4 else "")
            + ": evaluate it with the base model it was trained on"
        )
    if model_cfg is not None and (problem := adapter_provenance_problem(d, model_cfg)):
        raise AdapterError(f"{what} {d}: {problem}")
    return conf


def lora_fit_problems(model, lora: dict[str, torch.Tensor]) -> list[str]:
    """Mismatches between LoRA matrices {"<module>.lora_A" / ".lora_B": tensor} and the Linear
    modules of `model` (a plain transformers model or a PeftModel)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    modules = dict(base.named_modules())
    bad = []
    for key, t in sorted(lora.items()):
        mod, kind = key.rsplit(".lora_", 1)
        m = modules.get(mod)
        if m is not None and hasattr(m, "base_layer"):  # a module PEFT already wrapped
            m = m.base_layer
        if not isinstance(m, torch.nn.Linear):
            bad.append(f"{mod}: {'not in the base model' if m is None else f'a {type(m).__name__}, not a Linear'}")
            continue
        other = lora.get(f"{mod}.lora_{'B' if kind == 'A' else 'A'}")
        if other is None:
            bad.append(f"{mod}: has lora_{kind} but no lora_{'B' if kind == 'A' else 'A'}")
            continue
        r = t.shape[0] if kind == "A" else other.shape[0]
        want = (r, m.in_features) if kind == "A" else (m.out_features, r)
        if tuple(t.shape) != want:
            bad.append(f"{mod}.lora_{kind}: shape {tuple(t.shape)}, the base needs {want}")
    return bad


def adapter_provenance_problem(adapter_dir: Path, cfg: ModelConfig) -> str | None:
    """When `adapter_dir` was written by one of our runs: why it does not belong on the base that
    `cfg` loads (another model.path / gguf_file, or another init_adapter merged underneath), else
    None. A stage-2 run's stacked adapter (STACKED_FROM.json) belongs on the plain base."""
    import yaml

    run_cfg = run_config_of(adapter_dir)
    if run_cfg is None:
        return None
    theirs = (yaml.safe_load(run_cfg.read_text(encoding="utf-8")) or {}).get("model") or {}
    if not same_model_path(str(theirs.get("path")), cfg.path) or theirs.get("gguf_file") != cfg.gguf_file:
        return (f"trained on model.path={theirs.get('path')!r} gguf_file={theirs.get('gguf_file')!r} ({run_cfg}), but this "
                f"config loads model.path={cfg.path!r} gguf_file={cfg.gguf_file!r}")
    under = None if (adapter_dir / "STACKED_FROM.json").is_file() else theirs.get("init_adapter")
    if bool(under) != bool(cfg.init_adapter) or (under and not same_model_path(str(under), str(cfg.init_adapter))):
        hint = f"; evaluate {run_cfg.parent / 'adapter_stacked'} on the plain base" if under else ""
        return (f"trained on the base with model.init_adapter={under!r} merged ({run_cfg}), but this config merges "
                f"model.init_adapter={cfg.init_adapter!r}{hint}")
    return None


def run_config_of(adapter_dir: Path) -> Path | None:
    """The config.yaml of the run that wrote this adapter (`<run>/adapter` or
    `<run>/checkpoints/step-N/adapter`), if it is one of ours."""
    d = adapter_dir.resolve()
    for run in (d.parent, d.parents[2] if len(d.parents) > 2 else None):
        if run is not None and (run / "config.yaml").is_file() and (run / "state.json").is_file():
            return run / "config.yaml"
    return None


def same_model_path(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
