"""The main job end to end on the real embedded default (SmolLM2-135M-Instruct, MiniLM, chatterbot
dialogs), at the smallest sizes (`--fast`): every stage writes what the next one reads, and the
report shows all three models."""

import json
import subprocess
import sys

from polychromic.io import read_jsonl


def test_quickstart_fast_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, "-m", "polychromic", "quickstart", "--fast", "--workdir", str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("demo_baseline", "demo_polychromic"):
        run = tmp_path / "runs" / name / "seed_42"
        assert json.loads((run / "state.json").read_text())["status"] == "done"
        assert (run / "adapter" / "adapter_model.safetensors").is_file()
    poly_metrics = list(read_jsonl(tmp_path / "runs" / "demo_polychromic" / "seed_42" / "metrics.jsonl"))
    assert any("train/grad_norm_div" in m and m["train/grad_norm_div"] > 0 for m in poly_metrics)
    ev = tmp_path / "eval"
    results = json.loads((ev / "results.json").read_text())
    assert set(results["models"]) == {"base", "sft_baseline", "polychromic_moderate"}
    html = (ev / "report.html").read_text()
    assert "polychromic_moderate" in html and "<img" in html
    # a rerun resumes: nothing is trained or generated again
    before = (ev / "samples.jsonl").read_bytes()
    r2 = subprocess.run([sys.executable, "-m", "polychromic", "quickstart", "--fast", "--workdir", str(tmp_path)],
                        capture_output=True, text=True, timeout=900)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "already trained, skipping" in r2.stderr
    assert (ev / "samples.jsonl").read_bytes() == before
