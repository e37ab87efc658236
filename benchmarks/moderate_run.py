"""The whole moderate run, end to end through `polychromic train`, on the Qwen3-8B shape.

The shipped config `polychromic_1.0_moderate` (4,940 examples, 2 epochs, effective batch 16 ->
618 optimizer steps; N = 5 samples for M = 8 prompts every 3 steps -> 206 rollout steps; 100 new
tokens), with only these overrides:

- model.path, data.prepared_dir, objective.diversity_encoder_model: the random-weight Qwen3-8B
  folder, the synthetic tweets and the MiniLM-shaped embedder this script writes first
  (bench_models.py; nothing is downloaded);
- trainer.device, and trainer.expandable_segments as the allocator was set up (the script
  starts CUDA before `polychromic train` does, so it chooses the allocator setting itself,
  with the trainer's rule; --no-expandable-segments keeps the default segments);
- objective.quality=constant (q = 1, so F(S) = d(S)). A random-weight model never emits the
  end-of-turn token, so under the shipped quality (guard x relevance) every reply is truncated,
  q = 0, every advantage 0, and the trainer skips the policy-gradient recompute altogether: the
  run would time less work than a real one. With q = 1 the advantages are the set-diversity
  ones, non-zero in every group, so every step recomputes and backpropagates all 40 samples
  (the most work the term can ask for).

`--memory-gb 80` caps this process's GPU memory (torch.cuda.set_per_process_memory_fraction),
so a run on a bigger card shows the configuration fits an 80 GB one; the recompute sizes its
passes within that cap. `polychromic train` runs in this process (polychromic.cli.main), under
the cap; the GPU's used memory is polled with nvidia-smi throughout (its peak includes the CUDA
context and the allocator's cache, what another process would find taken).

    PYTHONPATH=src python3 benchmarks/moderate_run.py --work /root/bench --memory-gb 80   # GPU
    PYTHONPATH=src python benchmarks/moderate_run.py --shape tiny --work /tmp/mr --examples 96 --device cpu

Writes moderate_run.json (and the run's metrics.jsonl) to --out (default $OUT).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models as bm  # noqa: E402

CONFIG = "polychromic_1.0_moderate"


class GpuPoll(threading.Thread):
    """The peak of nvidia-smi's used memory (MiB) while the run goes on."""

    def __init__(self, every: float = 0.5):
        super().__init__(daemon=True)
        self.every, self.peak_mib, self.samples, self.stop = every, 0, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                self.peak_mib = max([self.peak_mib] + [int(x) for x in out.split()])
                self.samples += 1
            except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
                print(f"nvidia-smi poll failed: {exc}", file=sys.stderr)
                return
            self.stop.wait(self.every)


def step_times(metrics: Path) -> dict:
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    if len(rows) < 3:
        raise RuntimeError(f"{metrics}: only {len(rows)} logged steps")
    poly, sft = [], []
    for prev, row in zip(rows, rows[1:]):
        (poly if "train/rollout_seconds" in row else sft).append(row["time"] - prev["time"])
    roll = [r["train/rollout_seconds"] for r in rows[1:] if "train/rollout_seconds" in r]
    return {"logged_steps": len(rows), "last_step": rows[-1]["step"],
            "median_sft_step_s": statistics.median(sft) if sft else None,
            "median_polychromic_step_s": statistics.median(poly) if poly else None,
            "median_rollout_s": statistics.median(roll) if roll else None,
            "steps_s_after_first": rows[-1]["time"] - rows[0]["time"], "first_step_logged_at": rows[0]["time"],
            "last": {k: v for k, v in rows[-1].items() if isinstance(v, (int, float))}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(bm.SHAPES), default="8b")
    ap.add_argument("--work", required=True, help="folder for the model, embedder, data and runs")
    ap.add_argument("--examples", type=int, default=4940)
    ap.add_argument("--memory-gb", type=float, default=None, help="cap this process's GPU memory (GiB)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--no-expandable-segments", action="store_true", help="keep the allocator's default segments")
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides (e.g. trainer.fast_lora=false)")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args(argv)
    import torch

    from polychromic import cli
    from polychromic.training.allocator import configure_allocator

    # Writing the model folder starts CUDA, so the allocator is set here, as `polychromic train`
    # would set it in a process of its own (training/allocator.py).
    alloc = configure_allocator(not args.no_expandable_segments, args.device)
    work = Path(args.work)
    res: dict = {"shape": args.shape, "config": CONFIG, "examples": args.examples, "allocator_choice": alloc}
    cuda = args.device == "cuda"
    t0 = time.perf_counter()
    model_dir = bm.write_model(work / f"qwen3_{args.shape}", args.shape, args.device, torch.bfloat16 if cuda else torch.float32)
    res["write_model_s"] = time.perf_counter() - t0
    emb = bm.write_embedder(work / "minilm", tiny=args.shape == "tiny")
    prep = bm.write_tweets(work / "prepared", args.examples, bm.SHAPES[args.shape]["vocab_size"])
    runs = work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    res["host"] = bm.host()
    if cuda:
        torch.cuda.empty_cache()
        res["device"] = torch.cuda.get_device_name()
        total = torch.cuda.mem_get_info()[1]
        res["gpu_total_gib"] = total / 2**30
        if args.memory_gb:
            torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_gb * 2**30 / total))
            res["memory_cap_gib"] = args.memory_gb
        torch.cuda.reset_peak_memory_stats()
    overrides = [f"model.path={model_dir}", f"data.prepared_dir={prep}", f"objective.diversity_encoder_model={emb}",
                 "objective.quality=constant", f"runs_dir={runs}", f"trainer.device={args.device}",
                 f"trainer.expandable_segments={str(not args.no_expandable_segments).lower()}", *args.set]
    if not cuda:
        overrides.append("model.dtype=float32")
    res["overrides"] = overrides
    print(f"polychromic train {CONFIG} {' '.join(overrides)}", flush=True)
    poll = GpuPoll() if cuda and shutil.which("nvidia-smi") else None
    if poll:
        poll.start()
    t0 = time.perf_counter()
    rc = cli.main(["train", CONFIG, *overrides])
    res["train_wall_s"] = time.perf_counter() - t0
    res["train_started_at"] = time.time() - res["train_wall_s"]
    if poll:
        poll.stop.set()
        poll.join()
        res["nvidia_smi_peak_gib"] = poll.peak_mib / 1024
        res["nvidia_smi_samples"] = poll.samples
    if cuda:
        get = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
        res["allocator_settings"] = get() if get else None
        res["torch_peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res["torch_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    res["rc"] = rc
    run_dir = next(runs.glob("*/seed_*"))
    import yaml

    res["trainer_config"] = yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]  # fast_lora, expandable_segments, ...
    res.update(step_times(run_dir / "metrics.jsonl"))
    res["first_step_done_s"] = res.pop("first_step_logged_at") - res["train_started_at"]  # load, first compile, step 1
    print(json.dumps({k: v for k, v in res.items() if k != "last"}, indent=1), flush=True)
    if args.out:
        from polychromic.io import atomic_write_json

        Path(args.out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(args.out) / "moderate_run.json", res)
        shutil.copy(run_dir / "metrics.jsonl", Path(args.out) / "moderate_metrics.jsonl")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
