"""The shape of the code: imports go one way (pipeline -> jobs -> t2v), with no cycle, and only
jobs/slurm.py runs SLURM's tools. Read from the sources with ast, function-local imports included."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "jobs", "t2v")
LAYER = {"pipeline": 0, "jobs": 1, "t2v": 2}


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for pkg in PACKAGES for p in sorted((ROOT / pkg).glob("*.py"))}


def imports(name: str, path: Path, known) -> set[str]:
    """Project modules that `name` imports anywhere in its source."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            # `from pipeline import train` imports pipeline.train; `from .x import y` imports x
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, mods) for m, p in mods.items()}


def test_imports_point_down_the_layers():
    wrong = [(m, t) for m, ts in graph().items() for t in ts if LAYER[t.split(".")[0]] > LAYER[m.split(".")[0]]]
    assert not wrong, f"pipeline/ must not import jobs/ or t2v/, nor jobs/ import t2v/: {wrong}"


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m, path):
        state[m] = 1
        for t in sorted(g[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert len(state) == len(g) > 20  # every module was looked at


def test_only_jobs_slurm_runs_slurms_tools():
    tools = {"sacct", "squeue", "scontrol", "sbatch", "scancel", "SLURMD_NODENAME"}
    where = {(m, n.value) for m, p in modules().items() for n in ast.walk(ast.parse(p.read_text()))
             if isinstance(n, ast.Constant) and n.value in tools}
    assert {m for m, _ in where} == {"jobs.slurm"}, where


def test_functions_fit_on_a_screen():
    """About 80 lines at most: a longer one is split into named steps (train.run is the longest)."""
    long = [f"{m}.{n.name}: {n.end_lineno - n.lineno + 1} lines" for m, p in modules().items()
            for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.FunctionDef)
            and n.end_lineno - n.lineno + 1 > 85]
    assert not long, long
