"""MLflow tracking of one training run, from the driver only.

Owns the run's MLflow side: resolving the tracking URI, creating or resuming the run, logging the resolved
config as params, per-step metrics in one batched call, tags, and artifacts (sample grids, reward curves,
any file the controller hands over), plus the in-memory metric history the reward curves are drawn from.
Every artifact is also written under ``<run_dir>/artifacts`` so a run can be inspected without a server.

It must not run on workers (one writer per run keeps MLflow consistent and cheap), must not compute
metrics (the controller does), and must not crash a long run over bad values: non-finite or malformed
metrics are dropped, counted and named in a warning, and a failing MLflow backend is reported, not raised.
MLflow is imported lazily so commands that never track (``check-config``) stay light.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from rollout.tracking.figures import SampleRow, curve_keys, render_reward_curves, render_sample_grid

if TYPE_CHECKING:
    from rollout.config import TrainConfig

log = logging.getLogger(__name__)

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]

# MLflow's own limits (mlflow/utils/validation.py): values above them make the whole batch fail.
MAX_PARAM_VALUE_CHARS = 6000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_TAG_VALUE_CHARS = 8000
MAX_KEY_CHARS = 250

# Characters MLflow accepts in metric/param/tag keys.
_VALID_KEY = re.compile(r"^[A-Za-z0-9_\-. /:]+$")

DROPPED_NONFINITE_KEY = "tracking/dropped_nonfinite"
"""Metric counting values of a step that were NaN/inf and therefore not logged."""
DROPPED_INVALID_KEY = "tracking/dropped_invalid"
"""Metric counting values of a step whose key or type MLflow cannot store."""

TAG_RUN_DIR = "photocrafter.run_dir"
TAG_RESUMES = "photocrafter.resumes"
TAG_CONFIG_CHANGED_PREFIX = "photocrafter.config_changed_on_resume."


def resolve_tracking_uri(configured: str, run_dir: Path) -> str:
    """The tracking URI a run uses: ``configured``, else ``$MLFLOW_TRACKING_URI``, else a sqlite database
    beside the run directories (``sqlite:///<abs run_dir parent>/mlflow.db``), shared by every run there."""
    if configured.strip():
        return configured.strip()
    from_env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if from_env:
        return from_env
    return f"sqlite:///{Path(run_dir).resolve().parent / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URI (None for other backends or in-memory sqlite)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///")
    return None if not path or path == ":memory:" else Path(path)


