"""Random-weight models, a synthetic tokenizer and tweet-shaped data for the GPU benchmarks.

Throughput does not depend on weight values, so the benchmarks build the Qwen3-8B architecture
from its config with random bf16 weights: nothing is downloaded. What a run needs from disk
(`polychromic train` reads a model folder) is written here:

- a word-level tokenizer with the model's vocabulary size (151,936 for Qwen3-8B) and a ChatML
  chat template, so every id a random model samples decodes to a word and the scoring (sentence
  embeddings, distances) sees texts of realistic length;
- the model folder (config.json, safetensors, tokenizer);
- a sentence-transformers folder shaped like all-MiniLM-L6-v2 (6 layers, 384 wide, mean pooling,
  normalised), random weights: the embedder the rollouts are scored with;
- a prepared training split of synthetic tweets and replies with tweet-like lengths (prompt
  8 to 50 words, reply 4 to 40; two replies per tweet on average, as in the tweets data).
"""

from __future__ import annotations

import json
import os
import platform
import random
from pathlib import Path

SHAPES = {
    # Qwen3-8B
    "8b": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    "tiny": dict(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False),
}
MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
              max_position_embeddings=512)
MINILM_TINY = dict(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                   max_position_embeddings=512)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
PAD, EOS = "<|endoftext|>", "<|im_end|>"
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEMPLATE_WORDS = ["user", "assistant", "system", "Generate", "an", "engaging", "Twitter", "reply", "to", "this", "tweet", ":",
                  "Reply", ",", ".", "!", "?"]


def host() -> dict:
    """The host's CPU model and logical CPU count: a host-bound step (TRL's generate loop) moves
    with them, so every result records them beside the GPU."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "logical_cpus": os.cpu_count()}


def filler_word(i: int) -> str:
    """The i-th synthetic word: letters only (a word for every tokenizer and metric), 3+ long."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = ""
    i += 26 * 26  # skip one- and two-letter strings
    while i:
        i, r = divmod(i, 26)
        out = letters[r] + out
    return out


def vocabulary(size: int) -> list[str]:
    words = SPECIALS + TEMPLATE_WORDS
    words += [filler_word(i) for i in range(size - len(words))]
    return words


def make_tokenizer(size: int, bert: bool = False):
    """A fast word-level tokenizer of exactly `size` ids (transformers' PreTrainedTokenizerFast)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = vocabulary(size)
    if bert:
        words = ["[PAD]", "[CLS]", "[SEP]", "[MASK]"] + [w for w in words if w != "[UNK]"][: size - 5] + ["[UNK]"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    if bert:
        tok.add_special_tokens(["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"])
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                       sep_token="[SEP]", mask_token="[MASK]")
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token=PAD, eos_token=EOS)
    fast.chat_template = CHATML
    return fast


def model_config(shape: str, tokenizer):
    from transformers import Qwen3Config

    return Qwen3Config(**SHAPES[shape], max_position_embeddings=4096, bos_token_id=None,
                       eos_token_id=tokenizer.convert_tokens_to_ids(EOS), pad_token_id=tokenizer.convert_tokens_to_ids(PAD))


def build_model(shape: str, device, dtype, tokenizer=None, seed: int = 0):
    """A random-weight Qwen3 of `shape`, initialised on `device` directly (8B on a CPU takes minutes)."""
    import torch
    from transformers import Qwen3ForCausalLM

    tokenizer = tokenizer or make_tokenizer(SHAPES[shape]["vocab_size"])
    cfg = model_config(shape, tokenizer)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    gc = model.generation_config
    for k in ("temperature", "top_p", "top_k", "do_sample", "repetition_penalty"):
        setattr(gc, k, None)
    gc.eos_token_id, gc.pad_token_id = cfg.eos_token_id, cfg.pad_token_id
    return model.eval(), tokenizer


def with_adapter(base):
    """`base` with the benchmarks' LoRA (r=16, alpha 16, dropout 0.1 on the seven projections),
    B drawn non-zero: a trained-looking adapter (B = 0 makes the A gradients and the merge trivial)."""
    import torch

    from polychromic.config import LoraConfig
    from polychromic.models import attach_lora

    model = attach_lora(base, LoraConfig(r=16, alpha=16, dropout=0.1, target_modules=TARGETS))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=1e-3)
    return model


def comma_list(ap, flag: str, value: str, allowed) -> list[str]:
    """The non-empty items of a comma-separated option; argparse's error when none is given or
    one is not in `allowed`."""
    items = [x for x in value.split(",") if x]
    if not items or set(items) - set(allowed):
        ap.error(f"{flag} {value!r}: a comma list of {', '.join(allowed)}")
    return items


def write_model(folder: Path, shape: str, device, dtype) -> Path:
    """config.json + safetensors + tokenizer of a random-weight model of `shape` (skipped when
    the folder is already complete)."""
    folder = Path(folder)
    if (folder / "DONE").is_file():
        return folder
    model, tok = build_model(shape, device, dtype)
    model.save_pretrained(folder, max_shard_size="4GB")
    tok.save_pretrained(folder)
    (folder / "DONE").write_text("ok\n")
    del model
    return folder


def write_embedder(folder: Path, tiny: bool = False) -> Path:
    """A sentence-transformers folder shaped like all-MiniLM-L6-v2, random weights."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    folder = Path(folder)
    if (folder / "modules.json").is_file():
        return folder
    shape = MINILM_TINY if tiny else MINILM
    hf = folder.with_name(folder.name + "_hf")
    torch.manual_seed(0)
    BertModel(BertConfig(**shape)).save_pretrained(hf)
    make_tokenizer(shape["vocab_size"], bert=True).save_pretrained(hf)
    word = models.Transformer(str(hf), max_seq_length=256)
    st = SentenceTransformer(modules=[word, models.Pooling(shape["hidden_size"], "mean"), models.Normalize()], device="cpu")
    st.save(str(folder))
    return folder


def write_tweets(prepared_dir: Path, n_rows: int, vocab: int, seed: int = 0) -> Path:
    """train.jsonl of n_rows synthetic (tweet, reply) rows, about two replies per tweet."""
    rng = random.Random(seed)
    words = vocabulary(vocab)[len(SPECIALS) + len(TEMPLATE_WORDS):]
    prepared_dir = Path(prepared_dir)
    prepared_dir.mkdir(parents=True, exist_ok=True)
    rows, group, tweet = [], -1, ""
    for i in range(n_rows):
        if group < 0 or rng.random() < 0.5:
            group += 1
            tweet = " ".join(rng.choice(words) for _ in range(rng.randint(8, 50)))
        reply = " ".join(rng.choice(words) for _ in range(rng.randint(4, 40)))
        rows.append({"id": f"r{i}", "group": f"t{group}", "prompt": tweet, "reply": reply})
    (prepared_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return prepared_dir
