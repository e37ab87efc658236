"""Prompt rendering: the one place a prompt meets the chat template.

`render_prompt` / `encode_example` are called by both training and evaluation, so the evaluation
prompt is exactly the prefix of the training sequence (tested; docs/data.md). `collate` pads a
batch of encoded examples; `collate_packed` lays them end to end in one row (a packed pass).
"""

from __future__ import annotations

from typing import Sequence

from polychromic.config import DataConfig



def _messages(data_cfg: DataConfig, prompt: str) -> list[dict]:
    # str.replace, not str.format: tweets contain braces ("{" in code, emoticons) that format
    # would treat as fields.
    user = data_cfg.template.replace("{prompt}", prompt)
    msgs = [{"role": "system", "content": data_cfg.system_prompt}] if data_cfg.system_prompt else []
    return msgs + [{"role": "user", "content": user}]


def _chat_text(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; use an instruct/chat model")
    # enable_thinking=False: Qwen3-style templates otherwise leave the model to open a <think>
    # block before the reply; templates without the switch ignore the extra variable.
    return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, enable_thinking=False, tokenize=False)


def _ids(tokenizer, text: str) -> list[int]:
    # The template already holds the special tokens; add_special_tokens would add a second BOS.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_prompt(tokenizer, data_cfg: DataConfig, prompt: str) -> list[int]:
    """Token ids of the prompt as the model sees it before its reply (generation prompt included)."""
    return _ids(tokenizer, _chat_text(tokenizer, _messages(data_cfg, prompt), add_generation_prompt=True))


def _end_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def reply_ids(tokenizer, data_cfg: DataConfig, prompt: str, reply: str) -> list[int]:
    """The reply's ids ending with the template's own end-of-turn token.

    Rendered as the full conversation so the end marker is the template's (`<|im_end|>` for
    ChatML); what follows it (ChatML's trailing newline) is dropped since generation stops at the
    end token. The tail is tokenized on its own, after the prompt's ids, so the prompt ids are a
    prefix by construction, as they are at generation time. Templates that do not reproduce the
    generation prompt as a prefix of the full conversation get reply + eos.
    """
    msgs = _messages(data_cfg, prompt)
    prompt_text = _chat_text(tokenizer, msgs, add_generation_prompt=True)
    full = _chat_text(tokenizer, msgs + [{"role": "assistant", "content": reply}], add_generation_prompt=False)
    if full.startswith(prompt_text) and full[len(prompt_text) :].startswith(reply):
        tail = _ids(tokenizer, full[len(prompt_text) :])
        n_reply = len(_ids(tokenizer, reply))
        ends = _end_ids(tokenizer)
        for j in range(max(n_reply - 1, 0), len(tail)):
            if tail[j] in ends:
                return tail[: j + 1]
    if tokenizer.eos_token_id is None:
        raise ValueError("the chat template does not reproduce the prompt as a prefix and the tokenizer has no eos token")
    return _ids(tokenizer, reply) + [tokenizer.eos_token_id]


def encode_example(tokenizer, data_cfg: DataConfig, prompt: str, reply: str) -> dict:
    """`input_ids` = render_prompt ids + reply ids (end-of-turn included); `labels` are -100 on
    the prompt. Over `data_cfg.max_length` the prompt is cut from the left (its end, which holds
    the assistant header, stays); a reply that leaves the prompt under half the budget is cut at
    its end instead, so the model never trains on a reply without its prompt.
    """
    p = render_prompt(tokenizer, data_cfg, prompt)
    r = reply_ids(tokenizer, data_cfg, prompt, reply)
    limit = data_cfg.max_length
    if len(p) + len(r) > limit:
        keep_p = max(limit - len(r), min(len(p), limit // 2))
        p = p[len(p) - keep_p :]
        r = r[: limit - keep_p]
    return {"input_ids": p + r, "labels": [-100] * len(p) + r}


def padded_width(longest: int, multiple: int = 1) -> int:
    """`longest` rounded up to a multiple of `multiple` (trainer.pad_to_multiple_of)."""
    if multiple < 1:
        raise ValueError(f"pad multiple {multiple}: must be >= 1")
    return -(-longest // multiple) * multiple


def collate(examples: Sequence[dict], pad_id: int, multiple: int = 1) -> dict:
    """Right-padded training batch (independent of tokenizer.padding_side, which is left for
    generation): input_ids padded with pad_id, labels with -100, attention_mask 1 on real tokens;
    the width is the longest example's, rounded up to a multiple of `multiple`."""
    import torch

    if not examples:
        raise ValueError("collate: empty batch")
    width = padded_width(max(len(e["input_ids"]) for e in examples), multiple)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        if len(e["labels"]) != n:
            raise ValueError(f"collate: example {i} has {n} input_ids but {len(e['labels'])} labels")
        ids[i, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.tensor(e["labels"], dtype=torch.long)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def collate_packed(examples: Sequence[dict]) -> dict:
    """The same examples as `collate`, laid end to end in one row without padding (a packed
    pass, training/packed.py): input_ids, labels and position_ids (1, T), T = the summed
    lengths, positions 0 .. len - 1 restarting at each example; cu_seqlens (B + 1,) int32, the
    examples' offsets; max_len, the longest. Each example's first label is -100, so no position
    is scored on predicting the next example's first token (it never is in `collate` either: the
    first token of a row has no predecessor)."""
    import numpy as np
    import torch

    if not examples:
        raise ValueError("collate_packed: empty batch")
    for i, e in enumerate(examples):
        if len(e["labels"]) != len(e["input_ids"]) or not e["input_ids"]:
            raise ValueError(f"collate_packed: example {i} has {len(e['input_ids'])} input_ids and {len(e['labels'])} "
                             "labels (they must be equal and non-zero)")
    lens = np.array([len(e["input_ids"]) for e in examples], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)])
    ids = np.concatenate([np.asarray(e["input_ids"], dtype=np.int64) for e in examples])
    labels = np.concatenate([np.asarray(e["labels"], dtype=np.int64) for e in examples])
    labels[starts[:-1]] = -100
    pos = np.arange(starts[-1], dtype=np.int64) - np.repeat(starts[:-1], lens)
    return {
        "input_ids": torch.from_numpy(ids)[None],
        "labels": torch.from_numpy(labels)[None],
        "position_ids": torch.from_numpy(pos)[None],
        "cu_seqlens": torch.from_numpy(starts.astype(np.int32)),
        "max_len": int(lens.max()),
    }
