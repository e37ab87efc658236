"""benchmarks/host_overhead.py: its former dropout_off, the reference of its A/B, switches the
same modules as the shipped one; a short run writes its JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import host_overhead  # noqa: E402

from polychromic.training.objectives import polychromic as poly  # noqa: E402


def _state(model):
    return [(type(m).__name__, m.training, getattr(m, "p", None), vars(m).get("attention_dropout")) for m in model.modules()]


def test_the_former_dropout_off_switches_what_the_shipped_one_does():
    model = host_overhead.model_of(layers=2, dropout=0.1)
    for m in model.modules():
        if "attention_dropout" in vars(m):
            m.attention_dropout = 0.25
    before = _state(model)
    inside = []
    for ctx in (poly.dropout_off, host_overhead.former_dropout_off):
        with ctx(model):
            inside.append(_state(model))
        assert _state(model) == before  # restored
    assert inside[0] == inside[1] != before
    switched = [s for s in inside[0] if s[0] == "Dropout"]
    assert len(switched) == 2 * 7 and all(not training and p == 0.0 for _, training, p, _ in switched)
    assert [s[3] for s in inside[0] if s[3] is not None] == [0.0, 0.0]


def test_a_short_run_writes_both_ways_per_call_and_per_step(tmp_path):
    assert host_overhead.main(["--layers", "2", "--repeats", "1", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "host_overhead.json").read_text())
    assert res["layers"] == 2 and res["modules"] > 2 * 7 * 5
    ms = res["ms_per_call"]
    assert set(ms) == {"checkpointing", "dropout_off", "sft_step", "polychromic_step"}
    for way in ("shipped", "former"):
        assert ms["polychromic_step"][way] == 3 * ms["checkpointing"][way] + ms["dropout_off"][way]
        assert ms["sft_step"][way] == ms["checkpointing"][way] > 0
