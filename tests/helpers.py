"""Small shared test helpers (imported by test modules; tests/ is on sys.path under pytest)."""

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path


def write_prepared(folder: Path, n_rows: int = 24) -> Path:
    """A prepared train split of n_rows rows, two replies per prompt group (no tokenizer needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": f"r{i}", "group": f"g{i // 2}", "prompt": f"what do you think of topic number {i // 2} today?",
         "reply": f"I like topic {i // 2}, it is fine number {i % 5}."}
        for i in range(n_rows)
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def resume_config(root: Path, model_dir: Path, name: str, experiment: str, steps: int, save_every: int) -> Path:
    """A config file for the kill-and-resume tests (runs under root/name, file root/name.yaml): a
    tiny polychromic run on CPU that crosses an epoch boundary (4 rows a step, 24 rows) with
    dropout on, so the restored RNG state, data position and step-seeded rollouts all matter."""
    import yaml

    data = {
        "experiment": experiment,
        "runs_dir": str(root / name),
        "model": {"path": str(model_dir), "dtype": "float32"},
        # dropout on: the restored RNG state must reproduce the dropout masks
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
        "data": {"prepared_dir": str(write_prepared(root / "prepared")), "max_length": 64},
        # rollouts on even steps only: the step-seeded rollouts must line up after resuming
        "objective": {"name": "polychromic", "diversity_weight": 1.0, "quality": "relevance", "compute_diversity_every_n_steps": 2},
        "rollout": {"n_generations": 4, "max_examples_for_diversity": 2, "max_generation_length": 6},
        "trainer": {"max_steps": steps, "batch_size": 2, "grad_accum": 2, "lr": 1e-3, "warmup_ratio": 0.1,
                    "save_every": save_every, "keep_checkpoints": 2, "device": "cpu"},
    }
    assert steps * 4 > 24, "the run must cross an epoch boundary"
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class JSONHandler(BaseHTTPRequestHandler):
    """Base of the fake HTTP services (an OpenAI-compatible judge): JSON replies, quiet logs."""

    def _send(self, code: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output clean
        pass
