"""The run's distributed components, built from config, behind the verbs the controller uses.

Owns creation and teardown of every actor of a run (critic rollout group, artist sampler group, reward pool,
critic and artist learner groups — each group placing its own actors, a colocated model's replicas inside its
learner's bundles — and the Ray tasks that load photos), the weight-sync owner of each model
(``rollout.sync.weight_sync.WeightSync``), each model's turns on its GPUs (``rollout.cluster.colocation``: a stage
first gives the GPUs to the role that runs it), and the translation between the controller's records and each
component's requests. It adds no learning logic.

Photos are read and validated by Ray tasks (``_load_task_images``) whose results stay in the object store:
the controller sees only ObjectRefs and the per-record verdict.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from rollout.config import TrainConfig
from rollout.cluster.placement import PHOTO_LOADER_CPUS
from rollout.records.types import Critique, CritiqueReward, Edit, EditReward, PhotoTask


def _load_task_images(task: PhotoTask, limits) -> tuple[str, Any, Any]:
    """Ray task: read + validate a task's images; returns (verdict, input, target)."""
    from rollout.data.stream import load_task_images
    from rollout.records.images import ImageRejected

    try:
        loaded = load_task_images(task, limits)
    except ImageRejected as exc:
        return exc.reason, None, None
    return "", loaded.input, loaded.target


class RemoteTaskSource:
    """Batches of tasks whose images are loaded by Ray tasks and held as ObjectRefs (never by the driver)."""

    def __init__(self, config: TrainConfig):
        import ray

        from rollout.data.sources import image_limits, training_stream

        self.stream = training_stream(config.data, seed=config.trainer.seed)
        self.limits = image_limits(config.data)
        self._load = ray.remote(num_cpus=PHOTO_LOADER_CPUS, num_returns=3)(_load_task_images)

    def next_batch(self, batch_size: int) -> tuple[list[PhotoTask], int]:
        """(batch_size tasks with ObjectRef images, records rejected while filling it)."""
        import ray

        batch: list[PhotoTask] = []
        rejected_before = len(self.stream.rejected)
        while len(batch) < batch_size:
            records = self.stream.next_records(batch_size - len(batch))
            launched = [(task, *self._load.remote(task, self.limits)) for task in records]
            verdicts = ray.get([verdict for _, verdict, _, _ in launched])
            for (task, _, input_ref, target_ref), reason in zip(launched, verdicts):
                if reason:
                    self.stream.refuse(task, reason)
                    print(f"[photocrafter] data: skipped {task.task_id}: {reason}", file=sys.stderr)
                else:
                    batch.append(replace(task, input=input_ref, target=target_ref))
        return batch, len(self.stream.rejected) - rejected_before

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


