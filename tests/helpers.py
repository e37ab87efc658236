"""Small shared test helpers (imported by test modules; tests/ is on sys.path under pytest)."""

import json
from pathlib import Path


def write_prepared(folder: Path, n_rows: int = 24) -> Path:
    """A prepared train split of n_rows rows, two replies per prompt group (no tokenizer needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": f"r{i}", "group": f"g{i // 2}", "prompt": f"what do you think of topic number {i // 2} today?",
         "reply": f"I like topic {i // 2}, it is fine number {i % 5}."}
        for i in range(n_rows)
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder
