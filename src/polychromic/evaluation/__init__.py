"""Evaluation: k samples per prompt per model, cached, scored, optionally judged.

- run: `evaluate(cfg)`, the orchestration (prompts, chunked seeded generation, resume);
- cache: the samples / prompts / reference-NLL files of an evaluation directory;
- importers: samples made by other tools (NoveltyBench, lm-evaluation-harness);
- nll: the held-out NLL of the reference replies;
- scoring: `score(eval_dir)`, the metrics from the files alone;
- judge, lora_analysis: the pairwise LLM judge and the SVD analysis of LoRA adapters.

No torch at import time: the report reads evaluation directories through this package on a CPU.
"""

from polychromic.evaluation.run import evaluate
from polychromic.evaluation.scoring import score

__all__ = ["evaluate", "score"]
