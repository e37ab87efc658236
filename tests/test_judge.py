"""LLM judge against a fake OpenAI-compatible server on 127.0.0.1: swap logic, caching, budget,
parse failures, and the API key never reaching a file or an error message."""

from __future__ import annotations

import json
import re
import threading
from http.server import ThreadingHTTPServer

import pytest

from helpers import JSONHandler

from polychromic import io
from polychromic.config import JudgeConfig
from polychromic.evaluation.judge import JudgeError, JudgeItem, items_from_eval_dir, judge_eval_dir, parse_choice, run_judge, verdict
from polychromic.evaluation.cache import sample_row

KEY = "sk-fake-key-0123456789"
ENV = "POLYCHROMIC_TEST_JUDGE_KEY"


class FakeJudge(JSONHandler):
    """Prefers the reply containing GOOD; always says A when the message contains BIAS (position
    bias); answers prose when it contains MALFORMED; echoes the auth header on ECHO (a server
    that leaks what it got, to check the key is scrubbed from errors)."""

    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization")
        user = body["messages"][-1]["content"]
        type(self).requests.append({"path": self.path, "auth": auth, "user": user, "model": body["model"]})
        if auth != f"Bearer {KEY}":
            return self._send(401, {"error": "bad key"})
        if "ECHO" in user:
            return self._send(400, {"error": f"rejected request with header {auth}"})
        a, b = re.search(r"Reply A:\n(.*)\n\nReply B:\n(.*)\n\nWhich", user, re.S).groups()
        if "MALFORMED" in user:
            answer = "Both replies have merits; I cannot choose."
        elif "BIAS" in user:
            answer = "A"
        else:
            answer = "**A**" if "GOOD" in a else "B."
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": answer}}]})


@pytest.fixture()
def server(monkeypatch):
    FakeJudge.requests = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    monkeypatch.setenv(ENV, KEY)
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def cfg(url: str, max_calls: int = 100) -> JudgeConfig:
    return JudgeConfig(enabled=True, base_url=url, model="fake-judge", api_key_env=ENV, max_calls=max_calls)


ITEMS = [
    JudgeItem("p1", "hello there", "poly", "a GOOD reply", "sft", "meh"),
    JudgeItem("p2", "how are you", "poly", "meh", "sft", "a GOOD answer"),
    JudgeItem("p3", "BIAS prompt", "poly", "x GOOD", "sft", "y"),
    JudgeItem("p4", "MALFORMED prompt", "poly", "x GOOD", "sft", "y"),
    JudgeItem("p5", "last one", "poly", "GOOD again", "sft", "nope"),
]


def test_parse_and_verdict_rules():
    assert [parse_choice(x) for x in ["A", " b ", "**A**", "Reply B.", "tie", "A or B", "", None, "Answer: A"]] == [
        "A", "B", "A", "B", "tie", None, None, None, None,
    ]
    assert verdict("A", "B") == "win"  # model shown first picked, then model shown second picked
    assert verdict("B", "A") == "loss"
    assert verdict("A", "A") == "tie"  # flips with position: bias, not preference
    assert verdict("tie", "B") == "tie"
    assert verdict(None, "B") == "parse_failure"


def test_swap_cache_and_parse_failures(server, tmp_path):
    cache = tmp_path / "judge.jsonl"
    s = run_judge(ITEMS, cfg(server), cache)["poly"]
    assert (s["wins"], s["losses"], s["ties"], s["parse_failures"], s["skipped_budget"]) == (2, 1, 1, 1, 0)
    assert s["win_rate"] == pytest.approx(2 / 4) and s["calls"] == 10 and s["cached"] == 0
    reqs = FakeJudge.requests
    assert len(reqs) == 10 and all(r["path"] == "/v1/chat/completions" and r["model"] == "fake-judge" for r in reqs)
    # Both orders: the model's reply is shown as A, then as B.
    assert "Reply A:\na GOOD reply" in reqs[0]["user"] and "Reply B:\na GOOD reply" in reqs[1]["user"]
    rows = list(io.read_jsonl(cache))
    assert [r["verdict"] for r in rows] == ["win", "loss", "tie", "parse_failure", "win"]
    assert rows[3]["choices"] == {"model_first": None, "baseline_first": None}
    assert rows[3]["answers"]["model_first"].startswith("Both replies")

    # Second run: everything cached, no request at all, same counts.
    FakeJudge.requests.clear()
    s2 = run_judge(ITEMS, cfg(server), cache)["poly"]
    assert FakeJudge.requests == []
    assert s2["cached"] == 5 and s2["calls"] == 0 and (s2["wins"], s2["losses"], s2["parse_failures"]) == (2, 1, 1)

    # A changed reply is a new pair: asked again, the others stay cached.
    changed = [*ITEMS[:4], JudgeItem("p5", "last one", "poly", "changed, not good", "sft", "a GOOD one")]
    s3 = run_judge(changed, cfg(server), cache)["poly"]
    assert len(FakeJudge.requests) == 2 and s3["cached"] == 4 and s3["losses"] == 2


