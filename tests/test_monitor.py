"""Monitor: metrics.jsonl rows, every red flag (name, step, alerts.jsonl), non-finite values,
fail_on_alert, progress/ETA in state.json, resume truncation. No model, no trackers: fast."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from polychromic.config import config_from_dict
from polychromic.io import read_jsonl
from polychromic.training.monitor import AlertStop, Monitor
from polychromic.rundir import read_state

SFT = {"objective": {"name": "sft"}}
POLY = {"objective": {"name": "polychromic", "diversity_weight": 1.0}}


def cfg_of(**sections):
    data = {"experiment": "t"}
    for k, v in sections.items():
        data[k] = v
    return config_from_dict(data)


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def rows(path):
    return list(read_jsonl(path)) if path.exists() else []


def test_metrics_rows_and_state(tmp_path):
    mon = Monitor(tmp_path, cfg_of(), total_steps=3)
    assert read_state(tmp_path)["status"] == "running"
    assert read_state(tmp_path)["pid"] == os.getpid()
    mon.log(1, {"train/quality_loss": 2.5, "train/lr": 1e-4})
    mon.log(2, {"train/quality_loss": np.float32(2.25), "train/tokens_per_second": 10})
    got = rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2]
    assert all(isinstance(r["time"], float) for r in got)
    assert got[0]["train/quality_loss"] == 2.5 and got[0]["train/lr"] == 1e-4
    assert got[1]["train/quality_loss"] == 2.25 and got[1]["train/tokens_per_second"] == 10.0
    assert set(got[1]) == {"step", "time", "train/quality_loss", "train/tokens_per_second"}
    mon.close("done")
    state = read_state(tmp_path)
    assert state["status"] == "done" and state["step"] == 2 and state["total_steps"] == 3
    assert state["eta_seconds"] == 0.0
    assert not (tmp_path / "alerts.jsonl").exists()  # healthy SFT rows (no diversity keys) raise nothing


# (name, config, earlier rows, the row that must fire, a similar row that must not)
FLAGS = [
    ("combined_above_quality", SFT, [],
     {"train/quality_loss": 1.0, "train/combined_loss": 1.5},
     {"train/quality_loss": 1.0, "train/combined_loss": 1.0}),
    ("diversity_floor", POLY, [],
     {"train/diversity_score": 0.001},
     {"train/diversity_score": 0.2}),
    ("grad_norm_high", SFT, [],
     {"train/grad_norm": 25.0},
     {"train/grad_norm": 19.5}),
    ("dead_diversity_grad", POLY, [],
     {"train/grad_norm_div": 0.0},
     {"train/grad_norm_div": 0.03}),
    ("non_finite_loss", SFT, [],
     {"train/quality_loss": float("nan")},
     {"train/quality_loss": 3.0}),
    ("non_finite_value", SFT, [],
     {"train/lr": float("inf")},
     {"train/lr": 1e-4}),
    ("quality_collapse", POLY, [],
     {"train/quality_mean": 0.01},
     {"train/quality_mean": 0.3}),
    ("quality_collapse", POLY, [{"train/quality_mean": 0.8}] * 5,
     {"train/quality_mean": 0.35},
     {"train/quality_mean": 0.45}),
]


@pytest.mark.parametrize("name,sections,before,bad,good", FLAGS, ids=[f"{f[0]}-{i}" for i, f in enumerate(FLAGS)])
def test_each_red_flag(tmp_path, capsys, name, sections, before, bad, good):
    for variant, values, fires in (("bad", bad, True), ("good", good, False)):
        run_dir = tmp_path / variant
        mon = Monitor(run_dir, cfg_of(**sections), total_steps=20)
        for i, earlier in enumerate(before, start=1):
            assert mon.log(i, earlier) == []
        step = len(before) + 1
        alerts = mon.log(step, values)
        mon.close("done")
        if not fires:
            assert alerts == [], alerts
            assert not (run_dir / "alerts.jsonl").exists()
            continue
        assert [(a.name, a.step) for a in alerts] == [(name, step)]
        written = rows(run_dir / "alerts.jsonl")
        assert [(r["name"], r["step"]) for r in written] == [(name, step)]
        assert written[0]["message"] == alerts[0].message and f"step {step}" in written[0]["message"]
        assert written[0]["value"] == alerts[0].value
        assert f"RED FLAG {name}" in capsys.readouterr().err


def test_dead_diversity_only_for_polychromic_with_lambda(tmp_path):
    # float_penalty logs a grad_norm_div of 0 by design (its D is a float): not a red flag there.
    cfg = cfg_of(objective={"name": "float_penalty", "diversity_weight": 1.0})
    mon = Monitor(tmp_path, cfg, total_steps=5)
    assert mon.log(1, {"train/grad_norm_div": 0.0}) == []


def test_quality_collapse_needs_history(tmp_path):
    mon = Monitor(tmp_path, cfg_of(**POLY), total_steps=10)
    for step, q in enumerate([0.8, 0.8, 0.8, 0.8], start=1):
        assert mon.log(step, {"train/quality_mean": q}) == []
    # 4 values seen: a drop to 0.3 is still within the warm-up of the relative rule
    assert mon.log(5, {"train/quality_mean": 0.3}) == []
    # 5 values seen, running max 0.8: 0.39 < 0.4 fires
    assert [a.name for a in mon.log(6, {"train/quality_mean": 0.39})] == ["quality_collapse"]


def test_non_finite_written_as_strings_and_alerted(tmp_path):
    mon = Monitor(tmp_path, cfg_of(), total_steps=5)
    alerts = mon.log(3, {"train/quality_loss": float("nan"), "train/combined_loss": float("-inf"), "train/grad_norm": float("inf")})
    row = rows(tmp_path / "metrics.jsonl")[0]
    assert row["train/quality_loss"] == "nan"
    assert row["train/combined_loss"] == "-inf"
    assert row["train/grad_norm"] == "inf"
    names = sorted((a.name, a.value) for a in alerts)
    assert names == [("non_finite_loss", "-inf"), ("non_finite_loss", "nan"), ("non_finite_value", "inf")]
    # the file is strict JSON (no bare NaN tokens)
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))


def test_bad_values_raise(tmp_path):
    mon = Monitor(tmp_path, cfg_of(), total_steps=5)
    with pytest.raises(TypeError, match="train/quality_loss must be a number"):
        mon.log(1, {"train/quality_loss": "1.0"})
    with pytest.raises(TypeError, match="train/flag must be a number"):
        mon.log(1, {"train/flag": True})
    with pytest.raises(ValueError, match="reserved"):
        mon.log(1, {"step": 1.0})
    mon.log(4, {"train/quality_loss": 1.0})
    with pytest.raises(ValueError, match="before the last logged step 4"):
        mon.log(3, {"train/quality_loss": 1.0})
    assert [r["step"] for r in rows(tmp_path / "metrics.jsonl")] == [4]


def test_fail_on_alert_raises_after_writing(tmp_path):
    cfg = cfg_of(trainer={"fail_on_alert": True, "grad_norm_alert": 5.0})
    mon = Monitor(tmp_path, cfg, total_steps=5)
    mon.log(1, {"train/grad_norm": 1.0})
    with pytest.raises(AlertStop, match="grad_norm_high|train/grad_norm 7 > trainer.grad_norm_alert 5") as info:
        mon.log(2, {"train/grad_norm": 7.0})
    assert [a.name for a in info.value.alerts] == ["grad_norm_high"]
    assert [r["step"] for r in rows(tmp_path / "metrics.jsonl")] == [1, 2]
    assert [(r["name"], r["step"], r["value"]) for r in rows(tmp_path / "alerts.jsonl")] == [("grad_norm_high", 2, 7.0)]
    assert read_state(tmp_path)["step"] == 2
    mon.close("failed", error=str(info.value))
    state = read_state(tmp_path)
    assert state["status"] == "failed" and "grad_norm" in state["error"]


def test_progress_eta_in_state(tmp_path, capsys):
    clock = FakeClock()
    mon = Monitor(tmp_path, cfg_of(), total_steps=10, clock=clock)
    assert read_state(tmp_path)["eta_seconds"] is None
    clock.t += 2.0
    mon.log(1, {"train/quality_loss": 1.0})
    # one step in 2 s since the start: 9 steps left -> 18 s
    assert read_state(tmp_path)["eta_seconds"] == pytest.approx(18.0)
    clock.t += 2.0
    mon.log(2, {"train/quality_loss": 1.0})
    state = read_state(tmp_path)
    assert state["step"] == 2 and state["total_steps"] == 10
    assert state["eta_seconds"] == pytest.approx(16.0)
    mon.close("done")
    err = capsys.readouterr().err
    assert "2/10" in err  # the tqdm bar went to stderr


def test_eta_uses_a_moving_window(tmp_path):
    from polychromic.training.monitor import ETA_WINDOW

    clock = FakeClock()
    mon = Monitor(tmp_path, cfg_of(), total_steps=1000, clock=clock)
    step = 0
    for _ in range(ETA_WINDOW):  # slow start: 10 s per step
        clock.t += 10.0
        step += 1
        mon.log(step, {"x": 1.0})
    for _ in range(ETA_WINDOW):  # then 1 s per step: the ETA forgets the slow start
        clock.t += 1.0
        step += 1
        mon.log(step, {"x": 1.0})
    assert read_state(tmp_path)["eta_seconds"] == pytest.approx(1000 - step)


def test_resume_truncates_logs_after_start_step(tmp_path):
    mon = Monitor(tmp_path, cfg_of(trainer={"grad_norm_alert": 5.0}), total_steps=6)
    for step in range(1, 5):
        mon.log(step, {"train/grad_norm": float(step * 2)})  # steps 3 and 4 fire
    mon.close("failed")
    # a torn line from a kill mid-write
    with open(tmp_path / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 5, "ti')
    mon = Monitor(tmp_path, cfg_of(trainer={"grad_norm_alert": 5.0}), total_steps=6, start_step=3)
    assert [r["step"] for r in rows(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert [r["step"] for r in rows(tmp_path / "alerts.jsonl")] == [3]
    assert read_state(tmp_path)["status"] == "running" and read_state(tmp_path)["step"] == 3
    mon.log(4, {"train/grad_norm": 1.0})
    assert [r["step"] for r in rows(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


def test_non_main_process_writes_nothing_but_stops_too(tmp_path):
    cfg = cfg_of(trainer={"fail_on_alert": True})
    mon = Monitor(tmp_path / "rank1", cfg, total_steps=5, is_main=False)
    assert mon.log(1, {"train/grad_norm": 1.0}) == []
    with pytest.raises(AlertStop):
        mon.log(2, {"train/quality_loss": float("nan")})
    mon.close("failed")
    assert not (tmp_path / "rank1").exists()


def test_alert_printing_is_rate_limited(tmp_path, capsys):
    from polychromic.training.monitor import PRINT_REPEATS

    mon = Monitor(tmp_path, cfg_of(), total_steps=20)
    for step in range(1, 11):
        mon.log(step, {"train/grad_norm": 50.0})
    mon.close("done")
    err = capsys.readouterr().err
    assert err.count("RED FLAG grad_norm_high") == PRINT_REPEATS
    assert "further grad_norm_high alerts only go to" in err
    assert len(rows(tmp_path / "alerts.jsonl")) == 10  # every one is in the file


def test_close_validates_status(tmp_path):
    mon = Monitor(tmp_path, cfg_of(), total_steps=2)
    with pytest.raises(ValueError, match="'done' or 'failed'"):
        mon.close("finished")
    mon.close("done")
    mon.close("failed")  # second close is a no-op
    assert read_state(tmp_path)["status"] == "done"


def test_context_manager_marks_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with Monitor(tmp_path, cfg_of(), total_steps=2) as mon:
            mon.log(1, {"x": 1.0})
            raise RuntimeError("CUDA out of memory")
    state = read_state(tmp_path)
    assert state["status"] == "failed" and state["error"] == "RuntimeError: CUDA out of memory"
