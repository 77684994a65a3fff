"""Package layout rules, checked on the source so that a new module cannot quietly break them.

* ``learn_features/cli.py`` is the one module that wires ``training`` and ``ranking`` in:
  the library stays importable (and reusable by a ranking service) without either.
* Everything that talks to Feast lives in ``learn_features/store/``; the core does not.
* ``learn_features.store`` imports no Feast at import time (``import feast`` costs seconds),
  so ``learn-features --help`` and the light commands stay fast.
* The modules of ``learn_features.store`` import each other without a loop, so each one can
  be imported first, alone (a loop works or fails depending on which module comes first).
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


def store_modules() -> list[str]:
    return ["learn_features.store"] + sorted(f"learn_features.store.{path.stem}" for path in STORE.glob("*.py") if path.stem != "__init__")


def store_imports(path: Path) -> set[str]:
    """The ``learn_features.store`` modules a store module imports, at any depth."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("learn_features.store."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "learn_features.store":
            names.update(f"learn_features.store.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("learn_features.store."):
            names.add(node.module)
    return names


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import loop of ``graph`` (module -> modules it imports), or [] when there is none."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(name: str, path: list[str]) -> list[str]:
        state[name] = "open"
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep, path + [dep])):
                return cycle
        state[name] = "done"
        return []

    for name in sorted(graph):
        if name not in state and (cycle := visit(name, [name])):
            return cycle
    return []


def test_find_cycle_finds_a_loop() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_store_modules_import_each_other_without_a_loop() -> None:
    """Checked on the source, imports inside functions included: a loop there fails later, at call time."""
    graph = {f"learn_features.store.{path.stem}": store_imports(path) for path in STORE.glob("*.py") if path.stem != "__init__"}
    assert find_cycle(graph) == []


def test_each_store_module_imports_alone_in_a_fresh_interpreter_without_feast() -> None:
    """Each module first, in its own interpreter: an import loop fails whichever module it is entered by."""
    code = "import importlib, sys\nimportlib.import_module(sys.argv[1])\n"
    code += "print(sorted(name for name in sys.modules if name.split('.')[0] == 'feast'))"
    # cwd=REPO: ``python -c`` imports this checkout's learn_features, not the installed one.
    procs = {name: subprocess.Popen([sys.executable, "-c", code, name], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for name in store_modules()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name}: {err}"
        assert out.strip() == "[]", f"{name} imports feast at import time: {out}"
