"""The import graph of agents/ and gridenv/: no circle, and nothing imports train.py/evaluate.py.

Built with ``ast`` over the package files: every ``import x`` / ``from x import y`` anywhere in
a module (top level or inside a function) is an edge, so a lazy import cannot hide a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agents", "gridenv")
SCRIPTS = ("train", "evaluate")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of `known` imported by the module at `path` (a package import counts as its __init__)."""
    out = set()
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            # `from pkg import sub` imports the module pkg.sub; `from mod import x` imports mod.
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            targets = subs if len(subs) == len(node.names) else [base, *subs]
        for t in targets:
            while t and t not in known:  # `import a.b.c` imports a, a.b, a.b.c
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a package's own __init__ is no circle
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(p, m, set(mods)) for m, p in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of modules (first == last), or None (iterative DFS, three colours)."""
    state: dict[str, int] = {}
    for start in sorted(g):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(g[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(sorted(g.get(nxt, ())))))
                path.append(nxt)
    return None


def test_no_import_cycle_in_agents_or_gridenv():
    g = graph()
    assert "agents.evaluation" in g and "gridenv.core.scenario" in g  # the graph is not empty
    assert find_cycle(g) is None, " -> ".join(find_cycle(g))


def test_cycle_finder_finds_a_planted_cycle():
    g = graph()
    g["agents.tasks"] = g["agents.tasks"] | {"agents.evaluation"}  # evaluation -> tasks -> evaluation
    cycle = find_cycle(g)
    assert cycle is not None and cycle[0] == cycle[-1] and "agents.tasks" in cycle


def test_gridenv_never_imports_agents():
    bad = {m: sorted(d for d in deps if d.startswith("agents"))
           for m, deps in graph().items() if m.startswith("gridenv")}
    assert not {m: d for m, d in bad.items() if d}


def test_nothing_imports_the_scripts():
    """train.py and evaluate.py are entry points: no module, test or script imports or loads them."""
    offenders = []
    for path in [*ROOT.glob("*.py"), *(p for pkg in (*PACKAGES, "tests", "examples")
                                        for p in (ROOT / pkg).rglob("*.py"))]:
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import) and any(a.name in SCRIPTS for a in node.names):
                offenders.append(f"{path}: import")
            if isinstance(node, ast.ImportFrom) and node.module in SCRIPTS:
                offenders.append(f"{path}: from-import")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "spec_from_file_location":
                if any(isinstance(a, ast.Constant) and str(a.value).endswith(("train.py", "evaluate.py"))
                       for a in ast.walk(node)):
                    offenders.append(f"{path}: loads a script by path")
    assert not offenders
