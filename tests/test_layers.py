"""The rig's import graph, read from the source with ast (every import, also those under
TYPE_CHECKING or inside functions): no cycles anywhere, every module imports only its own layer
or lower ones (README: "Layers"), and nothing in the rig imports rig.bench (tasks.py and tests do)."""
from __future__ import annotations

import ast
from pathlib import Path

RIG = Path(__file__).resolve().parent.parent / "rig"
BENCH = "rig.bench"
# What rig.bench may import from the rig besides itself.
ALLOWED_BELOW = ("rig.instrument", "rig.session", "rig.guest", "rig.splicer", "rig.kernel", "rig.errors", "rig.paths")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(RIG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(RIG.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Modules of the rig ``path`` imports: ``from a import b`` counts as a.b when that is a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    return {module for module in found if module == "rig" or module.startswith("rig.")}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of ``graph`` (edges to nodes outside it are ignored)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node] & graph.keys()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def bench_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(path, set(modules)) for name, path in modules.items()
            if name == BENCH or name.startswith(BENCH + ".")}


def test_the_checker_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(strongly_connected(graph)) == [["a", "b", "c"], ["d"], ["e"]]


def test_no_import_cycles_in_the_bench() -> None:
    graph = bench_graph()
    assert len(graph) > 10
    cycles = [c for c in strongly_connected(graph) if len(c) > 1 or c[0] in graph[c[0]]]
    assert not cycles, f"import cycles among rig.bench modules: {cycles}"


def test_the_bench_leans_only_on_lower_layers() -> None:
    outside = {module for imports in bench_graph().values() for module in imports
               if not (module == BENCH or module.startswith(BENCH + "."))}
    stray = sorted(m for m in outside if m != "rig" and not any(m == a or m.startswith(a + ".") for a in ALLOWED_BELOW))
    assert not stray, f"rig.bench imports {stray}"


def test_nothing_below_the_campaigns_imports_the_bench() -> None:
    """The sweep (a campaign over many guests) reuses the bench's provenance, reports and census;
    nothing else in the rig leans on the bench."""
    modules = all_modules()
    users = sorted(name for name, path in modules.items()
                   if not (name == BENCH or name.startswith(BENCH + ".") or name.startswith("rig.sweep"))
                   and any(m == BENCH or m.startswith(BENCH + ".") for m in imports_of(path, set(modules))))
    assert not users, f"{users} import rig.bench (only rig.sweep, tasks.py and the tests may)"


# Lowest first; a module may import its own layer and the ones before it. The first matching
# prefix decides a module's layer.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("rig.errors", "rig.paths", "rig.tools", "rig.reaper")),
    ("pure", ("rig.splicer", "rig.kernel")),
    ("io", ("rig.gdb", "rig.guest")),
    ("instrument", ("rig.instrument",)),
    ("compose", ("rig.session", "rig.adapt", "rig.bench")),
    ("campaign", ("rig.sweep",)),
    ("cli", ("rig.cli",)),
)


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS (and to the README's picture)")


def rig_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(path, set(modules)) - {"rig"} for name, path in modules.items() if name != "rig"}


def test_no_import_cycles_in_the_rig() -> None:
    graph = rig_graph()
    cycles = [c for c in strongly_connected(graph) if len(c) > 1 or c[0] in graph[c[0]]]
    assert not cycles, f"import cycles: {cycles}"


def test_every_module_imports_only_its_layer_or_lower() -> None:
    upward = sorted(f"{module} ({LAYERS[layer_of(module)][0]}) -> {target} ({LAYERS[layer_of(target)][0]})"
                    for module, targets in rig_graph().items() for target in targets
                    if layer_of(target) > layer_of(module))
    assert not upward, "imports up the layers: " + "; ".join(upward)


def test_guest_memory_is_written_from_one_module_outside_gdb() -> None:
    """Every write into the guest goes through the journaled transaction (rig.instrument.transaction):
    no other module outside rig.gdb calls a write of the gdb session or of a batch."""
    writers = {"write_memory", "write_many", "write"}
    found = set()
    for name, path in all_modules().items():
        if name.startswith("rig.gdb"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in writers:
                receiver = ast.unparse(node.func.value)
                if node.func.attr != "write" or "batch" in receiver:
                    found.add(name)
    assert found == {"rig.instrument.transaction"}, found
