"""pyflakes over the package, the benchmarks, the scripts and the tests: no undefined name, no
unused variable, no placeholder-less f-string. A benchmark path that runs only on a GPU is
never executed by the CPU suite, so a name it lost would otherwise surface there first.
Unused imports are allowed: a few modules re-export names on purpose."""

from __future__ import annotations

from pathlib import Path

from pyflakes import api as pyflakes_api  # the dev extra (scripts/setup.sh)
from pyflakes import messages, reporter

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = (messages.UnusedImport,)


class _Collect(reporter.Reporter):
    def __init__(self):
        super().__init__(None, None)
        self.found: list[str] = []

    def flake(self, message):
        if not isinstance(message, ALLOWED):
            self.found.append(str(message))

    def syntaxError(self, filename, msg, lineno, offset, text):
        self.found.append(f"{filename}:{lineno}: syntax error: {msg}")

    def unexpectedError(self, filename, msg):
        self.found.append(f"{filename}: {msg}")


def test_no_pyflakes_errors():
    found = _Collect()
    files = sorted(p for d in ("src", "benchmarks", "scripts", "tests") for p in (ROOT / d).rglob("*.py"))
    assert len(files) > 50
    for path in files:
        pyflakes_api.checkPath(str(path), found)
    assert not found.found, "\n".join(found.found)


def test_the_check_sees_an_undefined_name(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    return lost_helper(1)\n")
    found = _Collect()
    pyflakes_api.checkPath(str(bad), found)
    assert len(found.found) == 1 and "undefined name 'lost_helper'" in found.found[0] and "bad.py:2" in found.found[0]
