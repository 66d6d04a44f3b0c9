"""The package dependency rule of ARCHITECTURE.md, checked by walking every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("rollout", "rewards", "critic_actor", "artist_actor", "learner")
# Modules of `rollout` that a model or reward package may import: the records, the config types, the start-up
# waits every actor owner shares, and the weight-sync wire protocol that learner ranks (senders) and replicas
# (receivers) share. Each is a leaf (tested below).
ROLLOUT_LEAVES = {"rollout.records.types", "rollout.records.config_base", "rollout.cluster.startup",
                  "rollout.sync.weight_transport", "rollout.sync.transfer_group"}
# Driver-only heavy packages that must never be imported at module level by modules the driver imports.
HEAVY = {"vllm", "lpips"}
# Plugins that only vLLM's own workers import (the weight-transfer engine registered with vLLM's factory): they
# subclass vLLM classes at module level. Nothing else may import them at module level.
VLLM_PLUGINS = {"critic_actor.vllm_weight_engine"}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at_top_level) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top))
    return found


def _modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        yield path, _imports(path)


def test_types_is_a_leaf():
    for module, _ in _imports(ROOT / "rollout" / "records" / "types.py"):
        assert module.split(".")[0] in {"__future__", "dataclasses", "typing", "numpy", "enum"}, module


def test_startup_is_a_leaf():
    for module, top_level in _imports(ROOT / "rollout" / "cluster" / "startup.py"):
        head = module.split(".")[0]
        assert head in {"__future__", "collections", "dataclasses", "logging", "os", "sys", "time", "typing"} or (
            head in {"ray", "torch"} and not top_level), module


def test_the_weight_transport_is_a_leaf():
    """Senders and receivers share it, so it may not pull in Ray, vLLM or any other package of ours."""
    allowed = {"__future__", "collections", "dataclasses", "datetime", "hashlib", "math", "os", "socket", "typing",
               "uuid", "numpy", "torch"}
    for name in ("weight_transport.py", "transfer_group.py"):
        for module, top_level in _imports(ROOT / "rollout" / "sync" / name):
            assert module.split(".")[0] in allowed or module == "rollout.sync.weight_transport", module
            assert not top_level or module.split(".")[0] != "torch", f"torch at module level: {module}"


def test_rewards_and_actors_import_only_records_and_config_from_rollout():
    for package in ("rewards", "critic_actor", "artist_actor"):
        others = {"learner"} | ({"critic_actor", "artist_actor"} - {package})
        if package == "rewards":
            others |= {"critic_actor", "artist_actor"}
        for path, imports in _modules(package):
            for module, _ in imports:
                head = module.split(".")[0]
                assert head not in others, f"{path.relative_to(ROOT)} imports {module}"
                if head == "rollout":
                    assert module in ROLLOUT_LEAVES, f"{path.relative_to(ROOT)} imports {module}"


def test_nothing_but_the_controller_imports_learner():
    for package in ("rewards", "critic_actor", "artist_actor"):
        for path, imports in _modules(package):
            assert not any(m.split(".")[0] == "learner" for m, _ in imports), path


def test_heavy_engines_are_imported_lazily():
    for package in PACKAGES:
        for path, imports in _modules(package):
            plugin = ".".join(path.relative_to(ROOT).with_suffix("").parts) in VLLM_PLUGINS
            for module, top_level in imports:
                if module.split(".")[0] in HEAVY and not plugin:
                    assert not top_level, f"{path.relative_to(ROOT)} imports {module} at module level"
                if module in VLLM_PLUGINS:
                    assert not top_level, f"{path.relative_to(ROOT)} imports the vLLM plugin {module} at module level"


PROJECT = PACKAGES + ("bench",)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body (lazy imports count: a circle through a
    function-level import still ties the modules together)."""
    paths = {_module_name(path): path for package in PROJECT for path in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {target for target in targets if target in paths and target != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_import_cycles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_the_project_has_no_import_circles():
    assert import_cycles(_import_graph()) == []


def test_no_module_outside_tests_exceeds_600_lines():
    long = {str(path.relative_to(ROOT)): n for package in PROJECT for path in (ROOT / package).rglob("*.py")
            if (n := len(path.read_text().splitlines())) > 600}
    assert long == {}, f"split by responsibility: {long}"


def test_rollout_keeps_the_loop_at_its_top_and_concerns_in_sub_packages():
    top_level = sorted(path.name for path in (ROOT / "rollout").glob("*.py"))
    assert len(top_level) <= 12, top_level
