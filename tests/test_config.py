import subprocess
import sys
from pathlib import Path

import pytest

from polychromic.config import Config, ConfigError, load_config, to_yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "src/polychromic/resources/configs"
SHIPPED = sorted(CONFIGS.rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads_and_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_prior_values_in_shipped_configs():
    mod = load_config(CONFIGS / "polychromic_1.0_moderate.yaml")
    assert (mod.objective.diversity_weight, mod.rollout.n_generations, mod.rollout.max_examples_for_diversity) == (1.0, 5, 8)
    assert mod.objective.compute_diversity_every_n_steps == 3
    assert mod.trainer.batch_size * mod.trainer.grad_accum == 16
    assert (mod.lora.r, mod.lora.alpha, mod.lora.dropout) == (16, 16, 0.1)
    con = load_config(CONFIGS / "polychromic_0.3_conservative.yaml")
    assert (con.objective.diversity_weight, con.rollout.n_generations, con.rollout.max_examples_for_diversity, con.objective.compute_diversity_every_n_steps) == (0.3, 3, 4, 5)
    agg = load_config(CONFIGS / "polychromic_2.0_aggressive.yaml")
    assert agg.objective.diversity_weight == 2.0
    base = load_config(CONFIGS / "baseline.yaml")
    assert base.objective.name == "sft" and base.data.prompt_field == "tweet"


def test_misspelt_key_names_path_and_suggestion():
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "polychromic_1.0_moderate.yaml", ["objective.diversty_weight=1.0"])
    assert "objective.diversty_weight: unknown key, did you mean diversity_weight?" in str(e.value)


def test_every_error_reported_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["trainer.lr=-1", "lora.r=abc", "objective.name=polychromc", "bogus=1"])
    msg = str(e.value)
    assert "trainer.lr: must be > 0" in msg
    assert "lora.r: expected int, got 'abc'" in msg
    assert "did you mean polychromic?" in msg
    assert "bogus: unknown key" in msg
    assert len(e.value.errors) == 4


def test_extends_deep_merge_relative_and_overrides(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("trainer: {lr: 0.001, batch_size: 2}\nlora: {r: 4}\n")
    (tmp_path / "sub" / "child.yaml").write_text("extends: ../base.yaml\ntrainer: {batch_size: 3}\n")
    cfg = load_config(tmp_path / "sub" / "child.yaml", ["lora.alpha=32", "trainer.lr=2e-4", "lora.target_modules=[q_proj]"])
    assert cfg.trainer.lr == 2e-4 and cfg.trainer.batch_size == 3 and cfg.lora.r == 4 and cfg.lora.alpha == 32
    assert cfg.lora.target_modules == ["q_proj"]
    # the resolved YAML round-trips
    again = tmp_path / "resolved.yaml"
    again.write_text(to_yaml(cfg))
    assert load_config(again) == cfg


def test_extends_cycle_detected(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_polychromic_needs_n_above_set_size():
    with pytest.raises(ConfigError, match="rollout.n_generations: must be >= set_size \\+ 1"):
        load_config(None, ["objective.name=polychromic", "objective.diversity_weight=1", "rollout.n_generations=4", "objective.set_size=4"])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "polychromic", *args], capture_output=True, text=True, cwd=REPO)


def test_cli_validate_and_print_config():
    ok = _cli("validate", "polychromic_1.0_moderate")
    assert ok.returncode == 0, ok.stderr
    bad = _cli("validate", "polychromic_1.0_moderate", "objective.diversty_weight=2")
    assert bad.returncode != 0
    assert "objective.diversty_weight: unknown key, did you mean diversity_weight?" in bad.stderr
    pc = _cli("print-config", "polychromic_2.0_aggressive", "trainer.lr=1e-4")
    assert pc.returncode == 0 and "diversity_weight: 2.0" in pc.stdout and "lr: 0.0001" in pc.stdout


def test_misspelt_key_in_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text((CONFIGS / "polychromic_1.0_moderate.yaml").read_text().replace("diversity_weight", "diversty_weight"))
    (tmp_path / "_qwen3_8b.yaml").write_text((CONFIGS / "_qwen3_8b.yaml").read_text())
    r = _cli("validate", str(p))
    assert r.returncode != 0 and "objective.diversty_weight: unknown key, did you mean diversity_weight?" in r.stderr


def test_relevance_ramp_needs_a_positive_threshold():
    with pytest.raises(ConfigError, match="objective.relevance_threshold: must be > 0 with quality guard_x_relevance_ramp"):
        load_config(None, ["objective.quality=guard_x_relevance_ramp", "objective.relevance_threshold=0"])
    assert load_config(None, ["objective.quality=guard_x_relevance_ramp", "objective.relevance_threshold=0.35",
                              "objective.diversity_metric=semantic_distinct"]).objective.relevance_threshold == 0.35


