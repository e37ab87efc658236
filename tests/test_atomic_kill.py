"""Kill a process while it rewrites a results file: the previous complete file is still there
and readable (atomic writes, docs/reliability.md)."""

import json
import os
import signal
import subprocess
import sys
import time

WRITER = r"""
import sys
from polychromic.io import atomic_write_json
path = sys.argv[1]
i = 0
while True:
    atomic_write_json(path, {"i": i, "payload": ["x" * 1000] * 2000, "end": i})
    i += 1
"""


def test_sigkill_during_atomic_rewrites_leaves_a_complete_file(tmp_path):
    target = tmp_path / "results.json"
    for delay in (0.3, 0.55, 0.8):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
        try:
            deadline = time.time() + 30
            while not target.exists() and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(delay)
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        data = json.loads(target.read_text())  # complete and parseable
        assert data["i"] == data["end"] and len(data["payload"]) == 2000
    # only temporary leftovers (dot-files) may remain besides the target, never a torn target
    assert [f.name for f in tmp_path.iterdir() if not f.name.startswith(".")] == ["results.json"]


def test_torn_jsonl_tail_is_reported_or_dropped(tmp_path):
    from polychromic.io import JsonlError, append_jsonl, read_jsonl

    p = tmp_path / "samples.jsonl"
    append_jsonl(p, [{"a": 1}, {"a": 2}])
    with open(p, "ab") as f:
        f.write(b'{"a": 3, "tex')  # a write cut by a crash
    assert [r["a"] for r in read_jsonl(p, allow_torn_tail=True)] == [1, 2]
    try:
        list(read_jsonl(p))
    except JsonlError as exc:
        assert "line 3" in str(exc) and "samples.jsonl" in str(exc)
    else:
        raise AssertionError("a torn line was read silently")
