"""Imports run one way, down the layers (DESIGN.md), and no two modules import each other.

Every module of ``nas_cli`` is read with ``ast``, nothing is imported: ``import x`` and ``from x import y``,
absolute and relative, at module level and inside functions, classes and ``if TYPE_CHECKING:`` blocks.
An import of ``nas_cli.a.b`` (or ``from nas_cli.a import b`` where ``b`` is a module) is an edge to that
module; ``from nas_cli.a.b import name`` is an edge to ``nas_cli.a.b``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nas_cli

PACKAGE = Path(nas_cli.__file__).parent

# The layer of each top-level module or package of nas_cli (its first name after ``nas_cli``): a module
# may import its own layer and the layers below it, never one above. ``""`` is ``nas_cli/__init__.py``.
LAYERS: dict[str, int] = {
    # 0: usable by all: the package itself (``__version__``), one-line user errors, where the shipped
    # configs are, OmegaConf's resolvers (registered on import of nas_cli)
    "": 0,
    "errors": 0,
    "config_files": 0,
    "config_values": 0,
    "resolvers": 0,
    # 1: the run folder: its files, record, checkpoints, lifecycle, locks, the shared keys
    "runs": 1,
    # 2: data and networks (they may read run-folder files: a genotype, a best_arch.json)
    "data": 2,
    "models": 2,
    # 3: the one training engine
    "engine": 3,
    # 4: recipes and domain code
    "nas": 4,
    "agents": 4,
    "detection": 4,
    "gradients": 4,
    "tools": 4,
    "report": 4,
    # 5: one module per command
    "commands": 5,
    # 6: the command line: Typer, Hydra under it, the config schema and its check
    "cli": 6,
    "hydra_bridge": 6,
    "config_check": 6,
    "schema": 6,
    "__main__": 6,
}


def _modules() -> dict[str, Path]:
    """``nas_cli.x.y`` -> its file, for every module and package of nas_cli."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["nas_cli", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _target(name: str) -> str | None:
    """The nas_cli module an imported dotted name lands in (its longest prefix that is a module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, source: str, is_package: bool = False) -> set[tuple[str, int]]:
    """(nas_cli module imported, line) for every import in ``source`` (the text of ``module``), wherever
    it is in the file."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..a import b
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # ``from pkg import mod`` reaches the module ``pkg.mod``; ``from mod import name``, ``mod``
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for name in names:
            if name == "nas_cli" or name.startswith("nas_cli."):
                target = _target(name)
                if target and target != module:
                    found.add((target, node.lineno))
    return found


EDGES: dict[str, set[tuple[str, int]]] = {
    m: _imports(m, p.read_text(), p.name == "__init__.py") for m, p in MODULES.items()
}


def _top(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_the_scan_sees_every_kind_of_import():
    """The reader itself: lazy imports, relative imports and ``from pkg import module`` are edges."""
    assert len(MODULES) > 100 and "nas_cli.runs.checkpoint" in MODULES
    runs_lifecycle = {t for t, _ in EDGES["nas_cli.runs.lifecycle"]}
    assert {"nas_cli.runs.checkpoint", "nas_cli.runs.record", "nas_cli.runs.folders"} <= runs_lifecycle
    assert "nas_cli.resolvers" in {t for t, _ in EDGES["nas_cli"]}  # ``from nas_cli import resolvers``
    hydra_bridge = {t for t, _ in EDGES["nas_cli.hydra_bridge"]}
    assert "nas_cli.runs.resume" in hydra_bridge  # imported inside a function
    source = (
        "from . import folders\nfrom .files import SUMMARY\nfrom .. import errors\n"
        "def f():\n    import nas_cli.engine.trainer\n    from nas_cli.nas.rl import search\n"
    )
    assert {t for t, _ in _imports("nas_cli.runs.some_module", source)} == {
        "nas_cli.runs.folders",
        "nas_cli.runs.files",
        "nas_cli.errors",
        "nas_cli.engine.trainer",
        "nas_cli.nas.rl.search",
    }
    assert {t for t, _ in _imports("nas_cli.runs", "from . import record\n", is_package=True)} == {
        "nas_cli.runs.record"
    }


def test_every_top_level_module_has_a_layer():
    missing = sorted({_top(m) for m in MODULES} - set(LAYERS))
    assert not missing, f"give these a layer in LAYERS: {missing}"


@pytest.mark.parametrize("package", sorted({_top(m) for m in MODULES}))
def test_imports_run_down_the_layers(package):
    """A module imports its own layer and those below it: never a higher one."""
    upward = [
        f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {t} (layer {LAYERS[_top(t)]} above {LAYERS[_top(m)]})"
        for m in MODULES
        if _top(m) == package
        for t, line in sorted(EDGES[m], key=lambda e: e[1])
        if LAYERS[_top(t)] > LAYERS[_top(m)]
    ]
    assert not upward, "\n".join(upward)


def test_no_two_modules_import_each_other():
    """No cycle of any length in the module graph (lazy imports count: they only hide a cycle)."""
    graph = {m: sorted({t for t, _ in edges}) for m, edges in EDGES.items()}
    cycles, state, stack = [], dict.fromkeys(graph, 0), []  # 0 unseen, 1 on the stack, 2 done

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state[t] == 1:
                cycles.append(" -> ".join(stack[stack.index(t) :] + [t]))
            elif state[t] == 0:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in graph:
        if state[m] == 0:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
