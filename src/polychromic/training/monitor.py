"""Training monitor: metrics.jsonl, trackers, a progress bar with ETA, and red-flag alerts.

The trainer calls `Monitor.log(step, values)` once per logged optimizer step with plain numbers
(`loss.item()`, not tensors) and `Monitor.close(status)` at the end. Keys that an objective does
not compute are simply absent (SFT logs no diversity keys); the trainer logs `train/diversity_score`
and `train/grad_norm_div` only on steps where the diversity term was computed. Values, though,
are never tolerated when bad: a non-number raises TypeError, a NaN/inf is written to
metrics.jsonl as the string "nan"/"inf"/"-inf" (JSON has no NaN) and raises an alert.

Red flags (each printed to stderr, sent to the trackers as `alerts/<name>` = 1, and appended to
`alerts.jsonl` as {"step", "time", "name", "message", "value"}); docs/monitoring.md lists them:

| name                   | fires when                                                                  |
|------------------------|-----------------------------------------------------------------------------|
| combined_above_quality | train/combined_loss > train/quality_loss (prior guide's flag 1)             |
| diversity_floor        | train/diversity_score < trainer.diversity_floor (prior flag 2: D near 0)    |
| grad_norm_high         | train/grad_norm > trainer.grad_norm_alert (prior flag 3, default 20)        |
| dead_diversity_grad    | train/grad_norm_div == 0 while objective polychromic with lambda > 0        |
| non_finite_loss        | any key containing "loss" is NaN or inf                                     |
| non_finite_value       | any other key is NaN or inf                                                 |
| quality_collapse       | train/quality_mean < 0.05, or < 50% of its running max once 5 values seen   |
| nonfinite_step         | the trainer found a NaN/inf loss or gradient (train/nonfinite_step = 1): the |
|                        | step was skipped or the run stops (trainer.on_nonfinite, guards.py)         |

With `trainer.fail_on_alert`, `log` raises AlertStop after everything is written. Alerts are
computed on every process (so that, given the same reduced values, all ranks stop together);
only the main process writes files, prints and talks to trackers.
"""

from __future__ import annotations

import math
import numbers
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from polychromic.config import Config
from polychromic.io import append_jsonl, atomic_write_jsonl, read_jsonl
from polychromic.rundir import ALERTS_FILE, METRICS_FILE, process_alive, process_identity, read_state, write_state
from polychromic.training.trackers import open_trackers

# Quality collapse: the relative rule needs a few observations of train/quality_mean first (the
# first rollouts of a fresh adapter are noisy); the absolute floor applies from the start, since
# with q ~ 0 every set reward F = mean(q) * d(S) is ~0 and the diversity term has nothing to learn.
QUALITY_MIN_HISTORY = 5
QUALITY_DROP = 0.5
QUALITY_FLOOR = 0.05
# combined > quality must exceed float noise: for SFT both are the same number computed twice.
COMBINED_RTOL = 1e-6
ETA_WINDOW = 20  # steps/s over the last ETA_WINDOW logged steps
PRINT_REPEATS = 3  # each alert name is printed this many times; later ones go to alerts.jsonl only
MAIN_EXIT_GRACE_S = 5.0  # how long a failing non-main process waits to see whether the main one died
BAR_KEYS = {"train/quality_loss": "ce", "train/diversity_score": "div", "train/grad_norm": "gn"}


class AlertStop(RuntimeError):
    """Raised by Monitor.log when trainer.fail_on_alert is set and a red flag fired."""

    def __init__(self, alerts: list["Alert"]):
        self.alerts = alerts
        super().__init__("stopping on red flag(s) (trainer.fail_on_alert): " + "; ".join(a.message for a in alerts))


