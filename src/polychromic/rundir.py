"""The run directory `<runs_dir>/<experiment>/seed_<seed>/`: layout, `state.json`, `env.json`.

Layout (docs/architecture.md):
    config.yaml        the resolved config (config.to_yaml), rewritten on every (re)start
    env.json           git sha, package versions, device, host, command line (no env variables)
    state.json         status running|done|failed, step, total_steps, started_at, updated_at,
                       eta_seconds, pid, hostname, error, last_checkpoint, trackers (run ids),
                       trackers_dropped (trackers that failed and were dropped: tracker, when,
                       step, error, time); merged atomically by `write_state`. Only the main
                       process writes it, except when the main process died (monitor.py).
    metrics.jsonl      one row per logged step (monitor.Monitor)
    alerts.jsonl       red flags (monitor.Monitor)
    checkpoints/step-N/  written by the trainer; complete once it holds the `COMPLETE` marker
    adapter/           the final PEFT adapter

Layer 1: no torch at module level (only `env_info` imports it, lazily, to name the device).
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from polychromic.config import Config, to_yaml
from polychromic.io import atomic_write_json, atomic_write_text

STATE_FILE = "state.json"
ENV_FILE = "env.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
ALERTS_FILE = "alerts.jsonl"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
COMPLETE_MARKER = "COMPLETE"
STATUSES = ("running", "done", "failed")

_CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
_PACKAGES = ("polychromic", "torch", "transformers", "peft", "accelerate", "sentence-transformers")


def run_dir_for(cfg: Config) -> Path:
    """`<runs_dir>/<experiment>/seed_<seed>/` (relative paths are relative to the working directory)."""
    return Path(cfg.runs_dir) / cfg.experiment / f"seed_{cfg.seed}"


def previous_attempt(run_dir: Path) -> list[str]:
    """Names of the files/folders in `run_dir` that show a training attempt already wrote there
    (checkpoints, metrics, a final adapter); empty for a fresh or merely initialised folder."""
    run_dir = Path(run_dir)
    found = []
    ckpt = run_dir / CHECKPOINTS_DIR
    if ckpt.is_dir() and any(ckpt.iterdir()):
        found.append(f"{CHECKPOINTS_DIR}/")
    metrics = run_dir / METRICS_FILE
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append(METRICS_FILE)
    if (run_dir / ADAPTER_DIR).exists():
        found.append(f"{ADAPTER_DIR}/")
    return found


def init_run_dir(cfg: Config, resume: bool) -> Path:
    """Create the run directory and write `config.yaml` and `env.json`.

    Starting fresh (resume=False) over a folder that already holds checkpoints, metrics or an
    adapter raises ValueError: silently mixing two runs' metrics, or overwriting a finished
    adapter, is how results get lost. On resume, `env.json` keeps the first start's environment
    and appends this one to its `resumes` list, so a run that moved machines says so.
    """
    run_dir = run_dir_for(cfg)
    if not resume:
        found = previous_attempt(run_dir)
        if found:
            raise ValueError(
                f"{run_dir}: already holds a run ({', '.join(found)}); pass --resume to continue it "
                f"or delete the folder to start over"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, to_yaml(cfg))
    env = env_info()
    env_path = run_dir / ENV_FILE
    if resume and env_path.is_file():
        first = _read_json(env_path)
        first.setdefault("resumes", []).append(env)
        env = first
    atomic_write_json(env_path, env)
    return run_dir


def _git_sha() -> tuple[str | None, bool | None, str | None]:
    """(sha, dirty, reason-when-unknown) of the checkout this package's code runs from."""
    src = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except FileNotFoundError:
        return None, None, "git is not installed"
    except subprocess.TimeoutExpired:
        return None, None, "git rev-parse timed out"
    if sha.returncode != 0:
        return None, None, f"not a git checkout ({sha.stderr.strip().splitlines()[-1] if sha.stderr.strip() else 'git rev-parse failed'})"
    status = subprocess.run(
        ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, timeout=10,
    )
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return sha.stdout.strip(), dirty, None


def _device() -> dict[str, Any]:
    import torch  # lazy: rundir is layer 1 and must stay importable without torch

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(0),
            "count": n,
            "cuda": torch.version.cuda,
        }
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "count": os.cpu_count()}


def env_info() -> dict:
    """What a run needs to be reproduced: code version, package versions, device, host, argv.

    Environment variables are deliberately never recorded: they hold API keys (WANDB_API_KEY,
    OPENAI_API_KEY, HF_TOKEN) and the prior system leaked keys through shipped files.
    """
    sha, dirty, reason = _git_sha()
    versions: dict[str, str | None] = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    info: dict[str, Any] = {
        "git_sha": sha,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "device": _device(),
        "hostname": socket.gethostname(),
        "command": list(sys.argv),
        "time": time.time(),
    }
    if reason is not None:
        info["git_error"] = reason
    return info


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_state(run_dir: Path) -> dict:
    """The contents of `state.json`; {} when the run has not written one yet. A corrupt file
    raises ValueError naming it (writes are atomic, so that means someone edited it)."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return {}
    return _read_json(path)


def write_state(run_dir: Path, **fields) -> None:
    """Merge `fields` into `state.json` atomically and stamp `updated_at` (unix seconds).

    Only the main process may call this (one writer); readers (`polychromic status`) never see a
    half-written file because the write is a rename.
    """
    status = fields.get("status")
    if status is not None and status not in STATUSES:
        raise ValueError(f"state.json status: must be one of {', '.join(STATUSES)}, got {status!r}")
    state = read_state(run_dir)
    state.update(fields)
    state["updated_at"] = time.time()
    atomic_write_json(Path(run_dir) / STATE_FILE, state)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step-{step}"


def mark_checkpoint_complete(ckpt_dir: Path) -> None:
    """Write the `COMPLETE` marker; call it after every other file of the checkpoint is written."""
    atomic_write_text(Path(ckpt_dir) / COMPLETE_MARKER, f"{time.time()}\n")


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every COMPLETE `checkpoints/step-N/`, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    out = []
    for child in root.iterdir():
        m = _CHECKPOINT_NAME.match(child.name)
        if m and child.is_dir() and (child / COMPLETE_MARKER).is_file():
            out.append((int(m.group(1)), child))
    return sorted(out)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint `checkpoints/step-N/`, or None.

    Contract with the trainer: a checkpoint folder is complete once it holds the marker file
    `COMPLETE`, which the trainer writes LAST (`mark_checkpoint_complete`), after the adapter,
    optimizer, scheduler, RNG and data-position files. A run killed mid-save leaves a folder
    without the marker; it is ignored here, so resume never loads a half-written checkpoint.
    Folders whose name is not exactly `step-<int>` (temporary folders) are ignored too.
    """
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def adapter_present(run_dir: Path) -> bool:
    """True when `adapter/` holds a saved PEFT adapter (config and weights)."""
    adapter = Path(run_dir) / ADAPTER_DIR
    return (adapter / "adapter_config.json").is_file() and any(adapter.glob("adapter_model.*"))


def is_finished(run_dir: Path) -> bool:
    """A run is finished when its state says done AND the final adapter is on disk."""
    return read_state(run_dir).get("status") == "done" and adapter_present(run_dir)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process from Linux /proc, to
    tell a zombie or a reused pid from the original process; None where /proc has no entry."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces and parentheses: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def process_identity() -> dict:
    """Fields identifying the current process for `state.json` (pid, its start time, host)."""
    pid = os.getpid()
    stat = _proc_stat(pid)
    return {"pid": pid, "pid_start": stat[1] if stat else None, "hostname": socket.gethostname()}


def process_alive(state: dict) -> bool | None:
    """Is the process recorded in `state` still running? None when it ran on another host (it
    cannot be checked from here)."""
    pid = state.get("pid")
    if not isinstance(pid, int):
        return False
    host = state.get("hostname")
    if host is not None and host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    stat = _proc_stat(pid)
    if stat is None:
        # Without /proc (not Linux) os.kill succeeding is all we know; with /proc, a missing
        # entry means the process exited between the two checks.
        return not Path("/proc/self").exists()
    letter, start = stat
    if letter == "Z":
        return False  # a zombie: exited, not yet reaped by its parent
    recorded = state.get("pid_start")
    if recorded is not None and recorded != start:
        return False  # the pid was reused by another process
    return True


def describe_exit(code: int) -> str:
    """A training process's exit status in words: `killed by SIGKILL`, `exit code 1`."""
    import signal

    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
