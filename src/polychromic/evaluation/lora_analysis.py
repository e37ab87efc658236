"""What a LoRA adapter changed: per module, the spectrum of the scaled update dW = s * B A.

Read straight from a PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`), so
any adapter, ours or not, can be analysed on a CPU without loading the base model.

The dense update is m x n (e.g. 576 x 1536) but has rank <= r, so it is never formed: with the
thin QR factorisations B = Q_B R_B (m x r) and A^T = Q_A R_A (n x r),
    dW = s * Q_B (R_B R_A^T) Q_A^T,
and since Q_B, Q_A have orthonormal columns, the singular values of dW are exactly those of the
small r x r core s * R_B R_A^T. Cost O((m + n) r^2) instead of O(m n min(m, n)).

Two adapters are compared module by module by name through Frobenius inner products of the
factors, also without dense products:
    <s1 B1 A1, s2 B2 A2>_F = s1 s2 tr((B1^T B2) (A2 A1^T)).

Measures per module: Frobenius and spectral norms, the entropy effective rank of Roy & Vetterli
(2007, "The effective rank: a measure of effective dimensionality"): exp(H(p)), p_i = sigma_i /
sum sigma; the stable rank ||dW||_F^2 / ||dW||_2^2; and the top singular values.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOP_SINGULAR_VALUES = 8

_LINEAR_KEY = re.compile(r"^(?P<name>.+)\.lora_(?P<which>A|B)\.weight$")
# Embedding LoRA stores A as (r, num_embeddings) and B as (embedding_dim, r): the update is
# (B A)^T, whose singular values and inner products equal those of B A.
_EMBEDDING_KEY = re.compile(r"^(?P<name>.+)\.lora_embedding_(?P<which>A|B)$")
_PEFT_PREFIX = "base_model.model."


@dataclass
class LoraFactors:
    """One module's update dW = scale * B @ A (float64)."""

    name: str
    A: np.ndarray
    """(r, n)"""
    B: np.ndarray
    """(m, r)"""
    scale: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.B.shape[0]), int(self.A.shape[1])


