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
    assert got["largest"] == [{"ms": pytest.approx(0.06), "after": "c", "before": "d", "at_ms": pytest.approx(0.04)}]
    assert "lead_ms" not in got  # no host ranges given


def test_each_gap_names_what_the_host_was_in_at_its_midpoint():
    kernels = [(10.0, 20.0, "fwd"), (50.0, 60.0, "bwd")]  # one gap, 20 to 50 us: midpoint 35
    host = [(0.0, 70.0, "rollout_term"), (5.0, 22.0, "rollout_term.forward"),
            (22.0, 48.0, "rollout_term.score"), (30.0, 40.0, "cudaStreamSynchronize"),
            (40.0, 45.0, "aten::to"), (48.0, 55.0, "rollout_term.backward")]
    got = pg_profile.idle_gaps(kernels, host=host)
    (gap,) = got["largest"]
    assert gap["at_ms"] == pytest.approx(0.01) and gap["ms"] == pytest.approx(0.03)
    assert gap["host_stack"] == ["rollout_term", "rollout_term.score", "cudaStreamSynchronize"]
    # 10 us of host work before the first kernel; at its midpoint (5 us) the forward had begun
    assert got["lead_ms"] == pytest.approx(0.01)
    assert got["lead_host_stack"] == ["rollout_term", "rollout_term.forward"]


def test_host_stack_keeps_the_innermost_ranges_outermost_first():
    host = [(0.0, 10.0, "a"), (0.0, 9.0, "b"), (1.0, 8.0, "c"), (2.0, 3.0, "d"), (4.0, 5.0, "e")]
    assert pg_profile.host_stack(host, 2.5) == ["a", "b", "c", "d"]
    assert pg_profile.host_stack(host, 2.5, depth=2) == ["c", "d"]
    assert pg_profile.host_stack(host, 9.5) == ["a"]
    assert pg_profile.host_stack(host, 10.0) == []  # a range is open on [start, end)


def test_a_kernel_inside_a_longer_one_leaves_no_gap():
    got = pg_profile.idle_gaps([(0.0, 50.0, "long"), (10.0, 20.0, "inner"), (50.0, 60.0, "next")])
    assert got["idle_s"] == 0.0 and got["gaps"] == 0 and got["span_s"] == pytest.approx(60e-6)


def test_no_kernels_no_gaps():
    assert pg_profile.idle_gaps([]) == {"span_s": 0.0, "idle_s": 0.0, "gaps": 0, "largest": []}


def test_the_profilers_host_ranges_come_back_with_their_labels_nested():
    """device_kernels on a real torch.profiler trace (on the CPU, the host's side: what each
    GPU profile's gaps are attributed to); no GPU events where none ran."""
    import torch
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(64, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("outer"):
            with record_function("inner"):
                (x @ x).sum()
    host = pg_profile.device_kernels(prof, "CPU")
    ranges = {name: (start, end) for start, end, name in host if name in ("outer", "inner")}
    assert set(ranges) == {"outer", "inner"}
    (o0, o1), (i0, i1) = ranges["outer"], ranges["inner"]
    assert o0 <= i0 < i1 <= o1
    assert any(name == "aten::mm" and i0 <= start < end <= i1 for start, end, name in host)
    assert pg_profile.host_stack(host, (i0 + i1) / 2)[:2] == ["outer", "inner"]
    assert pg_profile.device_kernels(prof) == []  # no CUDA events on a CPU run
