"""The package layering of shared/DESIGN.md, checked on the source: harness → methods, kernels;
kernels → methods.quantizer; methods/ and kernels/ never import harness; no import cycles."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "methods", "kernels")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, name: str) -> set[str]:
    """Project modules a file imports, lazily (inside functions) or not."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in PACKAGES}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {name: {m for m in imported(path, name) if m in files and m != name} for name, path in files.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished

    def visit(n, path):
        state[n] = 1
        for m in sorted(g[n]):
            if state.get(m) == 1:
                return path[path.index(m):] + [m] if m in path else [n, m]
            if m not in state:
                found = visit(m, path + [m])
                if found:
                    return found
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            found = visit(n, [n])
            if found:
                return found
    return None


def without_package_inits(g):
    """A package's __init__ re-exporting its modules is not a cycle with them: drop init → child edges."""
    return {n: {m for m in deps if not (m.startswith(n + ".") and n in PACKAGES + ("harness.eval", "methods.peers",
                                                                                   "harness.experiments"))}
            for n, deps in g.items()}


def test_methods_and_kernels_never_import_harness():
    bad = [(n, m) for n, deps in graph().items() if n.split(".")[0] in ("methods", "kernels")
           for m in deps if m.split(".")[0] == "harness"]
    assert not bad, f"imports against the layering: {bad}"


def test_kernels_use_only_the_quantizer_of_methods():
    bad = [(n, m) for n, deps in graph().items() if n.startswith("kernels")
           for m in deps if m.startswith("methods") and m != "methods.quantizer"]
    assert not bad, f"kernels reach into methods beyond methods.quantizer: {bad}"


def test_no_import_cycles():
    cycle = find_cycle(without_package_inits(graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
