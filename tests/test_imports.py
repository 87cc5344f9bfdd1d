"""No module imports another that imports it back, at module level or inside a function.

(A package's ``__init__`` and its own modules are exempt: registries import their members lazily.)
"""

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found.update(t for t in targets if t in modules and t != name)
        graph[name] = found
    return graph


def _exempt(a: str, b: str) -> bool:
    return b.startswith(a + ".") or a.startswith(b + ".")  # a package and its own submodule


def test_no_module_imports_one_that_imports_it_back():
    graph = _imports()
    cycles = sorted(
        {
            tuple(sorted((a, b)))
            for a, targets in graph.items()
            for b in targets
            if a in graph.get(b, ()) and not _exempt(a, b)
        }
    )
    assert not cycles, f"modules importing each other: {cycles}"


def test_the_installed_package_holds_no_development_helpers():
    """A checkout's ../shared data folder and the loader of facenet-pytorch's files (tests/peers.py) are the
    tests' and benchmarks' business: the installed package neither looks for one nor ships the other."""
    package = SRC / "facenet"
    assert not (package / "peers.py").exists()
    found = [
        f"{path.relative_to(SRC)}:{number}"
        for path in package.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"[\"'/]shared[\"'/]|\bpeers\b", line)
    ]
    assert found == []
