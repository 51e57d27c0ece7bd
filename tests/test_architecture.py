"""The import graph follows the data flow: calibrate → profile → simulate, with no cycles.

Every import statement of the package counts, those inside functions included (a lazy import is
still a dependency). Library modules of each package may import only the packages below it;
command-line modules sit on top and may also import the packages their command presents.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Folder of each subpackage (as pyproject's package-dir maps them).
FOLDERS: dict[str, str] = {"pis": "pis", "pis.calibrate": "calibrate", "pis.executors": "executors",
                           "pis.profiles": "profiles", "pis.simulator": "simulator", "pis.validate": "validate"}
#: What each package's library modules may import (besides itself and the core, ``pis``).
ALLOWED: dict[str, set[str]] = {
    "pis": set(),
    "pis.profiles": set(),
    "pis.executors": set(),
    "pis.calibrate": {"pis.profiles", "pis.executors"},
    "pis.simulator": {"pis.profiles"},
    "pis.validate": {"pis.profiles", "pis.executors", "pis.calibrate", "pis.simulator"},
}
#: Command-line modules, and the packages they may use beyond their own package's allowance:
#: `pis-profile info` and `loo` show what the simulator derives from a profile.
CLI_EXTRA: dict[str, set[str]] = {"pis.profiles.cli": {"pis.simulator"}}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = path
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and ".".join(parts[:2]) in FOLDERS else "pis"


def _type_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (annotations, not dependencies)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def _imports(path: Path, module: str) -> set[str]:
    found = set()
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text())
    skip = _type_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pis")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("pis"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {i for i in _imports(p, m) if i in mods and i != m} for m, p in mods.items()}


def test_packages_import_only_what_lies_below_them():
    bad = []
    for mod, deps in sorted(_graph().items()):
        pkg = _package(mod)
        allowed = {"pis", pkg} | ALLOWED[pkg] | CLI_EXTRA.get(mod, set())
        bad += [f"{mod} imports {d}" for d in sorted(deps) if _package(d) not in allowed]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_check_sees_lazy_imports():
    # A function-level import is an edge: the redesign's old cycle estimator -> context -> sweep
    # ran through one. Shown on a known lazy import of the tree.
    graph = _graph()
    assert "pis.simulator.inmodel.correction" in graph["pis.simulator.api"]


def test_simulating_and_inspecting_profiles_never_import_torch():
    code = ("import sys, pis.simulator.sweep, pis.simulator.cli, pis.profiles.cli, pis.calibrate.cli, "
            "pis.calibrate.grid; sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_a_one_point_query_imports_neither_pandas_nor_scipy(tmp_path):
    # With the profile's derived state cached (the first query fills the cache), a one-point
    # query needs numpy and pyarrow alone: what keeps `pis-simulate` quick to start.
    code = ("import sys; from pis.simulator.cli import main\n"
            "main(['--method', 'dense', '--sparsity', '0', '--phase', 'decode', '--format', 'json'],"
            " standalone_mode=False)\n"
            "sys.exit(2 * ('scipy' in sys.modules) + ('pandas' in sys.modules))")
    env = {**__import__("os").environ, "PIS_CACHE_DIR": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env)
    assert first.returncode in (0, 1, 2, 3), first.stderr[-500:]
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env)
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])
