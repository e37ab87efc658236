"""benchmarks/host_overhead.py: its former walk, the reference of its A/B, finds the modules the
shipped one does and is swapped back out; a short run writes its JSON, the scoring's A/B
included; its synthetic replies pass the guard."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import host_overhead  # noqa: E402

from polychromic.training.objectives import polychromic as poly  # noqa: E402


def _state(model):
    return [(type(m).__name__, m.training, getattr(m, "p", None), vars(m).get("attention_dropout")) for m in model.modules()]


def test_the_former_walk_finds_what_the_shipped_one_does_and_is_swapped_back_out():
    model = host_overhead.model_of(layers=2)
    for m in model.modules():
        if "attention_dropout" in vars(m):
            m.attention_dropout = 0.25
    shipped = poly.dropout_modules(model)
    assert shipped == host_overhead.former_dropout_modules(model)
    drops, rates = shipped
    assert len(drops) == 2 * 7 and [r for _, r in rates] == [0.25, 0.25]
    before = _state(model)
    inside = []
    for swap in (False, True):
        with (host_overhead.former_walk() if swap else nullcontext()), poly.dropout_off(model):
            assert (poly.dropout_modules is host_overhead.former_dropout_modules) == swap
            inside.append(_state(model))
        assert _state(model) == before  # restored
    assert poly.dropout_modules is not host_overhead.former_dropout_modules
    assert inside[0] == inside[1] != before


def test_a_short_run_writes_both_ways_per_call_and_per_step(tmp_path):
    runs = tmp_path / "runs"
    assert host_overhead.main(["--layers", "2", "--repeats", "1", "--out", str(tmp_path), "--work", str(runs)]) == 0
    res = json.loads((tmp_path / "host_overhead.json").read_text())
    ml = res["monitor_log"]  # the logging's run directory was made in --work and removed after
    assert ml["folder"] == str(runs) and ml["steps"] == 200 and list(runs.iterdir()) == []
    assert ml["p90_ms"] >= ml["median_ms"] > 0 and 0 < ml["fsync_ms_per_step"] < ml["median_ms"]
    assert res["layers"] == 2 and res["modules"] > 2 * 7 * 5
    ms = res["ms_per_call"]
    assert set(ms) == {"checkpointing", "dropout_off", "sft_step", "polychromic_step"}
    for way in ("shipped", "former"):
        assert ms["polychromic_step"][way] == 3 * ms["checkpointing"][way] + ms["dropout_off"][way]
        assert ms["sft_step"][way] == ms["checkpointing"][way] > 0
    # the scoring: one encoder call shipped, two before; the same scores either way (else main raises)
    sc = res["scoring"]
    assert sc["rollouts"] == "8 x 5" and sc["quality"] == "guard_x_relevance"
    assert (sc["shipped"]["encoder_calls"], sc["former"]["encoder_calls"]) == (1, 2)
    assert sc["shipped"]["ms_after_first_encoder_call"] > 0 and sc["former"]["ms_after_first_encoder_call"] > 0


def test_the_synthetic_replies_pass_the_guard_so_the_scoring_does_its_whole_work():
    from polychromic.config import load_config
    from polychromic.rewards import score_parts

    cfg = load_config("polychromic_1.0_moderate").objective
    ro = host_overhead.synthetic_rollouts()
    flat = [t for g in ro.texts for t in g]
    parts = score_parts([p for p in ro.prompt_texts for _ in range(ro.n)], flat, [True] * len(flat), host_overhead.encoder, cfg)
    assert parts["guard"].mean() > 0.9 and (parts["relevance"] >= 0).all()
