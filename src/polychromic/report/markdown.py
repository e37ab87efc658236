"""report.md: `render_markdown(EvalData, results, figure files)`, the same sections as report.html
in GitHub-flavoured Markdown (tables, figures linked from figures/*.png).
"""

from __future__ import annotations

from typing import Optional

from polychromic.report.fmt import arrow, direction_mark, fmt, fmt_p, fmt_pct, fmt_signed, k_text, significant
from polychromic.report.load import EvalData
from polychromic.report.results import COLLAPSE_THRESHOLD, metric_groups, metric_meta
from polychromic.report.samples import moved_prompts, sample_texts


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _cell_md(s: dict) -> str:
    if s["mean"] is None:
        return "–"
    return f"{fmt(s['mean'])} [{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]"


def _delta_md(c: Optional[dict]) -> str:
    if c is None:
        return ""
    mark, _ = arrow(c)
    return f" {mark}{fmt_signed(c['diff'])}{'*' if significant(c) else ''}"


def render_markdown(data: EvalData, res: dict, figure_files: dict[str, str]) -> str:
    v = res["verdict"]
    models, base = data.models, data.baseline
    L = [f"# Evaluation report: {res['experiment']}", "",
         f"{res['n_prompts']} prompts, k = {k_text(res)}; baseline **{base}**; "
         f"primary metrics: {', '.join(res['primary_metrics']) or 'none'}; created {res['created']}.", "",
         "## Verdict", "", f"**{v['verdict']}** on `{v.get('metric')}`: {v['reason']}.", ""]
    if res["warnings"]:
        L += ["## Warnings", ""] + [f"- {w}" for w in res["warnings"]] + [""]
    L += ["## Metrics", "", "Mean over prompts [95% bootstrap CI]; for the other models, Δ = paired difference against the "
          "baseline, * when its 95% CI excludes 0. ↑ higher is better, ↓ lower is better.", ""]
    for group, names in metric_groups(data.metric_names).items():
        if not names:
            continue
        rows = []
        for n in names:
            row = [f"{n} {direction_mark(metric_meta(n).higher_is_better)}"]
            for m in models:
                c = res["comparisons"].get(m, {}).get(n)
                row.append(_cell_md(res["per_model"][m]["metrics"][n]) + _delta_md(c))
            rows.append(row)
        L += [f"### {group}", "", _md_table(["metric", *models], rows), ""]
    for m, comp in res["comparisons"].items():
        rows = [[n, fmt(c["diff"]), f"[{fmt(c['ci_low'])}, {fmt(c['ci_high'])}]", fmt_p(c["p_permutation"]), fmt_p(c["p_wilcoxon"]),
                 fmt_p(c.get("p_holm")), fmt(c["d_z"]), fmt(c["win_rate"]), fmt_pct(c["relative_gain"]), str(c["n"])]
                for n, c in comp.items() if not n.startswith(("pass_at_", "max_at_"))]
        L += [f"## {m} vs {base}", "",
              _md_table(["metric", "Δ", "95% CI", "p perm", "p Wilcoxon", "p Holm", "d_z", "win rate", "rel. gain", "n"], rows), ""]
    L += ["## pass@k, DER, collapse point", ""]
    rows = []
    for m in models:
        dv = res["per_model"][m]["derived"]
        ders = ", ".join(f"{k}: {fmt(x)}" for k, x in dv["der"].items()) or (dv["der_note"] or "–")
        cp = str(dv["collapse_point"]) if dv["collapse_point"] is not None else (dv["collapse_note"] or "–")
        rows.append([m, cp, ders])
    L += [_md_table(["model", f"collapse point (gain < {COLLAPSE_THRESHOLD})", "DER@k = pass@k / (k pass@1)"], rows), "",
          "DER is a function of pass@1 and k; it is reported, not a target.", ""]
    if figure_files:
        L += ["## Figures", ""] + [f"![{name}]({path})" for name, path in figure_files.items()] + [""]
    L += ["## Samples that moved most", ""]
    for m, pid, diff in moved_prompts(data, res):
        p = data.prompts[pid]
        L += [f"### {pid}: {m}" + (f" (Δ {res['primary_metrics'][0]} = {fmt_signed(diff)})" if diff is not None else ""), "",
              f"> {p['prompt']}".replace("\n", "\n> "), ""]
        for who in ([data.baseline, m] if m != data.baseline else [m]):
            L += [f"**{who}**", ""] + [f"- {lab}: {t!r}" for lab, t, _ in sample_texts(data, who, pid)] + [""]
    L += ["## Excluded (prompts without a value)", ""]
    rows = [[n, *[str(res["per_model"][m]["metrics"][n]["n_excluded"]) for m in models]] for n in data.metric_names
            if any(res["per_model"][m]["metrics"][n]["n_excluded"] for m in models)]
    L += [_md_table(["metric", *models], rows) if rows else "None.", ""]
    env = res["env"] or {}
    L += ["## Reproducibility", "", f"- git sha: {env.get('git_sha') or 'not recorded'}" + (" (dirty)" if env.get("git_dirty") else ""),
          f"- packages: {env.get('packages') or 'not recorded'}",
          f"- bootstrap: {res['bootstrap']['resamples']} resamples, seed {res['bootstrap']['seed']}",
          f"- re-render: `polychromic report {data.eval_dir}`", ""]
    return "\n".join(L)
