"""Process-wide runtime defaults for Ray, vLLM and MLflow, applied before any of them is imported.

Owns environment variables only; every value is a default (``setdefault``) so users and cluster
operators can override each one. Why each is set: ENVIRONMENT.md (Ray token-auth trap, vLLM CPU start-up
time, telemetry off on machines without internet).
"""

from __future__ import annotations

import os
from pathlib import Path


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
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
