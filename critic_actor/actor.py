"""CriticRolloutActor: one replica of the Image Critic that samples critiques, re-scores edits and takes weights.

Owns one generation engine (vLLM by default, transformers ``generate`` when configured), the policy version of
the weights it holds, and the translation between records (:class:`~rollout.records.types.PhotoTask` in,
:class:`~rollout.records.types.Critique` out) and engine calls. Images arrive as handles (ObjectRef, path or array),
are resolved and resized into the configured pixel bounds here, and the resized array is stored on each
``Critique`` so the learner's forward sees exactly the engine's input.

Weights arrive two ways: a whole state dict through the object store (:meth:`CriticRolloutActor.set_weights`),
or a collective sync the replica joins as one receiver (:meth:`CriticRolloutActor.receive_weights`: buckets
from every learner rank, a full model, a LoRA adapter or a delta; see :mod:`rollout.sync.weight_transport`). Either
way a cheap digest of what arrived is reported (the group checks every replica got the same), and a collective
sync ends with the served-output probe: the engine's log-probs of the learner's probe sequence must match the
learner's own, or the sync fails.

It is a plain class: :class:`critic_actor.group.CriticRolloutGroup` applies ``ray.remote``; tests construct it
directly. It must not compute rewards or advantages, and it never serves weights it is unsure of: after a weight
sync that failed or stalled, every call refuses until a sync succeeds.
"""

from __future__ import annotations

import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from critic_actor.config import CriticConfig
from critic_actor.engines import EnginePrompt, SamplingSpec
from critic_actor.grammar import CRITIC_INSTRUCTION, RESCORE_INSTRUCTION, parse_critique
from critic_actor.inputs import critic_prompt_text, fit_to_pixel_bounds, resolve_image
from critic_actor.model import expected_state_shapes
from rollout.cluster.startup import actor_device
from rollout.records.types import Critique, PhotoTask
from rollout.sync.weight_transport import SyncManifest, TransferEndpoint, tensor_digest

ROLE = "critic-rollout"


class WeightSyncError(RuntimeError):
    """A weight sync failed, stalled past its timeout, delivered weights that do not match their digest, or left
    the replica serving output that does not follow the learner's."""


