"""The CUDA allocator setting a training run chooses (training/allocator.py): expandable segments
unless turned off, on a CPU, set by the user, or too late (CUDA already initialised)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from polychromic.config import load_config
from polychromic.training.allocator import ENV_NAMES, EXPANDABLE, allocator_env, configure_allocator

SET = {name: EXPANDABLE for name in ENV_NAMES}


@pytest.mark.parametrize(
    "enabled, device, environ, available, initialized, expected, why",
    [
        (True, "auto", {}, True, False, SET, "set"),
        (True, "cuda", {"OTHER": "1"}, True, False, SET, "set"),
        (False, "cuda", {}, True, False, {}, "is false"),
        (True, "cpu", {}, True, False, {}, "no CUDA"),
        (True, "auto", {}, False, False, {}, "no CUDA"),
        (True, "cuda", {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}, True, False, {}, "PYTORCH_CUDA_ALLOC_CONF='max_split_size_mb:128' is set"),
        (True, "cuda", {"PYTORCH_ALLOC_CONF": ""}, True, False, {}, "PYTORCH_ALLOC_CONF='' is set"),
        (True, "cuda", {}, True, True, {}, "already initialised"),
    ],
)
def test_allocator_env_choice(enabled, device, environ, available, initialized, expected, why):
    values, reason = allocator_env(enabled, device, environ, available, initialized)
    assert values == expected and why in reason


def test_configure_allocator_on_this_machine():
    import torch

    env: dict[str, str] = {}
    reason = configure_allocator(True, "cpu", env)
    assert env == {} and "no CUDA" in reason
    env = {"PYTORCH_CUDA_ALLOC_CONF": "backend:native"}
    configure_allocator(True, "auto", env)
    assert env == {"PYTORCH_CUDA_ALLOC_CONF": "backend:native"}  # the user's setting wins
    if not torch.cuda.is_available():
        env = {}
        assert "no CUDA" in configure_allocator(True, "auto", env) and env == {}


def test_trainer_option_defaults_and_overrides():
    assert load_config("baseline").trainer.expandable_segments is True
    assert load_config("baseline", ["trainer.expandable_segments=false"]).trainer.expandable_segments is False
    assert load_config("baseline").trainer.fast_lora is True


def test_the_setting_is_read_when_the_allocator_starts():
    """The variable set after `import torch` but before CUDA starts is the one torch uses (the
    allocator config is parsed lazily), in a fresh process."""
    code = (
        "import os, torch\n"
        "from polychromic.training.allocator import allocator_env\n"
        "values, _ = allocator_env(True, 'cuda', os.environ, True, torch.cuda.is_initialized())\n"
        "os.environ.update(values)\n"
        "get = getattr(torch._C, '_accelerator_getAllocatorSettings', None)\n"
        "print(get() if get else 'unknown')\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in ENV_NAMES}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in (EXPANDABLE, "unknown")


def test_train_configures_the_allocator_before_anything_else(monkeypatch):
    from polychromic.training import loop

    class Stop(Exception):
        pass

    seen = []

    def record(enabled, device):
        seen.append((enabled, device))
        raise Stop

    monkeypatch.setattr(loop, "configure_allocator", record)
    monkeypatch.setattr(loop, "init_run_dir", lambda *a: pytest.fail("the run directory came first"))
    with pytest.raises(Stop):
        loop.train(load_config("baseline", ["trainer.device=cpu", "trainer.expandable_segments=false"]))
    assert seen == [(False, "cpu")]
