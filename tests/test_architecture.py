"""The package's import structure, read from its source with ``ast`` (imports inside functions too).

Rules (``../STYLE.md``'s layering, the parts a machine can check):

- no import cycles between the package's modules;
- a command (``lightning_pref.commands.<name>``) never imports another command, and no library
  code imports a command (only ``__main__`` does);
- no ``_private`` name of one module is imported, or read as an attribute, by another;
- ``types``, ``errors`` and ``objectives`` import nothing from ``modules``, ``data``,
  ``commands`` or ``evaluation``;
- at most 8 modules at the top level; no file over 400 lines; no function over 60.

Every rule is also run on a small package planted in ``tmp_path`` that breaks it, so each check is
known to fail when it should.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_pref"
LOW_LAYERS = ("types", "errors", "objectives")
NOT_BELOW = ("modules", "data", "commands", "evaluation")


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted
    names: tuple[str, ...]  # names taken from it (from-imports and attribute reads)
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, source: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(source: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import of a package module in ``path``, at any depth, with the names it takes."""
    tree = ast.parse(path.read_text(), filename=str(path))
    root = source.split(".")[0]
    found: list[Import] = []
    aliases: dict[str, str] = {}  # local name bound to a whole package module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root and alias.name in modules:
                    found.append(Import(source, alias.name, (), node.lineno))
                    if alias.asname:
                        aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, source, path.name == "__init__.py")
            if target.split(".")[0] != root:
                continue
            taken: list[str] = []
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:  # `from pkg import submodule`
                    found.append(Import(source, sub, (), node.lineno))
                    aliases[alias.asname or alias.name] = sub
                else:
                    taken.append(alias.name)
            if taken and target in modules:
                found.append(Import(source, target, tuple(taken), node.lineno))
    for node in ast.walk(tree):  # `mod._private` through a module alias
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            found.append(Import(source, aliases[node.value.id], (node.attr,), node.lineno))
    return found


def _parent_inits(edge: Import, modules: dict[str, Path]) -> list[Import]:
    """Importing ``a.b.c`` from outside package ``a.b`` first runs ``a/b/__init__.py``."""
    parts = edge.target.split(".")
    parents = [".".join(parts[:i]) for i in range(2, len(parts))]
    return [
        Import(edge.source, p, (), edge.line)
        for p in parents
        if p in modules and not edge.source.startswith(p + ".") and edge.source != p
    ]


def import_graph(root: Path) -> list[Import]:
    modules = package_modules(root)
    edges = [i for name, path in modules.items() for i in imports_of(name, path, modules)]
    return edges + [p for e in edges for p in _parent_inits(e, modules)]


def cycles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), and self-imports."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _command_of(module: str, root: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 3 and parts[:2] == [root, "commands"]:
        return parts[2]
    return None


def command_violations(edges: list[Import], root: str) -> list[str]:
    """A command importing another command, or library code importing any command."""
    bad = []
    for e in edges:
        target = _command_of(e.target, root)
        if target is None and e.target != f"{root}.commands":
            continue
        source = _command_of(e.source, root)
        if e.source in (f"{root}.__main__", f"{root}.commands"):
            continue
        if source is None or source != target:
            bad.append(f"{e.source}:{e.line} imports {e.target}")
    return bad


def private_violations(edges: list[Import]) -> list[str]:
    return [
        f"{e.source}:{e.line} takes {name} from {e.target}"
        for e in edges
        if e.source != e.target
        for name in e.names
        if name.startswith("_") and not name.startswith("__")
    ]


def layer_violations(edges: list[Import], root: str) -> list[str]:
    def top(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else ""

    return [
        f"{e.source}:{e.line} imports {e.target}"
        for e in edges
        if top(e.source) in LOW_LAYERS and top(e.target) in NOT_BELOW
    ]


def size_violations(root: Path, max_top: int = 8, max_lines: int = 400, max_fn: int = 60):
    bad = []
    top = [p for p in root.glob("*.py")]
    if len(top) > max_top:
        bad.append(f"{len(top)} modules at the top level (at most {max_top})")
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        if (n := len(text.splitlines())) > max_lines:
            bad.append(f"{path.relative_to(root.parent)}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > max_fn:
                    bad.append(
                        f"{path.relative_to(root.parent)}:{node.lineno} {node.name}: {length}"
                    )
    return bad


def check(root: Path) -> dict[str, list]:
    edges = import_graph(root)
    return {
        "cycles": cycles(edges),
        "commands": command_violations(edges, root.name),
        "private": private_violations(edges),
        "layers": layer_violations(edges, root.name),
        "sizes": size_violations(root),
    }


@pytest.mark.parametrize("rule", ["cycles", "commands", "private", "layers", "sizes"])
def test_package_follows_the_rule(rule):
    assert check(PACKAGE)[rule] == []


# -- each rule fails on a planted violation --------------------------------------------------


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    for folder in [p for p in root.rglob("*") if p.is_dir()]:
        (folder / "__init__.py").touch()
    return root


CLEAN = {
    "types.py": "X = 1\n",
    "objectives/dpo.py": "from pkg.types import X\n",
    "modules/offline.py": "from pkg.objectives.dpo import X\n",
    "commands/evaluate.py": "from pkg.modules.offline import X\n",
    "__main__.py": "def main():\n    from pkg.commands import evaluate\n",
}

PLANTED = {
    "cycles": {"modules/offline.py": "def f():\n    from pkg.commands.evaluate import X\n"},
    "package_init_cycle": {
        "modules/__init__.py": "from pkg.modules.offline import X\n",
        "objectives/dpo.py": "def f():\n    from pkg.modules.offline import X\n",
    },
    "commands": {"commands/export.py": "from pkg.commands.evaluate import X\n"},
    "private": {"modules/offline.py": "from pkg.types import _secret\n"},
    "private_attribute": {"modules/offline.py": "import pkg.types as t\nY = t._secret\n"},
    "layers": {"objectives/dpo.py": "def f():\n    from pkg.modules.offline import X\n"},
    "library_imports_command": {"modules/offline.py": "from pkg.commands import evaluate\n"},
    "sizes": {"types.py": "X = 1\n" * 401},
    "function_size": {"types.py": "def f():\n" + "    x = 1\n" * 60},
    "top_level": {f"m{i}.py": "" for i in range(8)},
}
RULE = {
    "package_init_cycle": "cycles",
    "private_attribute": "private",
    "library_imports_command": "commands",
    "function_size": "sizes",
    "top_level": "sizes",
}


def test_clean_planted_package_passes(tmp_path):
    assert all(v == [] for v in check(_plant(tmp_path, CLEAN)).values())


@pytest.mark.parametrize("case", sorted(PLANTED))
def test_each_rule_fails_on_a_planted_violation(tmp_path, case):
    result = check(_plant(tmp_path, {**CLEAN, **PLANTED[case]}))
    rule = RULE.get(case, case)
    assert result[rule], f"{case} was not caught"
