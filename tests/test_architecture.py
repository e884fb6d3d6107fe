"""The package's dependency graph points one way: no import cycle, function-level imports included."""

import ast
from pathlib import Path

SRC = Path(__file__).parent.parent / "src" / "eigenguard"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """module -> the eigenguard modules it imports anywhere in its file (the AST, not what runs)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}

    def owner(name: str) -> str | None:  # the module a dotted name lives in (a name imported from it)
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [f"{base}.{a.name}" for a in node.names]
            edges |= {t for t in map(owner, targets) if t and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_src() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_check_catches_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "eigenguard"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from eigenguard.sub.b import thing\n")
    (pkg / "sub" / "b.py").write_text("def thing():\n    from ..a import x\n")  # hidden in a function, relative
    assert cycles(import_graph(pkg)) == [["eigenguard.a", "eigenguard.sub.b"]]


LAYERS = {  # who may import whom: a module's layer may use only layers listed below it
    "config": 0, "errors": 0, "options": 0, "registry": 0, "version": 0,
    "data": 1, "models": 1, "guard": 1, "training": 1, "cache": 1, "run_directory": 1,
    "attacks": 2, "defenses": 2, "detectors": 2,
    "pipeline": 3,
    "bench": 4, "analysis": 5, "cli": 6, "__main__": 6,
}  # fmt: skip


def test_dependencies_point_one_way() -> None:
    """config at the bottom; core; attacks and defenses; the pipeline; bench, analysis and the CLI on top.
    The package's own __init__ re-exports the public API and is above everything."""
    graph = import_graph()
    wrong = []
    for module, imports in graph.items():
        if module == "eigenguard":
            continue
        layer = LAYERS[module.split(".")[1]]
        for target in imports:
            top = target.split(".")[1] if "." in target else "eigenguard"
            own = module.split(".")[1]
            # attacks, defenses and detectors share a layer and know nothing of each other, but a defense may
            # remove what a detector flags
            sideways = layer == 2 and top != own and LAYERS[top] == 2 and (own, top) != ("defenses", "detectors")
            if top == "eigenguard" or LAYERS[top] > layer or sideways:
                wrong.append(f"{module} -> {target}")
    assert wrong == []
