"""The layering DESIGN.md draws, kept by a test: imports point down the data flow only.

``images → data → backbones → extraction → store → probes | index | reports → serve``, with datasets, fine-tuning,
bench and inspect beside them and the CLI on top. Each package may import the foundation modules at featkit's
root and the packages listed for it here, nothing else; nothing imports the CLI; only ``_device.py`` asks
``torch.cuda`` or ``torch.backends``. Checked twice: statically (every import statement, function-level ones
included) and by importing each package with all its submodules in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "featkit"
# Root modules everything may use; they import no package (featkit/__init__ and api.py are the public face, on top).
FOUNDATION = {"errors", "choices", "_atomic", "_files", "_device", "_faiss", "_versions", "_search_path"}
# package -> the packages it may import (besides FOUNDATION and itself)
ALLOWED: dict[str, set[str]] = {
    "backbones": set(),
    "data": {"backbones"},  # the preprocessing record (backbones/spec.py)
    "datasets": {"data"},
    "store": {"backbones"},  # the preprocessing record in a store's settings; store knows nothing of models
    "extraction": {"backbones", "data", "store"},
    "probes": {"store"},
    "index": {"backbones", "data", "extraction", "store"},
    "inspect": {"backbones"},
    "finetune": {"backbones", "data", "datasets"},
    "reports": {"data", "inspect"},
    "bench": {"backbones", "data", "datasets", "extraction", "store", "probes"},
    "serve": {"backbones", "data", "extraction", "store", "index", "reports"},
}
TOP = {"cli", "api", "__init__", "__main__"}


def _module_files() -> dict[str, list[Path]]:
    """Top-level name (package or root module) → its files."""
    out: dict[str, list[Path]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        out.setdefault(parts[0].removesuffix(".py"), []).append(path)
    return out


def _featkit_imports(path: Path) -> set[str]:
    """The top-level featkit names a file imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names] if node.module == "featkit" \
                else [node.module]
        else:
            continue
        found |= {m.split(".")[1] for m in modules if m.startswith("featkit.")}
    return found


def test_every_package_and_root_module_has_a_place_in_the_layering():
    names = set(_module_files())
    assert names <= set(ALLOWED) | FOUNDATION | TOP, names - set(ALLOWED) - FOUNDATION - TOP


@pytest.mark.parametrize("name", sorted(set(ALLOWED) | FOUNDATION))
def test_imports_point_down_the_data_flow(name):
    files = _module_files().get(name, [])
    if not files:
        pytest.skip(f"featkit/{name} does not exist yet")
    allowed = FOUNDATION | {name, "__version__"} | ALLOWED.get(name, set())
    if name in FOUNDATION:
        allowed = {"errors", "choices", name}  # the foundation sits below every package
    for path in files:
        wrong = _featkit_imports(path) - allowed
        assert not wrong, f"{path.relative_to(PACKAGE.parent)} imports featkit.{', featkit.'.join(sorted(wrong))}"


def test_nothing_but_the_entry_points_imports_the_cli():
    for name, files in _module_files().items():
        if name in ("cli", "__main__"):
            continue
        for path in files:
            assert "cli" not in _featkit_imports(path), path


def test_only_device_module_asks_torch_about_cuda_or_backends():
    for path in PACKAGE.rglob("*.py"):
        if path.name == "_device.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in ("cuda", "backends")
                    and isinstance(node.value, ast.Name) and node.value.id == "torch"):
                pytest.fail(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} uses torch.{node.attr}; ask _device.py")
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for module in modules:
                if module.split(".")[:2] in (["torch", "cuda"], ["torch", "backends"]):
                    pytest.fail(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {module}; ask _device.py")


LOADER = r"""
import importlib, json, pkgutil, sys
result = {}
for name in json.loads(sys.argv[1]):
    for module in [m for m in sys.modules if m == "featkit" or m.startswith("featkit.")]:
        del sys.modules[module]
    package = importlib.import_module(f"featkit.{name}")
    for info in pkgutil.walk_packages(package.__path__, f"featkit.{name}."):
        importlib.import_module(info.name)
    result[name] = sorted({m.split(".")[1] for m in sys.modules if m.startswith("featkit.")})
print(json.dumps(result))
"""


def _below(name: str) -> set[str]:
    """Every package ``name`` may load, directly or through the packages it imports."""
    seen: set[str] = set()
    todo = list(ALLOWED[name])
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo += ALLOWED[dep]
    return seen


def test_importing_a_package_and_all_its_submodules_loads_nothing_above_it():
    packages = sorted(name for name in ALLOWED if (PACKAGE / name).is_dir())
    proc = subprocess.run([sys.executable, "-c", LOADER, json.dumps(packages)], capture_output=True, text=True,
                          check=True, cwd=PACKAGE.parent)
    loaded = json.loads(proc.stdout)
    for name in packages:
        above = set(loaded[name]) - FOUNDATION - _below(name) - {name}
        assert not above, f"importing featkit.{name} loads featkit.{', featkit.'.join(sorted(above))}"
