"""The package as a user installs it: build the wheel, install it into a fresh virtual environment
and run the commands from an empty directory outside the checkout, so nothing can be read from the
source tree (shipped configs, calibration numbers and report templates are package data).

The fresh environment gets the wheel alone; its dependencies (torch, transformers, ...) come from
the test environment through a path entry, so the test needs no network and no second torch."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, env=None, timeout=600):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist")],
         cwd=tmp)
    (wheel,) = (tmp / "dist").glob("polychromic-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp)
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp)
    # Dependencies from this environment, appended after the fresh site-packages (a plain path
    # entry: the .pth files there, such as an editable install of this checkout, are not processed).
    fresh_site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout.strip())
    deps = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if Path(p).is_dir()]
    (fresh_site / "_test_deps.pth").write_text("\n".join(deps) + "\n")
    empty = tmp / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return {"wheel": wheel, "bin": venv / "bin", "cwd": empty, "env": env}


def test_wheel_carries_the_package_data(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    assert "polychromic/resources/configs/polychromic_1.0_moderate.yaml" in names
    assert "polychromic/resources/configs/demo/baseline.yaml" in names
    assert any(n.startswith("polychromic/resources/calibration/") and n.endswith(".json") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/", "scripts/")) for n in names)


def test_installed_package_is_the_wheel(installed):
    r = _run([str(installed["bin"] / "python"), "-c", "import polychromic; print(polychromic.__file__)"],
             cwd=installed["cwd"], env=installed["env"])
    assert str(installed["bin"].parent) in r.stdout, r.stdout
    assert str(ROOT) not in r.stdout


def test_commands_run_from_an_empty_directory(installed):
    cli = str(installed["bin"] / "polychromic")
    listed = _run([cli, "configs", "list"], cwd=installed["cwd"], env=installed["env"]).stdout
    assert "polychromic_1.0_moderate" in listed and "demo/baseline" in listed
    ok = _run([cli, "validate", "polychromic_1.0_moderate"], cwd=installed["cwd"], env=installed["env"])
    assert "OK" in ok.stdout
    work = installed["cwd"] / "qs"
    _run([cli, "quickstart", "--fast", "--workdir", str(work)], cwd=installed["cwd"], env=installed["env"], timeout=900)
    assert (work / "report" / "report.html").is_file() and (work / "full_result" / "report.md").is_file()
    assert sorted(p.name for p in installed["cwd"].iterdir()) == ["qs"]  # nothing written beside the named folder