class Components:
    """Everything the controller drives. ``build_components`` creates one; ``shutdown`` frees the cluster."""

    def __init__(self, config: TrainConfig, run_name: str):
        from artist_actor.group import ArtistSamplerGroup
        from critic_actor.group import CriticRolloutGroup
        from rewards.pool import RewardPool
        from rollout.cluster.colocation import ColocatedGpus, DedicatedGpus
        from rollout.cluster.learner_groups import ArtistLearnerGroup, CriticLearnerGroup
        from rollout.models import resolve_model_paths
        from rollout.cluster.placement import plan_resources
        from rollout.cluster.preflight import check_live_cluster
        from rollout.cluster.startup import StartupLimits

        self.config = config
        # Before any actor exists: the plan against the live nodes (refused here, naming the role and the knob).
        resources = plan_resources(config)
        check_live_cluster(resources, config.cluster)
        startup = StartupLimits.from_config(config.cluster)
        critic_path, artist_path = resolve_model_paths(config)
        self.critic_path, self.artist_path = critic_path, artist_path
        self.data = RemoteTaskSource(config)
        restarts = config.cluster.actor_max_restarts
        self._actor_seconds: dict[str, float] = {}
        timeout = config.trainer.sync_timeout_s

        # Learners first: they are the source of truth for weights. Each is a group of ranks (one per GPU,
        # packed on as few nodes as possible); they do not restart in place: the controller restores them from
        # the last checkpoint.
        lc, la = config.learner.critic, config.learner.artist
        self.critic_colocated = config.placement.critic == "colocated"
        self.artist_colocated = config.placement.artist == "colocated"
        # A colocated model's learner holds one bundle per GPU with room for a replica beside each rank.
        self.critic_learner = CriticLearnerGroup(
            str(critic_path), lc, num_threads=1, startup=startup,
            colocated_cpus=config.critic.cpus_per_replica if self.critic_colocated else None, learner_kwargs={
                "min_pixels": config.critic.min_pixels, "max_pixels": config.critic.max_pixels,
                "temperature": config.critic.temperature, "max_new_tokens": config.critic.max_new_tokens,
                "seed": config.trainer.seed})
        self.artist_learner = ArtistLearnerGroup(
            str(artist_path), la, config.artist, num_threads=1, startup=startup,
            colocated_cpus=config.artist.cpus_per_sampler if self.artist_colocated else None, learner_kwargs={
                "seed": config.trainer.seed, "kept_versions": config.trainer.max_staleness + 1})
        critic_turns, artist_turns = resources.turns.get("critic"), resources.turns.get("artist")
        # The replicas load beside a learner that has already let go of what it need not hold while they serve.
        critic_offload = critic_turns.learner_offloads if critic_turns else True
        artist_offload = artist_turns.learner_offloads if artist_turns else False
        if self.critic_colocated:
            self.critic_learner.call("release", critic_offload, what="release before the replicas load")
        if self.artist_colocated:
            self.artist_learner.call("release", artist_offload, what="release before the samplers load")
        # Rollout, sampler and reward groups recover an actor that Ray restarts (current weights back, its share
        # of the work redone once, counted), through one mechanism: rollout.cluster.recovery.
        self.critic_rollout = CriticRolloutGroup(
            critic_path, config.critic, sync_timeout_s=timeout, max_restarts=restarts, startup=startup,
            shared=self.critic_learner.shared_bundles() if self.critic_colocated else None)
        self.artist_samplers = ArtistSamplerGroup(
            config.artist, str(artist_path), lora_alpha=la.lora.alpha, lora_targets=la.lora.target_modules,
            sync_timeout_s=timeout, max_restarts=restarts, startup=startup,
            shared=self.artist_learner.shared_bundles() if self.artist_colocated else None)
        self.rewards = RewardPool(config.rewards, max_restarts=restarts, startup=startup)
        self.critic_gpus = (ColocatedGpus("critic", self.critic_learner, self.critic_rollout,
                                          replica_offload=critic_turns.replica_offloads if critic_turns else True,
                                          learner_offload=critic_offload, timeout_s=timeout)
                            if self.critic_colocated else DedicatedGpus())
        self.artist_gpus = (ColocatedGpus("artist", self.artist_learner, self.artist_samplers,
                                          replica_offload=artist_turns.replica_offloads if artist_turns else False,
                                          learner_offload=artist_offload, timeout_s=timeout)
                            if self.artist_colocated else DedicatedGpus())
        self._build_weight_sync(config, timeout)

    # ----------------------------------------------------------------------------------- stages
    def generate(self, tasks: list[PhotoTask], n: int, step: int) -> list[Critique]:
        self.critic_gpus.serve()
        return self.critic_rollout.generate(tasks, n=n, step=step)

    def prepare(self, critiques: list[Critique]):
        self.critic_gpus.train()
        conditionings, metrics = self.critic_learner.prepare(critiques)
        self._actor_seconds["time/actor/prepare_s"] = metrics.pop("time/actor/prepare_s", 0.0)
        return conditionings, metrics

    def sample(self, tasks, critiques, conditionings, k: int, step: int) -> list[Edit]:
        self.artist_gpus.serve()
        return self.artist_samplers.sample(tasks, critiques, conditionings, k=k, step=step)

    def rescore(self, edits: list[Edit]) -> list[float | None]:
        self.critic_gpus.serve()
        return self.critic_rollout.rescore([e.image for e in edits])

    def score(self, tasks: list[PhotoTask], critiques: list[Critique], edits: list[Edit],
              edit_scores: list[float | None]) -> tuple[list[EditReward], list[CritiqueReward]]:
        """r_PA for every edit and r_C for every critique, returned in the order of ``edits``/``critiques``."""
        from rewards.worker import CritiqueScoringRequest, EditScoringRequest

        task_by_id = {t.task_id: t for t in tasks}
        critique_by_key = {(c.task_id, c.index): c for c in critiques}
        edit_requests = [EditScoringRequest(
            task_id=e.task_id, critique_index=e.critique_index, edit_index=e.edit_index,
            input=task_by_id[e.task_id].input, edit=e.image, target=task_by_id[e.task_id].target,
            suggestions=tuple(critique_by_key[(e.task_id, e.critique_index)].parsed.suggestions)) for e in edits]
        scores_by_key: dict[tuple[str, int], list[float | None]] = {}
        for edit, score in zip(edits, edit_scores):
            scores_by_key.setdefault((edit.task_id, edit.critique_index), []).append(score)
        critique_requests = [CritiqueScoringRequest(
            task_id=c.task_id, critique_index=c.index, parsed=c.parsed, input=task_by_id[c.task_id].input,
            target=task_by_id[c.task_id].target, kind=task_by_id[c.task_id].kind,
            degradations=tuple(task_by_id[c.task_id].degradations),
            edit_scores=tuple(scores_by_key.get((c.task_id, c.index), ()))) for c in critiques]
        edit_rewards = {(r.task_id, r.critique_index, r.edit_index): r
                        for r in self.rewards.score_edits(edit_requests)}
        critique_rewards = {(r.task_id, r.critique_index): r for r in self.rewards.score_critiques(critique_requests)}
        return ([edit_rewards[(e.task_id, e.critique_index, e.edit_index)] for e in edits],
                [critique_rewards[(c.task_id, c.index)] for c in critiques])

    def launch_updates(self, critic_groups, artist_groups, *, train_critic: bool, train_artist: bool):
        """Start both learners' updates concurrently (two optimizers, one loop); returns their ObjectRefs
        (None for a learner that is frozen or has nothing to learn from this step)."""
        critic_call = artist_call = None
        train_critic, train_artist = train_critic and bool(critic_groups), train_artist and bool(artist_groups)
        if train_artist:
            self.artist_gpus.train()
        if train_critic:
            self.critic_gpus.train()
        if train_critic:
            critic_call = (self.critic_learner, self.critic_learner.launch_update(critic_groups))
        if train_artist:
            artist_call = (self.artist_learner, self.artist_learner.launch_update(artist_groups))
        return critic_call, artist_call

    def finish_update(self, call) -> dict[str, float]:
        """Wait for an update started by :meth:`launch_updates`; its metrics (compute time kept aside)."""
        if call is None:
            return {}
        group, refs = call
        metrics = dict(group.collect(refs, what="update"))
        for key in [k for k in metrics if k.startswith("time/actor/")]:
            self._actor_seconds[key] = metrics.pop(key)
        return metrics

    def _restartable(self) -> dict[str, Any]:
        """The roles Ray restarts, by metric name, each with its ``recovery`` (rollout.cluster.recovery)."""
        return {"critic_rollout": self.critic_rollout, "artist_sampler": self.artist_samplers, "reward": self.rewards}

    @property
    def actor_restarts(self) -> int:
        return sum(owner.restarts for owner in self._restartable().values())

    @property
    def retried_items(self) -> int:
        return sum(owner.retried_items for owner in self._restartable().values())

    def fault_metrics(self) -> dict[str, float]:
        """Run totals of recovered actor losses and redone work, overall and per role, and how many losses were
        Ray's memory monitor killing an actor (``faults/...`` in docs/metrics.md)."""
        owners = self._restartable()
        metrics = {"faults/actor_restarts": float(self.actor_restarts),
                   "faults/retried_items": float(self.retried_items),
                   "faults/memory_kills": float(sum(owner.recovery.causes["killed by Ray's memory monitor"]
                                                    for owner in owners.values()))}
        for role, owner in owners.items():
            metrics[f"faults/restarts/{role}"] = float(owner.restarts)
            metrics[f"faults/retried_items/{role}"] = float(owner.retried_items)
        return metrics

    def actor_seconds(self) -> dict[str, float]:
        """Compute time spent inside actors this step (for the orchestration-overhead figure)."""
        return dict(self._actor_seconds)

    # ------------------------------------------------------------------------------------ weights
    def critic_learner_version(self) -> int:
        return self.critic_learner.version()

    def artist_learner_version(self) -> int:
        return self.artist_learner.version()

    def _build_weight_sync(self, config: TrainConfig, timeout_s: float) -> None:
        """One sync owner per model, on the path ``sync.backend`` resolves to (announced once)."""
        from rollout.sync.weight_sync import WeightSync, announce, resolve_backend

        backend, reason = resolve_backend(config.sync)
        self.sync_backend = backend
        self.critic_sync = WeightSync(
            "critic", self.critic_learner, self.critic_rollout, config=config.sync, timeout_s=timeout_s,
            backend=backend, wire_dtype=self.critic_rollout.serving_dtype, delta=config.sync.delta,
            probe_tokens=config.sync.probe_tokens, lora_learner=config.learner.critic.lora.enabled)
        self.artist_sync = WeightSync(
            "artist", self.artist_learner, self.artist_samplers, config=config.sync, timeout_s=timeout_s,
            backend=backend, wire_dtype=self.artist_samplers.serving_dtype)
        announce(backend, reason, {"critic": self.critic_sync.links, "artist": self.artist_sync.links})

    def sync_critic(self, version: int) -> dict[str, float]:
        """Every rollout replica serves the critic learner's ``version``; the sync's metrics. Colocated, the sync
        is a copy on each shared GPU, after which the replicas have their turn."""
        return self.critic_gpus.sync_in_place(lambda: self.critic_sync.sync(version)).metrics("critic")

    def sync_artist(self, version: int) -> dict[str, float]:
        """Every sampler serves the artist learner's sampling adapter ``version``; the sync's metrics."""
        return self.artist_gpus.sync_in_place(lambda: self.artist_sync.sync(version)).metrics("artist")

    def colocation_metrics(self) -> dict[str, float]:
        """Each colocated model's changes of turn since the last call (``colocation/<model>/…``)."""
        return {**self.critic_gpus.metrics(), **self.artist_gpus.metrics()}

    # --------------------------------------------------------------------------------- checkpoints
    def save_learners(self, directory: Path) -> None:
        # A learner writes its shards from its device: on shared GPUs it takes its turn first.
        self.critic_gpus.train()
        self.artist_gpus.train()
        critic = self.critic_learner.launch("save_checkpoint", str(directory))
        artist = self.artist_learner.launch("save_checkpoint", str(directory))
        self.critic_learner.collect(critic, what="checkpoint save")
        self.artist_learner.collect(artist, what="checkpoint save")

    def load_learners(self, directory: Path) -> None:
        self.critic_gpus.train()
        self.artist_gpus.train()
        critic = self.critic_learner.launch("load_checkpoint", str(directory))
        artist = self.artist_learner.launch("load_checkpoint", str(directory))
        self.critic_learner.collect(critic, what="checkpoint load")
        self.artist_learner.collect(artist, what="checkpoint load")

    # ------------------------------------------------------------------------------------- misc
    def tags(self) -> dict[str, str]:
        return {**self.rewards.tracking_tags(), "critic.path": str(self.critic_path),
                "artist.path": str(self.artist_path)}

    def shutdown(self) -> None:
        for owner in (self.critic_rollout, self.artist_samplers, self.rewards, self.critic_learner,
                      self.artist_learner):
            try:
                owner.shutdown()
            except Exception as exc:  # noqa: BLE001 - teardown must go on
                print(f"[photocrafter] shutdown of {owner!r}: {exc}", file=sys.stderr)


def build_components(config: TrainConfig, run_name: str) -> Components:
    return Components(config, run_name)
