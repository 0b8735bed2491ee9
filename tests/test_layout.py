"""The package's layout rules: stages import only lower stages, no import cycles, small modules and functions."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "cryoorient"

# Lowest first; a module may import its own stage and any lower one, never a higher one.
STAGES = {
    "base": 0,  # geometry, io, ops, distributed, _ext
    "imaging": 1,
    "maps": 2,
    "learning": 3,
    "orientations": 4,
    "top": 5,  # commands, cli, demo, info, __main__
}
BASE = {"geometry", "io", "ops", "distributed", "_ext", "__init__"}


def _stage(module: str) -> int:
    """Stage of a dotted module name relative to the package (``maps.refine`` -> maps)."""
    head = module.split(".")[0]
    if head in BASE:
        return STAGES["base"]
    return STAGES.get(head, STAGES["top"])


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> set[str]:
    """Package-relative names of the package modules that ``module`` imports (anywhere in the file)."""
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "cryoorient":
                target = node.module.split(".")[1:]
            else:
                continue
            names = [a.name for a in node.names]
            found.add(".".join(target))
            found.update(".".join(target + [n]) for n in names)
        elif isinstance(node, ast.Import):
            found.update(".".join(a.name.split(".")[1:]) for a in node.names if a.name.startswith("cryoorient."))
    return {f for f in found if f}


@pytest.fixture(scope="module")
def graph():
    mods = _modules()
    return {m: {i for i in _imports(m, p) if i in mods and i != m} for m, p in mods.items()}


def test_helpers_see_a_violation():
    """The rules below can fail: a planted upward import and a planted cycle are caught."""
    assert _stage("maps.refine") < _stage("orientations.align")
    bad = {"imaging.project": {"orientations.align"}, "orientations.align": set()}
    assert _upward(bad) == [("imaging.project", "orientations.align")]
    assert _cycle({"a": {"b"}, "b": {"a"}}) is not None
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _upward(graph) -> list[tuple[str, str]]:
    return sorted((m, i) for m, deps in graph.items() for i in deps if _stage(i) > _stage(m))


def _cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_lower_stages_never_import_higher_ones(graph):
    assert _upward(graph) == []


def test_no_import_cycles(graph):
    # a package's __init__ importing its own modules is not a cycle of concepts
    graph = {m: {d for d in deps if not m.startswith(d + ".") and not d.startswith(m + ".")} for m, deps in graph.items()}
    assert _cycle(graph) is None


def test_modules_and_functions_stay_small():
    too_big = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] != "ops" and text.count("\n") > 600:
            too_big.append(f"{rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 150:
                    too_big.append(f"{rel}:{node.lineno} {node.name}: {length} lines")
    assert too_big == []
