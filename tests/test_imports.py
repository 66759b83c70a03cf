"""Imports run one way (deployments -> flows -> tasks -> models, kernels, reports) with no cycles, and each
heavy part stays in its room: Prefect in flows/, the task faces and the executors, DeepSpeed in the training process,
MLflow in the tracking modules. Read from the sources, so nothing is imported to check it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cli", "flows", "tasks", "models", "kernels", "reports")

# Where each outside part may be imported (module names, or package prefixes ending in ".").
ROOMS = {
    "prefect": ("flows.", "tasks.steps", "tasks.crashes", "tasks.cluster.executors", "tasks.cluster.kubernetes"),
    "deepspeed": ("tasks.train.setup",),
    "mlflow": ("tasks.track.mlflow_store", "tasks.track.mlflow_runs"),
}
# The records that reports read and tasks write: they import nothing of the project.
RECORDS = ("tasks.fit.entries", "tasks.status")
LOWER = ("models", "kernels", "reports")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, names: bool = False) -> set[str]:
    """Every module a source imports, lazily or not, except under `if TYPE_CHECKING:`; with `names`, also
    `pkg.name` for each `from pkg import name` (a module, where name is one)."""
    tree = ast.parse(source)
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            if names:
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def project_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """module -> the project modules it imports (a `from pkg import name` counts when name is a module)."""
    return {m: {i for i in imports(src, names=True) if i in sources and i != m} for m, src in sources.items()}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, or None; a package's own __init__ re-exporting its modules is not one."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m], _ = 1, path.append(m)
        for n in sorted(graph[m]):
            if m.startswith(n + "."):  # a module importing its own package's __init__
                continue
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m], _ = 2, path.pop()
        return None

    return next((c for m in sorted(graph) if m not in state and (c := visit(m))), None)


def room_violations(sources: dict[str, str]) -> list[str]:
    bad = []
    for m, src in sorted(sources.items()):
        for i in sorted(imports(src)):
            top = i.split(".")[0]
            if top in ROOMS and not any(m == r or m.startswith(r) for r in ROOMS[top]):
                bad.append(f"{m} imports {i}")
            if m.split(".")[0] in LOWER and top in ("flows", "tasks", "cli") and i not in RECORDS:
                bad.append(f"{m} imports {i}")
        if m in RECORDS and any(i.split(".")[0] in PACKAGES for i in imports(src)):
            bad.append(f"{m} is a record and imports the project")
    return bad


def project_sources() -> dict[str, str]:
    paths = [ROOT / "cli.py", *(p for pkg in PACKAGES[1:] for p in (ROOT / pkg).rglob("*.py"))]
    return {module_name(p): p.read_text() for p in paths}


def test_the_project_imports_one_way_without_cycles():
    sources = project_sources()
    assert len(sources) > 60 and "tasks.train.process" in sources
    assert cycle(project_graph(sources)) is None


def test_each_outside_part_stays_in_its_room():
    assert room_violations(project_sources()) == []


def test_the_checks_can_fail():
    looped = {"a.x": "from a.y import f", "a.y": "import a.z", "a.z": "from a import x"}
    assert cycle(project_graph(looped)) == ["a.x", "a.y", "a.z", "a.x"]
    assert cycle(project_graph({"a.x": "import a.y", "a.y": "", "a": "from a.x import f"})) is None
    misplaced = {
        "models.m": "import tasks.layout",
        "tasks.fit.entries": "from tasks import status",
        "tasks.plan.grid": "from prefect import task",
        "reports.r": "from tasks.status import FAILED",
        "tasks.data.cache": "if TYPE_CHECKING:\n    import deepspeed",
    }
    assert room_violations(misplaced) == [
        "models.m imports tasks.layout",
        "tasks.fit.entries is a record and imports the project",
        "tasks.plan.grid imports prefect",
    ]
