"""The experiment spec: a typed YAML file declaring arms, seeds, evaluation and targets up front.

A spec is loaded like a config (config.py's machinery): `extends:` chains, `key.sub=value`
overrides, unknown keys rejected with a suggestion, and every error reported at once with its
dotted path. Beyond the schema, `load_spec` builds the training config of every arm and the
evaluation config, so a typo in an arm's overrides fails before anything trains.

Paths: `base` and an arm's `config` are a shipped config name or a path; a relative path is read
against the spec file's folder first. `output_dir` is relative to the working directory, like a
config's `runs_dir`.

No torch here (the report path imports this module).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from polychromic import resources
from polychromic.config import (
    Config,
    ConfigError,
    _build,
    _deep_merge,
    config_from_dict,
    parse_overrides,
    read_yaml_tree,
)

ROLES = ("baseline", "prior", "control", "variant")
STRENGTHS = ("conservative", "moderate", "aggressive")
DEFAULT_GRID = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class ArmSpec:
    name: str = ""
    """Names the run directories (<output_dir>/runs/<name>/seed_<s>) and the evaluated models."""
    role: Literal["baseline", "prior", "control", "variant"] = "variant"
    """Exactly one baseline; every other arm is compared with it. prior: the design being replaced;
    control: an arm that isolates a confound of a variant (e.g. stage 2 with CE alone)."""
    strength: Optional[Literal["conservative", "moderate", "aggressive"]] = None
    """A variant's place in the prior decision tree (aggressive > 25%, moderate > 15%)."""
    config: Optional[str] = None
    """Start from this config instead of the spec's `base` (shipped name or path)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Dotted `key.sub: value` pairs (or nested mappings) applied over the config."""
    init_from: Optional[str] = None
    """Stage 2 (docs/objective.md, "Two-stage training"): start from this arm's adapter of the same
    seed, merged into the base (`model.init_adapter`). The run waits for that arm's run, and the
    model evaluated is its `adapter_stacked/` (both stages as one adapter on the plain base)."""


@dataclass
class EvalSpec:
    split: Literal["test", "val"] = "test"
    k: int = 10
    temperatures: list[float] = field(default_factory=lambda: list(DEFAULT_GRID))
    """The baseline's decoding grid: its own quality-diversity curve."""
    variant_temperatures: list[float] = field(default_factory=lambda: [0.7])
    """Every arm is decoded at these; the baseline too (same-decoding comparison)."""
    embedder: Optional[str] = None
    """eval.embedder of the evaluation, the encoder of the semantic metrics; None keeps the
    config's (MiniLM by default, the training reward's own: then they are marked trained on)."""
    primary_metrics: list[str] = field(default_factory=lambda: ["distinct_2", "self_bleu", "mean_pairwise_cosine_distance"])
    """Diversity metrics of the verdict, in order; the first held-out one drives the decision tree."""
    quality_metrics: list[str] = field(default_factory=lambda: ["ref_nll_tempered", "ref_nll", "rouge_l", "relevance"])
    """Quality metrics of the tables and the quality targets."""
    matched_metrics: list[str] = field(default_factory=lambda: ["ref_nll_tempered", "relevance"])
    """The quality axes of the temperature-matched comparison: metrics that move with the decoding
    temperature (untempered ref_nll and greedy ROUGE-L do not: the baseline's curve is flat)."""
    max_prompts: Optional[int] = None
    parallel: int = 1
    """Temperature folders evaluated at a time, each in its own `polychromic evaluate` process (a
    small model leaves the GPU mostly idle); 1 = one after the other in this process. The files
    written are the same either way."""
    seed: int = 0
    """Seed of the evaluation's sampling (with the model name and prompt ids)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Other evaluation config keys (e.g. eval.max_new_tokens, eval.batch_size)."""