class Terminated(BaseException):
    """SIGTERM arrived while the run was inside `with Monitor(...)`. A BaseException (like
    KeyboardInterrupt), so no `except Exception` on the way swallows it: the run is recorded as
    failed, then the process exits non-zero."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(
        "terminated by SIGTERM (the launcher stops the other processes when one process of the run "
        "fails, or a job scheduler ended the job); resume with --resume"
    )


@dataclass
class Alert:
    step: int
    name: str
    message: str
    value: float | str
    """The offending value; "nan"/"inf"/"-inf" for non-finite ones (as in metrics.jsonl)."""


def _json_number(x: float) -> float | str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _check_values(step: int, values: dict) -> dict[str, float]:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise TypeError(f"Monitor.log: step must be an int >= 0, got {step!r}")
    out: dict[str, float] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"Monitor.log step {step}: metric names must be non-empty strings, got {key!r}")
        if key in ("step", "time"):
            raise ValueError(f"Monitor.log step {step}: {key!r} is a reserved column of metrics.jsonl")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"Monitor.log step {step}: {key} must be a number, got {type(value).__name__} "
                f"{value!r} (pass tensor.item())"
            )
        out[key] = float(value)
    return out


class Monitor:
    """Per-run logging and red flags. One per training run; see the module docstring."""

    def __init__(
        self,
        run_dir: Path,
        cfg: Config,
        total_steps: int,
        start_step: int = 0,
        is_main: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.total_steps = total_steps
        self.is_main = is_main
        self.clock = clock
        self.last_step = start_step
        self.quality_history: list[float] = []
        self.printed: dict[str, int] = {}
        self.window: deque[tuple[float, int]] = deque(maxlen=ETA_WINDOW + 1)
        self.window.append((clock(), start_step))
        self.trackers = []
        self.bar = None
        self.closed = False
        if not is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_logs(start_step)
        # Trackers first: a missing tracker package fails before state.json claims a running run.
        self.trackers = open_trackers(cfg, self.run_dir, start_step=start_step)
        now = time.time()
        state = read_state(self.run_dir)
        write_state(
            self.run_dir,
            status="running",
            step=start_step,
            total_steps=total_steps,
            started_at=now,
            first_started_at=state.get("first_started_at", now),
            eta_seconds=None,
            error=None,
            **process_identity(),
        )
        from tqdm.auto import tqdm

        tty = sys.stderr.isatty()
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            desc=cfg.experiment,
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            # Under a sweep or a batch system stderr is a log file: refresh rarely.
            mininterval=0.5 if tty else 30.0,
        )

    def _truncate_logs(self, start_step: int) -> None:
        """On resume, drop rows an interrupted attempt logged after the checkpoint's step (they
        are logged again), and prime the quality history from the rows kept."""
        for name in (METRICS_FILE, ALERTS_FILE):
            path = self.run_dir / name
            if not path.is_file():
                continue
            rows = list(read_jsonl(path, allow_torn_tail=True))
            kept = [r for r in rows if r.get("step", 0) <= start_step]
            if len(kept) != len(rows) or path.read_bytes()[-1:] not in (b"", b"\n"):
                atomic_write_jsonl(path, kept)
            if name == METRICS_FILE:
                q = [r["train/quality_mean"] for r in kept if isinstance(r.get("train/quality_mean"), (int, float))]
                self.quality_history = [float(x) for x in q]

    # -----------------------------------------------------------------------------------------

    def log(self, step: int, values: dict[str, float]) -> list[Alert]:
        """Record one step's values; return the alerts it raised (AlertStop if fail_on_alert)."""
        values = _check_values(step, values)
        if step < self.last_step:
            raise ValueError(f"Monitor.log: step {step} is before the last logged step {self.last_step}")
        self.last_step = step
        alerts = self._red_flags(step, values)
        if self.is_main:
            now = time.time()
            append_jsonl(self.run_dir / METRICS_FILE, [{"step": step, "time": now, **{k: _json_number(v) for k, v in values.items()}}])
            if alerts:
                append_jsonl(self.run_dir / ALERTS_FILE, [{"time": now, **asdict(a)} for a in alerts])
            tracked = dict(values)
            tracked.update({f"alerts/{a.name}": 1.0 for a in alerts})
            for tracker in self.trackers:
                tracker.log(step, tracked)
            self._progress(step, values)
            for a in alerts:
                self._print_alert(a)
        if alerts and self.cfg.trainer.fail_on_alert:
            raise AlertStop(alerts)
        return alerts

    def _red_flags(self, step: int, v: dict[str, float]) -> list[Alert]:
        t, o = self.cfg.trainer, self.cfg.objective
        out: list[Alert] = []

        def fire(name: str, message: str, value: float) -> None:
            out.append(Alert(step=step, name=name, message=f"step {step}: {message}", value=_json_number(value)))

        for key, x in v.items():
            if not math.isfinite(x):
                name = "non_finite_loss" if "loss" in key else "non_finite_value"
                fire(name, f"{key} is {_json_number(x)}", x)
        finite = {k: x for k, x in v.items() if math.isfinite(x)}
        q, c = finite.get("train/quality_loss"), finite.get("train/combined_loss")
        if q is not None and c is not None and c > q + COMBINED_RTOL * max(1.0, abs(q)):
            fire(
                "combined_above_quality",
                f"train/combined_loss {c:.4g} > train/quality_loss {q:.4g} (the diversity term adds loss)",
                c,
            )
        d = finite.get("train/diversity_score")
        if d is not None and d < t.diversity_floor:
            fire("diversity_floor", f"train/diversity_score {d:.4g} < trainer.diversity_floor {t.diversity_floor:g} (replies collapsing to one)", d)
        g = finite.get("train/grad_norm")
        if g is not None and g > t.grad_norm_alert:
            fire("grad_norm_high", f"train/grad_norm {g:.4g} > trainer.grad_norm_alert {t.grad_norm_alert:g}", g)
        gd = finite.get("train/grad_norm_div")
        if gd is not None and gd == 0.0 and o.name == "polychromic" and o.diversity_weight > 0:
            fire(
                "dead_diversity_grad",
                f"train/grad_norm_div is 0 with objective.diversity_weight {o.diversity_weight:g}: the "
                "diversity term has no gradient (the prior system's bug; all advantages zero?)",
                gd,
            )
        if finite.get("train/nonfinite_step") == 1.0:
            what = ("the optimizer step was skipped (weights and optimizer state untouched)" if t.on_nonfinite == "skip"
                    else "the run stops; its last checkpoint is the last good one")
            fire("nonfinite_step", f"non-finite loss or gradient: {what} (trainer.on_nonfinite={t.on_nonfinite})", 1.0)
        qm = finite.get("train/quality_mean")
        if qm is not None:
            peak = max(self.quality_history, default=None)
            if qm < QUALITY_FLOOR:
                fire("quality_collapse", f"train/quality_mean {qm:.4g} < {QUALITY_FLOOR} (replies degenerate)", qm)
            elif peak is not None and len(self.quality_history) >= QUALITY_MIN_HISTORY and qm < QUALITY_DROP * peak:
                fire("quality_collapse", f"train/quality_mean {qm:.4g} < {QUALITY_DROP:.0%} of its running max {peak:.4g}", qm)
            self.quality_history.append(qm)
        return out

    def _progress(self, step: int, values: dict[str, float]) -> None:
        now = self.clock()
        self.window.append((now, step))
        (t0, s0), (t1, s1) = self.window[0], self.window[-1]
        eta = None
        if t1 > t0 and s1 > s0:
            eta = max(0, self.total_steps - step) * (t1 - t0) / (s1 - s0)
        write_state(self.run_dir, step=step, total_steps=self.total_steps, eta_seconds=eta)
        if step > self.bar.n:
            self.bar.update(step - self.bar.n)
        shown = {short: f"{values[k]:.4g}" for k, short in BAR_KEYS.items() if k in values}
        if shown:
            self.bar.set_postfix(shown, refresh=False)

    def _print_alert(self, alert: Alert) -> None:
        n = self.printed.get(alert.name, 0) + 1
        self.printed[alert.name] = n
        if n > PRINT_REPEATS:
            return
        line = f"RED FLAG {alert.name}: {alert.message}"
        if n == PRINT_REPEATS:
            line += f"  (further {alert.name} alerts only go to {self.run_dir / ALERTS_FILE})"
        self.bar.write(line, file=sys.stderr)

    # -----------------------------------------------------------------------------------------

    def close(self, status: str, error: str | None = None) -> None:
        """Finish trackers and the bar and record the final status (done|failed) in state.json.
        Safe to call twice (the second call does nothing)."""
        if status not in ("done", "failed"):
            raise ValueError(f"Monitor.close: status must be 'done' or 'failed', got {status!r}")
        if self.closed:
            return
        self.closed = True
        if not self.is_main:
            return
        self.bar.close()
        for tracker in self.trackers:
            tracker.close(status)
        fields: dict = {"status": status, "finished_at": time.time()}
        if status == "done":
            fields["eta_seconds"] = 0.0
        if error is not None:
            fields["error"] = error
        write_state(self.run_dir, **fields)

    def __enter__(self) -> "Monitor":
        # SIGTERM (torch.distributed.run stopping the surviving processes of a run one of whose
        # processes died; a batch scheduler's time limit) becomes an exception, so the run ends
        # recorded as failed instead of `running` with a dead process. Main thread only: signal
        # handlers cannot be installed elsewhere.
        self._sigterm = None
        if threading.current_thread() is threading.main_thread():
            self._sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # An exception leaving the training loop marks the run failed with its message; a normal
        # exit without an explicit close() is left to the caller (it decides when a run is done).
        # A SIGTERM while the failure is being recorded waits until it is (then the default).
        installed = getattr(self, "_sigterm", None)
        if installed is not None and exc is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if exc is not None:
                error = f"{exc_type.__name__}: {exc}"
                try:
                    self.close("failed", error=error)
                    if not self.is_main:
                        self._record_dead_main(error)
                except OSError as close_exc:  # e.g. the disk is still full: the original error matters more
                    print(f"WARNING could not record the failure in {self.run_dir / 'state.json'}: {close_exc}", file=sys.stderr)
        finally:
            if installed is not None:
                signal.signal(signal.SIGTERM, installed)
                self._sigterm = None

    def _record_dead_main(self, error: str) -> None:
        """A non-main process stopping on an error writes state.json only when the main process
        (its one writer) is dead and left it saying `running`: a killed main process cannot
        record its own end, and the run must not look alive (or merely interrupted) afterwards."""
        state = read_state(self.run_dir)
        # A killed process closes its sockets (which is how this one learnt of it) a moment
        # before it is gone from the process table: give it that moment.
        deadline = time.monotonic() + MAIN_EXIT_GRACE_S
        while state.get("status") == "running" and process_alive(state) and time.monotonic() < deadline:
            time.sleep(0.05)
            state = read_state(self.run_dir)
        if state.get("status") == "running" and process_alive(state) is False:
            write_state(self.run_dir, status="failed", finished_at=time.time(),
                        error=f"the main process (pid {state.get('pid')}) died; process {process_identity()['pid']} "
                              f"stopped with {error}")
