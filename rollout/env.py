"""Process-wide runtime defaults for Ray, vLLM and MLflow, applied before any of them is imported.

Owns environment variables only; every value is a default (``setdefault``) so users and cluster
operators can override each one. Why each is set: ENVIRONMENT.md (Ray token-auth trap, vLLM CPU start-up
time, telemetry off on machines without internet). It also holds the run's verbosity (``PHOTOCRAFTER_VERBOSE``,
set by ``--verbose``): by default the libraries' informational logs and progress bars are off (vLLM at ERROR,
no "Loading weights" / "Writing model shards" bars, torch's C++ notices off), so a run prints its step lines, the
progress of long waits and real warnings; verbose leaves every library at its own default. Actors get the same variables (the actor
owners forward :data:`FORWARDED` in their runtime environment, so the setting holds on a remote cluster too).
"""

from __future__ import annotations

import os
from pathlib import Path


VERBOSE = "PHOTOCRAFTER_VERBOSE"
"""``1``: show every library's own logs and progress bars (``--verbose``)."""
QUIET = {
    # vLLM's warnings on these hosts are about its own build and environment (no Triton CPU backend, no tcmalloc,
    # torch.compile off because the replicas run eagerly), which a user cannot act on; what vLLM serves is checked
    # by the run itself (weight digests, the log-prob probe). Errors still show.
    "VLLM_LOGGING_LEVEL": "ERROR",
    # transformers, huggingface_hub and vLLM's loader: no tqdm bars while models load or save.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # torch's C++ warnings (e.g. the NUMA binding notice when vLLM pins its CPU threads).
    "TORCH_CPP_LOG_LEVEL": "ERROR",
    # MLflow announces at INFO that it creates or upgrades its database tables.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}
"""What the default (not verbose) verbosity sets, unless the environment already does."""
FORWARDED = (VERBOSE, *QUIET)


def is_verbose() -> bool:
    return os.environ.get(VERBOSE, "").strip().lower() not in ("", "0", "false", "no")


def apply_runtime_defaults() -> None:
    cache = Path(os.environ.get("PHOTOCRAFTER_CACHE", Path.home() / ".cache" / "photocrafter"))
    defaults = {
        "RAY_USAGE_STATS_ENABLED": "0",
        # In-process engine core: LLM() starts in ~4 s instead of ~35 s, and one actor owns one engine.
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if not is_verbose():
        defaults.update(QUIET)
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
