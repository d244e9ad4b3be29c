"""The package's layers: which modules may import which (docs/design.md).

Read from the source with `ast`, every import counted, lazy ones inside functions included:

- `kernels/` (installed as `shiftnas.kernels`) is a leaf: torch, triton, the standard library and
  its own modules, never the rest of shiftnas; its modules also import with `shiftnas` blocked.
- One reader of the TRITON_INTERPRET switch: `kernels/_env.py` (`interpret_mode`).
- The cost model and the models share the width rules of `shiftnas.spaces`: `shiftnas.cost`
  never imports `shiftnas.models` (which may import the cost model), and the spaces import
  neither.
- The data package never imports the CLI (`shiftnas.cli` imports the command modules; the parser
  and error path they share are `shiftnas._command`'s); only `python -m shiftnas` imports it.
- No import cycle between the top-level modules and subpackages of shiftnas (`shiftnas.X`).
"""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# where each package's sources live (setup.py's package_dir)
PACKAGE_DIRS = {"shiftnas": ROOT / "shiftnas", "shiftnas.kernels": ROOT / "kernels"}


def module_name(path: Path) -> str:
    """The dotted name `path` is imported as (a package's __init__.py: the package)."""
    for pkg, folder in sorted(PACKAGE_DIRS.items(), key=lambda kv: -len(kv[0])):
        if folder in path.parents:
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([pkg, *parts])
    raise ValueError(f"{path} is in no package")


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    """Every module name `source` imports, relative imports resolved against `module`; for
    `from X import a` both X and X.a (a may be a submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return out


def source_imports() -> dict[str, set[str]]:
    """module name -> the modules it imports, for every .py file of the installed packages."""
    graph = {}
    for folder in PACKAGE_DIRS.values():
        for path in sorted(folder.rglob("*.py")):
            name = module_name(path)
            graph[name] = imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")
    return graph


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(graph: dict[str, set[str]], importer: str, imported: str, allowed: str | None = None) -> list[str]:
    """'a imports b' for each module a under `importer` that imports a module b under `imported`
    (and not under `allowed`)."""
    return sorted(
        f"{a} imports {b}"
        for a, names in graph.items()
        if _under(a, importer)
        for b in names
        if _under(b, imported) and not (allowed and _under(b, allowed))
    )


def test_imports_are_resolved_as_python_does():
    src = "from . import a\nfrom ..b import c\nimport d.e\n\ndef f():\n    from .. import g\n"
    assert imports_of(src, "p.q.r", False) == {"p.q", "p.q.a", "p.b", "p.b.c", "d.e", "p", "p.g"}
    assert imports_of("from . import x", "p.q", True) == {"p.q", "p.q.x"}
    assert module_name(ROOT / "kernels" / "linear.py") == "shiftnas.kernels.linear"
    assert module_name(ROOT / "shiftnas" / "ops" / "__init__.py") == "shiftnas.ops"


def test_kernels_import_nothing_of_shiftnas():
    graph = source_imports()
    assert any(_under(m, "shiftnas.kernels") for m in graph)
    assert violations(graph, "shiftnas.kernels", "shiftnas", allowed="shiftnas.kernels") == []
    bad = {"shiftnas.kernels.linear": {"shiftnas.ops.ref"}}
    assert violations(bad, "shiftnas.kernels", "shiftnas", allowed="shiftnas.kernels") == [
        "shiftnas.kernels.linear imports shiftnas.ops.ref"
    ]


def test_cost_never_imports_models():
    graph = source_imports()
    assert "shiftnas.cost.vit" in graph and "shiftnas.cost.mbconv" in graph
    assert violations(graph, "shiftnas.cost", "shiftnas.models") == []


def test_spaces_import_neither_cost_nor_models():
    graph = source_imports()
    assert violations(graph, "shiftnas.spaces", "shiftnas.cost") == []
    assert violations(graph, "shiftnas.spaces", "shiftnas.models") == []


def test_only_the_entry_point_imports_the_cli():
    graph = source_imports()
    assert violations(graph, "shiftnas.data", "shiftnas.cli") == []
    assert [a for a in graph if violations({a: graph[a]}, a, "shiftnas.cli")] == ["shiftnas.__main__"]


def unit_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The imports between units (`shiftnas.X`: a top-level module or subpackage; the root package
    `shiftnas`, whose exports are lazy, is none), counting only names that are modules."""
    def unit(name: str) -> str | None:
        parts = name.split(".")
        return ".".join(parts[:2]) if len(parts) > 1 and parts[0] == "shiftnas" else None

    out: dict[str, set[str]] = {}
    for a, names in graph.items():
        for b in names:
            ua, ub = unit(a), unit(b)
            if b in graph and ua and ub and ua != ub:
                out.setdefault(ua, set()).add(ub)
    return out


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """One cycle of `edges` as [a, b, ..., a], or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(v: str, path: list[str]) -> list[str]:
        state[v] = 1
        for w in sorted(edges.get(v, ())):
            if state.get(w) == 1:
                return [*path[path.index(w):], w]
            if w not in state and (found := visit(w, [*path, w])):
                return found
        state[v] = 2
        return []

    for v in sorted(edges):
        if v not in state and (found := visit(v, [v])):
            return found
    return []


def test_no_import_cycle_between_units():
    units = unit_graph(source_imports())
    assert {"shiftnas.cost", "shiftnas.models", "shiftnas.cli", "shiftnas.data"} <= set(units)
    assert find_cycle(units) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_kernel_modules_import_with_shiftnas_blocked():
    """Each kernel module, imported as a package of another name in a fresh interpreter where
    `import shiftnas` fails."""
    names = sorted(p.stem for p in (ROOT / "kernels").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, importlib.util, sys\n"
        "sys.modules['shiftnas'] = None  # any import of shiftnas raises ImportError\n"
        f"spec = importlib.util.spec_from_file_location('leaf_kernels', {str(ROOT / 'kernels' / '__init__.py')!r},\n"
        f"    submodule_search_locations=[{str(ROOT / 'kernels')!r}])\n"
        "pkg = importlib.util.module_from_spec(spec); sys.modules['leaf_kernels'] = pkg; spec.loader.exec_module(pkg)\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module('leaf_kernels.' + name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('shiftnas')))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "['shiftnas']"  # only the blocking entry


def env_readers(var: str) -> list[str]:
    """The modules whose code names the environment variable `var` as a string of its own."""
    found = []
    for folder in PACKAGE_DIRS.values():
        for path in sorted(folder.rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            if any(isinstance(n, ast.Constant) and n.value == var for n in ast.walk(tree)):
                found.append(module_name(path))
    return found


def test_one_reader_of_triton_interpret():
    assert env_readers("TRITON_INTERPRET") == ["shiftnas.kernels._env"]