def flatten_config(config: TrainConfig) -> dict[str, str]:
    """Dotted-key params of the resolved config (``learner.critic.lr`` → ``"1e-05"``).

    Nested sections become dotted keys; lists are kept whole as JSON so one field stays one param; values
    longer than MLflow's limit are cut with a visible marker (the full config is logged as an artifact).
    """
    flat: dict[str, str] = {}

    def visit(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                visit(f"{prefix}.{key}" if prefix else str(key), value)
            return
        text = json.dumps(node) if isinstance(node, (list, tuple)) else ("" if node is None else str(node))
        if len(text) > MAX_PARAM_VALUE_CHARS:
            marker = f"...[cut, {len(text)} chars]"
            text = text[:MAX_PARAM_VALUE_CHARS - len(marker)] + marker
        flat[prefix] = text

    visit("", config.model_dump(mode="json"))
    return flat


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class RunTracker:
    """The MLflow run of one training run (created, or resumed by id), logged from the driver.

    Usage::

        tracker = RunTracker(config, run_dir, run_name)   # or resume_run_id=manifest.mlflow_run_id
        tracker.log_params(config)
        tracker.log_metrics(step_metrics, step)
        tracker.log_sample_grid(step, rows); tracker.log_reward_curves(step)
        tracker.close("FINISHED")

    Also a context manager: leaving the block on an exception closes the run as FAILED (KILLED on
    Ctrl-C), otherwise FINISHED.
    """

    def __init__(self, config: TrainConfig, run_dir: Path, run_name: str, resume_run_id: str | None = None,
                 *, resume_step: int | None = None):
        """Resolve the tracking URI, set the experiment, start a run or resume ``resume_run_id``.

        ``resume_step``: when resuming from a checkpoint at this step, history points logged after it (work
        the checkpoint rolled back) are left out of the curves until the resumed run logs them again.
        """
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.run_dir = Path(run_dir)
        self.run_name = run_name
        self.artifact_dir = self.run_dir / "artifacts"
        self.tracking_uri = resolve_tracking_uri(config.tracking.mlflow_uri, self.run_dir)
        self.history: dict[str, dict[int, float]] = {}
        """Every metric logged by this process, plus the curve metrics reloaded on resume: key → {step: value}."""
        self._warned_keys: set[str] = set()
        self._resumed_params: dict[str, str] = {}
        self._closed = False
        db_path = _sqlite_path(self.tracking_uri)
        try:
            if db_path is not None:
                db_path.parent.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
            self.experiment_id = self._experiment_id(config.tracking.experiment, db_path)
            if resume_run_id:
                self.run_id = self._resume(resume_run_id, resume_step)
            else:
                run = self._client.create_run(
                    self.experiment_id, run_name=run_name, tags={TAG_RUN_DIR: str(self.run_dir.resolve())})
                self.run_id = run.info.run_id
        except (MlflowException, OSError) as exc:
            reason = exc.message if isinstance(exc, MlflowException) else str(exc)
            raise RuntimeError(
                f"MLflow tracking at {self.tracking_uri!r} (tracking.mlflow_uri or $MLFLOW_TRACKING_URI) "
                f"failed: {reason}") from None

    # -- setup ---------------------------------------------------------------------------------------------

    def _experiment_id(self, name: str, db_path: Path | None) -> str:
        experiment = self._client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                self._client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        # A sqlite store's default artifact root is ./mlruns relative to the current directory; keep
        # artifacts beside the database instead so the whole tracking state lives in one folder.
        location = (db_path.resolve().parent / "mlartifacts").as_uri() if db_path is not None else None
        return self._client.create_experiment(name, artifact_location=location)

    def _resume(self, run_id: str, resume_step: int | None) -> str:
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(run_id)
        except MlflowException:
            raise ValueError(
                f"cannot resume MLflow run {run_id!r}: it does not exist at {self.tracking_uri!r} "
                "(was the run tracked under another tracking.mlflow_uri or $MLFLOW_TRACKING_URI?)") from None
        if run.info.lifecycle_stage == "deleted":
            raise ValueError(f"cannot resume MLflow run {run_id!r}: it was deleted; restore it in MLflow first")
        self._client.update_run(run_id, status="RUNNING")
        resumes = int(run.data.tags.get(TAG_RESUMES, "0") or 0) + 1
        self._client.set_tag(run_id, TAG_RESUMES, str(resumes))
        # Only what the curves draw: one query per key, and a long run has many keys and steps.
        for key in curve_keys() & set(run.data.metrics):
            points = self._client.get_metric_history(run_id, key)
            self.history[key] = {m.step: m.value for m in points
                                 if resume_step is None or m.step <= resume_step}
        self._resumed_params = dict(run.data.params)
        log.info("resumed MLflow run %s (resume #%d, %d curve histories reloaded)", run_id, resumes,
                 len(self.history))
        return run_id

    # -- logging -------------------------------------------------------------------------------------------

    def log_params(self, config: TrainConfig) -> None:
        """Log the resolved config: dotted-key params (batched) and the full YAML as ``config/config.yaml``.

        MLflow params are immutable; on resume only new keys are added, and a value that changed is recorded
        as a ``photocrafter.config_changed_on_resume.<key>`` tag (``old -> new``) instead of failing.
        """
        from mlflow.entities import Param, RunTag

        from rollout.config import dump_config

        params = flatten_config(config)
        existing = self._resumed_params
        new = {k: v for k, v in params.items() if k not in existing}
        changed = {k: (existing[k], v) for k, v in params.items() if k in existing and existing[k] != v}
        for batch in _chunks(sorted(new.items()), MAX_PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, params=[Param(k, v) for k, v in batch])
        if changed:
            tags = [RunTag(f"{TAG_CONFIG_CHANGED_PREFIX}{k}"[:MAX_KEY_CHARS],
                           f"{old} -> {value}"[:MAX_TAG_VALUE_CHARS]) for k, (old, value) in changed.items()]
            for batch in _chunks(tags, MAX_PARAMS_PER_BATCH):
                self._client.log_batch(self.run_id, tags=batch)
            log.warning("config changed on resume (params keep the first value; see tags): %s",
                        ", ".join(f"{k}: {o} -> {n}" for k, (o, n) in sorted(changed.items())))
        config_file = self.artifact_dir / "config" / "config.yaml"
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(dump_config(config))
        self._upload(config_file, "config")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> int:
        """Log one step's metrics in one batched MLflow call; returns how many values were logged.

        NaN/inf values are dropped and counted in ``tracking/dropped_nonfinite``; keys MLflow cannot store
        and values that are not numbers are dropped and counted in ``tracking/dropped_invalid``. Each bad
        key is named in a warning once. A backend failure is logged as an error and the step's values stay in
        :attr:`history`, so the run goes on.
        """
        from mlflow.entities import Metric
        from mlflow.exceptions import MlflowException

        timestamp = int(time.time() * 1000)
        accepted: dict[str, float] = {}
        nonfinite = invalid = 0
        for key, raw in metrics.items():
            if not isinstance(key, str) or len(key) > MAX_KEY_CHARS or not _VALID_KEY.match(key):
                invalid += 1
                self._warn_once(str(key), f"metric key {key!r} cannot be stored by MLflow "
                                          "(letters, digits, _ - . / : and spaces, ≤ 250 chars); dropped")
                continue
            try:
                value = float(raw)
            except (TypeError, ValueError):
                invalid += 1
                self._warn_once(key, f"metric {key!r} has a non-numeric value {raw!r}; dropped")
                continue
            if not math.isfinite(value):
                nonfinite += 1
                self._warn_once(key, f"metric {key!r} is {value} at step {step}; dropped (counted in "
                                     f"{DROPPED_NONFINITE_KEY})")
                continue
            accepted[key] = value
        accepted[DROPPED_NONFINITE_KEY] = float(nonfinite)
        accepted[DROPPED_INVALID_KEY] = float(invalid)
        for key, value in accepted.items():
            self.history.setdefault(key, {})[int(step)] = value
        entries = [Metric(key, value, timestamp, int(step)) for key, value in accepted.items()]
        try:
            for batch in _chunks(entries, MAX_METRICS_PER_BATCH):
                self._client.log_batch(self.run_id, metrics=batch)
        except (MlflowException, OSError) as exc:
            log.error("MLflow rejected the metrics of step %d (%d values kept in memory): %s", step,
                      len(entries), exc)
        return len(entries)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values stringified, cut to MLflow's 8000-character limit); a rejected batch is
        logged as an error, not raised, since tags are set mid-run too."""
        from mlflow.entities import RunTag

        from mlflow.exceptions import MlflowException

        entries = [RunTag(str(k), str(v)[:MAX_TAG_VALUE_CHARS]) for k, v in tags.items()]
        try:
            for batch in _chunks(entries, MAX_PARAMS_PER_BATCH):
                self._client.log_batch(self.run_id, tags=batch)
        except (MlflowException, OSError) as exc:
            log.error("MLflow rejected tags %s: %s", sorted(str(k) for k in tags), exc)

    def warn(self, tag: str, message: str) -> None:
        """Say something loudly and keep it on the run: a WARNING log line and the tag ``tag`` = message.

        For conditions a reader of the results must know about, e.g. LPIPS running on a random backbone.
        """
        log.warning("%s", message)
        self.set_tags({tag: message})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or a directory to the run under ``artifact_path`` (None = the artifact root)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"log_artifact: {path} does not exist")
        self._upload(path, artifact_path)

    def log_sample_grid(self, step: int, rows: list[SampleRow]) -> Path | None:
        """Render and log ``samples/step_<step:06d>.png`` (input | edits | target, critique, rewards).

        Returns the local PNG path, or None when there was nothing to draw or drawing failed (logged; a
        picture is never worth stopping a run).
        """
        if not rows:
            log.warning("sample grid of step %d: no rows; nothing logged", step)
            return None
        try:
            image = render_sample_grid(rows)
        except (ValueError, OSError) as exc:
            log.error("sample grid of step %d not drawn: %s", step, exc)
            return None
        return self._save_png(image, "samples", f"step_{int(step):06d}.png")

    def log_reward_curves(self, step: int) -> Path | None:
        """Render the reward curves of the whole history and log them as ``curves/rewards.png``.

        The file is replaced each time (the latest picture covers every step so far).
        """
        try:
            image = render_reward_curves(self.history, title=f"{self.run_name} — step {int(step)}")
        except (ValueError, OSError) as exc:
            log.error("reward curves of step %d not drawn: %s", step, exc)
            return None
        return self._save_png(image, "curves", "rewards.png")

    def close(self, status: RunStatus = "FINISHED") -> None:
        """End the MLflow run with ``status``; calling it again does nothing."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"close: status must be FINISHED, FAILED or KILLED, got {status!r}")
        if self._closed:
            return
        self._client.set_terminated(self.run_id, status=status)
        self._closed = True

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("KILLED")
        else:
            self.close("FAILED")

    def __repr__(self) -> str:
        return f"RunTracker(run_id={self.run_id!r}, uri={self.tracking_uri!r})"

    # -- helpers -------------------------------------------------------------------------------------------

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned_keys:
            self._warned_keys.add(key)
            log.warning("%s", message)

    def _save_png(self, image: np.ndarray, artifact_path: str, name: str) -> Path:
        from PIL import Image

        out = self.artifact_dir / artifact_path / name
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(out)
        self._upload(out, artifact_path)
        return out

    def _upload(self, path: Path, artifact_path: str | None) -> None:
        from mlflow.exceptions import MlflowException

        try:
            if path.is_dir():
                self._client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self._client.log_artifact(self.run_id, str(path), artifact_path)
        except (MlflowException, OSError) as exc:
            log.error("artifact %s not uploaded to MLflow (kept at %s): %s", path.name, path, exc)
