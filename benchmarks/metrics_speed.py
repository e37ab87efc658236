"""Time the per-prompt metrics on an evaluation-sized input: 500 prompts x 10 samples of ~30 words
(under a minute on 2 cores, excluding embedding). Embeddings are random unit vectors made
before the clock starts, so only the metric maths is timed. Also times NLTK's own sentence_bleu for
Self-BLEU + pairwise-BLEU on a slice of the prompts (extrapolated to all), which is why
polychromic.metrics computes BLEU from n-gram count matrices (docs/metrics.md).

    python benchmarks/metrics_speed.py [--prompts 500] [--k 10] [--words 30] [--nltk-prompts 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from polychromic import metrics

# A Zipf-ish vocabulary: replies share frequent words, as real replies do, so BLEU has matches.
WORDS = (
    "the a to and of i you it is that in this for on with so be just my your what not are was but "
    "love great thanks lol yes no really good day time people think know like need see going get "
    "right now today how why when where who more much very well better best thing things way back "
    "tweet reply post news world game team work home friend friends life story video photo music "
    "happy sad funny crazy amazing awesome nice cool true wow omg agree same exactly totally maybe"
).split()


def synthetic_prompt(rng: np.random.Generator, k: int, words: int) -> list[str]:
    p = 1.0 / np.arange(1, len(WORDS) + 1)
    p /= p.sum()
    stem = list(rng.choice(WORDS, size=words, p=p))
    out = []
    for _ in range(k):
        # each sample keeps part of a shared stem (samples of one prompt overlap) and varies length
        n = max(1, int(rng.normal(words, words / 4)))
        sample = [w if rng.random() < 0.5 else str(rng.choice(WORDS, p=p)) for w in (stem * 2)[:n]]
        out.append(" ".join(sample) + rng.choice([".", "!", "?", " :)"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=500)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--words", type=int, default=30)
    ap.add_argument("--nltk-prompts", type=int, default=50, help="prompts timed with NLTK sentence_bleu (0 = skip)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    prompts = [synthetic_prompt(rng, args.k, args.words) for _ in range(args.prompts)]
    embeddings = [rng.normal(size=(args.k, 384)) for _ in prompts]
    qualities = [rng.random(args.k) for _ in prompts]
    n_tokens = [[len(metrics.tokenize(t)) for t in texts] for texts in prompts]

    t0 = time.perf_counter()
    for texts, e, q, n in zip(prompts, embeddings, qualities, n_tokens):
        metrics.per_prompt_metrics(texts, e, q, n, tau=0.5)
    ours = time.perf_counter() - t0
    print(f"per_prompt_metrics: {args.prompts} prompts x {args.k} samples of ~{args.words} words: {ours:.2f} s "
          f"({1000 * ours / args.prompts:.1f} ms/prompt)")

    if args.nltk_prompts:
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

        smooth = SmoothingFunction().method1
        sl = prompts[: args.nltk_prompts]
        t0 = time.perf_counter()
        for texts in sl:
            toks = [metrics.tokenize(t) for t in texts]
            for i, hyp in enumerate(toks):
                refs = [r for j, r in enumerate(toks) if j != i]
                sentence_bleu(refs, hyp, smoothing_function=smooth)
                for r in refs:
                    sentence_bleu([r], hyp, smoothing_function=smooth)
        nltk_s = time.perf_counter() - t0
        print(f"NLTK sentence_bleu (self + pairwise BLEU only), {len(sl)} prompts: {nltk_s:.2f} s "
              f"-> {nltk_s * args.prompts / len(sl):.1f} s for {args.prompts} prompts")

        t0 = time.perf_counter()
        for texts in sl:
            metrics.self_bleu(texts)
            metrics.pairwise_bleu(texts)
        fast = time.perf_counter() - t0
        print(f"polychromic.metrics self_bleu + pairwise_bleu, {len(sl)} prompts: {fast:.2f} s "
              f"({nltk_s / fast:.0f}x faster than NLTK)")


if __name__ == "__main__":
    main()
