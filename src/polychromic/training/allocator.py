"""The CUDA caching allocator's settings for a training run: expandable segments by default.

A polychromic step alternates three memory shapes: the SFT pass, the rollouts (a merged weight
copy, a KV cache) and the policy-gradient recompute, each peaking at tens of GiB on an 8B model.
With the default allocator, blocks cached for one do not fit the next, so cudaFree / cudaMalloc
run inside the step; with expandable segments (`expandable_segments:True`) the allocator maps
and unmaps pages of one growing segment instead.

torch reads the setting from the environment once, when the allocator first starts, so it can
only be chosen before CUDA is initialised in the process. torch 2.9 and later read
PYTORCH_ALLOC_CONF (PYTORCH_CUDA_ALLOC_CONF still works there, with a deprecation warning);
earlier versions read PYTORCH_CUDA_ALLOC_CONF only. `allocator_env` sets both (the newer name is
read first, so no warning), and never overrides either when the user set one.
"""

from __future__ import annotations

import os
from typing import Mapping, MutableMapping

ENV_NAMES = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")
EXPANDABLE = "expandable_segments:True"


def allocator_env(enabled: bool, device: str, environ: Mapping[str, str], cuda_available: bool,
                  cuda_initialized: bool) -> tuple[dict[str, str], str]:
    """(the environment variables to set, why): a pure function of the inputs. `device` is
    trainer.device ("auto", "cpu" or "cuda")."""
    if not enabled:
        return {}, "trainer.expandable_segments is false"
    if device == "cpu" or not cuda_available:
        return {}, "no CUDA device in use"
    for name in ENV_NAMES:
        if name in environ:
            return {}, f"{name}={environ[name]!r} is set by the environment (kept)"
    if cuda_initialized:
        return {}, "CUDA is already initialised in this process: the allocator's settings are fixed (kept)"
    return {name: EXPANDABLE for name in ENV_NAMES}, f"set {EXPANDABLE}"


def configure_allocator(enabled: bool, device: str, environ: MutableMapping[str, str] | None = None) -> str:
    """Apply `allocator_env` to the process environment (before anything initialises CUDA);
    returns why it did what it did."""
    import torch

    environ = os.environ if environ is None else environ
    available = device != "cpu" and torch.cuda.is_available()  # does not initialise torch's CUDA state
    values, why = allocator_env(enabled, device, environ, available, torch.cuda.is_initialized())
    environ.update(values)
    return why
