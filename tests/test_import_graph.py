"""The package's import graph is a DAG, counting imports inside functions too: a function-
local import must not be the way around a cycle (orchestration on top, the single-backend
run below it, numerics at the bottom)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"backendiff": "backendiff", "backendiff.backends": "backends", "backendiff.models": "models"}


def modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package,) + (parts[:-1] if parts[-1] == "__init__" else parts))
            out[name] = path
    return out


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            targets = [f"{target}.{a.name}" for a in node.names] + [target]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):   # a package's own __init__ is not a cycle
                found.add(t)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert len(graph) > 40 and graph["backendiff.compare"] >= {"backendiff.runner", "backendiff.model"}
    assert cycles(graph) == []


def test_the_checker_sees_a_cycle_through_a_function_local_import(tmp_path):
    """The test has teeth: a function-local import back into the orchestrator is a cycle."""
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    runner = known["backendiff.runner"].read_text() + "\n\ndef late():\n    from .compare import compare\n"
    (tmp_path / "runner.py").write_text(runner)
    graph["backendiff.runner"] = imports("backendiff.runner", tmp_path / "runner.py", known)
    assert ["backendiff.compare", "backendiff.runner"] in [[m for m in c if m in ("backendiff.compare", "backendiff.runner")]
                                                          for c in cycles(graph)]
