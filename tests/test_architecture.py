"""The package's shape: raylora's layers, in order, with no import against the order (lazy and TYPE_CHECKING
imports included), no import cycle between modules, and package maps that name every module."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import raylora

PACKAGE = Path(raylora.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str | None = None) -> set[str]:
    """raylora modules ``path`` (module ``name``) imports anywhere in its body, lazy and TYPE_CHECKING ones
    included."""
    name = name or _module_name(path)
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


LAYERS = [
    ("base", {"raylora.errors", "raylora.environment", "raylora.files", "raylora.layout", "raylora.redact"}),
    ("spec", {"raylora.spec"}),
    ("data", {"raylora.data"}),
    ("builtin", {"raylora.builtin"}),
    ("train", {"raylora.train"}),
    ("record", {"raylora.record"}),
    ("tracking", {"raylora.tracking"}),
    ("study", {"raylora.study"}),
    ("interface", {"raylora", "raylora.cli", "raylora.__main__", "raylora.serving"}),
]
"""Low to high. A module may import its own layer and those below it, never one above: GUI data knows no
training, training knows no study, the study's data model knows no driver, and tracking never reaches
back into the driver that uses it."""


def _layer(module: str) -> int | None:
    for index, (_, members) in enumerate(LAYERS):
        if module in members or any(module.startswith(m + ".") for m in members if m != "raylora"):
            return index
    return None


def _back_arrows(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if _layer(dep) > _layer(module):
                found.append(f"{module} ({LAYERS[_layer(module)][0]}) → {dep} ({LAYERS[_layer(dep)][0]})")
    return found


def test_every_module_belongs_to_a_layer():
    assert [m for m in _graph() if _layer(m) is None] == []


def test_no_module_imports_a_higher_layer():
    assert _back_arrows(_graph()) == []


def test_a_back_arrow_is_found_when_there_is_one():
    assert _back_arrows({"raylora.data.scoring": {"raylora.train.recipe", "raylora.errors"}}) == [
        "raylora.data.scoring (data) → raylora.train.recipe (train)"
    ]
    assert _back_arrows({"raylora.tracking.report": {"raylora.study.baseline"}}) != []
    assert _back_arrows({"raylora.study.driver": {"raylora.tracking.report", "raylora.record.trials"}}) == []


def test_lazy_and_type_checking_imports_count(tmp_path):
    source = tmp_path / "x.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from raylora.study import driver\n"
        "def f():\n    import raylora.tracking.tracker\n"
    )
    assert _imports(source, "raylora.data.x") == {"raylora.study.driver", "raylora.tracking.tracker"}


def _listed(init: Path) -> set[str]:
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    return set(re.findall(r"^\s*(\w+)\s{2,}\S", doc, re.M))


def test_each_package_map_names_every_module():
    """A package's docstring lists its modules (``name   what it is``): the map a newcomer reads first."""
    missing = {}
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        modules = {p.stem for p in init.parent.glob("*.py") if p.stem != "__init__"}
        if gaps := sorted(modules - _listed(init)):
            missing[init.parent.name] = gaps
    assert missing == {}


def test_no_import_cycle_between_modules():
    # A package's __init__ re-exporting its own modules is its surface, not a cycle.
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in _graph().items()}
    cycle = _cycle(graph)
    assert cycle is None, " → ".join(cycle)


def test_a_cycle_is_found_when_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_spec_and_data_never_import_torch():
    for path in [*(PACKAGE / "spec").glob("*.py"), *(PACKAGE / "data").glob("*.py")]:
        assert not re.search(r"^\s*(import|from) torch", path.read_text(), re.M), path


def test_help_and_validate_import_no_torch():
    code = (
        "import sys, raylora, raylora.cli, raylora.spec;"
        "raylora.spec.load('search_spaces/quickstart.yaml');"
        "print(sorted(m for m in ('torch', 'ray', 'mlflow', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _environment_reads(path: Path) -> list[tuple[int, str | None]]:
    """``(line, variable)`` for each environment variable ``path`` reads (``os.environ.get(X)``,
    ``os.environ[X]``, ``os.getenv(X)``, ``X in os.environ``); the variable is None when ``X`` is neither
    a literal nor a constant of ``raylora.environment``."""
    from raylora import environment

    tree = ast.parse(path.read_text())
    aliases = {  # `from ..environment import INJECT_OOM as ENV`
        a.asname or a.name: a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("environment")
        for a in node.names
    }

    def is_environ(node) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ"

    def value(arg) -> str | None:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
        if (
            isinstance(arg, ast.Attribute)
            and isinstance(arg.value, ast.Name)
            and arg.value.id == "environment"
        ):
            return getattr(environment, arg.attr, None)
        if isinstance(arg, ast.Name) and arg.id in aliases:
            return getattr(environment, aliases[arg.id], None)
        return None

    reads = []
    for node in ast.walk(tree):
        arg = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if (node.func.attr == "get" and is_environ(node.func.value)) or node.func.attr == "getenv":
                arg = node.args[0]
        elif isinstance(node, ast.Subscript) and is_environ(node.value) and isinstance(node.ctx, ast.Load):
            arg = node.slice
        elif isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators):
            arg = node.left
        if arg is not None:
            reads.append((node.lineno, value(arg)))
    return reads


def _declared() -> set[str]:
    """The variables ``raylora.environment`` declares: its constants that its docstring names."""
    from raylora import environment

    doc = environment.__doc__ or ""
    return {
        v for k, v in vars(environment).items() if k.isupper() and isinstance(v, str) and f"``{v}``" in doc
    }


def test_every_environment_variable_read_is_declared_in_environment():
    undeclared = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {name or 'a variable not named by raylora.environment'}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "environment.py"
        for line, name in _environment_reads(path)
        if name not in _declared()
    ]
    assert undeclared == []


def test_an_undeclared_environment_read_is_found(tmp_path):
    source = tmp_path / "x.py"
    source.write_text(
        "import os\nfrom raylora import environment\nfrom raylora.environment import HOME as H\n"
        "a = os.environ.get('SOME_VAR')\nb = os.environ[environment.HOME]\nc = H in os.environ\n"
        "d = os.getenv(name)\n"
    )
    reads = _environment_reads(source)
    assert reads == [(4, "SOME_VAR"), (5, "RAYLORA_HOME"), (6, "RAYLORA_HOME"), (7, None)]
    assert "SOME_VAR" not in _declared() and "RAYLORA_HOME" in _declared()
