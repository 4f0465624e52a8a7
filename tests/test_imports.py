"""The model package's import graph has no cycle, counting imports inside functions (issue 15, item 1)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "synseg_model"


def _imported_modules(path: Path) -> set[str]:
    """Modules of ``synseg_model`` that ``path`` imports anywhere in its body ("__init__" for the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.level == 0 and (node.module or "").split(".")[0] == "synseg_model"):
                parts = (node.module or "").split(".")
                module = parts[0] if node.level == 1 else (parts[1] if len(parts) > 1 else "")
                if module:
                    found.add(module)
                else:  # `from . import x` / `from synseg_model import x`: x may be a module or a name
                    found.update(a.name if (PACKAGE / f"{a.name}.py").is_file() else "__init__" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] if "." in a.name else "__init__"
                         for a in node.names if a.name.split(".")[0] == "synseg_model")
    return found


def import_graph() -> dict[str, set[str]]:
    return {path.stem: _imported_modules(path) for path in sorted(PACKAGE.glob("*.py"))}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of module names (first == last), or None."""
    state: dict[str, str] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, stack + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_cycle_finder_finds_function_level_cycles(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from .weights import x\n    import synseg_model.clip\n")
    assert _imported_modules(module) == {"weights", "clip"}


def test_model_package_has_no_import_cycle():
    graph = import_graph()
    assert {"clip", "weights", "model", "state_dicts"} <= graph.keys()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_state_dicts_is_a_leaf():
    """The loaders' shared helpers import nothing of the package (only torch and safetensors)."""
    tree = ast.parse((PACKAGE / "state_dicts.py").read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert roots <= {"__future__", "pathlib", "typing", "torch", "safetensors"}, roots
    assert import_graph()["state_dicts"] == set()
