"""Session-wide test setup: runtime environment defaults, the embedded tiny models, a local Ray cluster.

Heavy resources are created once per test session and shared: the tiny models are built (or found in the
cache) once, and one local Ray cluster serves every test under tests/ray and tests/e2e that asks for it. Under
``make test``'s two pytest-xdist workers each worker is its own session: two private clusters on their own ports.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
from rollout.env import apply_runtime_defaults  # noqa: E402

apply_runtime_defaults()


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def embedded_models():
    """The tiny critic and artist directories (built once, cached by recipe hash)."""
    from rollout.models import ensure_embedded_models

    return ensure_embedded_models()


@pytest.fixture(scope="session")
def ray_local():
    """A private local Ray cluster for the whole session (logical CPUs so several actors fit on 2 cores)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=8, num_gpus=0, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
