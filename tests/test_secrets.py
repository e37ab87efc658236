"""Secrets are never written: with fake tracker, judge and hub keys in the environment, a training
run (TensorBoard + W&B offline + MLflow file store), an evaluation with the LLM judge (a fake
OpenAI-compatible server on 127.0.0.1) and the report are made through the CLI on the tiny model;
then no file under the run, evaluation and report directories (nor the trackers' side folders)
contains any of the key values, and nothing printed shows them either."""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer

import pytest
import yaml

from helpers import JSONHandler

from polychromic import cli
from polychromic.config import DataConfig
from polychromic.data import prepare

SECRETS = {
    "WANDB_API_KEY": "wandbkey-5ecret-91f3c7a2d4e8b6f0a1c3e5d7b9f2a4c6e8d0b1f3",
    "MLFLOW_TRACKING_TOKEN": "mlflowtok-5ecret-4be2d9f7a1c3",
    "OPENAI_API_KEY": "sk-openai-5ecret-0c7e1f9a3b5d",
    "HF_TOKEN": "hf_5ecretHubToken8a2c4e6f0b1d3",
}


class FakeOpenAI(JSONHandler):
    """Answers every chat completion with "A"; records the Authorization headers it got."""

    auth: list[str] = []

    def do_POST(self):  # noqa: N802 (http.server API)
        json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).auth.append(self.headers.get("Authorization", ""))
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": "A"}}]})


@pytest.fixture()
def judge_url():
    FakeOpenAI.auth = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_no_secret_in_any_written_file(tmp_path, tiny_model_dir, judge_url, monkeypatch, capfd):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_side" / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing could be uploaded
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    src = tmp_path / "raw.jsonl"
    src.write_text("".join(json.dumps({"tweet_id": f"t{g}", "tweet": f"Tweet {g} about the rain and coffee", "reply": f"Nice point {g}!"}) + "\n"
                           for g in range(20)))
    prepared = tmp_path / "prepared"
    prepare(DataConfig(source="jsonl", path=str(src), prepared_dir=str(prepared), val_fraction=0.1, test_fraction=0.3), seed=0)
    run = tmp_path / "runs" / "secrets" / "seed_42"
    eval_dir = tmp_path / "eval"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "experiment": "secrets",
        "runs_dir": str(tmp_path / "runs"),
        "model": {"path": str(tiny_model_dir), "dtype": "float32"},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "data": {"prepared_dir": str(prepared), "max_length": 48},
        "trainer": {"max_steps": 3, "batch_size": 2, "grad_accum": 1, "save_every": 2, "device": "cpu"},
        "tracking": {"backends": ["tensorboard", "wandb", "mlflow"], "wandb_mode": "offline", "project": "secrets"},
        "eval": {"models": [{"name": "base"}, {"name": "tuned", "adapter": str(run / "adapter")}], "baseline": "base",
                 "k": 2, "max_prompts": 3, "max_new_tokens": 6, "batch_size": 8, "bootstrap_resamples": 200, "output_dir": str(eval_dir),
                 # the default api_key_env, OPENAI_API_KEY: the key a real user would have set
                 "judge": {"enabled": True, "base_url": judge_url, "model": "fake-judge", "max_calls": 50}},
    }))

    assert cli.main(["train", str(cfg)]) == 0
    assert cli.main(["evaluate", str(cfg)]) == 0
    assert cli.main(["report", str(eval_dir)]) == 0

    # The keys were really in use: the judge got its key on every call...
    assert FakeOpenAI.auth and set(FakeOpenAI.auth) == {f"Bearer {SECRETS['OPENAI_API_KEY']}"}
    # ...and every tracker, the evaluation and the report wrote their files.
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"metrics.jsonl", "state.json", "env.json", "config.yaml", "adapter_model.safetensors", "judge.jsonl", "samples.jsonl",
            "models.json", "results.json", "report.md", "report.html"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    assert any(n.endswith(".wandb") for n in names)
    assert (run / "mlruns").is_dir() and any(p.is_relative_to(run / "mlruns") for p in files)
    assert json.loads((eval_dir / "models.json").read_text())["tuned"]["judge"]["pairs"] == 3

    leaks = [(name, str(p)) for p in files for name, value in SECRETS.items() if value.encode() in p.read_bytes()]
    assert not leaks, f"secret values written to files: {leaks}"
    out = capfd.readouterr()
    printed = out.out + out.err
    assert not [name for name, value in SECRETS.items() if value in printed], "a secret was printed"