def _pattern_value(patterns: dict, name: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches when it ends the module name
    on a dot boundary (peft.utils.other.get_pattern_key)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _scale(config: dict, name: str, r: int) -> float:
    alpha = _pattern_value(config.get("alpha_pattern") or {}, name, config.get("lora_alpha"))
    if alpha is None:
        raise ValueError(f"adapter_config.json: no lora_alpha for module {name}")
    # rsLoRA (Kalajdzievski 2023) scales by alpha / sqrt(r) instead of alpha / r.
    return float(alpha) / (math.sqrt(r) if config.get("use_rslora") else r)


def read_adapter(adapter_dir: str | Path) -> tuple[dict, dict[str, LoraFactors]]:
    """(adapter_config, {module name: factors}) of a PEFT adapter folder."""
    from safetensors import safe_open

    d = Path(adapter_dir)
    cfg_path, weights = d / "adapter_config.json", d / "adapter_model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"{d}: not a PEFT adapter folder ({p.name} is missing)")
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{cfg_path}: peft_type {config.get('peft_type')!r} is not LORA")
    if config.get("use_dora"):
        # DoRA rescales W + dW column-wise by a learned magnitude: the change is not s * B A.
        raise ValueError(f"{cfg_path}: DoRA adapters are not supported (their update is not (alpha/r) B A)")
    parts: dict[str, dict[str, np.ndarray]] = {}
    transposed: set[str] = set()
    # framework="pt": numpy cannot hold bfloat16, which adapters are often saved in.
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            m = _LINEAR_KEY.match(key) or _EMBEDDING_KEY.match(key)
            if m is None:
                continue
            name = m["name"].removeprefix(_PEFT_PREFIX)
            if m.re is _EMBEDDING_KEY:
                transposed.add(name)
            parts.setdefault(name, {})[m["which"]] = f.get_tensor(key).double().numpy()
    if not parts:
        raise ValueError(f"{weights}: no LoRA tensors (keys ending in lora_A.weight / lora_B.weight)")
    modules: dict[str, LoraFactors] = {}
    for name, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{weights}: module {name} has lora_{''.join(ab)} but not both A and B")
        A, B = ab["A"], ab["B"]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise ValueError(f"{weights}: module {name}: A {A.shape} and B {B.shape} do not form B @ A")
        modules[name] = LoraFactors(name, A, B, _scale(config, name, A.shape[0]))
    return config, modules


def singular_values(A: np.ndarray, B: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Singular values (descending) of scale * B @ A without forming the product."""
    _, r_b = np.linalg.qr(B, mode="reduced")
    _, r_a = np.linalg.qr(A.T, mode="reduced")
    return np.linalg.svd(scale * (r_b @ r_a.T), compute_uv=False)


def effective_rank(sigma: np.ndarray) -> float | None:
    """Roy & Vetterli entropy effective rank; None for a zero matrix (undefined there)."""
    total = float(np.sum(sigma))
    if total <= 0.0:
        return None
    p = sigma[sigma > 0] / total
    return float(math.exp(-float(np.sum(p * np.log(p)))))


def module_stats(f: LoraFactors, top: int = TOP_SINGULAR_VALUES) -> dict:
    s = singular_values(f.A, f.B, f.scale)
    fro = float(math.sqrt(float(np.sum(s**2))))
    spectral = float(s[0]) if s.size else 0.0
    return {
        "shape": list(f.shape),
        "r": f.rank,
        "scale": f.scale,
        "frobenius_norm": fro,
        "spectral_norm": spectral,
        # Both ranks are undefined for an all-zero update (e.g. an untrained adapter, B = 0).
        "effective_rank": effective_rank(s),
        "stable_rank": fro**2 / spectral**2 if spectral > 0 else None,
        "top_singular_values": [float(x) for x in s[:top]],
    }


def analyze_adapter(adapter_dir: str | Path, top: int = TOP_SINGULAR_VALUES) -> dict:
    """Per-module spectra of an adapter plus a summary over modules."""
    config, modules = read_adapter(adapter_dir)
    stats = {name: module_stats(f, top) for name, f in modules.items()}
    eranks = [s["effective_rank"] for s in stats.values() if s["effective_rank"] is not None]
    sranks = [s["stable_rank"] for s in stats.values() if s["stable_rank"] is not None]
    summary = {
        "n_modules": len(stats),
        "r": config.get("r"),
        "lora_alpha": config.get("lora_alpha"),
        "use_rslora": bool(config.get("use_rslora", False)),
        "total_frobenius_norm": float(math.sqrt(sum(s["frobenius_norm"] ** 2 for s in stats.values()))),
        "max_spectral_norm": max(s["spectral_norm"] for s in stats.values()),
        "mean_effective_rank": float(np.mean(eranks)) if eranks else None,
        "mean_stable_rank": float(np.mean(sranks)) if sranks else None,
        "n_zero_modules": sum(1 for s in stats.values() if s["frobenius_norm"] == 0.0),
    }
    return {"adapter": str(adapter_dir), "summary": summary, "modules": stats}


def inner_product(f: LoraFactors, g: LoraFactors) -> float:
    """Frobenius inner product <dW_f, dW_g> from the factors: s_f s_g tr((B_f^T B_g)(A_g A_f^T))."""
    if f.shape != g.shape:
        raise ValueError(f"module {f.name}: update shapes differ ({f.shape} vs {g.shape})")
    return float(f.scale * g.scale * np.trace((f.B.T @ g.B) @ (g.A @ f.A.T)))


def compare_modules(f: LoraFactors, g: LoraFactors) -> dict:
    """Cosine of the flattened updates, norm ratio ||dW_g|| / ||dW_f||, and the relative
    difference ||dW_g - dW_f|| / ||dW_f||; None where a norm is zero (undefined)."""
    ff, gg, fg = inner_product(f, f), inner_product(g, g), inner_product(f, g)
    nf, ng = math.sqrt(max(ff, 0.0)), math.sqrt(max(gg, 0.0))
    diff = math.sqrt(max(ff + gg - 2.0 * fg, 0.0))  # clip round-off below zero
    return {
        "cosine": fg / (nf * ng) if nf > 0 and ng > 0 else None,
        "norm_ratio": ng / nf if nf > 0 else None,
        "relative_difference": diff / nf if nf > 0 else None,
        "frobenius_norms": [nf, ng],
    }


def compare_adapters(adapter_a: str | Path, adapter_b: str | Path) -> dict:
    """Module-by-module comparison of adapter b against adapter a (matched by module name)."""
    _, fa = read_adapter(adapter_a)
    _, fb = read_adapter(adapter_b)
    common = sorted(set(fa) & set(fb))
    per = {name: compare_modules(fa[name], fb[name]) for name in common}
    cos = [v["cosine"] for v in per.values() if v["cosine"] is not None]
    # Whole-adapter cosine: every module's update stacked into one long vector.
    num = sum(inner_product(fa[n], fb[n]) for n in common)
    na = math.sqrt(sum(inner_product(fa[n], fa[n]) for n in common))
    nb = math.sqrt(sum(inner_product(fb[n], fb[n]) for n in common))
    return {
        "a": str(adapter_a),
        "b": str(adapter_b),
        "only_in_a": sorted(set(fa) - set(fb)),
        "only_in_b": sorted(set(fb) - set(fa)),
        "summary": {
            "n_common_modules": len(common),
            "mean_module_cosine": float(np.mean(cos)) if cos else None,
            "overall_cosine": num / (na * nb) if na > 0 and nb > 0 else None,
            "overall_norm_ratio": nb / na if na > 0 else None,
        },
        "modules": per,
    }
