"""Optional LLM judge: pairwise comparison of a model's reply against the baseline's, through any
OpenAI-compatible `/chat/completions` endpoint.

- Each pair is asked in both orders (model shown first, then baseline shown first); it counts as a
  win or a loss only when the judge picks the same reply both times. A flip is a tie: that is
  position bias, not preference (Zheng et al. 2023, "Judging LLM-as-a-judge", section 3.3).
- An answer that is not A, B or TIE is a parse failure: counted and reported, never a win or loss.
- Verdicts are cached in `judge.jsonl`, keyed by (prompt id, model, baseline, hash of judge model +
  texts): a rerun asks nothing already asked, and a changed reply is asked again.
- `max_calls` caps the requests of one run; pairs left unasked are counted as skipped for budget.
- The API key is read from the environment variable named by `api_key_env` and goes only into
  the request header: never into judge.jsonl, a log line or an error message.

Only the standard library (urllib) is used, so the judge adds no dependency.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from polychromic import io
from polychromic.config import JudgeConfig

JUDGE_FILE = "judge.jsonl"
ORDERS = ("model_first", "baseline_first")
RETRY_STATUS = (429, 500, 502, 503, 504)
RETRIES = 3

SYSTEM_PROMPT = (
    "You are an impartial judge. You compare two replies to the same message and decide which one "
    "is the better reply: relevant to the message, fluent, engaging, and not repetitive or broken. "
    "The order in which the replies are shown and their length must not influence you."
)
USER_TEMPLATE = (
    "Message:\n{prompt}\n\nReply A:\n{a}\n\nReply B:\n{b}\n\n"
    "Which reply is better? Answer with exactly one word: A, B, or TIE."
)
_ANSWER = re.compile(r"^[\W_]*(?:REPLY\s+)?(A|B|TIE)[\W_]*$")


class JudgeError(RuntimeError):
    pass


@dataclass
class JudgeItem:
    """One pair to judge: `model`'s reply against `baseline`'s reply to the same prompt."""

    prompt_id: str
    prompt: str
    model: str
    text: str
    baseline: str
    baseline_text: str


def parse_choice(answer: str | None) -> str | None:
    """'A', 'B' or 'tie' from the judge's answer; None when it is anything else."""
    if answer is None:
        return None
    m = _ANSWER.match(answer.strip().upper())
    if m is None:
        return None
    return "tie" if m[1] == "TIE" else m[1]


def verdict(model_first: str | None, baseline_first: str | None) -> str:
    """'win' / 'loss' for the model only when both orders agree; a flip or a tie is 'tie'."""
    if model_first is None or baseline_first is None:
        return "parse_failure"
    pick1 = {"A": "model", "B": "baseline"}.get(model_first, "tie")
    pick2 = {"B": "model", "A": "baseline"}.get(baseline_first, "tie")
    if pick1 == pick2 == "model":
        return "win"
    if pick1 == pick2 == "baseline":
        return "loss"
    return "tie"


def pair_key(item: JudgeItem, judge_model: str) -> str:
    blob = json.dumps([judge_model, SYSTEM_PROMPT, USER_TEMPLATE, item.prompt, item.text, item.baseline_text])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class _Client:
    """Minimal chat-completions client; keeps the key out of every message it raises."""

    def __init__(self, cfg: JudgeConfig, timeout: float):
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.model = cfg.model
        self.timeout = timeout
        self._key = ""
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise JudgeError(
                    f"eval.judge.api_key_env: environment variable {cfg.api_key_env} is not set "
                    "(export the key there; set api_key_env to an empty string for an endpoint without auth)"
                )
            self._key = key

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def ask(self, prompt: str, a: str, b: str) -> tuple[str | None, str | None]:
        """(answer text, error) for one comparison; error is set when the response has no answer."""
        body = json.dumps(
            {
                "model": self.model,
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": USER_TEMPLATE.format(prompt=prompt, a=a, b=b)},
                ],
                "temperature": 0,
                "max_tokens": 8,
            }
        ).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        raw = self._post(body, headers)
        try:
            return json.loads(raw)["choices"][0]["message"]["content"], None
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            return None, self._scrub(f"unreadable response ({type(exc).__name__}): {raw[:200]!r}")

    def _post(self, body: bytes, headers: dict) -> str:
        for attempt in range(RETRIES):
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return resp.read().decode("utf-8", errors="replace")
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", errors="replace")[:300]
                if exc.code not in RETRY_STATUS or attempt == RETRIES - 1:
                    raise JudgeError(self._scrub(f"judge endpoint {self.url}: HTTP {exc.code}: {detail}")) from None
            except (urllib.error.URLError, socket.timeout, ConnectionError) as exc:
                if attempt == RETRIES - 1:
                    reason = getattr(exc, "reason", exc)
                    raise JudgeError(self._scrub(f"judge endpoint {self.url}: {reason}")) from None
            time.sleep(0.5 * 2**attempt)  # rate limits and transient server errors
        raise AssertionError("unreachable")


