"""Layering (../shared/docs/style.md, rule 11): config, metrics and report never import torch, and
lower layers never import higher ones."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "polychromic"

# Higher numbers may import lower ones (and their own layer), never higher ones.
LAYERS = {
    "cli": 7,
    "sweep": 6, "quickstart": 6,
    "train": 5, "evaluate": 5, "report": 5, "preflight": 5, "status": 5,
    "rollout": 4, "objectives": 4,
    "models": 3, "generation": 3, "fastgen": 3, "data": 3, "quality": 3, "trackers": 3, "monitor": 3,
    "lora_analysis": 3, "judge": 3, "samples": 3,
    "stats": 2, "plots": 2,
    "config": 1, "metrics": 1, "rundir": 1,
    "io": 0,
}


def _module_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("polychromic."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("polychromic."):
                    out.add(a.name.split(".")[1])
    return out


def test_imports_flow_downward():
    bad = []
    for path in SRC.rglob("*.py"):
        mod = _module_of(path)
        if mod in ("__init__", "__main__"):
            continue
        assert mod in LAYERS, f"{mod} has no layer in tests/test_layering.py: add it"
        for dep in _imports(path):
            if dep == mod:
                continue
            assert dep in LAYERS, f"{path}: imports unknown module polychromic.{dep}"
            if LAYERS[dep] > LAYERS[mod]:
                bad.append(f"{path.relative_to(SRC)} (layer {LAYERS[mod]}) imports {dep} (layer {LAYERS[dep]})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_light_modules_do_not_import_torch():
    code = (
        "import sys\n"
        "import polychromic.config, polychromic.metrics, polychromic.stats, polychromic.report, polychromic.cli\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'sentence_transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
