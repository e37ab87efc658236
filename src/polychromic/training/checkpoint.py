"""Saving and restoring training checkpoints and the final adapter, safely.

A checkpoint `checkpoints/step-N/` holds the adapter, optimizer, scheduler, every process's RNG
state and the data position (trainer_state.json). It is written into a temporary folder,
completed with rundir's COMPLETE marker, then renamed: a kill at any moment leaves either no
step-N folder or a complete one, and older checkpoints are deleted only after the new one is
complete. The final `adapter/` is written the same way (temporary folder, then rename).

Two faults are refused here rather than written:
- non-finite parameters (guards.check_finite_params): a NaN adapter is never saved, so the last
  checkpoint on disk is always a good one;
- a full disk (ENOSPC): the temporary folder is removed again, the previous checkpoint and
  adapter stay complete and loadable, and the error (io.DiskFullError) names the folder, the
  space it needs and the space left; `train --resume` continues once there is space.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from polychromic.config import Config
from polychromic.io import atomic_write_json, disk_full, is_disk_full
from polychromic.rundir import (
    ADAPTER_DIR,
    checkpoint_dir,
    list_checkpoints,
    mark_checkpoint_complete,
    write_state,
)
from polychromic.training.guards import check_finite_params


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _needed_bytes(run_dir: Path, s) -> int:
    """Space a checkpoint takes: the previous complete one's size, or, before the first, the
    adapter plus AdamW's two moments (3 x the trainable parameters' bytes)."""
    done = list_checkpoints(run_dir)
    if done:
        return folder_bytes(done[-1][1])
    return 3 * sum(p.numel() * p.element_size() for p in s.params)


def _kept(run_dir: Path) -> str:
    done = list_checkpoints(run_dir)
    last = f"the previous checkpoint {done[-1][1]} is complete and kept" if done else "no earlier checkpoint exists"
    return f"{last}; free space and rerun with --resume"


def save_checkpoint(run_dir: Path, step: int, s, acc, cfg: Config) -> Path:
    """Write checkpoint `step` (all processes call this; rank r writes its RNG state)."""
    check_finite_params(s.model, f"checkpoint step-{step}", run_dir)
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(f".{final.name}.tmp")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    try:
        torch.save(_rng_state(), tmp / f"rng_rank{s.rank}.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            s.model.save_pretrained(tmp / "adapter")
            torch.save(s.opt.state_dict(), tmp / "optimizer.pt")
            torch.save(s.sched.state_dict(), tmp / "scheduler.pt")
            atomic_write_json(
                tmp / "trainer_state.json",
                {"step": step, "data_seed": cfg.seed, "examples_seen": step * s.global_batch, "global_batch": s.global_batch,
                 "world_size": s.world, "n_train": s.n_train, "total_steps": s.total_steps},
            )
            mark_checkpoint_complete(tmp)
    except BaseException as exc:
        if not is_disk_full(exc):
            raise
        written = folder_bytes(tmp) if tmp.is_dir() else 0
        shutil.rmtree(tmp, ignore_errors=True)
        raise disk_full(final, max(_needed_bytes(run_dir, s), written), _kept(run_dir)) from exc
    if acc.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(run_dir)[: -cfg.trainer.keep_checkpoints]:
            shutil.rmtree(old)
        write_state(run_dir, last_checkpoint=str(final.relative_to(run_dir)))
    acc.wait_for_everyone()
    return final


def load_checkpoint(ckpt: Path, s, acc) -> int:
    """Restore adapter, optimizer, scheduler and this process's RNG; return the step to start at."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    meta = json.loads((ckpt / "trainer_state.json").read_text())
    for key, now in (("world_size", s.world), ("global_batch", s.global_batch), ("n_train", s.n_train), ("total_steps", s.total_steps)):
        if meta[key] != now:
            raise ValueError(
                f"{ckpt}/trainer_state.json: {key} was {meta[key]}, now {now}; resume needs the same data, "
                "batch sizes, step count and number of processes (or start a new run)"
            )
    # Read on the CPU (safetensors and torch.load refuse accelerate's "cpu:0" of a multi-process
    # CPU run); loading a state dict moves each tensor onto its parameter's device.
    weights = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"), device="cpu")
    result = set_peft_model_state_dict(s.model, weights)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{ckpt}/adapter: unexpected keys {result.unexpected_keys[:5]} (a different LoRA config?)")
    s.opt.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=False))
    s.sched.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
    rng = ckpt / f"rng_rank{s.rank}.pt"
    if not rng.is_file():
        raise ValueError(f"{rng} missing: the checkpoint was written by fewer processes")
    _set_rng_state(torch.load(rng, weights_only=False))
    return int(meta["step"])


def save_adapter(run_dir: Path, s, acc) -> Path:
    """Write the final `adapter/` (main process; the others wait)."""
    final = Path(run_dir) / ADAPTER_DIR
    check_finite_params(s.model, "the final adapter", run_dir)
    if acc.is_main_process:
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            s.model.save_pretrained(tmp)
        except BaseException as exc:
            if not is_disk_full(exc):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            need = sum(p.numel() * p.element_size() for p in s.params)
            kept = "the previous adapter/ is unchanged" if final.exists() else "no adapter/ was written"
            raise disk_full(final, need, f"{kept}; {_kept(run_dir)}") from exc
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    acc.wait_for_everyone()
    return final
