"""`polychromic experiment report SPEC|DIR`: results.json, report.md, report.html and frontier.png
of an experiment, from its files alone (evaluation folders, run configs, adapters); no torch.

results.json holds every number the pages show: per-temperature means, the comparisons of every
compared arm with the baseline (pooled, two-level, per seed; results.py), the temperature-matched
gains, the held-out marks (heldout.py), the targets, the identity checks, the monotonicity checks
and the verdict (targets.py). The pages are rendered from it through the jinja2 templates in
experiment/templates/; nothing in them depends on the time or the machine, so a rerun of the same
experiment writes the same bytes.
"""

from __future__ import annotations

from pathlib import Path

from polychromic import io
from polychromic.config import load_config
from polychromic.experiment import results, targets
from polychromic.experiment.heldout import marks as held_out_marks
from polychromic.experiment.plan import REPORT_DIR
from polychromic.experiment.spec import ExperimentSpec, load_saved_spec, load_spec, runs_dir

RESULTS_FILE = "results.json"
MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"
FRONTIER_FILE = "frontier.png"


def _training_configs(spec: ExperimentSpec) -> list[tuple[str, object]]:
    """(arm, config) of every arm, read from its first seed's run directory (what it trained with)."""
    out = []
    for a in spec.arms:
        path = runs_dir(spec) / a.name / f"seed_{spec.seeds[0]}" / "config.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: arm {a.name} was not trained (run `polychromic experiment run`)")
        out.append((a.name, load_config(path)))
    return out


def compute_all(spec: ExperimentSpec) -> dict:
    """Every number of the report (the content of results.json)."""
    data = results.load(spec)
    res = results.compute(data)
    t0 = spec.eval.variant_temperatures[0]
    eval_cfg = data.evals[t0].cfg
    embedder = eval_cfg.eval.embedder  # the semantic metrics' encoder (spec.eval.embedder when set)
    names = sorted({m for t in data.per_prompt for m in data.metrics(t)} | set(res["table_metrics"]))
    marks = held_out_marks(names, _training_configs(spec), eval_cfg, embedder)
    res["held_out"] = {"eval_embedder": embedder, "eval_quality": eval_cfg.objective.quality, "marks": marks}
    res["targets"] = [targets.judge_target(t, res, spec, marks) for t in spec.targets]
    res["monotone"] = targets.judge_monotone(spec, res, marks)
    res["identical"] = targets.identity_checks(spec)
    res["verdict"] = targets.verdict(spec, res, marks)
    res["experiment"] = {
        "name": spec.name, "description": spec.description, "baseline": spec.baseline.name, "seeds": spec.seeds,
        "split": spec.eval.split, "k": spec.eval.k, "split_seed": spec.split_seed,
        "arms": {a.name: {"role": a.role, "strength": a.strength} for a in spec.arms},
        "temperatures": spec.baseline_temperatures, "variant_temperatures": spec.eval.variant_temperatures,
        "primary_metrics": spec.eval.primary_metrics, "quality_metrics": spec.eval.quality_metrics,
        "matched_metrics": spec.eval.matched_metrics,
        "n_prompts": len(data.evals[t0].prompts),
        "stats": {"view": spec.stats.verdict, "resamples": spec.stats.resamples, "level": spec.stats.level, "seed": spec.stats.seed},
    }
    return res


def load_any(spec_or_dir: str | Path, overrides: list[str] | None = None) -> ExperimentSpec:
    """A spec (file or shipped name, with overrides), or an experiment folder holding spec.yaml."""
    p = Path(spec_or_dir)
    if p.is_dir():
        if overrides:
            raise ValueError("overrides apply to a spec, not to an experiment folder's stored spec")
        return load_saved_spec(p)
    return load_spec(spec_or_dir, overrides)


def report(spec: ExperimentSpec) -> list[Path]:
    """Compute and write the report files; returns their paths."""
    from polychromic.experiment import render

    res = compute_all(spec)
    out = spec.out / REPORT_DIR
    figure = render.frontier_figure(spec, res)
    paths = [io.atomic_write_json(out / RESULTS_FILE, res)]
    if figure is not None:
        paths.append(io.atomic_write_bytes(out / FRONTIER_FILE, figure))
    view = render.view(spec, res)
    paths.append(io.atomic_write_text(out / MARKDOWN_FILE, render.markdown(view, FRONTIER_FILE if figure else None)))
    paths.append(io.atomic_write_text(out / HTML_FILE, render.html(view, figure)))
    return paths
