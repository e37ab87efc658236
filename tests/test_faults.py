"""SIGKILL during training at three different points, then resume: the final adapter is bit-identical
to an uninterrupted run's, and metrics.jsonl holds each step once with the same numbers.

The three points, on an 8-step run with checkpoints every 3 steps (3, 6, and the final 8) and
rollouts on steps 1, 3, 5, 7:
  after_first_checkpoint  killed from outside as soon as checkpoints/step-3 is complete
  mid_step                killed from outside once step 4 is logged, i.e. inside step 5 (a step
                          with rollouts), so step 4's logged row is lost work that must be redone;
                          resumed through the CLI's --resume
  during_checkpoint_write the process kills itself while writing optimizer.pt of step 6's
                          checkpoint, leaving a half-written file in the temporary folder
Each resumes from step 3, with 0, 1 and 3 logged steps to drop and redo.

One uninterrupted reference run is shared by the three cases (module fixture), and by the
full-disk cases below: ENOSPC while writing a checkpoint or the final adapter, then resume, gives
the same adapter. Also here: ENOSPC in io's atomic writes and appends, and non-finite losses,
gradients and weights (skipped, stopped, never saved)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import resume_config

from polychromic import io
from polychromic.config import load_config
from polychromic.rundir import latest_checkpoint, read_state
from polychromic.training.loop import train

REPO_SRC = Path(__file__).resolve().parents[1] / "src"
STEPS, SAVE_EVERY = 8, 3
COMPARED = ("train/quality_loss", "train/grad_norm", "train/grad_norm_ce", "train/lr", "train/diversity_score", "train/advantage_std")

# Runs `polychromic train CONFIG`; with a second argument N, the process SIGKILLs itself halfway
# through writing optimizer.pt of the step-N checkpoint (torch.save is looked up at call time).
DRIVER = r"""
import os, signal, sys
from pathlib import Path
import torch
from polychromic import cli

if len(sys.argv) > 2:
    kill_dir, real_save = f".step-{int(sys.argv[2])}.tmp", torch.save

    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        p = Path(f)
        if p.name == "optimizer.pt" and p.parent.name == kill_dir:
            data = p.read_bytes()
            p.write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save
