"""The experiment report's pages: a view (sections of tables of strings) built from results.json,
rendered to Markdown and to one self-contained HTML file by the jinja2 templates in templates/,
and the frontier figure (matplotlib, Agg canvas, PNG bytes embedded in the HTML).

No torch here.
"""

from __future__ import annotations

import base64
import io as _io
from pathlib import Path
from typing import Optional

import jinja2

from polychromic.experiment.spec import ExperimentSpec
from polychromic.metrics import metric_info

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATUS_CLASSES = {"met": "ok", "missed": "bad", "underpowered": "warn", "no value": "warn", "invalid": "bad",
                  "trained on": "muted", "exploratory": "muted"}


def num(x: Optional[float], digits: int = 4) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}g}"


def pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def pct_ci(ci: Optional[list]) -> str:
    return "n/a" if not ci else f"[{pct(ci[0])}, {pct(ci[1])}]"


def held(marks: dict, m: str) -> str:
    t = (marks.get(m) or {}).get("trained_on")
    return {True: "trained on", False: "held out"}.get(t, "control")


def _target_text(t: dict) -> str:
    if t["min_gain"] is not None:
        where = f" at matched {t['matched']}" if t["matched"] else ""
        ci = ", CI excludes 0" if t["ci_excludes_zero"] else ""
        return f"{t['metric']}{where} gain >= {pct(t['min_gain'])}{ci}"
    return f"{t['metric']} at most {100 * t['max_drop']:.0f}% worse" if t["max_drop"] else f"{t['metric']} not worse"


def _table(caption: str, header: list[str], rows: list[list[str]], note: str = "") -> dict:
    return {"caption": caption, "header": header, "rows": rows, "note": note}


def _verdict_section(spec: ExperimentSpec, res: dict) -> dict:
    v = res["verdict"]
    lines = []
    for arm, g in v.get("gains", {}).items():
        if g.get("gain") is None:
            lines.append(f"{arm}: no held-out matched gain ({g['reason']})")
        else:
            lines.append(f"{arm}: {pct(g['gain'])} CI {pct_ci(g.get('ci'))}, minimum detectable effect {pct(g.get('mde'))} "
                         f"({g['reason']})")
    view = {"two_level": "the two-level bootstrap (seeds and prompts resampled: seed variation included)",
            "pooled": "the pooled bootstrap (seeds averaged per prompt, prompts resampled: seed variation not included)"}[spec.stats.verdict]
    return {"title": "Verdict", "status": v["status"], "reason": v["reason"], "lines": lines,
            "intro": f"The prior decision tree on the declared strengths, fed with the held-out, temperature-matched gain; "
                     f"CIs from {view}, level {spec.stats.level:.0%}, {spec.stats.resamples} resamples.", "tables": []}


def _targets_section(res: dict) -> dict:
    rows = []
    for i, t in enumerate(res["targets"]):
        status = t["status"] + (" (trained on: not in the verdict)" if t["trained_on"] else "")
        rows.append([str(i + 1), t["arm"], f"{t['temperature']:g}", _target_text(t), pct(t.get("gain")), pct_ci(t.get("ci")),
                     pct(t.get("mde")), status, t["reason"]])
    mono = [[" -> ".join(m["arms"]), m["metric"], f"{m['temperature']:g}", m["status"] + (" (trained on)" if m["trained_on"] else ""),
             m["reason"]] for m in res["monotone"]]
    ident = [[" == ".join(c["arms"]), s, "yes" if v["identical"] else "no", str(v["tensors"]), str(v["n_differing"]), num(v["max_abs_diff"])]
             for c in res["identical"] for s, v in c["seeds"].items()]
    tables = [_table("Declared targets", ["#", "arm", "T", "target", "value", "CI", "MDE", "status", "how"], rows)] if rows else []
    if mono:
        tables.append(_table("Monotone in the diversity weight", ["arms", "metric", "T", "status", "means"], mono))
    if ident:
        tables.append(_table("Identical adapters (safetensors, tensor by tensor)", ["arms", "seed", "identical", "tensors", "differing", "max |diff|"], ident))
    return {"title": "Targets", "intro": "Declared in the spec before anything ran. Values are relative, signed so that positive is "
            "better; underpowered = the CI half-width exceeds the threshold (too small to detect it).", "tables": tables}


def _marks_section(res: dict) -> dict:
    h = res["held_out"]
    rows = [[m, metric_info(m).kind, held(h["marks"], m), h["marks"][m]["why"]] for m in res["table_metrics"]]
    return {"title": "Held out or trained on", "tables": [_table("", ["metric", "kind", "", "why"], rows)],
            "intro": f"Evaluation embedder {h['eval_embedder']}, evaluation quality q = {h['eval_quality']}. Only held-out metrics "
                     "enter the verdict."}