def _load_cache(path: Path) -> dict[tuple, dict]:
    if not path.is_file():
        return {}
    return {(r["prompt_id"], r["model"], r["baseline"], r["key"]): r for r in io.read_jsonl(path, allow_torn_tail=True)}


def _repair_tail(path: Path) -> None:
    """Drop a torn last line (a crash mid-append) so the next append starts on a fresh line."""
    if path.is_file():
        raw = path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            io.atomic_write_bytes(path, raw[: raw.rfind(b"\n") + 1])


def run_judge(items: Iterable[JudgeItem], cfg: JudgeConfig, cache_path: str | Path, timeout: float = 60.0) -> dict:
    """Judge every item (cached), appending new verdicts to `cache_path` as they are made.

    Returns {model: {"baseline", "pairs", "wins", "losses", "ties", "parse_failures",
    "skipped_budget", "win_rate", "calls", "cached"}}; win_rate counts ties in the denominator and
    excludes parse failures and skipped pairs (None when no pair was judged).
    """
    path = Path(cache_path)
    _repair_tail(path)
    cache = _load_cache(path)
    client: _Client | None = None  # created on the first uncached pair: a full cache needs no key
    calls = 0
    out: dict[str, dict] = {}
    for item in items:
        s = out.setdefault(
            item.model,
            {"baseline": item.baseline, "pairs": 0, "wins": 0, "losses": 0, "ties": 0, "parse_failures": 0,
             "skipped_budget": 0, "calls": 0, "cached": 0},
        )
        s["pairs"] += 1
        key = pair_key(item, cfg.model)
        row = cache.get((item.prompt_id, item.model, item.baseline, key))
        if row is not None:
            s["cached"] += 1
        elif calls + len(ORDERS) > cfg.max_calls:
            s["skipped_budget"] += 1
            continue
        else:
            client = client or _Client(cfg, timeout)
            answers, errors = {}, {}
            for order in ORDERS:
                a, b = (item.text, item.baseline_text) if order == "model_first" else (item.baseline_text, item.text)
                answers[order], errors[order] = client.ask(item.prompt, a, b)
                calls += 1
                s["calls"] += 1
            choices = {o: parse_choice(answers[o]) for o in ORDERS}
            row = {
                "prompt_id": item.prompt_id,
                "model": item.model,
                "baseline": item.baseline,
                "judge_model": cfg.model,
                "key": key,
                "answers": answers,
                "choices": choices,
                "errors": {o: e for o, e in errors.items() if e is not None},
                "verdict": verdict(choices["model_first"], choices["baseline_first"]),
            }
            io.append_jsonl(path, [row])
            cache[(item.prompt_id, item.model, item.baseline, key)] = row
        field = {"win": "wins", "loss": "losses", "tie": "ties", "parse_failure": "parse_failures"}[row["verdict"]]
        s[field] += 1
    for s in out.values():
        judged = s["wins"] + s["losses"] + s["ties"]
        s["win_rate"] = s["wins"] / judged if judged else None
    return out


def items_from_eval_dir(
    eval_dir: str | Path, baseline: str, models: list[str] | None = None, kind: str = "greedy"
) -> list[JudgeItem]:
    """Pairs (model reply vs baseline reply, same prompt) from an evaluation directory's files:
    the greedy replies by default, else sample index 0 (imported samples have no greedy reply).
    `models` defaults to every model in samples.jsonl."""
    from polychromic.evaluation.cache import read_prompts, read_samples

    d = Path(eval_dir)
    prompts = {p["prompt_id"]: p["prompt"] for p in read_prompts(d)}
    texts: dict[tuple[str, str], str] = {}
    for r in read_samples(d):
        if r["kind"] == kind and (kind == "greedy" or r["index"] == 0):
            texts[(r["model"], r["prompt_id"])] = r["text"]
    found = sorted({m for m, _ in texts})
    if baseline not in found:
        raise JudgeError(f"{d / 'samples.jsonl'}: no {kind} replies of the baseline model {baseline!r} (models: {found})")
    models = found if models is None else models
    items = []
    for model in models:
        if model == baseline:
            continue
        for pid, prompt in prompts.items():
            if (model, pid) in texts and (baseline, pid) in texts:
                items.append(JudgeItem(pid, prompt, model, texts[(model, pid)], baseline, texts[(baseline, pid)]))
    return items


def judge_eval_dir(
    eval_dir: str | Path, cfg: JudgeConfig, baseline: str, models: list[str] | None = None, kind: str = "greedy", timeout: float = 60.0
) -> dict:
    """Judge every model's greedy replies against the baseline's; verdicts go to judge.jsonl."""
    d = Path(eval_dir)
    return run_judge(items_from_eval_dir(d, baseline, models, kind), cfg, d / JUDGE_FILE, timeout=timeout)
