"""The house rules, read from the source (every import at any depth of a module, lazy and
``TYPE_CHECKING`` ones included): the parts of ``src/hpsearch/`` are stacked in layers, a part
imports only parts below it, the part-level graph has no circle, the engine never sees Optuna, a
database or a web framework, and the top of the package holds only what every part uses.
See docs/architecture.md for the picture."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hpsearch"

# bottom to top; a part imports only parts in lower layers (and its own modules)
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "files"),  # what everything may use
    ("engine",),  # a TrialSpec trained on a device
    ("space",),  # the search space: trial -> TrialSpec
    ("config",),  # study files, validated (their search space is a space's)
    ("storage",),  # opening a study and all it records
    ("results", "serve"),  # reading a study; one trial's model behind HTTP
    ("search",),  # running trials
    ("cli",),  # parsing and printing
)
LAYER = {part: i for i, layer in enumerate(LAYERS) for part in layer}
SUBPACKAGES = ("engine", "storage", "search", "results", "serve", "cli")
# the package itself: __init__ (its docstring and __version__)
TOP_MODULES = ("__init__", "config", "errors", "files", "space")

NOT_IN_THE_ENGINE = {
    "optuna",
    "optuna_dashboard",
    "sqlalchemy",
    "psycopg",
    "fastapi",
    "starlette",
    "uvicorn",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["hpsearch", *parts])


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def part_of(module: str) -> str:
    """``hpsearch.engine.data`` -> ``engine``; ``hpsearch.config`` -> ``config``; the package
    itself (``hpsearch``: ``__version__``) sits at the bottom with errors and files."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "errors"


@cache
def direct_imports(module: str) -> frozenset[str]:
    """Top-level package names and hpsearch modules that ``module`` imports anywhere."""
    tree = ast.parse(MODULES[module].read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{module}: relative import"
            names = [node.module]
            # `from hpsearch.storage import state`: the module, where it is one
            names += [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] != "hpsearch":
                out.add(name.split(".")[0])
            elif name in MODULES:
                out.add(name)
    return frozenset(out)


def reach(module: str) -> set[str]:
    """Everything ``module`` imports, following hpsearch's own modules."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for name in direct_imports(todo.pop()):
            if name not in seen:
                seen.add(name)
                if name in MODULES:
                    todo.append(name)
    return seen


def test_the_rules_see_every_part_and_module() -> None:
    assert {part_of(m) for m in MODULES} == set(LAYER)
    assert "optuna" in reach("hpsearch.search.objective")  # the reader finds imports at all
    assert "hpsearch.engine.train" in reach("hpsearch.cli.main")


def test_the_top_holds_only_what_every_part_uses() -> None:
    top = sorted(p.stem for p in SRC.glob("*.py"))
    assert top == sorted(TOP_MODULES)
    subpackages = sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").is_file())
    assert subpackages == sorted(SUBPACKAGES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_part_imports_only_parts_below_it(module: str) -> None:
    mine = part_of(module)
    up = sorted(
        name
        for name in direct_imports(module)
        if name in MODULES and part_of(name) != mine and LAYER[part_of(name)] >= LAYER[mine]
    )
    assert not up, f"{module} ({mine}, layer {LAYER[mine]}) imports {up}"


def test_the_part_graph_has_no_circle() -> None:
    arrows = {
        (part_of(m), part_of(n))
        for m in MODULES
        for n in direct_imports(m)
        if n in MODULES and part_of(n) != part_of(m)
    }
    assert not {(a, b) for a, b in arrows if (b, a) in arrows}
    # and so the layers are a true order: every arrow goes down
    assert all(LAYER[a] > LAYER[b] for a, b in arrows), sorted(arrows)


@pytest.mark.parametrize(
    "module",
    sorted(m for m in MODULES if part_of(m) in ("engine", "space", "config", "errors", "files")),
)
def test_the_engine_and_the_top_never_import_optuna_a_database_or_a_web_framework(
    module: str,
) -> None:
    found = reach(module) & NOT_IN_THE_ENGINE
    assert not found, f"{module} imports {sorted(found)}"


# the worker loop's users: they run trials (search) or confirm runs under its claims
WORKER_LOOP_USERS = ("search", "cli")


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if part_of(m) not in WORKER_LOOP_USERS)
)
def test_only_the_worker_loop_users_import_it(module: str) -> None:
    """The attribute names and the study's state live in hpsearch.storage.state and the claim
    lock in hpsearch.storage.claims: no other part imports the worker loop."""
    assert "hpsearch.search.workers" not in reach(module), f"{module} imports the worker loop"
