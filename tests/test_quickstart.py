"""The main job end to end on the real embedded default (SmolLM2-135M-Instruct, MiniLM, chatterbot
dialogs), at the smallest sizes (`--fast`): the `quickstart` experiment trains both arms, evaluates
them at both temperatures, reports "too small to detect" instead of a verdict, draws both models'
samples from common random numbers, writes the full-size result next to it, and a rerun resumes."""

import json
import subprocess
import sys

from polychromic.io import read_jsonl


def _quickstart(workdir):
    return subprocess.run([sys.executable, "-m", "polychromic", "quickstart", "--fast", "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=900)


def test_quickstart_fast_end_to_end(tmp_path):
    r = _quickstart(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for arm in ("sft", "polychromic"):
        run = tmp_path / "runs" / arm / "seed_0"
        assert json.loads((run / "state.json").read_text())["status"] == "done"
        assert (run / "adapter" / "adapter_model.safetensors").is_file()
    poly_metrics = list(read_jsonl(tmp_path / "runs" / "polychromic" / "seed_0" / "metrics.jsonl"))
    assert any("train/grad_norm_div" in m and m["train/grad_norm_div"] > 0 for m in poly_metrics)

    # the demo's report says what it is: no verdict, the minimum detectable effect instead
    report = (tmp_path / "report" / "report.md").read_text()
    assert "too small to detect" in report and "minimum detectable effect" in report
    assert "underpowered" in report
    assert "exploratory" in report  # secondary differences that do not survive Holm
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["verdict"]["status"] == "underpowered", results["verdict"]
    assert (tmp_path / "report" / "report.html").is_file()

    # common random numbers: 3 training steps barely move the adapter, so the two models' samples
    # (same seed per prompt and sample index) are nearly all the same text, and so are the metrics
    samples = list(read_jsonl(tmp_path / "eval" / "T0.7" / "samples.jsonl"))
    by_unit: dict = {}
    for s in samples:
        by_unit.setdefault((s["prompt_id"], s["kind"], s["index"]), {})[s["model"]] = s["text"]
    assert len(by_unit) >= 8 and all(len(v) == 2 for v in by_unit.values())
    same = sum(len(set(v.values())) == 1 for v in by_unit.values())
    assert same >= 0.75 * len(by_unit), f"only {same} of {len(by_unit)} samples agree under common random numbers"
    rows = {(r["model"], r["prompt_id"]): r["metrics"] for r in read_jsonl(tmp_path / "eval" / "T0.7" / "per_prompt.jsonl")}
    models = sorted({m for m, _ in rows})
    d2 = {m: [rows[(m, p)]["distinct_2"] for (mm, p) in sorted(rows) if mm == m] for m in models}
    a, b = d2.values()
    assert sum(abs(x - y) for x, y in zip(a, b)) / len(a) < 0.05

    # the full-size result, from committed files
    full = tmp_path / "full_result" / "report.md"
    text = full.read_text()
    assert full.is_file() and "# Experiment result" in text and "105 prompts" in text and "## Targets" in text
    assert (tmp_path / "full_result" / "frontier.png").is_file()
    assert str(full) in r.stderr

    # a rerun resumes: nothing is trained or generated again
    before = (tmp_path / "eval" / "T0.7" / "samples.jsonl").read_bytes()
    r2 = _quickstart(tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "training: all 2 run(s) done" in r2.stdout, r2.stdout[-2000:]
    assert (tmp_path / "eval" / "T0.7" / "samples.jsonl").read_bytes() == before


def test_gpu_quickstart_is_the_result_recipe_at_one_seed_on_validation(tmp_path):
    from polychromic.config import EMBEDDED_E5
    from polychromic.experiment.plan import make_plan
    from polychromic.experiment.spec import load_spec
    from polychromic.quickstart import quickstart_spec

    spec = quickstart_spec(tmp_path, gpu=True)
    result = load_spec("result")
    assert spec.seeds == [0] and spec.eval.split == "val" and spec.split_seed == result.split_seed
    assert [a.name for a in spec.arms] == ["sft", "polychromic_moderate"]
    moderate = next(a for a in spec.arms if a.name == "polychromic_moderate")
    assert moderate.init_from == "sft" and moderate.config == next(a.config for a in result.arms if a.name == moderate.name)
    assert spec.eval.embedder == EMBEDDED_E5  # held out: no training reward uses it
    assert {t.arm for t in spec.targets} == {"polychromic_moderate"}
    plan = make_plan(spec)
    assert [(r.arm, r.seed) for r in plan.train] == [("sft", 0), ("polychromic_moderate", 0)]
    assert all(str(r.run_dir).startswith(str(tmp_path.resolve())) for r in plan.train)
