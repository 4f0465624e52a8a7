"""The model package's import graph has no cycle, counting imports inside functions ."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "synseg_model"


def _module_name(path: Path) -> str:
    """``pretrained/__init__.py`` -> "pretrained", ``pretrained/__main__.py`` -> "pretrained.__main__"."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _node(dotted: str, known: set[str]) -> str:
    """The graph node of a dotted name under synseg_model: the longest known module prefix, else the package."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return "__init__"


def _imported_modules(path: Path, known: set[str]) -> set[str]:
    """Modules of ``synseg_model`` that ``path`` imports anywhere in its body ("__init__" for the package)."""
    name = _module_name(path)
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    package = [] if package == ["__init__"] else package
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            elif (node.module or "").split(".")[0] == "synseg_model":
                base, node.module = [], ".".join((node.module or "").split(".")[1:]) or None
            else:
                continue
            prefix = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.update(_node(f"{prefix}.{a.name}" if prefix else a.name, known) for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(_node(".".join(a.name.split(".")[1:]), known)
                         for a in node.names if a.name.split(".")[0] == "synseg_model")
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {_module_name(p) for p in paths}
    return {_module_name(p): _imported_modules(p, known) for p in paths}


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
    (tmp_path / "sub").mkdir()
    for name in ("weights", "clip", "sub/__init__", "sub/__main__"):
        (tmp_path / f"{name}.py").write_text("")
    (tmp_path / "m.py").write_text("def f():\n    from .weights import x\n    import synseg_model.clip\n")
    (tmp_path / "sub" / "__main__.py").write_text("from . import f\nfrom ..clip import y\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path
    try:
        graph = import_graph()
    finally:
        PACKAGE = saved
    assert graph["m"] == {"weights", "clip"} and graph["sub.__main__"] == {"sub", "clip"}


def test_model_package_has_no_import_cycle():
    graph = import_graph()
    assert {"clip", "weights", "model", "state_dicts", "pretrained", "pretrained.__main__"} <= graph.keys()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_state_dicts_is_a_leaf():
    """The loaders' shared helpers import nothing of the package (only torch and safetensors)."""
    tree = ast.parse((PACKAGE / "state_dicts.py").read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert roots <= {"__future__", "pathlib", "typing", "torch", "safetensors"}, roots
    assert import_graph()["state_dicts"] == set()
