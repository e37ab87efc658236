"""Property-based: any YAML document or override gives either a valid Config or a ConfigError
whose every line names a path — never a traceback of another type, never a silently wrong value."""

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polychromic.config import Config, ConfigError, config_from_dict, load_config, parse_overrides

KEYS = ["experiment", "seed", "model", "lora", "trainer", "objective", "rollout", "eval", "data", "tracking",
        "lr", "r", "alpha", "name", "diversity_weight", "n_generations", "k", "models", "diversty_weight", "extends"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.sampled_from(["sft", "polychromic", "cosine", "semantic", "1e-4", "nan"]))
trees = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.sampled_from(KEYS), c, max_size=4)), max_leaves=12)
# Each error line: "<path>: <message>", the path made of identifiers, dots and [i].
ERROR_LINE = re.compile(r"^(<root>|[A-Za-z_][\w.\[\]]*): .+")

N_EXAMPLES = 400


@settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), trees, max_size=6))
def test_random_config_trees_never_crash(data):
    try:
        cfg = config_from_dict(data)
    except ConfigError as exc:
        assert exc.errors, "a ConfigError must carry at least one error"
        for line in exc.errors:
            assert ERROR_LINE.match(line), line
        return
    assert isinstance(cfg, Config)


@settings(max_examples=N_EXAMPLES, deadline=None)
@given(st.text(max_size=200))
def test_random_yaml_text_gives_config_error_with_file(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    p.write_text(text, encoding="utf-8")
    try:
        load_config(p)
    except ConfigError as exc:
        assert exc.errors
        return


@settings(max_examples=N_EXAMPLES, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=4))
def test_random_overrides_never_crash(items):
    try:
        load_config(None, items)
    except ConfigError as exc:
        assert exc.errors


def test_out_of_range_values_are_named():
    bad = {"trainer": {"lr": 0, "warmup_ratio": 1.5, "batch_size": 0}, "lora": {"dropout": 1.0}, "eval": {"k": 0, "top_p": 0}}
    try:
        config_from_dict(bad)
    except ConfigError as exc:
        text = "\n".join(exc.errors)
        for path in ("trainer.lr", "trainer.warmup_ratio", "trainer.batch_size", "lora.dropout", "eval.k", "eval.top_p"):
            assert path + ":" in text
    else:
        raise AssertionError("out-of-range values were accepted")


def test_nan_and_inf_rejected():
    for v in (".nan", ".inf", "-.inf"):
        try:
            load_config(None, [f"trainer.lr={v}"])
        except ConfigError as exc:
            assert any(e.startswith("trainer.lr:") for e in exc.errors)
        else:
            raise AssertionError(v)


def test_overrides_parse_yaml_scalars():
    assert parse_overrides(["a.b=1", "a.c=[x, y]", "d=true", "e=1e-4"]) == {"a": {"b": 1, "c": ["x", "y"]}, "d": True, "e": "1e-4"}
