"""The import rules of the layout (README "Layout: who may import what"), read from the AST of every module.

ingest and config are the base every package may use; the stages (classifier, dedupe, dispatch) use only the base,
never each other; channels use only the base, never a stage; the views (console, ops, portal) may read the stages;
only run_daemon.py and the channel registry wire components (import the modules that build services); no module
imports in a circle. Imports inside functions and `importlib.import_module("constant")` count too.

No exception is listed: any violation fails.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE = frozenset({"ingest", "config"})
STAGES = frozenset({"classifier", "dedupe", "dispatch"})
# package -> the project packages it may import (besides itself).
ALLOWED: dict[str, frozenset[str]] = {
    "config": frozenset(),
    "ingest": frozenset({"config"}),
    **{stage: BASE for stage in STAGES},
    "channels": BASE,
    "console": BASE | STAGES,
    "ops": BASE | STAGES,
    # The portal stores a report the way the Open311 channel does and lists through the console's public query.
    "portal": BASE | STAGES | {"channels", "console"},
}
WIRING = frozenset({"run_daemon", "channels.registry"})
# classifier's sub-packages -> the sibling sub-packages they may import; its top-level modules (service, schema)
# may import them all.
CLASSIFIER_PARTS: dict[str, frozenset[str]] = {
    "embedding": frozenset(),
    "routing": frozenset(),
    "training": frozenset({"embedding", "routing"}),
    "review": frozenset({"embedding", "routing", "training"}),
}

def _modules() -> dict[str, Path]:
    found = {"run_daemon": REPO / "run_daemon.py"}
    for package in ALLOWED:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module a dotted name lives in (`ingest.errors.ConfigError` -> `ingest.errors`), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> Iterator[str]:
    """Every project module `module` imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                prefix = ".".join([*base[:len(base) - node.level + 1], *([node.module] if node.module else [])])
            else:
                prefix = node.module or ""
            names = [prefix, *(f"{prefix}.{alias.name}" for alias in node.names)]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                yield target


GRAPH = {module: set(_imports(module, path)) for module, path in MODULES.items()}


def _file(module: str) -> str:
    return MODULES[module].relative_to(REPO).as_posix()


def layer_violations() -> set[tuple[str, str]]:
    found = set()
    for module, targets in GRAPH.items():
        package = module.split(".")[0]
        if package == "run_daemon":
            continue
        for target in targets:
            other = target.split(".")[0]
            if other != package and other not in ALLOWED[package]:
                found.add((_file(module), target))
    return found


def wiring_violations() -> set[tuple[str, str]]:
    """Imports of what builds services (a package's `service` module, a channel adapter, run_daemon) from
    anywhere but the wiring."""
    from channels.registry import FACTORIES

    builders = {f"{package}.service" for package in ALLOWED} | set(FACTORIES.values()) | {"run_daemon"}
    return {(_file(module), target) for module, targets in GRAPH.items() if module not in WIRING
            for target in targets if target in builders and target.split(".")[0] != module.split(".")[0]}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_package_has_a_place_in_the_layout() -> None:
    packages = {p.name for p in REPO.iterdir() if (p / "__init__.py").exists()} - {"tests", "bench"}
    assert packages == set(ALLOWED), "add the new package to ALLOWED here and to the README's layout map"


def test_the_layout_itself_has_no_circle() -> None:
    assert not cycles({package: set(allowed) for package, allowed in ALLOWED.items()})


def test_stages_import_only_ingest_and_config_and_channels_no_stage() -> None:
    assert layer_violations() == set()


def classifier_part_violations() -> set[tuple[str, str]]:
    found = set()
    for module, targets in GRAPH.items():
        parts = module.split(".")
        if parts[0] != "classifier" or len(parts) < 3:
            continue
        for target in targets:
            other = target.split(".")
            if other[0] == "classifier" and other[1] != parts[1] and other[1] not in CLASSIFIER_PARTS[parts[1]]:
                found.add((_file(module), target))
    return found


def test_classifier_sub_packages_are_the_layout_and_keep_their_order() -> None:
    parts = {p.name for p in (REPO / "classifier").iterdir() if (p / "__init__.py").exists()}
    assert parts == set(CLASSIFIER_PARTS), "add the new sub-package to CLASSIFIER_PARTS here and to the README"
    assert not cycles({part: set(allowed) for part, allowed in CLASSIFIER_PARTS.items()})
    assert classifier_part_violations() == set()


def test_only_run_daemon_and_the_channel_registry_wire_components() -> None:
    assert wiring_violations() == set()


def test_no_module_imports_in_a_circle() -> None:
    assert cycles(GRAPH) == []


def imports_inside_functions(package: str) -> set[tuple[str, str]]:
    """(file, module) for every project module a function of `package` imports: a hidden edge a reader of the
    file's head does not see."""
    found = set()
    for module, path in MODULES.items():
        if module.split(".")[0] != package:
            continue
        for function in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    if isinstance(node, ast.ImportFrom) and (node.level or _resolve(node.module or "")):
                        found.add((_file(module), node.module or "."))
    return found


def test_views_import_the_stages_at_the_top_never_inside_a_function() -> None:
    assert {hit for package in ("console", "ops", "portal") for hit in imports_inside_functions(package)} == set()


def test_the_checker_sees_a_violation_and_a_circle() -> None:
    # The rules above are only as good as the graph: it must see the edges the tree is known to have.
    assert "config.errors" in GRAPH["ingest.errors"]
    assert "dispatch.openapi" in GRAPH["dispatch.api"]  # an import inside a function
    # importlib.import_module("constant")
    assert "classifier.embedding.e5convert" in GRAPH["classifier.embedding.embedder"]
    assert ("dispatch/api.py", "openapi") in imports_inside_functions("dispatch")
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