def test_budget_cap_skips_and_reports(server, tmp_path):
    cache = tmp_path / "judge.jsonl"
    s = run_judge(ITEMS, cfg(server, max_calls=5), cache)["poly"]
    # Each pair costs 2 calls: 2 pairs fit in 5, the other 3 are skipped (never half asked).
    assert len(FakeJudge.requests) == 4 and s["calls"] == 4 and s["skipped_budget"] == 3
    assert s["wins"] + s["losses"] + s["ties"] + s["parse_failures"] == 2
    assert len(list(io.read_jsonl(cache))) == 2
    FakeJudge.requests.clear()
    s = run_judge(ITEMS, cfg(server, max_calls=100), cache)["poly"]
    assert len(FakeJudge.requests) == 6 and s["cached"] == 2 and s["skipped_budget"] == 0
    zero = run_judge(ITEMS + [JudgeItem("p6", "new", "poly", "a", "sft", "b")], cfg(server, max_calls=0), cache)["poly"]
    assert zero["skipped_budget"] == 1 and zero["cached"] == 5


def test_key_is_never_written_nor_shown(server, tmp_path, capsys):
    cache = tmp_path / "judge.jsonl"
    run_judge(ITEMS, cfg(server), cache)
    assert all(r["auth"] == f"Bearer {KEY}" for r in FakeJudge.requests)  # the key is sent...
    with pytest.raises(JudgeError) as err:
        run_judge([JudgeItem("e", "ECHO", "poly", "a", "sft", "b")], cfg(server), cache)
    assert "HTTP 400" in str(err.value) and KEY not in str(err.value) and "***" in str(err.value)
    out = capsys.readouterr()
    assert KEY not in out.out + out.err
    for p in tmp_path.rglob("*"):  # ...and written nowhere
        if p.is_file():
            assert KEY.encode() not in p.read_bytes(), p


def test_missing_key_and_unreachable_endpoint(server, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV)
    with pytest.raises(JudgeError, match=ENV):
        run_judge(ITEMS[:1], cfg(server), tmp_path / "j.jsonl")
    # A fully cached run needs no key (nothing is asked).
    monkeypatch.setenv(ENV, KEY)
    run_judge(ITEMS[:1], cfg(server), tmp_path / "j.jsonl")
    monkeypatch.delenv(ENV)
    assert run_judge(ITEMS[:1], cfg(server), tmp_path / "j.jsonl")["poly"]["cached"] == 1
    monkeypatch.setenv(ENV, KEY)
    monkeypatch.setattr("polychromic.evaluation.judge.time.sleep", lambda s: None)
    with pytest.raises(JudgeError, match="127.0.0.1:9"):
        run_judge(ITEMS[1:2], cfg("http://127.0.0.1:9/v1"), tmp_path / "k.jsonl", timeout=2)


def test_judge_eval_dir_uses_greedy_replies(server, tmp_path):
    d = tmp_path / "eval"
    io.atomic_write_jsonl(d / "prompts.jsonl", [{"prompt_id": "p1", "prompt": "hi", "reference": "yo"},
                                                 {"prompt_id": "p2", "prompt": "BIAS", "reference": "yo"}])
    dec = {"k": 1}
    rows = []
    for model, good in (("base", False), ("poly", True)):
        for pid in ("p1", "p2"):
            rows.append(sample_row(pid, model, "sample", 0, "sampled text", 2, True, dec))
            rows.append(sample_row(pid, model, "greedy", 0, "GOOD greedy" if good else "plain greedy", 2, True, dec))
    io.append_jsonl(d / "samples.jsonl", rows)
    items = items_from_eval_dir(d, "base")
    assert [(i.prompt_id, i.model, i.text, i.baseline_text) for i in items] == [
        ("p1", "poly", "GOOD greedy", "plain greedy"), ("p2", "poly", "GOOD greedy", "plain greedy")]
    s = judge_eval_dir(d, cfg(server), "base")["poly"]
    assert (s["wins"], s["ties"]) == (1, 1) and (d / "judge.jsonl").is_file()
    with pytest.raises(JudgeError, match="baseline model 'nobody'"):
        items_from_eval_dir(d, "nobody")
