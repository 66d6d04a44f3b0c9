"""Root run configuration: composes every package's section and loads it from YAML plus overrides.

Owns the ``trainer``, ``data``, ``cluster``, ``sync`` and ``tracking`` sections, the root :class:`TrainConfig`, YAML
loading, ``--set dotted.path=value`` overrides and the one-line-per-error messages users see. It must not
evaluate config values as code: YAML is read with ``safe_load`` and overrides are parsed as YAML scalars.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from artist_actor.config import ArtistConfig
from critic_actor.config import CriticConfig
from learner.config import LearnerConfig
from rewards.config import RewardsConfig
from rollout.records.config_base import ConfigModel

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "embedded.yaml"


def default_cache_dir() -> Path:
    """Where built tiny models and synthetic data are cached (``$PHOTOCRAFTER_CACHE`` overrides)."""
    return Path(os.environ.get("PHOTOCRAFTER_CACHE", Path.home() / ".cache" / "photocrafter"))


JOB_RUN_HOME = Path("~/photocrafter")
"""Where a Ray job's relative run paths resolve when ``$PHOTOCRAFTER_HOME`` is not set."""


def in_ray_job_working_dir_copy() -> bool:
    """True when this process is a Ray job's driver running in Ray's copy of the submitted ``--working-dir``
    (a temporary folder of the Ray session, deleted with it)."""
    import json

    job_config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not job_config:
        return False
    try:
        runtime_env = json.loads(job_config).get("runtime_env") or {}
    except ValueError:
        return False
    return bool(runtime_env.get("working_dir"))


def job_run_home() -> Path:
    """``$PHOTOCRAFTER_HOME``, else ``~/photocrafter``: where a Ray job's relative run paths resolve."""
    return Path(os.environ.get("PHOTOCRAFTER_HOME", "").strip() or JOB_RUN_HOME).expanduser().resolve()


def run_home() -> Path:
    """The folder relative run paths (``trainer.output_dir``, a relative sqlite ``tracking.mlflow_uri``) resolve in.

    ``$PHOTOCRAFTER_HOME`` when set; otherwise the current directory, except for a Ray job submitted with
    ``--working-dir``, whose current directory is Ray's temporary copy of the project: its runs go to
    ``~/photocrafter`` on the node running the driver, where checkpoints and MLflow history outlive the job.
    """
    if os.environ.get("PHOTOCRAFTER_HOME", "").strip() or in_ray_job_working_dir_copy():
        return job_run_home()
    return Path.cwd()


class DataConfig(ConfigModel):
    """Where training and evaluation photos come from."""

    source: Literal["embedded", "manifest"] = "embedded"
    """``embedded``: synthetic pairs made from the colour photos scikit-image, scikit-learn, matplotlib and
    mahotas ship (no download); ``manifest``: a JSONL manifest (see docs/data.md)."""
    train_manifest: str = ""
    """JSONL manifest of training pairs (required when source is ``manifest``)."""
    eval_manifest: str = ""
    """JSONL manifest of held-out pairs for ``evaluate`` (empty = the embedded held-out split)."""
    seed: int = Field(0, ge=0)
    """Seed of the embedded dataset's synthesis (separate from ``trainer.seed`` so runs with different training
    seeds are compared on the same pairs and the same held-out set)."""
    image_size: int = Field(64, ge=16, le=4096)
    """Long side, in pixels, of embedded crops."""
    num_train: int = Field(48, ge=1, le=10_000_000)
    """Embedded training pairs to synthesise."""
    num_eval: int = Field(12, ge=1, le=1_000_000)
    """Embedded held-out pairs to synthesise (from photos/crops not used for training)."""
    restoration_fraction: float = Field(0.25, ge=0.0, le=1.0)
    """Fraction of embedded pairs that are restoration (blur/noise/haze/low-light) rather than retouch."""
    max_image_pixels: int = Field(64_000_000, ge=1024)
    """Images above this pixel count are rejected (decompression-bomb guard)."""
    min_image_side: int = Field(16, ge=1, le=4096)
    """Images whose short side is below this are rejected."""


