"""The one-way rules of the package, read from the source (every import, at any depth of a
module, followed transitively through hpsearch's own modules): the engine never sees Optuna, and
nothing below the command line imports it."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hpsearch"
MODULES = sorted(p.stem for p in SRC.glob("*.py") if p.stem != "__init__")

# what one trial trains, and how: plain data, torch and the photos; no Optuna, no storage
ENGINE = ("spec", "model", "data", "train", "runtime", "space", "config", "latency", "errors")
CLI = ("cli", "cli_results", "cli_serve")


@cache
def direct_imports(module: str) -> frozenset[str]:
    """Top-level package names and ``hpsearch.X`` modules that ``module`` imports anywhere
    (``if TYPE_CHECKING:`` blocks excluded: they never run)."""
    tree = ast.parse((SRC / f"{module}.py").read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "hpsearch":
                names = [f"hpsearch.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            out.add(".".join(parts[:2]) if parts[0] == "hpsearch" else parts[0])
    return frozenset(out)


def reach(module: str) -> set[str]:
    """Everything ``module`` imports, following hpsearch's own modules."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for name in direct_imports(todo.pop()):
            if name in seen:
                continue
            seen.add(name)
            if name.startswith("hpsearch.") and name.removeprefix("hpsearch.") in MODULES:
                todo.append(name.removeprefix("hpsearch."))
    return seen


def test_the_rules_see_every_module() -> None:
    assert set(ENGINE) <= set(MODULES) and set(CLI) <= set(MODULES)
    assert "optuna" in reach("objective")  # the reader finds imports at all


@pytest.mark.parametrize("module", ENGINE)
def test_the_engine_never_imports_optuna_or_a_database(module: str) -> None:
    found = reach(module) & {"optuna", "sqlalchemy", "psycopg", "optuna_dashboard"}
    assert not found, f"hpsearch.{module} imports {sorted(found)}"


@pytest.mark.parametrize("module", [m for m in MODULES if m not in CLI])
def test_nothing_below_the_command_line_imports_it(module: str) -> None:
    found = {f"hpsearch.{c}" for c in CLI} & reach(module)
    assert not found, f"hpsearch.{module} imports {sorted(found)}"


# the worker loop's users: they run trials (search) or confirm runs under its claim lock
WORKER_LOOP_USERS = ("workers", "budget", "confirm", "search", "single", *CLI)  # single: via search


@pytest.mark.parametrize("module", [m for m in MODULES if m not in WORKER_LOOP_USERS])
def test_only_the_worker_loop_users_import_it(module: str) -> None:
    """The attribute names and the study's state live in hpsearch.study_state: no module
    imports the worker loop for a constant or a query."""
    assert "hpsearch.workers" not in reach(module), f"hpsearch.{module} imports hpsearch.workers"