sys.exit(cli.main(["train", sys.argv[1]]))
"""




def config_file(root: Path, model_dir: Path, name: str) -> Path:
    return resume_config(root, model_dir, name, "faults", STEPS, SAVE_EVERY)


def logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    # a row being appended right now may be torn: count complete lines only
    return [json.loads(line)["step"] for line in path.read_text().split("\n")[:-1]]


def checkpoint_step(run: Path) -> int | None:
    ckpt = latest_checkpoint(run)
    return None if ckpt is None else int(ckpt.name.split("-")[1])


WAIT_FOR = {
    "after_first_checkpoint": lambda run: checkpoint_step(run) is not None,
    "mid_step": lambda run: SAVE_EVERY + 1 in logged_steps(run),
}


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_ref")
    run = train(load_config(config_file(root, tiny_model_dir, "reference")))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return load_file(str(run / "adapter" / "adapter_model.safetensors")), rows


def kill_training(cfg: Path, run: Path, point: str, log_path: Path) -> subprocess.Popen:
    extra = [str(2 * SAVE_EVERY)] if point == "during_checkpoint_write" else []
    with open(log_path, "wb") as log:  # a file, not a pipe: a full pipe would block the run
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(cfg), *extra], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO_SRC)})
        try:
            if point in WAIT_FOR:
                deadline = time.monotonic() + 240
                while not WAIT_FOR[point](run):
                    assert proc.poll() is None, f"training exited before {point}: {log_path.read_text()[-3000:]}"
                    assert time.monotonic() < deadline, f"{point} not reached within 240 s"
                    time.sleep(0.01)
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"not killed (rc {proc.returncode}): {log_path.read_text()[-3000:]}"
    return proc


@pytest.mark.parametrize("point", ["after_first_checkpoint", "mid_step", "during_checkpoint_write"])
def test_sigkill_then_resume_is_bit_identical(point, tmp_path, tiny_model_dir, reference):
    cfg = config_file(tmp_path, tiny_model_dir, "killed")
    run = tmp_path / "killed" / "faults" / "seed_42"
    kill_training(cfg, run, point, tmp_path / "killed.log")

    # The state the kill left behind is the one this case is about.
    state = read_state(run)
    assert state["status"] == "running" and not (run / "adapter").exists()
    ckpt, logged = checkpoint_step(run), logged_steps(run)
    assert ckpt == SAVE_EVERY, f"{point}: latest complete checkpoint is step {ckpt}"
    if point == "mid_step":
        assert SAVE_EVERY < max(logged) < 2 * SAVE_EVERY  # logged work past the checkpoint is lost and redone
    if point == "during_checkpoint_write":
        torn = run / "checkpoints" / f".step-{2 * SAVE_EVERY}.tmp"
        assert (torn / "adapter").is_dir() and (torn / "optimizer.pt").is_file() and not (torn / "COMPLETE").exists()
        assert not (run / "checkpoints" / f"step-{2 * SAVE_EVERY}").exists()
        assert max(logged) == 2 * SAVE_EVERY

    if point == "mid_step":  # through the command line flag
        done = subprocess.run([sys.executable, "-m", "polychromic", "train", str(cfg), "--resume"], capture_output=True, text=True,
                              timeout=240, env={**os.environ, "PYTHONPATH": str(REPO_SRC)})
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    else:
        assert train(load_config(cfg), resume=True) == run

    ref_adapter, ref_rows = reference
    a = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == ref_adapter.keys() and a
    for k in a:
        assert torch.equal(a[k], ref_adapter[k]), f"{k} differs after resuming from step {ckpt} ({point})"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) == [r["step"] for r in ref_rows]
    for key in COMPARED:
        assert [r.get(key) for r in rows] == [r.get(key) for r in ref_rows], key
    assert read_state(run)["status"] == "done"
    assert len(json.loads((run / "env.json").read_text())["resumes"]) == 1
    # the half-written temporary folder was replaced; the kept checkpoints are complete ones
    assert {p.name for p in (run / "checkpoints").iterdir()} == {f"step-{2 * SAVE_EVERY}", f"step-{STEPS}"}


# ---------------------------------------------------------------------------------------------
# A full disk (ENOSPC). `full_disk` makes os.write fail the way a filling disk does (a short
# write, then ENOSPC) for files under one folder; torch.save and PEFT's save_pretrained (which do
# not write through os.write) are made to write part of their file and raise ENOSPC.


def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@contextlib.contextmanager
def full_disk(under: Path, room: int = 0, at_fsync: bool = False):
    """Files under `under` get `room` more bytes, then ENOSPC (or ENOSPC at fsync, as with
    delayed allocation)."""
    real_write, real_fsync, left = os.write, os.fsync, [room]

    def target(fd: int) -> bool:
        try:
            return Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(under)
        except OSError:
            return False

    def write(fd, data):
        if at_fsync or not target(fd):
            return real_write(fd, data)
        if left[0] <= 0:
            raise _enospc(under)
        n = real_write(fd, bytes(data[: left[0]]))
        left[0] -= n
        return n

    def fsync(fd):
        if at_fsync and target(fd):
            raise _enospc(under)
        return real_fsync(fd)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "write", write)
        mp.setattr(os, "fsync", fsync)
        yield


@pytest.mark.parametrize("at_fsync", [False, True], ids=["short_write", "at_fsync"])
@pytest.mark.parametrize("existing", [True, False], ids=["over_previous", "new_file"])
def test_full_disk_atomic_write_keeps_the_previous_file(tmp_path, existing, at_fsync):
    target = tmp_path / "results" / "models.json"
    target.parent.mkdir()
    if existing:
        io.atomic_write_json(target, {"version": 1, "rows": [1, 2, 3]})
    before = target.read_bytes() if existing else None
    new = {"version": 2, "rows": list(range(500))}
    with full_disk(target.parent, room=100, at_fsync=at_fsync), pytest.raises(io.DiskFullError) as e:
        io.atomic_write_json(target, new)
    need = len((io.dumps(new, indent=2) + "\n").encode())
    msg = str(e.value)
    assert msg.startswith(f"{target}: no space left on the device: the write needs about {io.format_bytes(need)}, ")
    assert " free; " in msg and ("the previous version is unchanged" if existing else "nothing was written") in msg
    assert e.value.errno == errno.ENOSPC
    assert [p.name for p in target.parent.iterdir()] == (["models.json"] if existing else [])  # no temporary file left
    if existing:
        assert target.read_bytes() == before and json.loads(before)["version"] == 1
    io.atomic_write_json(target, new)  # space again: the same call succeeds
    assert json.loads(target.read_text()) == new


@pytest.mark.parametrize("at_fsync", [False, True], ids=["short_write", "at_fsync"])
def test_full_disk_append_cuts_the_partial_rows_off(tmp_path, at_fsync):
    path = tmp_path / "eval" / "samples.jsonl"
    io.append_jsonl(path, [{"i": 0, "text": "a"}, {"i": 1, "text": "b"}])
    before = path.read_bytes()
    rows = [{"i": i, "text": "x" * 40} for i in range(2, 5)]
    with full_disk(path.parent, room=70, at_fsync=at_fsync), pytest.raises(io.DiskFullError) as e:
        io.append_jsonl(path, rows)  # 70 bytes: one row and a half written before the disk is full
    assert str(e.value).startswith(f"{path}: no space left on the device: the write needs about ")
    assert f"the file is unchanged ({len(before)} bytes, whole rows only)" in str(e.value)
    assert path.read_bytes() == before
    assert [r["i"] for r in io.read_jsonl(path)] == [0, 1]  # no torn line to repair
    io.append_jsonl(path, rows)
    assert [r["i"] for r in io.read_jsonl(path)] == [0, 1, 2, 3, 4]


def _half_then_enospc(real_save, wanted):
    """torch.save that writes half of the file `wanted(path)` selects, then raises ENOSPC."""

    def save(obj, f, *args, **kwargs):
        p = Path(f)
        if not wanted(p):
            return real_save(obj, f, *args, **kwargs)
        real_save(obj, f, *args, **kwargs)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        raise _enospc(p)

    return save


def _assert_loadable(ckpt: Path) -> None:
    assert (ckpt / "COMPLETE").is_file()
    assert load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt", "rng_rank0.pt"):
        torch.load(ckpt / name, weights_only=False)


def test_full_disk_during_a_checkpoint_then_resume(tmp_path, tiny_model_dir, reference, monkeypatch):
    cfg = load_config(config_file(tmp_path, tiny_model_dir, "enospc"))
    run = cfg.run_dir
    tmp_name = f".step-{2 * SAVE_EVERY}.tmp"
    monkeypatch.setattr(torch, "save", _half_then_enospc(torch.save, lambda p: p.name == "optimizer.pt" and p.parent.name == tmp_name))
    with pytest.raises(io.DiskFullError) as e:
        train(cfg)
    msg = str(e.value)
    first = run / "checkpoints" / f"step-{SAVE_EVERY}"
    assert msg.startswith(f"{run / 'checkpoints' / f'step-{2 * SAVE_EVERY}'}: no space left on the device: the write needs about ")
    # the space needed is the size of the previous checkpoint, which this one would equal
    assert io.format_bytes(sum(p.stat().st_size for p in first.rglob("*") if p.is_file())) in msg
    assert f"the previous checkpoint {first} is complete and kept; free space and rerun with --resume" in msg
    state = read_state(run)
    assert state["status"] == "failed" and "DiskFullError" in state["error"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"step-{SAVE_EVERY}"]  # the partial folder is gone
    _assert_loadable(first)
    assert not (run / "adapter").exists()

    monkeypatch.undo()  # space again
    assert train(cfg, resume=True) == run
    ref_adapter, _ = reference
    a = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == ref_adapter.keys() and all(torch.equal(a[k], ref_adapter[k]) for k in a)


def test_full_disk_writing_the_adapter_then_resume(tmp_path, tiny_model_dir, reference, monkeypatch):
    from peft import PeftModel

    cfg = load_config(config_file(tmp_path, tiny_model_dir, "enospc_adapter"))
    run = cfg.run_dir
    real = PeftModel.save_pretrained

    def save_pretrained(self, save_directory, *args, **kwargs):
        real(self, save_directory, *args, **kwargs)
        if Path(save_directory).name == ".adapter.tmp":
            w = Path(save_directory) / "adapter_model.safetensors"
            w.write_bytes(w.read_bytes()[:100])
            raise _enospc(w)

    monkeypatch.setattr(PeftModel, "save_pretrained", save_pretrained)
    with pytest.raises(io.DiskFullError, match=f"{run / 'adapter'}: no space left on the device: .* no adapter/ was written; "
                                               f"the previous checkpoint .*step-{STEPS} is complete and kept"):
        train(cfg)
    assert not (run / "adapter").exists() and not (run / ".adapter.tmp").exists()
    _assert_loadable(run / "checkpoints" / f"step-{STEPS}")
    monkeypatch.undo()
    train(cfg, resume=True)
    ref_adapter, _ = reference
    a = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == ref_adapter.keys() and all(torch.equal(a[k], ref_adapter[k]) for k in a)
    assert read_state(run)["status"] == "done"


# ---------------------------------------------------------------------------------------------
# A non-finite loss or gradient, injected into the cross-entropy of one optimizer step of a small
# SFT run (one micro-batch a step, a checkpoint after every step):
#   loss  the step's loss is NaN (and so is every gradient)
#   grad  the loss is finite but its gradient is NaN (a NaN in the backward pass only)


class _NanGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def sft_config(root: Path, model_dir: Path, name: str, steps: int = 4, **trainer) -> Path:
    import yaml

    from helpers import write_prepared

    data = {"experiment": "nonfinite", "runs_dir": str(root / name), "model": {"path": str(model_dir), "dtype": "float32"},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            "data": {"prepared_dir": str(write_prepared(root / "prepared")), "max_length": 64},
            "trainer": {"max_steps": steps, "batch_size": 2, "grad_accum": 1, "lr": 1e-3, "warmup_ratio": 0.0,
                        "save_every": 1, "keep_checkpoints": 10, "device": "cpu", **trainer}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def inject_nonfinite(monkeypatch, kind: str, at_step: int) -> None:
    from polychromic.training import loop

    real, calls = loop.ce_loss, [0]

    def ce_loss(model, batch, denom):
        calls[0] += 1  # one micro-batch per step: call n is step n
        loss, ce = real(model, batch, denom)
        if calls[0] != at_step:
            return loss, ce
        if kind == "loss":
            return loss * float("nan"), ce * float("nan")
        return _NanGrad.apply(loss), ce

    monkeypatch.setattr(loop, "ce_loss", ce_loss)


def _ckpt(run: Path, step: int) -> tuple[dict, dict]:
    d = run / "checkpoints" / f"step-{step}"
    return load_file(str(d / "adapter" / "adapter_model.safetensors")), torch.load(d / "optimizer.pt", weights_only=False)["state"]


def _rows(run: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nonfinite_step_is_skipped_with_optimizer_state_untouched(tmp_path, tiny_model_dir, monkeypatch, kind):
    inject_nonfinite(monkeypatch, kind, at_step=3)
    run = train(load_config(sft_config(tmp_path, tiny_model_dir, "skip", on_nonfinite="skip", log_every=2)))
    assert read_state(run)["status"] == "done"
    rows = _rows(run)
    assert [r["step"] for r in rows] == [2, 3, 4]  # a non-finite step is logged even off the log_every grid
    bad = rows[1]
    assert bad["train/nonfinite_step"] == 1.0 and bad["train/grad_norm"] == "nan"
    assert (bad["train/quality_loss"] == "nan") == (kind == "loss")
    assert "train/nonfinite_step" not in rows[0] and "train/nonfinite_step" not in rows[2]
    alerts = [a for a in _rows(run, "alerts.jsonl") if a["name"] == "nonfinite_step"]
    assert [a["step"] for a in alerts] == [3] and "optimizer step was skipped" in alerts[0]["message"]
    # step 3 changed nothing: weights, AdamW moments and its step count are those of step 2
    (w2, o2), (w3, o3), (w4, o4) = _ckpt(run, 2), _ckpt(run, 3), _ckpt(run, 4)
    assert all(torch.equal(w2[k], w3[k]) for k in w2)
    assert o2.keys() == o3.keys() and all(torch.equal(o2[i][k], o3[i][k]) for i in o2 for k in o2[i])
    assert int(o3[0]["step"]) == 2 and int(o4[0]["step"]) == 3
    assert any(not torch.equal(w3[k], w4[k]) for k in w3)  # and training went on after it
    final = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in final.values())


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nonfinite_step_stops_with_the_last_good_checkpoint(tmp_path, tiny_model_dir, monkeypatch, kind):
    from polychromic.training.guards import NonFiniteError

    clean = train(load_config(sft_config(tmp_path, tiny_model_dir, "clean")))
    cfg = load_config(sft_config(tmp_path, tiny_model_dir, "stop", on_nonfinite="stop"))
    run = cfg.run_dir
    with monkeypatch.context() as mp:
        inject_nonfinite(mp, kind, at_step=3)
        with pytest.raises(NonFiniteError, match=r"step 3: .*(cross-entropy = nan|gradient norm = nan).*trainer.on_nonfinite=stop"
                                                 r".*last good checkpoint is .*step-2"):
            train(cfg)
    state = read_state(run)
    assert state["status"] == "failed" and state["error"].startswith("NonFiniteError: step 3")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1", "step-2"] and not (run / "adapter").exists()
    assert _rows(run)[-1]["step"] == 3 and _rows(run)[-1]["train/nonfinite_step"] == 1.0
    assert "stops" in [a for a in _rows(run, "alerts.jsonl") if a["name"] == "nonfinite_step"][0]["message"]
    train(cfg, resume=True)  # the fault was transient: resuming from step 2 gives the clean run's adapter
    a, b = (load_file(str(r / "adapter" / "adapter_model.safetensors")) for r in (run, clean))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nonfinite_weights_are_never_saved(tmp_path, tiny_model_dir, monkeypatch):
    """Finite loss and gradient, but the optimizer writes a NaN into a weight (the guard of last
    resort): the checkpoint is refused, the previous one is the last on disk."""
    from polychromic.training.guards import NonFiniteError

    real_step, calls = torch.optim.AdamW.step, [0]

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    cfg = load_config(sft_config(tmp_path, tiny_model_dir, "nan_weights"))
    with pytest.raises(NonFiniteError, match=r"not writing checkpoint step-2: non-finite values in 1 parameter\(s\), e.g. \['.*lora_A"):
        train(cfg)
    assert sorted(p.name for p in (cfg.run_dir / "checkpoints").iterdir()) == ["step-1"]
    assert not (cfg.run_dir / "adapter").exists() and read_state(cfg.run_dir)["status"] == "failed"


# ---------------------------------------------------------------------------------------------
# `evaluate` with an adapter it cannot use: a clear error naming the file before anything is
# generated (the base model, listed first, would otherwise be sampled before the adapter loads).


@pytest.fixture(scope="module")
def eval_inputs(tiny_model_dir, tmp_path_factory):
    """(prepared data, a good adapter on the tiny model, an adapter on a tiny model with hidden
    size 32 instead of 64: same module names, other shapes)."""
    import shutil

    from transformers import AutoConfig, Qwen3ForCausalLM

    from polychromic.config import DataConfig, LoraConfig, ModelConfig
    from polychromic.data import prepare
    from polychromic.models import attach_lora, load_base_model

    root = tmp_path_factory.mktemp("bad_adapters")
    rows = [{"tweet_id": f"t{g}", "tweet": f"Tweet number {g} about coffee", "reply": f"Nice point {g}!"} for g in range(20)]
    (root / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepared = root / "prepared"
    prepare(DataConfig(source="jsonl", path=str(root / "raw.jsonl"), prepared_dir=str(prepared), val_fraction=0.1, test_fraction=0.2), seed=0)
    mc = AutoConfig.from_pretrained(tiny_model_dir)
    mc.hidden_size, mc.intermediate_size = 32, 64
    torch.manual_seed(0)
    Qwen3ForCausalLM(mc).save_pretrained(root / "h32")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, root / "h32" / name)
    made = {}
    for name, base in (("good", tiny_model_dir), ("other_base", root / "h32")):
        model = attach_lora(load_base_model(ModelConfig(path=str(base)), torch.device("cpu")), LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
        model.save_pretrained(root / name)
        made[name] = root / name
    return prepared, made["good"], made["other_base"]


def _broken_adapter(kind: str, tmp_path: Path, good: Path, other_base: Path) -> tuple[Path, str]:
    """An adapter folder broken in one way, and the text the error must contain."""
    import shutil

    if kind == "other_base":
        return other_base, r"does not fit the base model \(its adapter_config.json names base '.*h32'\): .*lora_A: shape \(4, 32\), the base needs \(4, 64\)"
    d = tmp_path / kind
    if kind == "from_other_run":  # right shapes, but the run that wrote it trained on another model
        run = tmp_path / "runs" / "old" / "seed_1"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text("model:\n  path: /models/some-other-base\n")
        (run / "state.json").write_text('{"status": "done"}')
        d = run / "adapter"
    shutil.copytree(good, d)
    w, c = d / "adapter_model.safetensors", d / "adapter_config.json"
    if kind == "truncated":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
        return d, rf"{w}: cannot be read \(SafetensorError: .*\); the file is corrupt or truncated"
    if kind == "garbage":
        w.write_bytes(b"\x00\xff" * 500)
        return d, rf"{w}: cannot be read .* corrupt or truncated"
    if kind == "bad_config":
        c.write_text('{"peft_type": "LORA", "r": 4,')
        return d, rf"{c}: not valid JSON"
    if kind == "nan":
        from safetensors.torch import save_file

        t = load_file(str(w))
        t[sorted(t)[0]][0, 0] = float("nan")
        save_file(t, str(w))
        return d, rf"{w}: non-finite values in 1 tensor\(s\)"
    if kind == "from_other_run":
        return d, r"trained on model.path='/models/some-other-base' gguf_file=None \(.*config.yaml\), but this config loads model.path="
    raise AssertionError(kind)


BAD_ADAPTERS = ["truncated", "garbage", "bad_config", "nan", "other_base", "from_other_run"]


@pytest.mark.parametrize("kind", BAD_ADAPTERS)
def test_evaluate_refuses_a_bad_adapter_before_any_generation(tmp_path, tiny_model_dir, eval_inputs, monkeypatch, kind):
    from polychromic import generation
    from polychromic.config import config_from_dict
    from polychromic.evaluation import evaluate
    from polychromic.models import AdapterError

    prepared, good, other_base = eval_inputs
    adapter, expected = _broken_adapter(kind, tmp_path, good, other_base)
    calls = []
    monkeypatch.setattr(generation, "sample", lambda *a, **k: calls.append(a) or pytest.fail("generated before the adapter check"))
    out = tmp_path / "eval"
    cfg = config_from_dict({"model": {"path": str(tiny_model_dir), "dtype": "float32"}, "data": {"prepared_dir": str(prepared)},
                            "trainer": {"device": "cpu"},
                            "eval": {"models": [{"name": "base"}, {"name": "lora", "adapter": str(adapter)}], "k": 2, "max_prompts": 2,
                                     "max_new_tokens": 4, "output_dir": str(out)}})
    with pytest.raises(AdapterError, match=r"^eval.models\[lora\].adapter .*" + expected):
        evaluate(cfg)
    assert calls == [] and not (out / "samples.jsonl").exists()


def test_full_disk_while_appending_samples_then_rerun(tmp_path, tiny_model_dir, eval_inputs):
    """ENOSPC in the middle of evaluation's samples.jsonl: the error names it, the file keeps
    whole rows only, and the rerun (space again) ends byte-identical to an uninterrupted run."""
    from polychromic.config import config_from_dict
    from polychromic.evaluation import evaluate

    prepared, _, _ = eval_inputs

    def cfg(out):  # 4 prompts, 2 per generate call: samples.jsonl is appended to twice
        return config_from_dict({"model": {"path": str(tiny_model_dir), "dtype": "float32"}, "data": {"prepared_dir": str(prepared)},
                                 "trainer": {"device": "cpu"},
                                 "eval": {"models": [{"name": "base"}], "k": 2, "max_prompts": 4, "batch_size": 4,
                                          "max_new_tokens": 4, "output_dir": str(out)}})

    ref = evaluate(cfg(tmp_path / "ref")) / "samples.jsonl"
    out = tmp_path / "full"
    samples = out / "samples.jsonl"
    with full_disk(samples, room=ref.stat().st_size // 2), pytest.raises(io.DiskFullError) as e:
        evaluate(cfg(out))
    assert str(e.value).startswith(f"{samples}: no space left on the device: the write needs about ")
    kept = samples.read_bytes()
    assert kept and kept.endswith(b"\n") and ref.read_bytes().startswith(kept)  # the first call's rows, whole
    assert 0 < len(kept) < ref.stat().st_size
    evaluate(cfg(out))
    assert samples.read_bytes() == ref.read_bytes()


def test_sigterm_records_the_run_as_failed(tmp_path):
    from polychromic.config import config_from_dict
    from polychromic.training.monitor import Monitor, Terminated

    cfg = config_from_dict({"experiment": "term", "runs_dir": str(tmp_path / "runs")})
    run_dir = cfg.run_dir
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        with Monitor(run_dir, cfg, total_steps=3) as mon:
            mon.log(1, {"train/quality_loss": 1.0})
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
            pytest.fail("SIGTERM did not interrupt the run")
    state = read_state(run_dir)
    assert state["status"] == "failed" and state["error"].startswith("Terminated: terminated by SIGTERM")
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is restored
