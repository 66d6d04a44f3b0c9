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



FAILING = """
import sys
from rollout.commands.entry import run_main

def main():
    try:
        raise ConnectionError("raylet at 127.0.0.1:6379 is not reachable")
    except ConnectionError as cause:
        raise RuntimeError("could not start the bench's cluster") from cause

run_main(main, "bench.example")
"""


def test_an_entry_point_that_fails_says_what_and_why():
    """Every bench and the CLI end through rollout.commands.entry: a failure prints its chain and a summary."""
    done = subprocess.run([sys.executable, "-c", FAILING], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1
    assert "The above exception was the direct cause" in done.stderr  # the whole chain
    assert done.stderr.strip().splitlines()[-1] == (
        "bench.example failed: RuntimeError: could not start the bench's cluster; cause: ConnectionError: raylet at "
        "127.0.0.1:6379 is not reachable")


def test_every_bench_ends_through_the_loud_entry():
    for path in sorted((ROOT / "bench").glob("*.py")):
        assert "run_main(main, " in path.read_text(), f"{path.name} does not end through rollout.commands.entry"


SILENT = """
import os
from rollout.commands.entry import run_main

def main():
    os._exit(1)  # what a native library does when it ends the process itself

run_main(main, "bench.example", supervise=True)
"""


def test_a_supervised_entry_point_that_dies_without_a_word_is_reported():
    done = subprocess.run([sys.executable, "-c", SILENT], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1
    assert "bench.example: the process ended with status 1 without reporting an error" in done.stderr
