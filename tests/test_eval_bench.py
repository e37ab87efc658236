"""benchmarks/eval_bench.py's former chunk rule, which it swaps in for its A/B."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import eval_bench  # noqa: E402

from polychromic.generation import fast as fastgen  # noqa: E402


def test_the_former_rule_ignores_held_buckets_and_calls_the_shipped_one_when_swapped_in(monkeypatch):
    args = (1000, 512, 2000, 28.0, 1.0)
    assert fastgen.chunk_cap(*args, held=[504]) == 504  # the shipped rule takes the held bucket
    monkeypatch.setattr(fastgen, "chunk_cap", eval_bench.former_chunk_cap)
    assert fastgen.chunk_cap(*args, held=[504]) == 32  # free memory alone: 1000 // 29 -> 32 rows
    assert eval_bench.SHIPPED_CHUNK_CAP(*args, held=[504]) == 504