@dataclass
class TargetSpec:
    arm: str = ""
    metric: str = ""
    min_gain: Optional[float] = None
    """Relative gain over the baseline, signed so that positive is better (self_bleu lower)."""
    max_drop: Optional[float] = None
    """Largest relative loss allowed (0 = not lower); for quality metrics."""
    ci_excludes_zero: bool = False
    """The verdict's CI of the difference must exclude 0 (in the better direction)."""
    matched: Optional[str] = None
    """Temperature-matched: the gain is measured against the baseline's temperature curve at the
    variant's value of this quality metric."""
    temperature: Optional[float] = None
    """The variant decoding judged; None = the first of eval.variant_temperatures."""


@dataclass
class MonotoneSpec:
    arms: list[str] = field(default_factory=list)
    """In the order of increasing diversity weight."""
    metric: str = ""
    temperature: Optional[float] = None


@dataclass
class StatsSpec:
    resamples: int = 2000
    level: float = 0.95
    seed: int = 0
    verdict: Literal["two_level", "pooled"] = "two_level"
    """Which CI the targets and the verdict use: two_level (seeds and prompts resampled, seed
    variation included) or pooled (seed means per prompt, prompts resampled)."""


@dataclass
class ExperimentSpec:
    name: str = ""
    description: str = ""
    base: str = ""
    """The config every arm starts from (shipped name or path)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    split_seed: int = 0
    """data.split_seed of every arm: the train/val/test assignment, the same for every seed."""
    output_dir: Optional[str] = None
    """Default runs/experiments/<name>."""
    parallel: int = 1
    """Trainings at a time (`run --parallel` overrides)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Applied to every arm and to the evaluation, before the arm's own overrides."""
    arms: list[ArmSpec] = field(default_factory=list)
    eval: EvalSpec = field(default_factory=EvalSpec)
    stats: StatsSpec = field(default_factory=StatsSpec)
    targets: list[TargetSpec] = field(default_factory=list)
    monotone: list[MonotoneSpec] = field(default_factory=list)
    identical: list[list[str]] = field(default_factory=list)
    """Pairs of arms whose adapters must be bit-identical seed by seed."""
    source: Optional[str] = None
    """The spec file (set by the loader)."""

    @property
    def out(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("runs") / "experiments" / self.name

    @property
    def baseline(self) -> ArmSpec:
        return next(a for a in self.arms if a.role == "baseline")

    def arm(self, name: str) -> ArmSpec:
        return next(a for a in self.arms if a.name == name)

    @property
    def compared(self) -> list[ArmSpec]:
        return [a for a in self.arms if a.role != "baseline"]

    @property
    def baseline_temperatures(self) -> list[float]:
        return sorted(set(self.eval.temperatures) | set(self.eval.variant_temperatures))


# ---------------------------------------------------------------------------------------------
# Overrides and paths


def nest(overrides: dict) -> dict:
    """Dotted keys and nested mappings into one nested dict (`{"a.b": 1}` == `{"a": {"b": 1}}`)."""
    out: dict = {}
    for key, value in overrides.items():
        *parents, leaf = str(key).split(".")
        node: dict = {}
        top = node
        for p in parents:
            node[p] = {}
            node = node[p]
        node[leaf] = nest(value) if isinstance(value, dict) else value
        out = _deep_merge(out, top)
    return out


def resolve_config_path(name_or_path: str, spec_dir: Path | None) -> Path:
    """A relative path is read against the spec's folder first, then as given, then as a shipped name."""
    p = Path(name_or_path)
    if not p.is_absolute() and spec_dir is not None and (spec_dir / p).is_file():
        return spec_dir / p
    return resources.resolve(name_or_path, "configs")


def _spec_dir(spec: ExperimentSpec) -> Path | None:
    return Path(spec.source).resolve().parent if spec.source else None


def _config_data(spec: ExperimentSpec, config: str | None) -> tuple[dict, str]:
    path = resolve_config_path(config or spec.base, _spec_dir(spec))
    return _deep_merge(read_yaml_tree(path), nest(spec.overrides)), str(path)


def data_dir(spec: ExperimentSpec) -> Path:
    return spec.out / "data"


def runs_dir(spec: ExperimentSpec) -> Path:
    return spec.out / "runs"


def model_name(arm: str, seed: int) -> str:
    return f"{arm}_s{seed}"


def temperature_tag(t: float) -> str:
    return f"T{t:g}"


def arm_config(spec: ExperimentSpec, arm: ArmSpec, seed: int) -> Config:
    """The training config of one run: the arm's config, the spec's and the arm's overrides, and
    the fields the experiment owns (experiment name, seed, runs_dir, prepared data, split seed)."""
    data, source = _config_data(spec, arm.config)
    data = _deep_merge(data, nest(arm.overrides))
    if arm.init_from:
        data = _deep_merge(data, {"model": {"init_adapter": str(run_dir(spec, arm.init_from, seed) / "adapter")}})
    data = _deep_merge(data, {"experiment": arm.name, "seed": seed, "runs_dir": str(runs_dir(spec)),
                              "data": {"prepared_dir": str(data_dir(spec)), "split_seed": spec.split_seed}})
    return config_from_dict(data, f"{source} (arm {arm.name}, seed {seed})")


def run_dir(spec: ExperimentSpec, arm: str, seed: int) -> Path:
    return runs_dir(spec) / arm / f"seed_{seed}"


def evaluated_adapter(spec: ExperimentSpec, arm: ArmSpec, seed: int) -> Path:
    """The adapter folder that stands for this arm's model: `adapter_stacked/` for a stage-2 arm
    (the fresh LoRA alone belongs on the merged base), `adapter/` otherwise."""
    return run_dir(spec, arm.name, seed) / ("adapter_stacked" if arm.init_from else "adapter")


def eval_models(spec: ExperimentSpec, temperature: float) -> list[tuple[ArmSpec, int]]:
    """(arm, seed) of every model decoded at this temperature: the baseline at every temperature
    of its grid, every arm at the variant temperatures."""
    arms = spec.arms if temperature in spec.eval.variant_temperatures else [spec.baseline]
    return [(a, s) for a in arms for s in spec.seeds]


def eval_dir(spec: ExperimentSpec, temperature: float) -> Path:
    return spec.out / "eval" / temperature_tag(temperature)


def eval_config(spec: ExperimentSpec, temperature: float) -> Config:
    """The evaluation config at one decoding temperature: base + the spec's overrides + eval's."""
    data, source = _config_data(spec, None)
    data = _deep_merge(data, nest(spec.eval.overrides))
    models = [{"name": model_name(a.name, s), "adapter": str(evaluated_adapter(spec, a, s))}
              for a, s in eval_models(spec, temperature)]
    e: dict = {"models": models, "baseline": model_name(spec.baseline.name, spec.seeds[0]), "split": spec.eval.split,
               "k": spec.eval.k, "temperature": temperature, "max_prompts": spec.eval.max_prompts,
               "output_dir": str(eval_dir(spec, temperature)), "primary_metrics": list(spec.eval.primary_metrics)}
    if spec.eval.embedder is not None:
        e["embedder"] = spec.eval.embedder
    data = _deep_merge(data, {"experiment": f"{spec.name}_{temperature_tag(temperature)}", "seed": spec.eval.seed,
                              "data": {"prepared_dir": str(data_dir(spec)), "split_seed": spec.split_seed}, "eval": e})
    return config_from_dict(data, f"{source} (evaluation at T = {temperature:g})")


# ---------------------------------------------------------------------------------------------
# Invariants


def _metric_errors(names: list[str], path: str, kind: str | None) -> list[str]:
    from polychromic.metrics import metric_info

    out = []
    for i, n in enumerate(names):
        try:
            info = metric_info(n)
        except KeyError:
            out.append(f"{path}[{i}]: unknown metric {n!r}")
            continue
        if kind is not None and info.kind != kind:
            out.append(f"{path}[{i}]: {n} is a {info.kind} metric, expected a {kind} metric")
    return out


def _invariants(s: ExperimentSpec) -> list[str]:
    e: list[str] = []

    def need(ok: bool, msg: str) -> None:
        if not ok:
            e.append(msg)

    need(bool(_NAME.match(s.name or "")), "name: must be a non-empty name of letters, digits, _ . - (no '/')")
    need(bool(s.base), "base: required (the config every arm starts from)")
    need(len(s.seeds) >= 1, "seeds: at least one seed")
    need(len(set(s.seeds)) == len(s.seeds), f"seeds: duplicates in {s.seeds}")
    need(s.parallel >= 1, "parallel: must be >= 1")
    names = [a.name for a in s.arms]
    need(len(s.arms) >= 2, "arms: at least a baseline and one other arm")
    need(len(set(names)) == len(names), f"arms: names must be unique, got {names}")
    for i, a in enumerate(s.arms):
        need(bool(_NAME.match(a.name or "")), f"arms[{i}].name: must be a non-empty name of letters, digits, _ . -")
        need(a.strength is None or a.role == "variant", f"arms[{i}].strength: only a variant has a strength (role is {a.role})")
        if a.init_from is not None:
            src = next((x for x in s.arms if x.name == a.init_from), None)
            need(src is not None and src is not a, f"arms[{i}].init_from: must name another arm of {names}, got {a.init_from!r}")
            need(src is None or src.init_from is None,
                 f"arms[{i}].init_from: {a.init_from!r} is itself a stage-2 arm; start from a one-stage arm")
    baselines = [a.name for a in s.arms if a.role == "baseline"]
    need(len(baselines) == 1, f"arms: exactly one arm with role baseline, got {len(baselines)} ({baselines})")
    v = s.eval
    need(v.k >= 1, "eval.k: must be >= 1")
    need(len(v.temperatures) >= 1, "eval.temperatures: at least one temperature")
    need(len(v.variant_temperatures) >= 1, "eval.variant_temperatures: at least one temperature")
    for key, ts in (("temperatures", v.temperatures), ("variant_temperatures", v.variant_temperatures)):
        need(all(t > 0 for t in ts), f"eval.{key}: temperatures must be > 0, got {ts}")
        need(len(set(ts)) == len(ts), f"eval.{key}: duplicates in {ts}")
    need(v.max_prompts is None or v.max_prompts >= 1, "eval.max_prompts: must be >= 1")
    need(v.parallel >= 1, "eval.parallel: must be >= 1")
    need(len(v.primary_metrics) >= 1, "eval.primary_metrics: at least one metric")
    e += _metric_errors(v.primary_metrics, "eval.primary_metrics", "diversity")
    e += _metric_errors(v.quality_metrics, "eval.quality_metrics", "quality")
    e += _metric_errors(v.matched_metrics, "eval.matched_metrics", "quality")
    need(s.stats.resamples >= 100, "stats.resamples: must be >= 100")
    need(0.5 < s.stats.level < 1.0, "stats.level: must be in (0.5, 1)")
    for i, t in enumerate(s.targets):
        p = f"targets[{i}]"
        need(t.arm in names and t.arm not in baselines, f"{p}.arm: must name a non-baseline arm ({[n for n in names if n not in baselines]}), got {t.arm!r}")
        e += _metric_errors([t.metric], f"{p}.metric", None)
        need((t.min_gain is None) != (t.max_drop is None), f"{p}: set exactly one of min_gain and max_drop")
        need(t.max_drop is None or t.max_drop >= 0, f"{p}.max_drop: must be >= 0")
        need(t.matched is None or t.min_gain is not None, f"{p}.matched: a temperature-matched target needs min_gain")
        need(t.matched is None or t.matched in v.matched_metrics,
             f"{p}.matched: must be one of eval.matched_metrics {v.matched_metrics}, got {t.matched!r}")
        need(t.matched is None or t.metric in v.primary_metrics,
             f"{p}.metric: a temperature-matched target needs a primary metric {v.primary_metrics}, got {t.metric!r}")
        need(t.temperature is None or t.temperature in v.variant_temperatures,
             f"{p}.temperature: must be one of eval.variant_temperatures {v.variant_temperatures}")
    for i, m in enumerate(s.monotone):
        need(len(m.arms) >= 2 and all(a in names for a in m.arms), f"monotone[{i}].arms: at least two arms of {names}, got {m.arms}")
        e += _metric_errors([m.metric], f"monotone[{i}].metric", None)
        need(m.temperature is None or m.temperature in v.variant_temperatures,
             f"monotone[{i}].temperature: must be one of eval.variant_temperatures {v.variant_temperatures}")
    for i, pair in enumerate(s.identical):
        need(len(pair) == 2 and pair[0] != pair[1] and all(a in names for a in pair),
             f"identical[{i}]: must be two different arms of {names}, got {pair}")
    return e


def _config_errors(s: ExperimentSpec) -> list[str]:
    """Build every arm's config (first seed) and the evaluation config; their errors, prefixed."""
    errors: list[str] = []
    seed = s.seeds[0] if s.seeds else 0
    jobs = [(f"arms[{i}] ({a.name})", lambda a=a: arm_config(s, a, seed)) for i, a in enumerate(s.arms)]
    if sum(a.role == "baseline" for a in s.arms) == 1 and s.seeds and s.eval.variant_temperatures:
        jobs.append(("eval", lambda: eval_config(s, s.eval.variant_temperatures[0])))
    for where, build in jobs:
        try:
            build()
        except ConfigError as exc:
            errors += [f"{where}: {m}" for m in exc.errors]
        except FileNotFoundError as exc:
            errors.append(f"{where}: {exc}")
    return errors


def spec_from_dict(data: dict, source: str | None = None, check_configs: bool = True) -> ExperimentSpec:
    """The typed spec; every error of the spec (and, with check_configs, of the configs it
    builds) in one ConfigError."""
    errors: list[str] = []
    data = dict(data)
    if "source" in data:
        errors.append("source: set by the loader (the spec file's path), not in the file")
        data.pop("source")
    spec = _build(ExperimentSpec, data, "", errors)
    spec.source = source
    errors += [m for m in _invariants(spec) if m not in errors]
    if check_configs and spec.base:
        errors += _config_errors(spec)
    if errors:
        raise ConfigError(errors, source)
    return spec


def load_spec(name_or_path: str | Path, overrides: list[str] | None = None) -> ExperimentSpec:
    """Read a spec file or a shipped spec (`src/polychromic/resources/experiments/NAME.yaml`),
    apply `key.sub=value` overrides, validate everything. Raises ConfigError listing every problem."""
    try:
        path = resources.resolve(name_or_path, "experiments")
    except FileNotFoundError as exc:
        raise ConfigError([str(exc)]) from None
    data = read_yaml_tree(path)
    if overrides:
        data = _deep_merge(data, parse_overrides(overrides))
    return spec_from_dict(data, str(path))


def spec_to_yaml(spec: ExperimentSpec) -> str:
    """The resolved spec (what `run` used), as `<output_dir>/spec.yaml` stores it."""
    import dataclasses

    import yaml

    return yaml.safe_dump(dataclasses.asdict(spec), sort_keys=False, allow_unicode=True)


def load_saved_spec(experiment_dir: str | Path) -> ExperimentSpec:
    """The spec stored in an experiment folder by `run` (for `report DIR`: no config is rebuilt)."""
    path = Path(experiment_dir) / "spec.yaml"
    if not path.is_file():
        raise ConfigError([f"{path} not found: not an experiment folder (`polychromic experiment run SPEC` writes it)"])
    data = read_yaml_tree(path)
    source = data.pop("source", None)
    spec = spec_from_dict(data, str(path), check_configs=False)
    spec.source = source
    spec.output_dir = str(experiment_dir)  # the folder is where it is now, wherever it was made
    return spec
