"""Property-based bad input for `data prepare` (docs/reliability.md): random bytes, broken JSON, wrong types,
empty strings, huge lines, mixed encodings. Always either a valid prepared dataset whose rows
obey the schema, or a DataError naming the file and a line — never another exception, never a
silently wrong result (every input line is accounted for: kept, or rejected with a reason)."""

import json
import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from polychromic.config import DataConfig
from polychromic.data import DataError, load_split, prepare

N_EXAMPLES = 150  # per test; recorded in docs/reliability.md

good_row = st.fixed_dictionaries({"tweet_id": st.integers(0, 5), "tweet": st.text(min_size=1, max_size=30), "reply": st.text(min_size=1, max_size=30)})
bad_value = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.lists(st.integers(), max_size=2), st.just(""), st.just("   "), st.text(max_size=5))
bad_row = st.dictionaries(st.sampled_from(["tweet_id", "tweet", "reply", "extra"]), bad_value, max_size=4)
line = st.one_of(
    good_row.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8")),
    bad_row.map(lambda r: json.dumps(r).encode("utf-8")),
    st.binary(max_size=40),                                            # random bytes, invalid UTF-8
    st.text(max_size=40).map(lambda t: t.encode("utf-8")),             # broken JSON
    good_row.map(lambda r: json.dumps(r, ensure_ascii=False).encode("latin-1", errors="replace")),  # mixed encodings
    st.just(b'{"tweet_id": 1, "tweet": "' + b"x" * 5000 + b'", "reply": "ok"}'),  # over-long
    st.just(b"[1, 2, 3]"),
)


def _cfg(path, out):
    return DataConfig(source="jsonl", path=str(path), prepared_dir=str(out), max_chars=1000, val_fraction=0.2, test_fraction=0.2)


@settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(line, min_size=1, max_size=12), st.booleans())
@example([b"\x00\n\x00", b'{"tweet_id": 0, "tweet": "00", "reply": "0"}'], True)  # a generated line holding a newline
def test_prepare_on_random_files(tmp_path_factory, lines, skip):
    d = tmp_path_factory.mktemp("fz")
    src = d / "in.jsonl"
    data = b"\n".join(lines) + b"\n"
    src.write_bytes(data)
    out = d / "out"
    try:
        manifest = prepare(_cfg(src, out), seed=1, skip_invalid=skip)
    except DataError as exc:
        msg = str(exc)
        assert "in.jsonl" in msg
        assert re.search(r"line \d+", msg) or "no valid" in msg or "cannot split" in msg, msg
        assert not out.exists(), "a failed prepare left output behind"
        return
    rows = {s: load_split(out, s) for s in ("train", "val", "test")}
    for split in rows.values():
        for r in split:
            assert isinstance(r["prompt"], str) and r["prompt"].strip()
            assert isinstance(r["reply"], str) and r["reply"].strip()
    kept = sum(len(v) for v in rows.values())
    rejected = sum(manifest.get("rejects", {}).values())
    # A generated line may hold a newline itself: count the file's lines as prepare reads them.
    physical = data.split(b"\n")[:-1]
    non_blank = sum(1 for x in physical if x.decode("utf-8", "replace").strip())
    assert kept + rejected == non_blank, (kept, rejected, non_blank, manifest)
    groups = [{r["group"] for r in v} for v in rows.values()]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
