"""Decoding parameters and the completion type shared by every sampling path.

`SamplingParams` carries every decoding parameter explicitly, so a model's own
generation_config never leaks in (the prior system's hidden top_k=20 did).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 100
    min_new_tokens: int = 0
    greedy: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def generation_kwargs(self, pad_id: int, eos_id) -> dict:
        kw = dict(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens or None,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            use_cache=True,
            num_beams=1,
            repetition_penalty=1.0,
        )
        if self.greedy:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kw.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kw


@dataclass
class Completion:
    ids: list[int]
    """Completion token ids, EOS included when the model emitted it, padding removed."""
    finished: bool
    """True when the model emitted EOS; False when cut at max_new_tokens (truncated)."""


def warn_if_off_policy(params: SamplingParams, where: str) -> None:
    if not params.greedy and (params.top_p < 1.0 or params.top_k > 0):
        warnings.warn(
            f"{where}: top_p={params.top_p}, top_k={params.top_k} truncates the sampling distribution; the "
            "score-function gradient then uses samples from a different policy than the one it differentiates "
            "(off-policy). Use top_p=1.0, top_k=0 for an unbiased estimate.",
            stacklevel=2,
        )


def eos_ids(model, tokenizer) -> list[int]:
    ids = set()
    for src in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    return sorted(ids)


def strip_completion(row: list[int], eos: list[int], pad: int) -> Completion:
    for j, t in enumerate(row):
        if t in eos:
            return Completion(ids=row[: j + 1], finished=True)
    return Completion(ids=row, finished=False)