def _comparison_sections(spec: ExperimentSpec, res: dict) -> list[dict]:
    out = []
    marks = res["held_out"]["marks"]
    base = spec.baseline.name
    for t, arms in res["comparisons"].items():
        for arm, rows in arms.items():
            table, seeds = [], []
            for m, c in rows.items():
                if c is None:
                    table.append([m, held(marks, m), "n/a", "n/a", "", "", "", "", "", "undefined on every prompt"])
                    continue
                v, p = c["view"], c["pooled"]
                note = "" if c["higher_is_better"] is None else ("exploratory (not significant after Holm)" if c.get("exploratory")
                                                                 else "survives Holm")
                table.append([m, held(marks, m), num(v["mean_b"]), num(v["mean_a"]), pct(v["gain"]), pct_ci(v["gain_ci"]),
                              pct(v["gain_mde"]), pct_ci(p["gain_ci"]), num(p.get("p_holm"), 3) if "p_holm" in p else "", note])
                if m in (*spec.eval.primary_metrics, *spec.eval.quality_metrics, *spec.eval.matched_metrics):
                    seeds.append([m] + [pct(c["per_seed"][str(s)]["gain"]) if str(s) in c["per_seed"] else "n/a" for s in spec.seeds])
            view = "two-level" if spec.stats.verdict == "two_level" else "pooled"
            out.append({"title": f"{arm} vs {base} at T = {t}", "intro": f"Same decoding (T = {t}), {next(iter(rows.values()))['n_prompts'] if rows else 0} prompts, "
                        f"seeds {spec.seeds}. Gain and CI: {view} (the verdict's view); pooled CI: seeds averaged per prompt; "
                        "p: sign-flip permutation on the pooled per-prompt differences, Holm-corrected over every metric of the table.",
                        "tables": [_table("", ["metric", "", base, arm, "gain", "CI", "MDE", "pooled CI", "p (Holm)", ""], table),
                                   _table("Per seed (seed s against the baseline's seed s)", ["metric"] + [f"seed {s}" for s in spec.seeds], seeds)]})
    return out


def _frontier_section(spec: ExperimentSpec, res: dict) -> Optional[dict]:
    if not res["frontier"]:
        return None
    marks = res["held_out"]["marks"]
    rows = []
    for arm, by_t in res["frontier"].items():
        for t, by_q in by_t.items():
            for q, by_d in by_q.items():
                for d, f in by_d.items():
                    if f.get("status") != "ok":
                        rows.append([arm, t, d, q, "", "", "", "", f.get("note", "")])
                        continue
                    x, y = f["diversity_at_matched_quality"], f["quality_at_matched_diversity"]
                    tag = "held out" if not (marks[d]["trained_on"] or marks[q]["trained_on"]) else "trained on"
                    rows.append([arm, t, f"{d} ({held(marks, d)})", f"{q} ({held(marks, q)})",
                                 "n/a" if x["temperature"] is None else f"{x['temperature']:.3g}" + (" (envelope)" if x.get("envelope") else ""),
                                 f"{pct(x['relative_gain'])} {pct_ci(x.get('relative_ci'))}",
                                 f"{pct(y['relative_gain'])} {pct_ci(y.get('relative_ci'))}", tag, x["reading"]])
    curve = []
    temps = [f"{t:g}" for t in spec.baseline_temperatures]
    metrics = [m for m in dict.fromkeys([*spec.eval.primary_metrics, *spec.eval.matched_metrics, *spec.eval.quality_metrics])
               if m in res["table_metrics"]]
    for t in temps:
        means = res["means"][t][spec.baseline.name]
        curve.append([t] + [num(means[m]["mean"]) for m in metrics])
    return {"title": "Temperature-matched: against the baseline's own temperature curve", "figure": True,
            "intro": f"The baseline decoded at T = {', '.join(temps)} traces its quality-diversity curve. Diversity gain at matched "
                     "quality: the arm's diversity against the best diversity the curve reaches at a quality at least as good as the arm's "
                     "(linear between temperatures, no extrapolation; '(envelope)': a hotter or colder baseline point is better in "
                     "both, so it is the match, not the crossing); quality gain at matched diversity likewise. 'On the curve' = a temperature change of the "
                     "baseline gives the same (the arm only moves along the baseline's curve).",
            "tables": [_table("", ["arm", "T", "diversity", "quality", "baseline T matched", "diversity gain at matched quality",
                                   "quality gain at matched diversity", "", "reading"], rows),
                       _table(f"{spec.baseline.name}'s curve (means over seeds and prompts)", ["T"] + metrics, curve)]}


def _means_section(spec: ExperimentSpec, res: dict) -> list[dict]:
    out = []
    for t in spec.eval.variant_temperatures:
        means = res["means"][f"{t:g}"]
        arms = list(means)
        rows = [[m] + [num(means[a][m]["mean"]) + " (" + ", ".join(num(x, 3) for x in means[a][m]["per_seed"].values()) + ")"
                       for a in arms] for m in res["table_metrics"]]
        out.append({"title": f"Means at T = {t:g}", "intro": "Mean over seeds and prompts (each seed's mean in parentheses).",
                    "tables": [_table("", ["metric"] + arms, rows)]})
    return out


