"""`polychromic status [RUNS]`: one line per run directory `<RUNS>/<experiment>/seed_<seed>/`.

State of a run, from its files alone (so it works on a copied-back runs folder too):
    done       state.json says done
    running    state.json says running and its process is alive (same host: pid + start time)
    failed     not done and not running: a crash (status failed, or status running with a dead
               process) or a folder that never got past start-up; the note says "resumable from
               step-N" when a COMPLETE checkpoint exists (`train --resume` continues from it)
Runs recorded on another host cannot be checked for liveness and show `running?`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from polychromic.io import read_jsonl
from polychromic.rundir import (
    CONFIG_FILE,
    METRICS_FILE,
    STATE_FILE,
    adapter_present,
    latest_checkpoint,
    process_alive,
    read_state,
)

KEY_METRICS = ("train/quality_loss", "train/diversity_score", "train/grad_norm")


def find_runs(runs_dir: str | Path) -> list[Path]:
    """Run directories `<runs_dir>/<experiment>/seed_<int>/` holding state.json or config.yaml.
    (An evaluation folder `<runs_dir>/eval/<name>/` also holds a config.yaml, hence the seed_ rule.)"""
    root = Path(runs_dir)
    out = []
    for d in sorted(root.glob("*/seed_*")):
        if d.is_dir() and d.name[len("seed_") :].isdigit() and ((d / STATE_FILE).is_file() or (d / CONFIG_FILE).is_file()):
            out.append(d)
    return out


def last_metrics(run_dir: Path, keys: tuple[str, ...] = KEY_METRICS) -> dict:
    """The last logged value of each key (keys may be absent from some rows: diversity is computed
    every n steps). A torn last line from a running writer is skipped."""
    path = Path(run_dir) / METRICS_FILE
    found: dict = {}
    if not path.is_file():
        return found
    for row in read_jsonl(path, allow_torn_tail=True):
        for k in keys:
            if k in row:
                found[k] = row[k]
    return found


def run_state(run_dir: Path, state: dict) -> str:
    status = state.get("status")
    if status == "done":
        return "done"
    if status == "running":
        alive = process_alive(state)
        if alive is None:
            return "running?"
        if alive:
            return "running"
    return "failed"


def collect_status(runs_dir: str | Path) -> list[dict]:
    """One dict per run: experiment, seed, state, step, total_steps, eta_seconds, the last key
    metrics, checkpoint, adapter (bool), error, run_dir."""
    rows = []
    for d in find_runs(runs_dir):
        state = read_state(d)
        st = run_state(d, state)
        ckpt = latest_checkpoint(d)
        rows.append(
            {
                "experiment": d.parent.name,
                "seed": int(d.name[len("seed_") :]),
                "state": st,
                "step": state.get("step"),
                "total_steps": state.get("total_steps"),
                "eta_seconds": state.get("eta_seconds") if st == "running" else None,
                "metrics": last_metrics(d),
                "checkpoint": ckpt.name if ckpt is not None else None,
                "adapter": adapter_present(d),
                "error": state.get("error") if st != "done" else None,
                "hostname": state.get("hostname"),
                "run_dir": str(d),
            }
        )
    return rows


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def print_status(runs_dir: str | Path) -> int:
    """Print the table of runs under `runs_dir`; 1 when the folder does not exist."""
    root = Path(runs_dir)
    if not root.is_dir():
        print(f"error: {root}: no such runs folder", file=sys.stderr)
        return 1
    runs = collect_status(root)
    if not runs:
        print(f"no runs under {root} (expected <experiment>/seed_<seed>/ folders)")
        return 0
    header = ["experiment", "seed", "state", "step", "ETA", "quality_loss", "diversity", "grad_norm", "note"]
    table = []
    for r in runs:
        step = f"{_fmt(r['step'])}/{_fmt(r['total_steps'])}"
        note = r["error"] or ""
        if r["state"] == "failed" and r["checkpoint"]:
            note = f"resumable from {r['checkpoint']}" + (f"; {note}" if note else "")
        elif r["state"] == "running?":
            note = f"on host {r['hostname']}"
        elif r["state"] == "done" and not r["adapter"]:
            note = "adapter/ missing"
        m = r["metrics"]
        table.append(
            [r["experiment"], str(r["seed"]), r["state"], step, format_duration(r["eta_seconds"]),
             *(_fmt(m.get(k)) for k in KEY_METRICS), note.splitlines()[0][:80] if note else ""]
        )
    print(format_table(header, table))
    return 0
