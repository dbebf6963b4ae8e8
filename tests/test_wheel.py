"""A wheel that works: built from this checkout, installed into a fresh virtual environment, it finds its recipes
and data cards from any folder (they ship as package data, not beside a source checkout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_venv_lists_recipes_and_data_cards_outside_the_checkout(tmp_path):
    source = tmp_path / "src"  # build from a copy: the build leaves build/ and *.egg-info behind
    shutil.copytree(REPO / "featkit", source / "featkit", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("featkit-*.whl"))

    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True)
    # featkit's dependencies come from this environment; featkit itself only from the wheel (a .pth line adds a
    # folder to sys.path without running the editable install's import hook that lives there)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("FEATKIT_RECIPES", "FEATKIT_DATA_CARDS", "PYTHONPATH")}
    featkit = env_dir / "bin" / "featkit"

    def run(*args: str) -> str:
        proc = subprocess.run([str(featkit), *args], cwd=outside, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    where = subprocess.run([str(python), "-c", "import featkit; print(featkit.__file__)"], cwd=outside, env=env,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(site)), where  # the wheel's copy, not this checkout
    recipes = run("recipes")
    for name in ("alexnet-2012", "last-stage", "transfer-fastai", "full-finetune"):
        assert name in recipes
    assert str(site) in recipes  # "from SITE-PACKAGES/featkit/recipes"
    cards = run("data", "list")
    for name in ("digits", "hymenoptera", "cifar10", "flowers102"):
        assert name in cards
    assert "digits" in run("data", "show", "digits")
    page = subprocess.run([str(python), "-c", "from importlib import resources; "
                           "print(resources.files('featkit.serve').joinpath('static', 'index.html').read_text())"],
                          cwd=outside, env=env, check=True, capture_output=True, text=True).stdout
    assert "/static/app.js" in page  # featkit serve's page ships in the wheel
