"""The package dependency rule of ARCHITECTURE.md, checked by walking every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("rollout", "rewards", "critic_actor", "artist_actor", "learner")
# Modules of `rollout` that a model or reward package may import: the records, the config types, the start-up
# waits every actor owner shares, and the weight-sync wire protocol that learner ranks (senders) and replicas
# (receivers) share. Each is a leaf (tested below).
ROLLOUT_LEAVES = {"rollout.types", "rollout.config_base", "rollout.startup", "rollout.weight_transport"}
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
    for module, _ in _imports(ROOT / "rollout" / "types.py"):
        assert module.split(".")[0] in {"__future__", "dataclasses", "typing", "numpy", "enum"}, module


def test_startup_is_a_leaf():
    for module, top_level in _imports(ROOT / "rollout" / "startup.py"):
        head = module.split(".")[0]
        assert head in {"__future__", "collections", "dataclasses", "logging", "os", "sys", "time", "typing"} or (
            head in {"ray", "torch"} and not top_level), module


def test_the_weight_transport_is_a_leaf():
    """Senders and receivers share it, so it may not pull in Ray, vLLM or any package of ours."""
    allowed = {"__future__", "collections", "dataclasses", "datetime", "hashlib", "math", "os", "socket", "typing",
               "uuid", "numpy", "torch"}
    for module, top_level in _imports(ROOT / "rollout" / "weight_transport.py"):
        assert module.split(".")[0] in allowed, module
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
