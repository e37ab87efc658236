"""Stage-2 arms of an experiment (`init_from`): the run starts from the named arm's adapter of the
same seed merged into the base, waits for that run, and is evaluated through its stacked adapter."""

from __future__ import annotations

import json

import pytest
import yaml

from polychromic.config import ConfigError
from polychromic.experiment.plan import make_plan
from polychromic.experiment.spec import arm_config, eval_config, load_spec
from test_experiment import cli, write_experiment


def _stage2_spec(tmp_path, tiny_model_dir, **arm):
    spec = yaml.safe_load(write_experiment(tmp_path, tiny_model_dir).read_text())
    spec.update(seeds=[0], monotone=[], identical=[], targets=[])
    spec["arms"] = [spec["arms"][0], {"name": "stage2", "role": "variant", "init_from": "sft",
                                      "overrides": {"trainer.max_steps": 2, "trainer.lr": 1e-4}, **arm}]
    spec["eval"].update(temperatures=[0.7], max_prompts=2)
    (tmp_path / "stage2.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return tmp_path / "stage2.yaml"


def test_stage2_arm_configs_and_plan(tmp_path, tiny_model_dir):
    spec = load_spec(_stage2_spec(tmp_path, tiny_model_dir))
    plan = make_plan(spec)
    sft, stage2 = plan.train
    assert sft.after is None and stage2.after == sft.run_dir
    cfg = arm_config(spec, spec.arms[1], 0)
    assert cfg.model.init_adapter == str(sft.run_dir / "adapter")
    models = {m.name: m.adapter for m in eval_config(spec, 0.7).eval.models}
    assert models["stage2_s0"].endswith("stage2/seed_0/adapter_stacked") and models["sft_s0"].endswith("sft/seed_0/adapter")


@pytest.mark.parametrize("init_from, message", [("nope", "must name another arm"), ("stage2", "must name another arm")])
def test_stage2_arm_must_start_from_another_arm(tmp_path, tiny_model_dir, init_from, message):
    with pytest.raises(ConfigError, match=rf"arms\[1\]\.init_from: {message}"):
        load_spec(_stage2_spec(tmp_path, tiny_model_dir, init_from=init_from))


def test_stage2_experiment_end_to_end(tmp_path, tiny_model_dir):
    _stage2_spec(tmp_path, tiny_model_dir)
    r = cli(["experiment", "run", "stage2.yaml", "--parallel", "2"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "out"
    # with two slots free, the stage-2 run still starts only once its source has finished
    state = {a: json.loads((out / "runs" / a / "seed_0" / "state.json").read_text()) for a in ("sft", "stage2")}
    assert state["sft"]["finished_at"] < state["stage2"]["first_started_at"]
    assert (out / "runs" / "stage2" / "seed_0" / "adapter_stacked" / "adapter_config.json").is_file()
    models = json.loads((out / "eval" / "T0.7" / "models.json").read_text())
    assert models["stage2_s0"]["adapter"].endswith("adapter_stacked")
    assert (out / "report" / "results.json").is_file()
