"""Layering (docs/architecture.md): imports flow one way, derived from the package layout.

Every import form counts: `import polychromic.x`, `from polychromic import x`, `from polychromic.x
import y`, relative imports, and imports inside functions. Two graphs must be acyclic:
- modules (a package's `__init__` is the package's own node);
- components, the first level under `polychromic/` (`training`, `metrics`, `config`, ...): a
  component's layer is the length of the longest import chain below it, and docs/architecture.md
  lists each component with exactly that layer.
`config`, `metrics` and `report` never import torch.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "polychromic"


def module_name(path: Path, src: Path = SRC) -> str:
    rel = path.relative_to(src.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules(src: Path = SRC) -> dict[str, Path]:
    return {module_name(p, src): p for p in sorted(src.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of dotted `name` that is one of ours."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in modules:
            return cand
    return None


def imports_of(path: Path, modules: dict[str, Path], src: Path = SRC) -> set[str]:
    me = module_name(path, src)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if (r := _resolve(a.name, modules)) is not None:
                    out.add(r)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:  # `from pkg import sub` imports the submodule
                if (r := _resolve(f"{mod}.{a.name}", modules)) is not None:
                    out.add(r)
                elif (r := _resolve(mod, modules)) is not None:
                    out.add(r)
    out.discard(me)
    return out


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    modules = all_modules(src)
    return {m: imports_of(p, modules, src) for m, p in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def component(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def component_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        c = component(m)
        if c in ("polychromic", "__main__"):
            continue
        out.setdefault(c, set()).update(component(d) for d in deps if component(d) not in (c, "polychromic"))
    return out


def layers(cgraph: dict[str, set[str]]) -> dict[str, int]:
    memo: dict[str, int] = {}

    def depth(c: str) -> int:
        if c not in memo:
            memo[c] = 1 + max((depth(d) for d in cgraph.get(c, ())), default=-1)
        return memo[c]

    return {c: depth(c) for c in cgraph}


# --- the rules, on the real tree ---------------------------------------------------------------

def test_no_module_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_component_import_cycle():
    cycle = find_cycle(component_graph(import_graph()))
    assert cycle is None, "components import each other: " + " -> ".join(cycle)


def test_cli_is_the_top():
    graph = import_graph()
    users = sorted(m for m, deps in graph.items() if "polychromic.cli" in deps and m != "polychromic.__main__")
    assert not users, f"only __main__ may import the CLI: {users}"


def test_architecture_doc_lists_the_derived_layers():
    derived = layers(component_graph(import_graph()))
    doc = (ROOT / "docs" / "architecture.md").read_text()
    table = dict(
        (m.group(2), int(m.group(1)))
        for m in re.finditer(r"^\|\s*(\d+)\s*\|\s*`([a-z_]+)/?`", doc, flags=re.M)
    )
    assert table == derived, (
        "docs/architecture.md's layer table differs from the imports; derived layers: "
        + ", ".join(f"{c}={n}" for c, n in sorted(derived.items(), key=lambda x: (x[1], x[0])))
    )


def test_light_modules_do_not_import_torch():
    code = (
        "import sys\n"
        "import polychromic.config, polychromic.metrics, polychromic.metrics.stats, polychromic.report, polychromic.cli\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'sentence_transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# --- the checker itself, on known trees ----------------------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    src = tmp_path / "polychromic"
    for rel, text in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return src


@pytest.mark.parametrize(
    "a_text",
    [
        "import polychromic.b\n",
        "from polychromic import b\n",
        "from polychromic.b import thing\n",
        "from . import b\n",
        "def f():\n    from polychromic import b\n",
    ],
)
def test_checker_sees_every_import_form(tmp_path, a_text):
    src = _tree(tmp_path, {"__init__.py": "", "a.py": a_text, "b.py": "import polychromic.a\n"})
    cycle = find_cycle(import_graph(src))
    assert cycle is not None and set(cycle) == {"polychromic.a", "polychromic.b"}


def test_checker_relative_import_in_a_subpackage(tmp_path):
    src = _tree(tmp_path, {
        "__init__.py": "", "gen/__init__.py": "from .fast import x\n",
        "gen/fast.py": "from ..gen import params\n", "gen/params.py": "",
    })
    g = import_graph(src)
    assert g["polychromic.gen.fast"] == {"polychromic.gen.params"}
    assert find_cycle(g) is None
    assert layers(component_graph(g)) == {"gen": 0}


def test_checker_component_layers(tmp_path):
    src = _tree(tmp_path, {
        "__init__.py": "", "io.py": "", "cfg.py": "from polychromic import io\n",
        "train/__init__.py": "", "train/loop.py": "from polychromic.cfg import x\nfrom polychromic.io import y\n",
        "cli.py": "def main():\n    from polychromic.train.loop import train\n",
    })
    assert layers(component_graph(import_graph(src))) == {"io": 0, "cfg": 1, "train": 2, "cli": 3}
