"""Thin command-line layer over the public functions. Heavy imports happen inside commands, so
`--help`, `validate`, `print-config` and `report` start instantly (no torch)."""

from __future__ import annotations

import argparse
import os
import sys


def _load(args):
    from polychromic.config import load_config

    return load_config(args.config, args.overrides)


def cmd_validate(args) -> int:
    cfg = _load(args)
    print(f"{args.config}: OK (experiment {cfg.experiment}, objective {cfg.objective.name})")
    return 0


def cmd_print_config(args) -> int:
    from polychromic.config import to_yaml

    sys.stdout.write(to_yaml(_load(args)))
    return 0


def cmd_data_prepare(args) -> int:
    from polychromic.data import prepare

    # CONFIG is optional, so `data prepare data.path=x.jsonl` lands the first override in it.
    if args.config is not None and "=" in args.config and not os.path.exists(args.config):
        args.overrides, args.config = [args.config, *args.overrides], None
    cfg = _load(args)
    manifest = prepare(cfg.data, seed=cfg.split_seed, out_dir=args.out, skip_invalid=args.skip_invalid or cfg.data.skip_invalid)
    counts = ", ".join(f"{k} {v}" for k, v in manifest["rows"].items())
    rejects = manifest.get("rejects", {})
    print(f"wrote {manifest['out_dir']}: {counts}" + (f"; rejected {sum(rejects.values())} ({rejects})" if rejects else ""))
    return 0


def cmd_train(args) -> int:
    from polychromic.training.loop import train

    run_dir = train(_load(args), resume=args.resume)
    print(f"run directory: {run_dir}")
    return 0


def cmd_sweep(args) -> int:
    from polychromic.training.sweep import sweep

    return sweep(args.configs, args.set or [])


def cmd_status(args) -> int:
    from polychromic.training.status import print_status

    return print_status(args.runs_dir)


def cmd_evaluate(args) -> int:
    from polychromic.evaluation.run import evaluate

    out = evaluate(_load(args))
    print(f"evaluation directory: {out}")
    return 0


def cmd_report(args) -> int:
    from polychromic.report import report

    paths = report(args.eval_dir)
    for p in paths:
        print(f"wrote {p}")
    return 0


def cmd_import_samples(args) -> int:
    from polychromic.evaluation.importers import import_samples
    from polychromic.evaluation.scoring import score

    out = import_samples(args.path, args.format, args.model, args.out)
    if args.score:
        score(out)
    print(f"imported {args.path} as model {args.model!r} into {out}")
    return 0


def cmd_quickstart(args) -> int:
    from polychromic.quickstart import quickstart

    quickstart(workdir=args.workdir, fast=args.fast)
    return 0


def cmd_experiment_plan(args) -> int:
    from polychromic.experiment.plan import format_plan, make_plan, plan_rows, plan_status
    from polychromic.experiment.spec import load_spec

    plan = make_plan(load_spec(args.spec, args.overrides))
    if args.json:
        from polychromic.io import dumps

        status = plan_status(plan)
        rows = [{**r, "status": status[f"train {r['model']}" if r["stage"] == "train" else f"evaluate {r['model']} T{r['temperature']:g}"]}
                for r in plan_rows(plan)]
        print(dumps(rows, indent=1))
    else:
        print(format_plan(plan, plan_status(plan)))
    return 0


def cmd_experiment_run(args) -> int:
    from polychromic.experiment.runner import ExperimentError, run
    from polychromic.experiment.spec import load_spec

    try:
        paths = run(load_spec(args.spec, args.overrides), parallel=args.parallel, retries=args.retries,
                    write_report=not args.no_report, eval_parallel=args.eval_parallel)
    except ExperimentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_experiment_report(args) -> int:
    from polychromic.experiment.report import load_any, report

    for path in report(load_any(args.spec, args.overrides)):
        print(f"wrote {path}")
    return 0


def cmd_experiment_list(args) -> int:
    from polychromic import resources

    for name, path in resources.shipped("experiments").items():
        first = path.read_text(encoding="utf-8").splitlines()[:1]
        note = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
        print(f"{name:24s} {note}" if note else name)
    return 0


def cmd_experiment_copy(args) -> int:
    from polychromic.config import copy_shipped

    print(f"wrote {copy_shipped(args.name, args.dest, kind='experiments')}")
    return 0


def cmd_preflight(args) -> int:
    from polychromic.training.preflight import preflight

    return preflight(_load(args), measure=args.measure, price_per_hour=args.price_per_hour)


def cmd_shipped_list(args) -> int:
    from polychromic import resources

    kind = args.command
    for name, path in resources.shipped(kind).items():
        first = path.read_text(encoding="utf-8").splitlines()[:1]
        note = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
        print(f"{name:40s} {note}" if note else name)
    return 0


