"""The issue 6 scripts (scripts/experiment_issue6.py, scripts/nll_vs_logit_temperature.py): their
pure parts, checked on a CPU before a GPU run depends on them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from polychromic.config import load_config

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


exp = _script("experiment_issue6")


@pytest.mark.parametrize("variant", sorted(exp.VARIANTS))
def test_every_variant_is_a_valid_config(variant):
    cfg = load_config(REPO / exp.CONFIGS / "issue6_polychromic.yaml", [*exp.VARIANTS[variant], "objective.diversity_weight=25"])
    assert cfg.objective.name == "polychromic"
    # the override took effect (not silently shadowed by the base file)
    assert f"objective.quality={cfg.objective.quality}" in exp.VARIANTS[variant]


def test_third_run_grid_names_known_variants():
    for item in exp.THIRD_RUN_GRID:
        variant, scale = item.split(":")
        assert variant in exp.VARIANTS and float(scale) > 0


def test_nested_overrides():
    assert exp.nested(["objective.quality=guard", "objective.relevance_threshold=0.15", "rollout.n_generations=16"]) == {
        "objective": {"quality": "guard", "relevance_threshold": 0.15}, "rollout": {"n_generations": 16}}


def _per_prompt(folder: Path, models: dict[str, dict[str, float]], n_prompts: int = 4) -> Path:
    rows = [{"model": m, "prompt_id": f"p{i}", "k": 10, "metrics": metrics, "excluded": {}}
            for m, metrics in models.items() for i in range(n_prompts)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "per_prompt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _m(cos, d2, rel=0.4, nll=2.0, p10=0.9):
    return {"mean_pairwise_cosine_distance": cos, "distinct_2": d2, "relevance": rel, "ref_nll": nll, "pass_at_10": p10,
            "quality": rel, "length_tokens": 12.0}


def test_choose_scale_tiers(tmp_path):
    base = _m(0.5, 0.5)
    # a: big gain but relevance -10%; b: +10% / +4% within 3%; c: +30% / +25% within 3% at a larger scale
    d = _per_prompt(tmp_path / "e1", {"sft": base, "a": _m(0.7, 0.7, rel=0.36), "b": _m(0.55, 0.52), "c": _m(0.65, 0.625)})
    got = exp.choose_scale(d, "sft", {("gate15", 25.0): "a", ("gate15", 10.0): "b", ("gate15big", 64.0): "c"}, k=10)
    assert (got["chosen_variant"], got["chosen_scale"]) == ("gate15big", 64.0)
    assert got["candidates"]["gate15big_s64"]["gain"] == pytest.approx(0.25)
    # without c: the largest gain (min of the two primary gains) within 3% is b
    d = _per_prompt(tmp_path / "e2", {"sft": base, "a": _m(0.7, 0.7, rel=0.36), "b": _m(0.55, 0.52)})
    got = exp.choose_scale(d, "sft", {("gate15", 25.0): "a", ("gate15", 10.0): "b"}, k=10)
    assert got["chosen_scale"] == 10.0 and "within 3%" in got["reason"]
    # reference NLL +4% only: the third tier (within 5%)
    d = _per_prompt(tmp_path / "e3", {"sft": base, "a": _m(0.7, 0.7, rel=0.36), "b": _m(0.55, 0.52, nll=2.08)})
    got = exp.choose_scale(d, "sft", {("gate15", 25.0): "a", ("gate15", 10.0): "b"}, k=10)
    assert got["chosen_scale"] == 10.0 and "within 5%" in got["reason"]


def test_flattened_logits_change_reference_nll_only_when_t_is_not_1(tiny_model_dir):
    import torch

    from polychromic.config import load_config as load
    from polychromic.evaluation.nll import reference_nll
    from polychromic.models import load_base_model, load_tokenizer

    Flattened = _script("nll_vs_logit_temperature").Flattened
    cfg = load(None, [f"model.path={tiny_model_dir}", "trainer.device=cpu"])
    tok = load_tokenizer(cfg.model)
    model = load_base_model(cfg.model, torch.device("cpu")).eval()
    prompts = [{"prompt_id": "p0", "prompt": "how are you?", "references": ["I am fine, thanks.", "Good."]},
               {"prompt_id": "p1", "prompt": "what is your name?", "references": ["I am a bot."]}]
    plain = [r["ref_nll"] for r in reference_nll(model, tok, cfg, prompts)]
    same = [r["ref_nll"] for r in reference_nll(Flattened(model, 1.0), tok, cfg, prompts)]
    flat = [r["ref_nll"] for r in reference_nll(Flattened(model, 2.0), tok, cfg, prompts)]
    assert same == pytest.approx(plain, rel=1e-6)
    assert all(abs(a - b) > 1e-4 for a, b in zip(flat, plain))