def view(spec: ExperimentSpec, res: dict) -> dict:
    e = res["experiment"]
    setup = [f"baseline arm {e['baseline']}; arms: " + ", ".join(f"{a} ({v['role']}{'/' + v['strength'] if v['strength'] else ''})"
                                                              for a, v in e["arms"].items()),
             f"seeds {e['seeds']}; {e['split']} split, {e['n_prompts']} prompts, k = {e['k']}; data split seed {e['split_seed']}",
             f"decoding: baseline at T = {', '.join(f'{t:g}' for t in e['temperatures'])}; every arm at T = "
             + ", ".join(f"{t:g}" for t in e["variant_temperatures"]),
             f"primary diversity metrics {e['primary_metrics']}; quality metrics {e['quality_metrics']}; "
             f"temperature-matched on {e['matched_metrics']}"]
    sections = [_verdict_section(spec, res), _targets_section(res), _marks_section(res), *_comparison_sections(spec, res)]
    f = _frontier_section(spec, res)
    if f:
        sections.append(f)
    sections += _means_section(spec, res)
    return {"title": f"Experiment {spec.name}", "description": spec.description, "setup": setup, "sections": sections,
            # the spec as it was given: the same lines however and wherever the report is rendered
            "reproduce": [f"polychromic experiment {c} {_spec_ref(spec)}" for c in ("run", "report")]}


def _spec_ref(spec: ExperimentSpec) -> str:
    """A shipped spec by its name (wherever the package was installed when it ran), else its path."""
    if not spec.source:
        return spec.name
    p = Path(spec.source)
    parts = p.parts
    for i in range(len(parts) - 1):
        if parts[i:i + 2] == ("resources", "experiments"):
            return str(Path(*parts[i + 2:]).with_suffix(""))
    return spec.source


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=jinja2.select_autoescape(["html.j2"]),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["status_class"] = lambda s: next((c for k, c in STATUS_CLASSES.items() if str(s).startswith(k)), "")
    env.filters["md_cell"] = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    return env


def markdown(v: dict, figure_file: Optional[str]) -> str:
    return _env().get_template("experiment.md.j2").render(**v, figure_file=figure_file)


def html(v: dict, figure: Optional[bytes]) -> str:
    css = (TEMPLATES / "experiment.css").read_text(encoding="utf-8")
    src = None if figure is None else "data:image/png;base64," + base64.b64encode(figure).decode("ascii")
    return _env().get_template("experiment.html.j2").render(**v, css=css, figure_src=src)


def frontier_figure(spec: ExperimentSpec, res: dict) -> Optional[bytes]:
    """Per (primary diversity metric, quality metric): the baseline's curve over its temperatures
    and every compared arm at its decoding temperatures; None with one baseline temperature."""
    if len(spec.baseline_temperatures) < 2:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    marks = res["held_out"]["marks"]
    divs = [d for d in spec.eval.primary_metrics if d in res["table_metrics"]][:3]
    quals = [q for q in spec.eval.matched_metrics if q in res["table_metrics"]][:3]
    if not divs or not quals:
        return None
    fig = Figure(figsize=(4.2 * len(quals), 3.6 * len(divs)))
    FigureCanvasAgg(fig)
    temps = [f"{t:g}" for t in spec.baseline_temperatures]
    base = spec.baseline.name
    colors = ["#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
    for i, d in enumerate(divs):
        for j, q in enumerate(quals):
            ax = fig.add_subplot(len(divs), len(quals), i * len(quals) + j + 1)
            xs = [res["means"][t][base][q]["mean"] for t in temps]
            ys = [res["means"][t][base][d]["mean"] for t in temps]
            pts = [(x, y, t) for x, y, t in zip(xs, ys, temps) if x is not None and y is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o--", color="gray", label=f"{base}, T = {temps[0]}..{temps[-1]}")
            for x, y, t in pts:
                ax.annotate(f"T={t}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7, color="gray")
            for k, a in enumerate(spec.compared):
                for t in spec.eval.variant_temperatures:
                    m = res["means"][f"{t:g}"].get(a.name)
                    if m is None or m[q]["mean"] is None or m[d]["mean"] is None:
                        continue
                    ax.plot([m[q]["mean"]], [m[d]["mean"]], "o", color=colors[k % len(colors)], label=f"{a.name}, T = {t:g}")
            ax.set_xlabel(f"{q} ({held(marks, q)}; {'higher' if metric_info(q).higher_is_better else 'lower'} = better)", fontsize=8)
            ax.set_ylabel(f"{d} ({held(marks, d)})", fontsize=8)
            ax.grid(alpha=0.3)
            ax.ticklabel_format(axis='both', useOffset=False, style='plain')
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.suptitle(f"{spec.name}: the arms against {base}'s temperature curve (means over seeds and prompts)", fontsize=9)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor="white", metadata={"Software": None})
    return buf.getvalue()
