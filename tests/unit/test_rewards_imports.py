"""The rewards package keeps the project's dependency rule and stays cheap to import for the driver."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import rewards

PACKAGE = Path(rewards.__file__).parent
# rollout.cluster.startup is a leaf too (bounded start-up waits, Ray imported inside its functions).
ALLOWED_PROJECT_IMPORTS = ("rewards", "rollout.records.types", "rollout.records.config_base", "rollout.cluster.startup")
HEAVY = ("torch", "torchvision", "lpips", "colour", "cv2", "ray", "vllm", "diffusers", "transformers")


def _imports(tree: ast.AST, top_level_only: bool) -> list[str]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_rewards_imports_only_records_config_base_the_startup_leaf_and_itself():
    project = ("rewards", "rollout", "critic_actor", "artist_actor", "learner")
    for path in sorted(PACKAGE.glob("*.py")):
        for name in _imports(ast.parse(path.read_text()), top_level_only=False):
            if name.split(".")[0] in project:
                assert name.startswith(ALLOWED_PROJECT_IMPORTS), f"{path.name} imports {name}"


def test_heavy_libraries_are_imported_inside_functions_only():
    for path in sorted(PACKAGE.glob("*.py")):
        for name in _imports(ast.parse(path.read_text()), top_level_only=True):
            assert name.split(".")[0] not in HEAVY, f"{path.name} imports {name} at module level"


def test_importing_the_pool_does_not_load_torch_or_lpips():
    code = ("import sys, rewards.pool, rewards.worker, rewards.artist, rewards.critic; "
            "print(sorted(m for m in ('torch', 'lpips', 'colour', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.strip()
    assert out == "[]"
