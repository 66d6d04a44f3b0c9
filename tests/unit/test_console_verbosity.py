"""What a command prints by default and with ``--verbose``: libraries' progress bars and informational logs are
off unless asked for, and the choice reaches the processes a run starts through their environment."""

from __future__ import annotations

import os
import subprocess
import sys

from rollout.config import PROJECT_ROOT

SAVE_AND_LOAD = """
import sys
from rollout.commands.cli import main
main(sys.argv[1:] + ["check-config", "--quiet"])  # parses the verbosity, applies the runtime defaults
import os, tempfile, transformers
config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=1)
path = tempfile.mkdtemp()
transformers.LlamaForCausalLM(config).save_pretrained(path)   # 'Writing model shards' bar when enabled
transformers.LlamaForCausalLM.from_pretrained(path)           # 'Loading weights' bar when enabled
print("VLLM_LOGGING_LEVEL=" + os.environ.get("VLLM_LOGGING_LEVEL", ""))
"""


def _run(*flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PHOTOCRAFTER_VERBOSE", "VLLM_LOGGING_LEVEL",
                                                              "HF_HUB_DISABLE_PROGRESS_BARS", "TORCH_CPP_LOG_LEVEL")}
    return subprocess.run([sys.executable, "-c", SAVE_AND_LOAD, *flags], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300, env={**env, "PYTHONPATH": str(PROJECT_ROOT)})


def test_model_loading_prints_no_progress_bar_by_default_and_vllm_logs_warnings_only():
    result = _run()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Loading weights" not in result.stderr and "Writing model shards" not in result.stderr, result.stderr
    assert "VLLM_LOGGING_LEVEL=ERROR" in result.stdout


def test_verbose_shows_the_libraries_own_output():
    result = _run("--verbose")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Loading weights" in result.stderr
    assert "VLLM_LOGGING_LEVEL=\n" in result.stdout or "VLLM_LOGGING_LEVEL=INFO" in result.stdout
