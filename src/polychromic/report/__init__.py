"""`polychromic report EVAL_DIR`: results.json, report.md and a self-contained report.html.

The report reads only the files of the evaluation directory, so any old evaluation can be
re-rendered on a CPU, and it imports no torch (layering rule). Its modules, in the order `report`
uses them:

- load: reading and validating the evaluation directory (`load_eval_dir` -> `EvalData`);
- results: the statistics behind results.json (`compute_results`);
- figures (what to plot) and plots (drawing): PNG figures;
- samples: which samples the report shows;
- fmt: number formatting shared by the two renderers;
- markdown (`render_markdown`) and html (`render_html`, jinja2 templates in templates/).
"""

from __future__ import annotations

from pathlib import Path

from polychromic import io
from polychromic.report.figures import make_figures
from polychromic.report.fmt import fmt, fmt_p, fmt_pct, fmt_signed
from polychromic.report.html import CSS, render_html
from polychromic.report.load import (
    CONFIG_FILE,
    ENV_FILE,
    FIGURES_DIR,
    JUDGE_FILE,
    MODELS_FILE,
    PER_PROMPT_FILE,
    SCORES_FILE,
    EvalData,
    load_eval_dir,
)
from polychromic.report.markdown import render_markdown
from polychromic.report.results import CI_LEVEL, COLLAPSE_THRESHOLD, compute_results
from polychromic.report.samples import SAMPLES_SHOWN

__all__ = [
    "CI_LEVEL",
    "COLLAPSE_THRESHOLD",
    "CONFIG_FILE",
    "CSS",
    "ENV_FILE",
    "FIGURES_DIR",
    "JUDGE_FILE",
    "MODELS_FILE",
    "PER_PROMPT_FILE",
    "SAMPLES_SHOWN",
    "SCORES_FILE",
    "EvalData",
    "compute_results",
    "fmt",
    "fmt_p",
    "fmt_pct",
    "fmt_signed",
    "load_eval_dir",
    "make_figures",
    "render_html",
    "render_markdown",
    "report",
]


def report(eval_dir: str | Path) -> list[Path]:
    """Write results.json, report.md, report.html and figures/*.png into `eval_dir`; return the
    paths written."""
    data = load_eval_dir(eval_dir)
    res = compute_results(data)
    figures = make_figures(data, res)
    d = data.eval_dir
    written = []
    figure_files = {}
    for name, (png, _) in figures.items():
        written.append(io.atomic_write_bytes(d / FIGURES_DIR / f"{name}.png", png))
        figure_files[name] = f"{FIGURES_DIR}/{name}.png"
    written.append(io.atomic_write_json(d / "results.json", res))
    written.append(io.atomic_write_text(d / "report.md", render_markdown(data, res, figure_files)))
    written.append(io.atomic_write_text(d / "report.html", render_html(data, res, figures)))
    return written
