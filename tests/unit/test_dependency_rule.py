"""The package dependency rule of ARCHITECTURE.md, checked by walking every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("rollout", "rewards", "critic_actor", "artist_actor", "learner")
# Modules of `rollout` that a model or reward package may import: the records and config types, and the
# start-up waits every actor owner shares (a leaf too).
ROLLOUT_LEAVES = {"rollout.types", "rollout.config_base", "rollout.startup"}
# Driver-only heavy packages that must never be imported at module level by modules the driver imports.
HEAVY = {"vllm", "lpips"}


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
            for module, top_level in imports:
                if module.split(".")[0] in HEAVY:
                    assert not top_level, f"{path.relative_to(ROOT)} imports {module} at module level"
