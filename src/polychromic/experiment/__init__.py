"""`polychromic experiment plan|run|report SPEC`: one experiment from a declared spec.

An experiment trains a baseline arm and its variants over several seeds, evaluates every model on
the same held-out prompts (the baseline at a grid of decoding temperatures, every arm at the
variant temperatures), and judges the targets declared in the spec before anything ran
(docs/experiments.md). Modules:
- spec: the typed spec (loading, validation, the per-arm and evaluation configs);
- plan: the directory layout and the ordered list of trainings and evaluations;
- runner: the stages (data, training subprocesses, evaluation), each resumable;
- results, heldout, targets: the numbers, the trained-on marks, the targets and the verdict;
- report, render (+ templates/): results.json, report.md, report.html, frontier.png.
Only `runner` imports torch, and only inside its stages: `plan` and `report` run without it.
"""