def test_shipped_names_resolve_from_any_directory(tmp_path):
    from polychromic import resources

    names = resources.shipped("configs")
    assert {"baseline", "polychromic_1.0_moderate", "demo/baseline", "dialog/sft_baseline"} <= set(names)
    assert load_config("polychromic_1.0_moderate").objective.diversity_weight == 1.0
    r = subprocess.run([sys.executable, "-m", "polychromic", "validate", "demo/polychromic"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_unknown_shipped_name_suggests_close_ones():
    with pytest.raises(ConfigError, match="no shipped config of that name; did you mean polychromic_1.0_moderate"):
        load_config("polychromic_1.0_moderat")


def test_configs_list_and_copy(tmp_path):
    listed = subprocess.run([sys.executable, "-m", "polychromic", "configs", "list"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    assert "polychromic_1.0_moderate" in names and "demo/baseline" in names
    cp = subprocess.run([sys.executable, "-m", "polychromic", "configs", "copy", "polychromic_1.0_moderate", "mine.yaml"],
                        capture_output=True, text=True, cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr
    text = (tmp_path / "mine.yaml").read_text()
    assert "extends" not in text.replace("extends: merged in", "")  # the chain is merged: the copy stands alone
    assert load_config(tmp_path / "mine.yaml") == load_config("polychromic_1.0_moderate")
    again = subprocess.run([sys.executable, "-m", "polychromic", "configs", "copy", "baseline", "mine.yaml"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 2 and "mine.yaml: exists" in again.stderr
    assert load_config(tmp_path / "mine.yaml") == load_config("polychromic_1.0_moderate")  # untouched


def test_cli_validate_reports_unknown_key_and_value_error_together():
    r = _cli("validate", "baseline", "trainer.lr=-1", "trainer.batchsize=3")
    assert r.returncode == 2
    assert "2 config error(s)" in r.stderr
    assert "trainer.batchsize: unknown key, did you mean batch_size?" in r.stderr
    assert "trainer.lr: must be > 0" in r.stderr


def test_structural_value_and_cross_field_errors_in_one_report():
    from polychromic.config import config_from_dict

    data = {
        "trainer": {"lr": -1, "batchsize": 3, "grad_accum": "two", "warmup_ratio": 2, "pad_to_multiple_of": 0},
        "lora": {"r": "abc", "dropout": 1.5},
        "rollout": {"min_generation_length": 50, "max_generation_length": 10},
        "eval": {"models": [{"name": "a", "adapter": 3}, {"name": "b", "colour": "red"}], "k": 0},
    }
    with pytest.raises(ConfigError) as e:
        config_from_dict(data, "mixed.yaml")
    assert sorted(e.value.errors) == sorted([
        "trainer.batchsize: unknown key, did you mean batch_size?",
        "trainer.grad_accum: expected int, got 'two'",
        "lora.r: expected int, got 'abc'",
        "eval.models[0].adapter: expected str or null, got 3",
        "eval.models[1].colour: unknown key (valid keys: name, adapter)",
        "trainer.lr: must be > 0",
        "trainer.warmup_ratio: must be in [0, 1)",
        "lora.dropout: must be in [0, 1)",
        "rollout.min_generation_length: must be in [0, max_generation_length]",
        "eval.k: must be >= 1",
        "trainer.pad_to_multiple_of: must be >= 1 (1 = no rounding)",
    ])
    assert str(e.value).startswith("mixed.yaml: 11 config error(s):")


def test_cross_field_rules_skip_only_the_fields_that_failed_structurally():
    from polychromic.config import config_from_dict

    # N failed (its default 5 < set_size + 1 = 6 would be judged) and val_fraction failed (its
    # default 0.05 + 0.99 >= 1 would be judged): neither cross-field rule may fire on a default.
    data = {"objective": {"name": "polychromic", "diversity_weight": 1.0, "set_size": 5},
            "rollout": {"n_generations": "many"},
            "data": {"val_fraction": "abc", "test_fraction": 0.99},
            "eval": {"models": [{"name": "a"}, {"name": 5}], "baseline": "b"}}
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    assert sorted(e.value.errors) == sorted([
        "rollout.n_generations: expected int, got 'many'",
        "data.val_fraction: expected float, got 'abc'",
        "eval.models[1].name: expected str, got 5",
    ])
    # The same rules do fire when the fields they read are well-typed.
    data["rollout"]["n_generations"], data["data"]["val_fraction"], data["eval"]["models"][1]["name"] = 5, 0.05, "c"
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    assert sorted(line.split(":")[0] for line in e.value.errors) == ["data.test_fraction", "eval.baseline", "rollout.n_generations"]