class TrainerConfig(ConfigModel):
    """The coordinated loop."""

    steps: int = Field(5, ge=0, le=10_000_000)
    """Iterations to run (each: critic rollouts, edits, rewards, both updates, weight sync)."""
    batch_size: int = Field(2, ge=1, le=65536)
    """B: photos per iteration."""
    seed: int = Field(0, ge=0)
    """Global seed (data order, sampling, initialisation)."""
    train_critic: bool = True
    """Update the critic with GRPO (False freezes it: joint training can destabilise a VLM)."""
    train_artist: bool = True
    """Update the artist with DiffusionNFT."""
    max_staleness: int = Field(0, ge=0, le=16)
    """How many policy versions rollouts may lag the learners (0 = synchronous)."""
    checkpoint_every: int = Field(0, ge=0)
    """Write a checkpoint every N steps (0 = only at the end and on stop)."""
    keep_checkpoints: int = Field(0, ge=0, le=100_000)
    """Keep only the newest N complete checkpoints of the run (0 = keep all)."""
    output_dir: str = "runs"
    """Run directories (checkpoints, local artifacts; the MLflow database beside them) are created under this
    path. A relative path resolves under ``$PHOTOCRAFTER_HOME`` when set, else the current directory; in a Ray
    job submitted with ``--working-dir`` (whose working directory is a temporary copy) under ``~/photocrafter``.
    The run prints where at start."""
    run_name: str = ""
    """Run name (empty = ``<config stem>-<timestamp>``); also the Ray namespace and MLflow run name."""
    init_from: str = ""
    """Warm-start directory written by ``photocrafter sft --out DIR``: its ``critic/`` and ``artist/`` model
    directories replace ``critic.model`` and ``artist.model`` (empty = those models). ``embedded`` = the
    embedded tiny models' own small warm start, built once on first use and cached like the models
    (``photocrafter init-models --warm-start``)."""
    sync_timeout_s: float = Field(120.0, gt=0.0, le=86400.0)
    """A weight sync that takes longer fails the step loudly instead of serving stale weights; also the bound on
    every wait inside a collective sync (a replica that never joins fails it, named, after this long)."""


class CapacityConfig(ConfigModel):
    """Inputs of the modelled time plan ``check-config`` prints for a GPU config (docs/cluster.md, "Capacity
    plan"). Defaults describe one H100 SXM; the plan is a model to size a cluster with, not a measurement."""

    gpu_bf16_tflops: float = Field(989.0, gt=0.0, le=100_000.0)
    """Dense bf16 peak of one GPU in TFLOP/s (NVIDIA's H100 SXM datasheet: 989)."""
    gpu_memory_bandwidth_gbs: float = Field(3350.0, gt=0.0, le=100_000.0)
    """Memory bandwidth of one GPU in GB/s (H100 SXM: 3350); bounds decoding, which reads every weight per
    generated token."""
    compute_efficiency: float = Field(0.4, gt=0.0, le=1.0)
    """Fraction of the bf16 peak that large matmuls achieve (model FLOPs utilisation)."""
    bandwidth_efficiency: float = Field(0.7, gt=0.0, le=1.0)
    """Fraction of the memory bandwidth that decoding achieves."""
    weight_sync_gbs: float = Field(8.0, gt=0.0, le=10_000.0)
    """Effective bandwidth of one weight sync from a learner to its replicas, in GB/s (verl reports 8.25 GB/s
    for a 30B model on 32 H100; set your own figure from ``sync/*`` in MLflow)."""
    mean_response_tokens: int | None = Field(None, ge=1, le=8192)
    """Mean critique length in tokens, for the token counts the learners and the DiT see (None =
    ``critic.max_new_tokens``, an upper bound). Decoding always runs to the longest response,
    ``critic.max_new_tokens``."""


