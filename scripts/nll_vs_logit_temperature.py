#!/usr/bin/env python3
"""What does it cost in reference NLL to be more diverse by flattening? (docs/results.md, issue 6)

A model whose samples at T = 0.7 look like the SFT model's samples at a higher temperature T' has
(to first order) the SFT logits divided by T' / 0.7. This prints the reference NLL (the evaluation's
own `reference_nll`, same prompts and references) of an adapter with its logits divided by t, for
each t given: t = 1 is the adapter itself; t = 0.85 / 0.7 and 1.0 / 0.7 are the flattening that
matches the SFT baseline's T = 0.85 and T = 1.0 diversity.

    python scripts/nll_vs_logit_temperature.py runs/cpu_sft/issue6_sft_baseline/seed_0/adapter --t 1 1.0714 1.2143 1.4286
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


class Flattened:
    """The model with its logits divided by t (what reference_nll reads: parameters() and .logits)."""

    def __init__(self, model, t: float):
        self.model, self.t = model, t

    def parameters(self):
        return self.model.parameters()

    def __call__(self, **kw):
        return SimpleNamespace(logits=self.model(**kw).logits / self.t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapter")
    ap.add_argument("--config", default="configs/experiments/issue6_base.yaml")
    ap.add_argument("--t", type=float, nargs="+", required=True)
    ap.add_argument("overrides", nargs="*", help="config overrides (key=value), e.g. eval.split=val")
    a = ap.parse_args()

    import numpy as np
    import torch

    from polychromic.config import load_config
    from polychromic.evaluation.nll import reference_nll
    from polychromic.evaluation.run import select_prompts
    from polychromic.models import load_adapter, load_base_model, load_tokenizer, pick_device

    cfg = load_config(ROOT / a.config, a.overrides)
    device = pick_device(cfg.trainer.device)
    tok = load_tokenizer(cfg.model)
    model = load_adapter(load_base_model(cfg.model, device), a.adapter).eval()
    prompts = select_prompts(cfg)
    out = {}
    with torch.no_grad():
        for t in a.t:
            rows = reference_nll(Flattened(model, t), tok, cfg, prompts)
            vals = [r["ref_nll"] for r in rows if r.get("ref_nll") is not None]
            out[f"{t:g}"] = {"ref_nll_mean_over_prompts": float(np.mean(vals)), "prompts": len(vals)}
    base = out[f"{a.t[0]:g}"]["ref_nll_mean_over_prompts"]
    for v in out.values():
        v["relative_to_first"] = (v["ref_nll_mean_over_prompts"] - base) / base
    print(json.dumps({"adapter": a.adapter, "split": cfg.eval.split, "by_logit_temperature": out}, indent=1))


if __name__ == "__main__":
    main()
