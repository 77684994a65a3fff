"""Package layout rules, checked on the source so that a new module cannot quietly break them.

* ``learn_features/cli.py`` is the one module that wires ``training`` and ``ranking`` in:
  the library stays importable (and reusable by a ranking service) without either.
* Everything that talks to Feast lives in ``learn_features/store/``; the core does not.
* ``learn_features.store`` imports no Feast at import time (``import feast`` costs seconds),
  so ``learn-features --help`` and the light commands stay fast.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "learn_features"
STORE = PACKAGE / "store"


def imported_packages(path: Path) -> set[str]:
    """Top-level package of every absolute import in the file, at any depth (imports inside functions too)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def modules_importing(*packages: str) -> list[str]:
    return sorted(
        path.relative_to(REPO).as_posix() for path in PACKAGE.rglob("*.py") if imported_packages(path) & set(packages)
    )


def test_only_the_cli_imports_training_or_ranking() -> None:
    assert modules_importing("training", "ranking") == ["learn_features/cli.py"]


def test_only_the_store_package_imports_feast() -> None:
    importers = modules_importing("feast")
    assert importers  # the rule is checked against real imports
    assert [name for name in importers if not name.startswith("learn_features/store/")] == []


def test_store_modules_import_without_feast() -> None:
    modules = ["learn_features.store"] + sorted(f"learn_features.store.{path.stem}" for path in STORE.glob("*.py") if path.stem != "__init__")
    code = "import sys\n" + "".join(f"import {name}\n" for name in modules)
    code += "print(sorted(name for name in sys.modules if name.split('.')[0] == 'feast'))"
    # cwd=REPO: ``python -c`` imports this checkout's learn_features, not the installed one.
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
