"""benchmarks/pg_profile.py's idle-gap listing, on known kernel timelines."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pg_profile  # noqa: E402


def test_gaps_between_kernels_are_summed_and_ranked():
    # (start_us, end_us, name), out of order; "b" overlaps "a", so only c and d leave gaps.
    kernels = [(30.0, 40.0, "c"), (0.0, 10.0, "a"), (5.0, 12.0, "b"), (100.0, 101.0, "d")]
    got = pg_profile.idle_gaps(kernels, top=1)
    assert got["span_s"] == pytest.approx(101e-6)
    assert got["idle_s"] == pytest.approx((18.0 + 60.0) * 1e-6)
    assert got["gaps"] == 2
    assert got["largest"] == [{"ms": pytest.approx(0.06), "after": "c", "before": "d"}]


def test_a_kernel_inside_a_longer_one_leaves_no_gap():
    got = pg_profile.idle_gaps([(0.0, 50.0, "long"), (10.0, 20.0, "inner"), (50.0, 60.0, "next")])
    assert got["idle_s"] == 0.0 and got["gaps"] == 0 and got["span_s"] == pytest.approx(60e-6)


def test_no_kernels_no_gaps():
    assert pg_profile.idle_gaps([]) == {"span_s": 0.0, "idle_s": 0.0, "gaps": 0, "largest": []}