class ClusterConfig(ConfigModel):
    """How the job finds or starts its Ray cluster, and how long its actors may take to start."""

    address: str = "local"
    """``local`` starts a private local cluster; ``auto`` joins the cluster the job was submitted to; or a
    ``ray://``/``host:port`` address."""
    num_cpus: int | None = Field(None, ge=1, le=100_000)
    """CPUs of the local cluster (None = all cores). Ignored when joining an existing cluster."""
    num_gpus: int = Field(0, ge=0, le=100_000)
    """GPUs the run may use: those of the local cluster (on a GPU-less machine a positive number creates
    logical GPUs, which lets placement be exercised but not CUDA work), or of the existing cluster joined with
    ``address: auto`` (the resource plan checks the roles fit in them)."""
    gpu_memory_gib: float = Field(80.0, gt=0.0, le=4096.0)
    """Memory of one GPU, for the resource plan's fit check."""
    dashboard_host: str = "127.0.0.1"
    """Interface the local dashboard binds to (keep loopback unless behind an authenticated proxy)."""
    metrics_export_port: int | None = Field(None, ge=1024, le=65535)
    """Port where Ray exports Prometheus metrics for the local cluster (None = Ray's random choice)."""
    namespace: str = ""
    """Ray namespace of the run's named actors (empty = the run name)."""
    actor_max_restarts: int = Field(3, ge=0, le=1000)
    """Restarts allowed for rollout, sampler and reward actors."""
    placement_timeout_s: float = Field(600.0, gt=0.0, le=86400.0)
    """How long start-up waits for the cluster to grant one role its resources (a placement group), and a
    restarted replica for a new place; meanwhile progress lines name the role and what is pending."""
    model_load_timeout_s: float = Field(1800.0, gt=0.0, le=86400.0)
    """How long start-up waits for one role's actors to load their models (several 41 GB DiTs read from a
    shared filesystem at once take minutes), and a restarted replica to reload."""
    progress_every_s: float = Field(30.0, gt=0.0, le=3600.0)
    """Interval of the progress lines printed while start-up waits for placement or model load."""
    wait_for_autoscaler: bool = False
    """When the live cluster lacks the resources of the plan: false refuses to start, naming the role and the
    knob to change; true waits (up to ``placement_timeout_s`` per role) for the autoscaler to add nodes."""
    cpu_fallback: bool = False
    """Let an actor that was granted GPUs compute on CPU when its process sees no CUDA device, saying so in its
    log (a simulated cluster advertising GPUs it does not have); false makes such an actor fail at start."""
    capacity: CapacityConfig = Field(default_factory=CapacityConfig)
    """Inputs of the modelled time plan (hardware figures and the expected critique length)."""


class SyncConfig(ConfigModel):
    """How learner weights reach the serving replicas after each update (docs/design/weight-sync.md)."""

    backend: Literal["auto", "collective", "object_store"] = "auto"
    """``collective``: every learner rank broadcasts its own shard of each bucket to all replicas at once over a
    gloo group of the sync's own (cost flat in the number of replicas); ``object_store``: the learner puts the
    whole state into Ray's object store and every replica fetches a copy; ``auto`` = collective wherever
    torch.distributed has gloo, else the object store (the choice is logged at start)."""
    bucket_mb: int = Field(256, ge=1, le=2047)
    """Bucket size in MiB: bounds the staging memory of every sender and receiver of a collective sync."""
    shared_memory: bool = True
    """Collective sync: when every replica is on a learner rank's machine, pass that rank's buckets through a
    file in /dev/shm (one copy in, one copy out per replica) instead of the network stack; only the ready and
    release signals then travel over the group. Used only if /dev/shm has room for two buckets."""
    critic_lora: Literal["adapter", "merged"] = "adapter"
    """With ``learner.critic.lora.enabled``: ``adapter`` moves only the LoRA factors after a replica's first sync
    (which sends the whole model once; the replica keeps the adapted blocks' base weights in host memory and
    merges each new adapter into them); ``merged`` sends the merged full model every sync."""
    delta: bool = False
    """Full fine-tune over the collective: send only the elements that changed since the last sync (sparse
    per piece where that is smaller; replicas keep a host copy of the weights to patch)."""
    probe_tokens: int = Field(32, ge=0, le=1024)
    """Length of the served-output probe after each collective critic sync: the replicas' log-probs of this
    many fixed tokens must match the learner's (0 = off)."""
    probe_tolerance: float = Field(0.05, gt=0.0, le=10.0)
    """Largest mean |Δ log p| on the probe between a replica and the learner that counts as the same weights
    (fp32 CPU agrees to ~1e-6; bf16 serving against an fp32 learner to ~1e-2)."""


