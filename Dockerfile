# The node image of a photocrafter-rl GPU cluster: every Ray node (head and workers, ray_cluster.yaml's
# `docker:` section or the KubeRay RayJob in docs/cluster.md) runs this image.
#
#   docker build -t registry.example.com/photocrafter-rl:0.1.0 .
#
# It holds the CUDA user-space base, Python 3.12 and the project installed with its `gpu` extra: vllm 0.32.0 with
# the torch 2.13.0 / torchvision 0.28.0 it is built against, ray 2.60.0 and the exact pins of pyproject.toml.
# tests/unit/test_gpu_environment.py resolves the same install line against PyPI, so a pin drift fails CI.
# Nothing else is baked in: model checkpoints, data manifests and run outputs are mounted at run time
# (/models, /data, /checkpoints; docs/cluster.md), and nothing is downloaded while a job runs.
FROM nvidia/cuda:13.0.0-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/photocrafter-env \
    PATH=/opt/photocrafter-env/bin:$PATH \
    RAY_USAGE_STATS_ENABLED=0 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TORCH_HOME=/models/torch

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Triton (vLLM, torch.compile) compiles small C launchers at run time: it needs gcc and Python's headers.
# rsync lets the Ray cluster launcher sync files into the container. Ubuntu's archive is a moving snapshot, so
# these packages are not pinned; the Python environment below is.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev gcc libc6-dev \
        ca-certificates rsync curl \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv "$VIRTUAL_ENV"

# NCCL between nodes over EFA (AWS p4d/p5): the EFA installer's userspace (libfabric, rdma-core) and the
# aws-ofi-nccl plugin it bundles, which NCCL loads as libnccl-net-ofi.so (NCCL_NET_PLUGIN=ofi). The kernel module
# is the host's. Without them a learner wider than one node and every cross-node weight sync fall back to TCP
# sockets. Elsewhere (InfiniBand clusters, one node) the plugin finds no EFA device and NCCL uses its own
# transports; set NCCL_NET_PLUGIN=none to skip it. docs/cluster.md, "Multi-node NCCL".
ARG EFA_INSTALLER_VERSION=1.48.0
WORKDIR /tmp/efa
# hadolint ignore=DL3008
RUN curl -fsSL "https://efa-installer.amazonaws.com/aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz" \
        | tar -xz --strip-components=1 \
    && apt-get update \
    && ./efa_installer.sh -y --skip-kmod --skip-limit-conf --no-verify \
    && rm -rf /tmp/efa /var/lib/apt/lists/* \
    && test -e /opt/amazon/ofi-nccl/lib/libnccl-net-ofi.so
ENV LD_LIBRARY_PATH=/opt/amazon/ofi-nccl/lib:/opt/amazon/efa/lib \
    NCCL_NET_PLUGIN=ofi \
    FI_PROVIDER=efa \
    FI_EFA_USE_DEVICE_RDMA=1

WORKDIR /opt/photocrafter-rl

# Dependencies first, from the project metadata alone, so code changes do not reinstall ~8 GB of wheels.
COPY pyproject.toml README.md ./
RUN python -m pip install "pip==25.3" \
    && python -m pip install "/opt/photocrafter-rl[gpu]"

# The project itself (its dependencies are all in place: --no-deps keeps the resolve above the only one).
COPY critic_actor ./critic_actor
COPY artist_actor ./artist_actor
COPY rewards ./rewards
COPY learner ./learner
COPY rollout ./rollout
COPY configs ./configs
RUN python -m pip install --no-deps --force-reinstall "/opt/photocrafter-rl" \
    && python -c "import rollout.train, vllm, torch; print('torch', torch.__version__, 'vllm', vllm.__version__)"

# Token authentication stays on in clusters (docs/cluster.md, Security).
ENV RAY_AUTH_MODE=token
