"""The modules of ``training/`` import each other without a cycle (module-level and function-level
imports alike), the exporter depends on nothing in the trainer, the zoo (``training.architectures``)
on nothing of ``training`` outside it, and no function of ``training/`` or ``service/`` is over 80 lines; no
test module imports another (what they share lives in tests/helpers.py and its siblings)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "training"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of training/ it imports anywhere in its code}``."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from X import Y`: the module X.Y when Y is one, else X.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in paths and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_training_has_no_import_cycle():
    graph = import_graph()
    assert {"training.fit", "training.export", "training.runs"} <= graph.keys()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_export_and_runs_depend_on_no_trainer():
    graph = import_graph()
    for module in ("training.export", "training.runs"):
        assert not graph[module] & {"training.fit", "training.fit_packed", "training.compare", "training.hub"}


def test_the_zoo_depends_on_nothing_of_training_outside_it():
    graph = import_graph()
    zoo = {name for name in graph if name.startswith("training.architectures")}
    assert {"training.architectures", "training.architectures.weights"} <= zoo
    outside = {name: sorted(graph[name] - zoo) for name in sorted(zoo) if graph[name] - zoo}
    assert not outside, f"the zoo imports training modules outside training.architectures: {outside}"


MAX_FUNCTION_LINES = 80


@pytest.mark.parametrize("package", ["training", "service"])
def test_no_function_is_over_80_lines(package):
    """Counted from the first decorator (or ``def``) to the last line of the body."""
    long = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                    long.append(
                        f"{path.relative_to(ROOT)}:{start} {node.name} ({node.end_lineno - start + 1})"
                    )
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def imports_of_test_modules(source: str) -> list[str]:
    """The imports of test modules (``test_*``) or of ``conftest`` in ``source``, at any depth, as
    ``"LINE: module"``: what test modules share lives in tests/helpers.py, tests/training_helpers.py
    and tests/service_files.py instead."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top.startswith("test_") or top == "conftest" or (top == "tests" and ".test_" in f".{name}"):
                found.append((node.lineno, name))
    return [f"{line}: {name}" for line, name in sorted(found)]


def test_no_test_module_imports_another():
    found = {
        str(path.relative_to(ROOT)): imports
        for path in sorted((ROOT / "tests").glob("*.py"))
        if (imports := imports_of_test_modules(path.read_text(encoding="utf-8")))
    }
    assert not found, f"test modules imported elsewhere (move what they share to tests/helpers.py): {found}"


def test_the_test_import_finder_finds_them():
    source = (
        "import test_service\n"
        "from test_data import make_folder\n"
        "def f():\n    from conftest import SHARED_DATA\n"
        "import tests.test_fit as fit\n"
        "from helpers import Server\nimport service_files\nfrom tests import helpers\n"
    )
    assert imports_of_test_modules(source) == [
        "1: test_service",
        "2: test_data",
        "4: conftest",
        "5: tests.test_fit",
    ]
