"""The package's shape: no import cycles between raylora's modules, and the layers keep their promises."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import raylora

PACKAGE = Path(raylora.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """raylora modules ``path`` imports anywhere in its body (lazy imports included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("raylora")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("raylora"):
                continue
            for alias in node.names:  # `from . import x` imports module x when there is one
                sub = f"{module}.{alias.name}"
                found.add(sub if _exists(sub) else module)
    return found


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_modules():
    # A package's __init__ re-exporting its own modules is its surface, not a cycle.
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in _graph().items()}
    cycle = _cycle(graph)
    assert cycle is None, " → ".join(cycle)


def test_a_cycle_is_found_when_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_spec_never_imports_torch_or_the_other_layers():
    for path in (PACKAGE / "spec").glob("*.py"):
        text = path.read_text()
        assert "import torch" not in text, path
        for other in ("train", "study", "tracking", "builtin"):
            assert not any(d.startswith(f"raylora.{other}") for d in _imports(path)), (path, other)


def test_help_and_validate_import_no_torch():
    code = (
        "import sys, raylora, raylora.cli, raylora.spec;"
        "raylora.spec.load('search_spaces/quickstart.yaml');"
        "print(sorted(m for m in ('torch', 'ray', 'mlflow', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
