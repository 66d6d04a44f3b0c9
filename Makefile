# The two commands README.md promises. Both set the environment up first (idempotent).
.PHONY: setup train test

export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

setup:
	bash scripts/setup_env.sh

train: setup
	.venv/bin/photocrafter train --config configs/embedded.yaml

test: setup
	.venv/bin/python -m pytest tests -n 2 --dist loadfile --no-loadscope-reorder
