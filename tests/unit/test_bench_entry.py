"""Every benchmark runs both as ``python -m bench.<name>`` and as ``python bench/<name>.py``.

Run as a script, Python puts ``bench/`` itself first on ``sys.path``, so a bench module named like one of the
project's packages would be imported in its place by every other bench (``import rewards.artist`` failing with
"'rewards' is not a package").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))


def test_no_bench_module_shadows_a_project_package():
    benches = {path.stem for path in (ROOT / "bench").glob("*.py")}
    assert PROJECT_PACKAGES and benches
    assert not benches & set(PROJECT_PACKAGES), f"bench modules named like packages: {benches & set(PROJECT_PACKAGES)}"


def test_project_packages_import_with_bench_first_on_the_path():
    # Exactly the import path of `python bench/critic.py`: the script's folder, then the project.
    code = ("import sys; sys.path.insert(0, 'bench'); "
            "import rewards.artist, rewards.pool, critic_actor.engines, artist_actor.sampler, learner.nft, "
            "rollout.config; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]