class CriticRolloutActor:
    """Samples G critiques per photo with the current critic weights; re-scores edits greedily."""

    def __init__(self, model_path: str | Path, config: CriticConfig | None = None, index: int = 0,
                 sync_timeout_s: float = 120.0, *, cpu_fallback: bool = False):
        from critic_actor.model import load_critic_processor, resolve_dtype, vision_special_token_ids

        self.config = config or CriticConfig()
        self.index = index
        # Fails here, before any load, when GPUs were granted but CUDA is absent (unless cpu_fallback).
        self.device = actor_device(f"{ROLE}-{index}", self.config.gpus_per_replica, cpu_fallback)
        self.model_path = str(model_path)
        self.sync_timeout_s = float(sync_timeout_s)
        self._version = 0
        self._stale_reason = ""
        self._received_digest = ""
        self._stats = {"generate_calls": 0, "responses": 0, "completion_tokens": 0, "generate_s": 0.0,
                       "rescored": 0, "syncs": 0, "last_sync_s": 0.0}
        processor = load_critic_processor(model_path, self.config.min_pixels, self.config.max_pixels)
        self._prompt_text = critic_prompt_text(processor, CRITIC_INSTRUCTION)
        self._rescore_text = critic_prompt_text(processor, RESCORE_INSTRUCTION)
        suppressed = vision_special_token_ids(processor.tokenizer)
        self._expected_shapes = expected_state_shapes(str(model_path))
        # The device the engine really runs on (CPU on a simulated cluster's fake GPUs), not the one it was granted.
        self.serving_dtype = str(resolve_dtype(self.config.dtype, self.device)).removeprefix("torch.")
        """The dtype the engine serves in: weights travel to it in this dtype."""
        started = time.perf_counter()
        self.engine = self._make_engine(suppressed)
        self.start_s = time.perf_counter() - started

    def _make_engine(self, suppressed: list[int]):
        c = self.config
        common = {"dtype": c.dtype, "min_pixels": c.min_pixels, "max_pixels": c.max_pixels,
                  "suppressed_token_ids": suppressed}
        if c.engine == "vllm":
            from critic_actor.engines import VLLMCriticEngine

            tensor_parallel = max(1, int(c.gpus_per_replica)) if self.device == "cuda" else 1
            return VLLMCriticEngine(self.model_path, **common, seed=c.seed + self.index,
                                    tensor_parallel_size=tensor_parallel,
                                    gpu_memory_utilization=c.gpu_memory_utilization, enforce_eager=c.enforce_eager,
                                    max_model_len=c.max_model_len)
        from critic_actor.engines import TransformersCriticEngine

        return TransformersCriticEngine(self.model_path, **common, device=self.device)

    # ------------------------------------------------------------------ queries
    def ready(self) -> dict[str, Any]:
        """Returns once the engine is up: role, index, engine kind, version and start time."""
        return {"role": ROLE, "index": self.index, "engine": self.config.engine, "policy_version": self._version,
                "dtype": self.serving_dtype, "start_s": round(self.start_s, 3), "repr": repr(self)}

    def policy_version(self) -> int:
        return self._version

    def weights_digest(self) -> dict[str, Any]:
        """What this replica holds: its policy version and the digest of the last weights it received."""
        return {"policy_version": self._version, "digest": self._received_digest}

    def health(self) -> dict[str, Any]:
        return {"role": ROLE, "index": self.index, "policy_version": self._version, "ok": not self._stale_reason,
                "problem": self._stale_reason, "repr": repr(self), **self._stats}

    def __repr__(self) -> str:
        # getattr: Ray formats a constructor's failure with repr, before the version exists.
        return (f"CriticRolloutActor(role={ROLE}, index={self.index}, version={getattr(self, '_version', None)}, "
                f"engine={self.config.engine})")

    # ------------------------------------------------------------------ generation
    def generate(self, tasks: list[PhotoTask], n: int, step: int, greedy: bool = False) -> list[Critique]:
        """``n`` sampled critiques per task, ordered task by task, with the configured sampling settings
        (``greedy=True`` decodes greedily instead, for evaluation and the ``enhance`` command)."""
        self._refuse_if_stale()
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        images = [self._prepare(task.input, f"task {task.task_id!r} input") for task in tasks]
        spec = SamplingSpec(n=n, temperature=0.0 if greedy else self.config.temperature,
                            top_p=1.0 if greedy else self.config.top_p,
                            max_new_tokens=self.config.max_new_tokens,
                            seeds=tuple(self._seed(step, task.task_id) for task in tasks))
        started = time.perf_counter()
        outputs = self.engine.generate([EnginePrompt(text=self._prompt_text, image=img) for img in images], spec)
        elapsed = time.perf_counter() - started
        critiques = []
        for task, image, samples in zip(tasks, images, outputs, strict=True):
            for i, sample in enumerate(samples):
                critiques.append(Critique(
                    task_id=task.task_id, index=i, text=sample.text, prompt_token_ids=sample.prompt_token_ids,
                    completion_token_ids=sample.token_ids, rollout_logprobs=sample.logprobs,
                    finish_reason=sample.finish_reason, parsed=parse_critique(sample.text),
                    policy_version=self._version, image=image,
                ))
        self._stats["generate_calls"] += 1
        self._stats["responses"] += len(critiques)
        self._stats["completion_tokens"] += sum(len(c.completion_token_ids) for c in critiques)
        self._stats["generate_s"] += elapsed
        return critiques

    def rescore(self, images: list[Any]) -> list[float | None]:
        """Greedy critique of each image; its ``<answer>`` score, or None when the response has no valid score."""
        self._refuse_if_stale()
        prepared = [self._prepare(image, f"rescore image {i}") for i, image in enumerate(images)]
        max_tokens = self.config.rescore_max_new_tokens or self.config.max_new_tokens
        spec = SamplingSpec(n=1, temperature=0.0, top_p=1.0, max_new_tokens=max_tokens,
                            seeds=tuple(0 for _ in prepared))
        outputs = self.engine.generate([EnginePrompt(text=self._rescore_text, image=img) for img in prepared], spec)
        self._stats["rescored"] += len(prepared)
        return [parse_critique(samples[0].text).score for samples in outputs]

    def _prepare(self, handle: Any, what: str) -> np.ndarray:
        return fit_to_pixel_bounds(resolve_image(handle, what), self.config.min_pixels, self.config.max_pixels)

    def _seed(self, step: int, task_id: str) -> int:
        # Depends on the run seed, the step and the task, never on the replica or batch the task landed in, so
        # rollouts reproduce when replicas are added or requests are balanced differently.
        return zlib.crc32(f"{self.config.seed}:{step}:{task_id}".encode()) & 0x7FFFFFFF

    # ------------------------------------------------------------------ weights
    def set_weights(self, version: int, state: dict[str, Any], expected_digest: str | None = None) -> dict[str, Any]:
        """Load ``state`` (HF parameter names, as in the learner's ``model.state_dict()``) in place.

        Returns ``{"policy_version", "digest", "seconds"}``. ``expected_digest`` (from
        :func:`rollout.sync.weight_transport.tensor_digest` on the sender) is verified before loading. A load that
        fails or takes longer than ``sync_timeout_s`` raises :class:`WeightSyncError` and leaves the replica
        refusing work until a later sync succeeds.
        """
        self._check_version(version)
        if not state:
            raise ValueError("set_weights got an empty state")
        started = time.perf_counter()
        self._check_state(version, {name: tuple(np.shape(value)) for name, value in state.items()})
        digest = tensor_digest(state)
        if expected_digest is not None and digest != expected_digest:
            raise WeightSyncError(f"{self!r}: received weights have digest {digest}, sender sent "
                                  f"{expected_digest}; refusing to load them")
        self._run_sync(version, lambda: self.engine.load_weights(state.items()))
        return self._synced(version, digest, started)

    def receive_weights(self, version: int, endpoint: TransferEndpoint, receiver_index: int,
                        manifest: SyncManifest | dict[str, Any]) -> dict[str, Any]:
        """Join a collective sync as receiver ``receiver_index`` of ``endpoint`` and load what it carries.

        Returns ``{"policy_version", "digest", "seconds", "bytes_received", "probe_abs_diff", ...}``: the digest
        of every bucket's checksum (the group compares it with the senders'), and the mean |Δ log p| between the
        engine and the learner on the manifest's probe sequence. A sync that fails, stalls past
        ``sync_timeout_s``, binds a LoRA adapter to fewer modules than it names, or leaves the served
        log-probs further than the probe's tolerance from the learner's raises :class:`WeightSyncError`, and the
        replica refuses work until a later sync succeeds.
        """
        manifest = manifest if isinstance(manifest, SyncManifest) else SyncManifest.from_dict(manifest)
        self._check_version(version)
        if manifest.version != version:
            raise ValueError(f"manifest is for version {manifest.version}, not {version}")
        if manifest.kind == "full":
            self._check_state(version, {t.name: t.shape for t in manifest.tensors})
        started = time.perf_counter()
        receipt = self._run_sync(version, lambda: self.engine.receive_weights(endpoint, receiver_index, manifest))
        report = {key: receipt[key] for key in ("bytes_received", "tensors_received", "tensors_loaded",
                                                "lora_modules_bound", "lora_modules_expected")}
        report["probe_abs_diff"] = self._probe(version, manifest)
        return {**self._synced(version, receipt["digest"], started), **report}

    def _check_version(self, version: int) -> None:
        if not isinstance(version, int) or version < 0:
            raise ValueError(f"policy version must be a non-negative int, got {version!r}")

    def _run_sync(self, version: int, load) -> Any:
        """Run ``load`` with the replica marked stale; unmark it only if it finishes within the timeout."""
        self._stale_reason = f"weight sync to version {version} did not finish"
        result: list[Any] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                result.append(load())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
                failure.append(exc)

        loader = threading.Thread(target=run, name=f"{ROLE}-{self.index}-sync", daemon=True)
        loader.start()
        loader.join(self.sync_timeout_s)
        if loader.is_alive():
            self._stale_reason = f"weight sync to version {version} stalled past {self.sync_timeout_s:.0f} s"
            raise WeightSyncError(f"{self!r}: {self._stale_reason}")
        if failure:
            self._stale_reason = f"weight sync to version {version} failed: {failure[0]}"
            raise WeightSyncError(f"{self!r}: {self._stale_reason}") from failure[0]
        return result[0]

    def _probe(self, version: int, manifest: SyncManifest) -> float | None:
        """Mean |Δ log p| between the served weights and the learner on the probe; too large fails the sync."""
        if manifest.probe is None:
            return None
        served = self.engine.prompt_log_probs(manifest.probe.token_ids)
        expected = np.asarray(manifest.probe.log_probs, dtype=np.float64)
        difference = float(np.mean(np.abs(served - expected))) if len(expected) else 0.0
        if not difference <= manifest.probe.tolerance:
            self._stale_reason = (f"after the sync to version {version} the served log-probs differ from the "
                                  f"learner's by {difference:.3g} on the probe (tolerance "
                                  f"{manifest.probe.tolerance:g}): the replica does not serve the learner's weights")
            raise WeightSyncError(f"{self!r}: {self._stale_reason}")
        return difference

    def _synced(self, version: int, digest: str, started: float) -> dict[str, Any]:
        self._version = version
        self._received_digest = digest
        self._stale_reason = ""
        seconds = time.perf_counter() - started
        self._stats["syncs"] += 1
        self._stats["last_sync_s"] = seconds
        return {"policy_version": version, "digest": digest, "seconds": seconds}

    def _check_state(self, version: int, shapes: dict[str, tuple[int, ...]]) -> None:
        """Refuse, before touching the engine, a state that is not exactly the critic's parameter set: a load
        that fails half-way would leave the replica with mixed weights."""
        unknown = sorted(set(shapes) - set(self._expected_shapes))
        missing = sorted(set(self._expected_shapes) - set(shapes))
        wrong = [f"{name} {tuple(shapes[name])} != {self._expected_shapes[name]}"
                 for name in sorted(set(shapes) & set(self._expected_shapes))
                 if tuple(shapes[name]) != self._expected_shapes[name]]
        problems = []
        if unknown:
            problems.append(f"{len(unknown)} unknown names (e.g. {unknown[:2]})")
        if missing:
            problems.append(f"{len(missing)} missing names (e.g. {missing[:2]})")
        if wrong:
            problems.append(f"{len(wrong)} wrong shapes (e.g. {wrong[:2]})")
        if problems:
            raise WeightSyncError(f"{self!r}: refusing weights for version {version}: {'; '.join(problems)}; "
                                  f"send the full model.state_dict() of the critic")

    def _refuse_if_stale(self) -> None:
        if self._stale_reason:
            raise WeightSyncError(f"{self!r} refuses to serve: {self._stale_reason}")

    def shutdown(self) -> None:
        self.engine.shutdown()


__all__ = ["CriticRolloutActor", "WeightSyncError", "ROLE"]