class TrackingConfig(ConfigModel):
    """MLflow tracking and console reporting."""

    mlflow_uri: str = ""
    """MLflow tracking URI (empty = ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<output_dir>/mlflow.db``); a relative
    ``sqlite:///`` path resolves where ``trainer.output_dir`` does."""
    experiment: str = "photocrafter"
    """MLflow experiment name."""
    sample_grid_every: int = Field(5, ge=0)
    """Log a sample grid (input | edits | target, critique text, rewards) every N steps (0 = never)."""
    log_every: int = Field(1, ge=1)
    """Console and MLflow metrics every N steps."""


class TrainConfig(ConfigModel):
    """The whole run: one section per package."""

    critic: CriticConfig = Field(default_factory=CriticConfig)
    """The Image Critic and its rollout actors."""
    artist: ArtistConfig = Field(default_factory=ArtistConfig)
    """The Photographic Artist and its sampler actors."""
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    """Reward functions and the reward-worker pool."""
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    """The GRPO and DiffusionNFT learners."""
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    """The coordinated loop."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Training and evaluation photos."""
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    """The Ray cluster."""
    sync: SyncConfig = Field(default_factory=SyncConfig)
    """Weight sync from the learners to the rollout replicas and samplers."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """MLflow and console reporting."""

    @model_validator(mode="after")
    def _check_cross_section(self) -> "TrainConfig":
        if self.data.source == "manifest" and not self.data.train_manifest:
            raise ValueError("data.train_manifest is required when data.source is 'manifest'")
        if self.critic.max_pixels < self.critic.min_pixels:
            raise ValueError(
                f"critic.max_pixels ({self.critic.max_pixels}) is below critic.min_pixels "
                f"({self.critic.min_pixels})")
        if not (self.trainer.train_critic or self.trainer.train_artist) and self.trainer.steps > 0:
            raise ValueError("trainer.train_critic and trainer.train_artist are both false: nothing to train")
        return self


class ConfigError(Exception):
    """A config that cannot be used; ``lines`` holds one message per problem (YAML path, value, fix)."""

    def __init__(self, source: str, lines: list[str]):
        self.source = source
        self.lines = lines
        super().__init__("\n".join(f"{source}: {line}" for line in lines))


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed at the parent of ``loc`` (for 'unknown key' messages)."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = annotation
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def _describe_errors(err: ValidationError) -> list[str]:
    lines: list[str] = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc) or "<root>"
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(TrainConfig, loc)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            hint += f"allowed keys here: {', '.join(allowed)}" if allowed else "remove it"
            lines.append(f"{path}: unknown key; {hint}")
        elif e["type"] == "value_error":
            msg = str(e["msg"]).removeprefix("Value error, ")
            lines.append(f"{path}: {msg}" if loc else msg)
        else:
            shown = repr(value)
            if len(shown) > 60:
                shown = shown[:57] + "..."
            lines.append(f"{path}: got {shown}; {e['msg']}")
    return lines


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"learner.critic.lr=1e-5"`` → (["learner", "critic", "lr"], 1e-5). Values are YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError("--set", [f"{text!r}: expected dotted.path=value"])
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError("--set", [f"{text!r}: empty key"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError("--set", [f"{key}: value {raw!r} is not valid YAML ({exc.problem})"]) from None
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a raw config dict (before validation)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError("--set", [f"{'.'.join(parts)}: {part} is a value, not a section"])
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (default: configs/embedded.yaml), apply overrides, validate.

    Raises :class:`ConfigError` with one line per problem.
    """
    source = Path(path) if path else DEFAULT_CONFIG
    try:
        text = source.read_text()
    except OSError as exc:
        raise ConfigError(str(source), [f"cannot read config: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(source), [f"{where}not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    if not isinstance(data, dict):
        raise ConfigError(str(source), ["top level must be a mapping of sections"])
    data = apply_overrides(data, list(overrides or []))
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(str(source), _describe_errors(exc)) from None


def dump_config(config: TrainConfig) -> str:
    """The resolved config as YAML (every field, defaults included)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def load_config_or_report(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig | None:
    """:func:`load_config` for command-line entry points: on error, print one line per problem to stderr
    (``<file>: <yaml.path>: <problem>``) and return None so the caller exits non-zero."""
    import sys

    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        for line in exc.lines:
            print(f"{exc.source}: {line}", file=sys.stderr)
        return None