def cmd_shipped_copy(args) -> int:
    from polychromic.config import copy_shipped

    out = copy_shipped(args.name, args.dest, kind=args.command)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polychromic", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(name: str, func, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("config", help="YAML config (may `extends:` another) or a shipped config's name")
        sp.add_argument("overrides", nargs="*", help="key.sub=value overrides")
        sp.set_defaults(func=func)
        return sp

    with_config("validate", cmd_validate, "check a config; exit non-zero with every error")
    with_config("print-config", cmd_print_config, "print the resolved config as YAML")

    cf = sub.add_parser("configs", help="the shipped configs: list them, copy one to edit")
    csub = cf.add_subparsers(dest="configs_command", required=True)
    csub.add_parser("list", help="names of the shipped configs (usable wherever a CONFIG is asked)").set_defaults(func=cmd_shipped_list)
    cp = csub.add_parser("copy", help="write a shipped config to DEST, its extends: merged in")
    cp.add_argument("name")
    cp.add_argument("dest")
    cp.set_defaults(func=cmd_shipped_copy)

    data = sub.add_parser("data", help="dataset commands")
    dsub = data.add_subparsers(dest="data_command", required=True)
    prep = dsub.add_parser("prepare", help="validate + split a JSONL file or the embedded corpus")
    prep.add_argument("config", nargs="?", default=None, help="config (default: built-in defaults = embedded corpus)")
    prep.add_argument("overrides", nargs="*")
    prep.add_argument("--out", default=None, help="output folder (default data.prepared_dir)")
    prep.add_argument("--skip-invalid", action="store_true", help="reject bad lines into rejects.jsonl instead of stopping")
    prep.set_defaults(func=cmd_data_prepare)

    tr = with_config("train", cmd_train, "train one config (LoRA SFT / polychromic)")
    tr.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")

    sw = sub.add_parser("sweep", help="train several configs in order, resuming and skipping finished ones")
    sw.add_argument("configs", nargs="+")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE", help="override applied to every config")
    sw.set_defaults(func=cmd_sweep)

    st = sub.add_parser("status", help="list runs: state, step, ETA, last metrics")
    st.add_argument("runs_dir", nargs="?", default="runs")
    st.set_defaults(func=cmd_status)

    with_config("evaluate", cmd_evaluate, "sample k replies per test prompt per model, score them (cached)")

    rp = sub.add_parser("report", help="write results.json, report.md and report.html for an evaluation")
    rp.add_argument("eval_dir")
    rp.set_defaults(func=cmd_report)

    im = sub.add_parser("import-samples", help="bring samples made elsewhere (NoveltyBench, lm-eval-harness) into an evaluation folder")
    im.add_argument("path", help="generations.jsonl (noveltybench) or samples_*.jsonl (lm_eval)")
    im.add_argument("--format", required=True, choices=["noveltybench", "lm_eval"])
    im.add_argument("--model", required=True, help="model name to file the samples under")
    im.add_argument("--out", required=True, help="evaluation folder (created or extended)")
    im.add_argument("--score", action="store_true", help="score the folder afterwards (needs the embedder)")
    im.set_defaults(func=cmd_import_samples)

    qs = sub.add_parser("quickstart", help="a small experiment on the embedded default end to end, then the full-size result")
    qs.add_argument("--workdir", default="quickstart", help="output folder (default ./quickstart)")
    qs.add_argument("--fast", action="store_true", help="smallest sizes (for tests)")
    qs.set_defaults(func=cmd_quickstart)

    ex = sub.add_parser("experiment", help="a whole experiment from a spec: train every arm x seed, evaluate, judge the targets")
    esub = ex.add_subparsers(dest="experiment_command", required=True)

    def with_spec(name: str, func, help: str) -> argparse.ArgumentParser:
        sp = esub.add_parser(name, help=help)
        sp.add_argument("spec", help="experiment spec (YAML, may `extends:` another) or a shipped spec's name"
                        + (", or an experiment folder" if name == "report" else ""))
        sp.add_argument("overrides", nargs="*", help="key.sub=value overrides of the spec")
        sp.set_defaults(func=func)
        return sp

    ep = with_spec("plan", cmd_experiment_plan, "print every training run and evaluation, with what `run` would do")
    ep.add_argument("--json", action="store_true", help="one JSON object per row (arm, role, seed, run_dir, ...)")
    er = with_spec("run", cmd_experiment_run, "train, evaluate and report; a rerun skips what is done")
    er.add_argument("--parallel", type=int, default=None, help="trainings at a time (default: the spec's `parallel`)")
    er.add_argument("--retries", type=int, default=1, help="resume a failed training this many times")
    er.add_argument("--eval-parallel", type=int, default=None,
                    help="temperature folders evaluated at a time, one process each (default: the spec's eval.parallel)")
    er.add_argument("--no-report", action="store_true",
                    help="stop after the evaluations (render later, anywhere: `experiment report DIR`)")
    with_spec("report", cmd_experiment_report, "write results.json, report.md, report.html from the experiment's files")
    esub.add_parser("list", help="the shipped experiment specs").set_defaults(func=cmd_experiment_list)
    ec = esub.add_parser("copy", help="write a shipped spec to DEST, its extends: merged in")
    ec.add_argument("name")
    ec.add_argument("dest")
    ec.set_defaults(func=cmd_experiment_copy)

    pf = with_config("preflight", cmd_preflight, "check model, data, GPU, disk, trackers; estimate time and cost")
    pf.add_argument("--measure", action="store_true", help="time a short warm-up instead of using benchmark numbers")
    pf.add_argument("--price-per-hour", type=float, default=None, help="GPU price in $/h for the cost estimate")
    return p


def main(argv: list[str] | None = None) -> int:
    from polychromic.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        # Errors we raise on bad input carry file/line/field; show them without a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
