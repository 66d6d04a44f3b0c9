"""The coordinated loop: one controller drives critic rollouts, H_c preparation, artist sampling, rewards,
both learners and weight sync, step after step.

```
             ┌──────── PhotoTask batch (B photos; images loaded by Ray tasks, held as ObjectRefs) ────────┐
             ▼                                                                                              │
  CriticRolloutGroup.generate ─ G critiques per photo (vLLM, rollout policy ψ_k)                          │
             ▼                                                                                              │
  critic-learner.prepare ─ old/ref log-probs, agreement with rollout log-probs, H_c (ObjectRefs)          │
             ▼                                                                                              │
  ArtistSamplerGroup.sample ─ K edits per critique (ODE sampler, old artist policy θ_old)                 │
             ▼                                                                                              │
  CriticRolloutGroup.rescore (edits) ──► RewardPool: r_PA per edit; r_fmt, r_rank, r_sugg per critique     │
             ▼                                                                                              │
  groups: CriticGroup per photo (GRPO advantages) · ArtistGroup per (photo, critique) (optimality r)       │
             ▼                                                                                              │
  critic-learner.update (GRPO)  ∥  artist-learner.update (DiffusionNFT)                                   │
             ▼                                                                                              │
  weight sync: ψ → every vLLM replica · θ_old adapters → every sampler (versioned, timed, checked) ──────────┘
```

With ``trainer.max_staleness: 1`` the artist update of step k runs while step k+1 collects its rollouts, edits
and rewards (the samplers then serve the artist one version behind its learner) — or, when the samplers share the
artist learner's GPUs (``placement.artist: colocated``), while step k+1 collects its rollouts and prepares them,
the samplers taking the new adapter in place before they sample; each record's policy version is checked against
the version its actors were told to serve, and the lag against the allowed staleness.

Owns: the order of stages, grouping and advantages, stage timing, staleness checks, skipping non-finite
steps, checkpoints and resume, and what gets logged. It must never hold model weights or images: those move
between actors as ObjectRefs.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rollout.config import TrainConfig
from rollout.records.types import (ArtistGroup, Conditioning, Critique, CriticGroup, CritiqueReward, Edit, EditReward,
                                   PhotoTask)


EDIT_R1_STD_THRESHOLD = 0.05
"""Edit-R1's artist group std threshold; the share of groups at or below it is logged in every run, so the
effect of ``learner.artist.mask_std_threshold`` can be judged before switching it on."""


@dataclass(slots=True)
class StepRecords:
    """Everything one iteration produced, kept until its updates are done (refs, not images)."""

    step: int
    tasks: list[PhotoTask]
    critiques: list[Critique] = field(default_factory=list)
    conditionings: list[Conditioning] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)
    edit_rewards: list[EditReward] = field(default_factory=list)
    critique_rewards: list[CritiqueReward] = field(default_factory=list)
    critic_groups: list[CriticGroup] = field(default_factory=list)
    artist_groups: list[ArtistGroup] = field(default_factory=list)


class StageTimer:
    """Wall time per stage of one step (``time/stage/<name>_s``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"time/stage/{name}_s": value for name, value in self.seconds.items()}


def summarise(prefix: str, values, stats=("mean", "std", "min", "max")) -> dict[str, float]:
    """``{prefix/mean: …, prefix/std: …}`` over finite values (empty → nothing)."""
    array = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if array.size == 0:
        return {}
    out = {}
    for stat in stats:
        out[f"{prefix}/{stat}"] = float(getattr(np, stat)(array))
    return out


def critic_groups(critiques: list[Critique], rewards: list[CritiqueReward], learner_config,
                  max_new_tokens: int) -> tuple[list[CriticGroup], float]:
    """One GRPO group per photo, with the advantages the critic learner will train on (same shaping and
    normalisation: ``learner.critic_learner.critic_advantages``); also the fraction with zero reward variance.
    Groups the learner would drop (``filter_zero_variance_groups``) are not sent.

    A critique whose reward failed (``error`` set: a lost worker, an edit that could not be scored) is left
    out: its total of 0 is no measurement, and as a group member it would be the worst response of its photo
    and push the others' advantages up. ``reward/critic/errors`` counts them."""
    from learner.critic_learner import critic_advantages

    by_task: dict[str, list[int]] = defaultdict(list)
    for i, (critique, reward) in enumerate(zip(critiques, rewards, strict=True)):
        if not reward.error:
            by_task[critique.task_id].append(i)
    groups = [CriticGroup(task_id=task_id, critiques=[critiques[i] for i in indices],
                          rewards=[rewards[i] for i in indices], advantages=np.zeros(len(indices), np.float32))
              for task_id, indices in by_task.items()]
    advantages, kept = critic_advantages(groups, learner_config, max_new_tokens)
    for group, values in zip(groups, advantages):
        group.advantages = np.asarray(values, dtype=np.float32)
    zero_var = sum(1 for g in groups if len(g.rewards) > 1 and len({r.total for r in g.rewards}) == 1)
    return [g for g, keep in zip(groups, kept) if keep], zero_var / max(1, len(groups))


def artist_groups(tasks: list[PhotoTask], conditionings: list[Conditioning], edits: list[Edit],
                  rewards: list[EditReward], *, group_by: str, adv_clip_max: float,
                  mask_std_threshold: float, ban_mean_threshold: float = 0.0
                  ) -> tuple[list[ArtistGroup], dict[str, float]]:
    """One DiffusionNFT group per (photo, critique); optimality r from the mean of the ``group_by`` group and the
    global std.

    Edits whose reward failed (``error`` set) are left out of the groups, the means and the global std: their
    total of 0 is no measurement (``reward/artist/errors`` counts them). A group is invalid (not trained on) when
    its mean reward is ≥ ``ban_mean_threshold`` (> 0; Edit-R1's ban of solved groups), or with
    ``mask_std_threshold`` > 0 when the group whose mean defines the advantage — the photo under ``group_by:
    photo`` — barely varies, as in the learner: a critique whose edits score alike still carries signal when they
    differ from its photo's mean. Also returns the shares of groups with zero variance, with std ≤ 0.05 (Edit-R1's
    mask threshold, logged whatever the setting) and banned for their mean, and the mean in-group reward std
    (how different the K edits of one critique were: the artist's exploration, on the step line).
    """
    from learner.nft import low_variance_groups, normalisation_key, optimality_probabilities

    task_by_id = {t.task_id: t for t in tasks}
    cond_by_key = {(c.task_id, c.critique_index): c for c in conditionings}
    scored = [i for i, reward in enumerate(rewards) if not reward.error]
    edits = [edits[i] for i in scored]
    totals = np.asarray([rewards[i].total for i in scored], dtype=np.float64)
    by_key: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, edit in enumerate(edits):
        by_key[(edit.task_id, edit.critique_index)].append(i)
    keys = [normalisation_key(e.task_id, e.critique_index, group_by, len(by_key[(e.task_id, e.critique_index)]))
            for e in edits]
    optimality = np.asarray(optimality_probabilities(totals, keys, adv_clip_max), dtype=np.float32)
    masked = low_variance_groups(totals, keys, mask_std_threshold)
    groups, zero_var, low_std, banned, spreads = [], 0, 0, 0, []
    for (task_id, critique_index), indices in by_key.items():
        spread, mean = float(np.std(totals[indices])), float(np.mean(totals[indices]))
        spreads.append(spread)
        zero_var += len(indices) > 1 and spread == 0.0
        low_std += len(indices) > 1 and spread <= EDIT_R1_STD_THRESHOLD
        solved = ban_mean_threshold > 0 and mean >= ban_mean_threshold
        banned += solved
        groups.append(ArtistGroup(
            task_id=task_id, critique_index=critique_index, conditioning=cond_by_key[(task_id, critique_index)],
            condition_image=task_by_id[task_id].input, edits=[edits[i] for i in indices],
            rewards=totals[indices].astype(np.float32), optimality=optimality[indices],
            valid=not (masked[indices].all() or solved)))
    count = max(1, len(by_key))
    return groups, {"groups/artist/zero_variance_frac": zero_var / count,
                    "groups/artist/low_std_frac": low_std / count, "groups/artist/banned_frac": banned / count,
                    "groups/artist/reward_std_mean": float(np.mean(spreads)) if spreads else 0.0}


def sample_rows(records: StepRecords, max_photos: int = 4) -> list:
    """Sample-grid rows for the first photos of a step: input | edits of its first critique | target.

    Only these few images are fetched to the driver, for the artifact the driver logs.
    """
    import ray

    from rollout.tracking.figures import SampleRow

    def fetch(handle):
        return ray.get(handle) if type(handle).__name__ == "ObjectRef" else handle

    rewards = {(r.task_id, r.critique_index, r.edit_index): r for r in records.edit_rewards}
    critic_rewards = {(r.task_id, r.critique_index): r for r in records.critique_rewards}
    rows = []
    for task in records.tasks[:max_photos]:
        critique = next((c for c in records.critiques if c.task_id == task.task_id), None)
        if critique is None:
            continue
        edits = [e for e in records.edits if e.task_id == task.task_id and e.critique_index == critique.index]
        rows.append(SampleRow(
            task_id=task.task_id, input=fetch(task.input), target=fetch(task.target),
            edits=[fetch(e.image) for e in edits], critique=critique.text,
            edit_rewards=[rewards[(e.task_id, e.critique_index, e.edit_index)].total for e in edits],
            critic_score=critique.parsed.score,
            critic_reward=getattr(critic_rewards.get((task.task_id, critique.index)), "total", None)))
    return rows


class LearnerLost(RuntimeError):
    """A learner actor died (its node was lost, or it crashed): the run cannot go on, because a learner holds
    the only live copy of its weights and optimizer state. The message names the learner and the newest
    complete checkpoint to resume from."""

    def __init__(self, role: str, message: str, checkpoint: Path | None):
        self.role = role
        self.checkpoint = checkpoint
        super().__init__(message)


class Controller:
    """Drives the coordinated loop. Construct, ``start()``, ``run()``, ``shutdown()``."""

    def __init__(self, config: TrainConfig, *, run_dir: Path, run_name: str, stop: Any | None = None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_name = run_name
        self.stop = stop
        self.step = 0
        self.critic_version = 0
        self.artist_version = 0
        self.rng = np.random.default_rng(config.trainer.seed)
        self.rejected_total = 0
        self.nonfinite_skips = 0
        self._pending_artist_update = None  # ObjectRef of the artist update still running (overlapped mode)
        self._staleness = 0
        self.tracker = None
        self.ray_metrics = None
        self.components = None
        self.progress = None

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self, resume: bool = False) -> None:
        from rollout.components import build_components
        from rollout.tracking.run_tracker import RunTracker

        random.seed(self.config.trainer.seed)
        self.components = build_components(self.config, self.run_name)
        resume_info = None
        if resume:
            resume_info = self._restore()
        self.tracker = RunTracker(self.config, self.run_dir, self.run_name,
                                  resume_run_id=resume_info.get("mlflow_run_id") if resume_info else None,
                                  resume_step=self.step if resume else None)
        if not resume:
            self.tracker.log_params(self.config)
        self.tracker.set_tags(self.components.tags())
        if self.components.rewards.backbone_is_random:  # the pool said so at start; the run keeps it as a tag
            self.tracker.set_tags({"rewards.lpips_warning": "LPIPS runs on a RANDOM AlexNet backbone (no "
                                   "alexnet-owt-7be5be79.pth found): r_perc is not a perceptual metric in this run; "
                                   "set rewards.lpips_weights to the real weights"})
        try:
            from rollout.tracking.ray_metrics import RayMetrics

            self.ray_metrics = RayMetrics(self.run_name)
        except Exception as exc:  # metrics are observability, never a reason to stop training
            print(f"[photocrafter] Ray metrics unavailable: {exc}", file=sys.stderr)
        # Every rollout/sampler actor must serve the learners' current weights before the first new step
        # (after a resume their in-memory weights are the base model's).
        self._sync_weights(force=True)
        self.components.colocation_metrics()  # the start's changes of turn belong to no step

    def run(self) -> None:
        from rollout.tracking.report import StepProgress

        total = self.config.trainer.steps
        self.progress = StepProgress(total, initial=self.step, stream=sys.stdout)
        try:
            while self.step < total:
                if self.stop is not None and self.stop.requested:
                    break
                metrics = self.train_step()
                self.step += 1
                self._report(metrics)
                every = self.config.trainer.checkpoint_every
                if every and self.step % every == 0 and self.step < total:
                    with self._learner_loss_ends_the_run(f"the checkpoint of step {self.step}"):
                        self.checkpoint()
        finally:
            self.progress.close()
            self.progress = None
        with self._learner_loss_ends_the_run(f"the final checkpoint (step {self.step})"):
            self.checkpoint()
        self.tracker.close("KILLED" if (self.stop is not None and self.stop.requested) else "FINISHED")

    def shutdown(self) -> None:
        if self.components is not None:
            self.components.shutdown()
        if self.tracker is not None:
            self.tracker.close("FAILED")  # no-op when already closed

    @contextmanager
    def _learner_loss_ends_the_run(self, during: str):
        """Turn the death of a learner actor during ``during`` into :class:`LearnerLost`, naming the learner and
        the checkpoint to resume from (replica deaths are recovered inside the groups and never reach here)."""
        from rollout.cluster.learner_groups import LearnerRankLost

        try:
            yield
        except LearnerRankLost as exc:
            role = exc.role
            from rollout.checkpoint import latest_checkpoint

            newest = latest_checkpoint(self.run_dir)
            cause = str(exc)
            if newest is not None:
                resume = (f"the newest complete checkpoint is {newest.path} (step {newest.step}); resume with "
                          f"`photocrafter resume --run {self.run_dir}` once the cluster has its GPUs back")
            else:
                resume = "no checkpoint was written yet, so the run must start over (see trainer.checkpoint_every)"
            message = (f"{role} was lost during {during} ({cause}); a learner holds the only live copy "
                       f"of its weights and optimizer state, so the run stops here; {resume}")
            if self.tracker is not None:
                try:
                    self.tracker.warn("run.failure", message)
                except Exception as tracking_error:  # noqa: BLE001 - the loss must be reported even so
                    print(f"[photocrafter] could not tag the MLflow run: {tracking_error}", file=sys.stderr)
            raise LearnerLost(role, message, newest.path if newest is not None else None) from exc

    # -------------------------------------------------------------------------------------------- one step
    def train_step(self) -> dict[str, float]:
        """One iteration; a lost learner ends it with :class:`LearnerLost`."""
        with self._learner_loss_ends_the_run(f"step {self.step + 1}"):
            return self._train_step()

    def _train_step(self) -> dict[str, float]:
        cfg, comp = self.config, self.components
        timer = StageTimer()
        step_start = time.perf_counter()

        with timer.stage("data"):
            records = StepRecords(step=self.step, tasks=self._next_tasks())
        with timer.stage("critic_rollout"):
            records.critiques = comp.generate(records.tasks, n=cfg.critic.group_size, step=self.step)
        with timer.stage("prepare"):
            records.conditionings, agreement = comp.prepare(records.critiques)
        settled = self._settle_artist_update(timer)
        with timer.stage("artist_sample"):
            records.edits = comp.sample(records.tasks, records.critiques, records.conditionings,
                                        k=cfg.artist.edits_per_critique, step=self.step)
        self._check_staleness(records)
        with timer.stage("rescore"):
            edit_scores = comp.rescore(records.edits)
        with timer.stage("rewards"):
            records.edit_rewards, records.critique_rewards = comp.score(records.tasks, records.critiques,
                                                                        records.edits, edit_scores)
        records.critic_groups, critic_zero = critic_groups(
            records.critiques, records.critique_rewards, cfg.learner.critic, cfg.critic.max_new_tokens)
        records.artist_groups, artist_group_shares = artist_groups(
            records.tasks, records.conditionings, records.edits, records.edit_rewards,
            group_by=cfg.learner.artist.group_by, adv_clip_max=cfg.learner.artist.adv_clip_max,
            mask_std_threshold=cfg.learner.artist.mask_std_threshold,
            ban_mean_threshold=cfg.learner.artist.ban_mean_threshold)

        learner_metrics, sync_metrics = self._update_and_sync(records, timer)
        learner_metrics = {**settled, **learner_metrics}
        skipped = not all(math.isfinite(v) for v in learner_metrics.values())
        if skipped:
            self.nonfinite_skips += 1
            print(f"[photocrafter] step {self.step}: non-finite loss or gradient; the learners left their "
                  f"weights untouched and the step is skipped", file=sys.stderr)

        step_seconds = time.perf_counter() - step_start
        metrics = {**timer.metrics(), "time/stage/step_s": step_seconds}
        metrics.update(learner_metrics if not skipped else {})
        metrics.update(agreement)
        metrics.update(sync_metrics)
        metrics.update(self._reward_metrics(records))
        metrics.update(comp.actor_seconds())
        metrics.update(comp.fault_metrics())
        metrics.update(comp.colocation_metrics())
        metrics.update({
            "groups/critic/zero_variance_frac": critic_zero,
            **artist_group_shares,
            "policy/critic_version": float(self.critic_version),
            "policy/artist_version": float(self.artist_version),
            "data/rejected": float(self.rejected_total),
            "skipped/nonfinite_steps": float(self.nonfinite_skips),
        })
        tokens = sum(len(c.completion_token_ids) for c in records.critiques)
        metrics.update({"count/critiques": float(len(records.critiques)), "count/edits": float(len(records.edits)),
                        "count/tokens": float(tokens)})
        rollout_s = max(timer.seconds.get("critic_rollout", 0.0), 1e-9)
        sample_s = max(timer.seconds.get("artist_sample", 0.0), 1e-9)
        critic_units = max(cfg.critic.num_replicas * max(cfg.critic.gpus_per_replica, 1.0), 1.0)
        artist_units = max(cfg.artist.num_samplers * max(cfg.artist.gpus_per_sampler, 1.0), 1.0)
        metrics.update({
            "perf/tokens_per_s": tokens / rollout_s,
            "perf/critic_tokens_per_s_per_gpu": tokens / rollout_s / critic_units,
            "perf/edits_per_s": len(records.edits) / sample_s,
            "perf/edits_per_gpu_s": len(records.edits) / sample_s / artist_units,
            "perf/edits_per_step_s": len(records.edits) / step_seconds,
        })
        self._last_records = records
        return metrics

    # ------------------------------------------------------------------------------------------- stages
    def _next_tasks(self) -> list[PhotoTask]:
        tasks, rejected = self.components.data.next_batch(self.config.trainer.batch_size)
        self.rejected_total += rejected
        return tasks

    def _check_staleness(self, records: StepRecords) -> None:
        """Every record must come from the version its actors were told to serve."""
        for critique in records.critiques:
            if critique.policy_version != self.critic_version:
                raise RuntimeError(f"critique {critique.task_id}/{critique.index} was made by critic version "
                                   f"{critique.policy_version}; the rollout replicas should serve {self.critic_version}")
        for edit in records.edits:
            if edit.artist_version != self.artist_version:
                raise RuntimeError(f"edit {edit.task_id}/{edit.critique_index}/{edit.edit_index} came from artist "
                                   f"version {edit.artist_version}; the samplers should serve {self.artist_version}")

    def _update_and_sync(self, records: StepRecords, timer: StageTimer) -> tuple[dict, dict]:
        """Both updates, then weight sync.

        Synchronous (``max_staleness: 0``): both learners update, then both models are synced. Overlapped
        (``max_staleness ≥ 1``): the artist update of this step keeps running while the next step collects its
        rollouts, edits and rewards; it is awaited (and the samplers synced) at the next step's update, so that
        step's edits come from the artist one version behind its learner. The critic is always synced before the
        next rollout (its learner's ``prepare`` is the next step's second stage anyway).
        """
        cfg, comp = self.config, self.components
        overlap = cfg.trainer.max_staleness > 0
        learner_metrics: dict[str, float] = {}
        sync_metrics: dict[str, float] = {}
        with timer.stage("update"):
            if self._pending_artist_update is not None:
                learner_metrics.update(comp.finish_update(self._pending_artist_update))
                self._pending_artist_update = None
        if overlap:
            with timer.stage("sync"):
                sync_metrics.update(self._sync_artist(force=False))
        edit_versions = [e.artist_version for e in records.edits]
        self._staleness = self.artist_version - min(edit_versions, default=self.artist_version)
        if self._staleness > cfg.trainer.max_staleness:
            raise RuntimeError(f"artist edits are {self._staleness} versions behind the learner; "
                               f"trainer.max_staleness is {cfg.trainer.max_staleness}")
        with timer.stage("update"):
            critic_call, artist_call = comp.launch_updates(
                records.critic_groups, records.artist_groups,
                train_critic=cfg.trainer.train_critic, train_artist=cfg.trainer.train_artist)
            learner_metrics.update(comp.finish_update(critic_call))
            if overlap:
                self._pending_artist_update = artist_call
            else:
                learner_metrics.update(comp.finish_update(artist_call))
        with timer.stage("sync"):
            sync_metrics.update(self._sync_critic(force=False))
            if not overlap:
                sync_metrics.update(self._sync_artist(force=False))
        sync_metrics["policy/staleness"] = float(self._staleness)
        return learner_metrics, sync_metrics

    def _settle_artist_update(self, timer: StageTimer) -> dict[str, float]:
        """With the samplers on the artist learner's GPUs (``placement.artist: colocated``) an overlapped artist
        update cannot run beside sampling: it overlaps the critic's stages of the next step and ends here, and the
        samplers get its adapter in place before they sample (their edits then lag by no version). The update's
        metrics and the sync's; nothing when the samplers have GPUs of their own."""
        if not self.components.artist_colocated or self._pending_artist_update is None:
            return {}
        with timer.stage("update"):
            metrics = self.components.finish_update(self._pending_artist_update)
            self._pending_artist_update = None
        with timer.stage("sync"):
            metrics.update(self._sync_artist(force=False))
        return metrics

    def flush(self) -> dict[str, float]:
        """Finish an artist update still running (overlapped mode) and sync the samplers to it."""
        if self._pending_artist_update is None:
            return {}
        metrics = self.components.finish_update(self._pending_artist_update)
        self._pending_artist_update = None
        metrics.update(self._sync_artist(force=False))
        return metrics

    def _sync_weights(self, force: bool) -> dict[str, float]:
        return {**self._sync_critic(force), **self._sync_artist(force)}

    def _sync_critic(self, force: bool) -> dict[str, float]:
        version = self.components.critic_learner_version()
        if not force and version == self.critic_version:
            return {}
        metrics = self.components.sync_critic(version)
        self.critic_version = version
        return metrics

    def _sync_artist(self, force: bool) -> dict[str, float]:
        version = self.components.artist_learner_version()
        if not force and version == self.artist_version:
            return {}
        metrics = self.components.sync_artist(version)
        self.artist_version = version
        return metrics

    def _reward_metrics(self, records: StepRecords) -> dict[str, float]:
        m: dict[str, float] = {}
        er, cr = records.edit_rewards, records.critique_rewards
        for name in ("total", "compliance", "photometric", "perceptual"):
            m.update(summarise(f"reward/artist/{name}", [getattr(r, name) for r in er if not r.error]))
        attributes = defaultdict(list)
        for r in er:
            for key, value in r.attribute_scores.items():
                attributes[key].append(value)
        for key, values in attributes.items():
            m.update(summarise(f"reward/artist/attribute/{key}", values, stats=("mean",)))
        for name in ("total", "format", "rank", "suggestion"):
            m.update(summarise(f"reward/critic/{name}", [getattr(r, name) for r in cr if not r.error],
                               stats=("mean", "std")))
        m.update(summarise("reward/critic/score", [c.parsed.score for c in records.critiques], stats=("mean",)))
        m["reward/artist/errors"] = float(sum(1 for r in er if r.error))
        m["reward/critic/errors"] = float(sum(1 for r in cr if r.error))
        m["critic/response_len/mean"] = float(np.mean([len(c.completion_token_ids) for c in records.critiques]))
        m["critic/truncated_frac"] = float(np.mean([c.finish_reason == "length" for c in records.critiques]))
        return m

    # -------------------------------------------------------------------------------------- reporting
    def _report(self, metrics: dict[str, float]) -> None:
        from rollout.tracking.report import format_step_line

        step = self.step  # number of completed steps
        if step % self.config.tracking.log_every == 0 or step == self.config.trainer.steps:
            self.tracker.log_metrics(metrics, step=step)
            if self.progress is not None:
                self.progress.step_done(step, metrics)
            else:
                print(format_step_line(step, self.config.trainer.steps, metrics), flush=True)
        if self.ray_metrics is not None:
            self.ray_metrics.record_step(metrics)
        every = self.config.tracking.sample_grid_every
        if every and (step % every == 0 or step == 1):
            rows = sample_rows(self._last_records)
            self.tracker.log_sample_grid(step, rows)
            self.tracker.log_reward_curves(step)

    # -------------------------------------------------------------------------------------- checkpoints
    def checkpoint(self) -> Path:
        from rollout.checkpoint import commit_checkpoint, partial_dir, prune_checkpoints, save_state_tree

        self.flush()  # a checkpoint holds both learners after the same number of updates
        partial = partial_dir(self.run_dir, self.step)
        self.components.save_learners(partial)
        state = {
            "step": self.step, "critic_version": self.critic_version, "artist_version": self.artist_version,
            "data": self.components.data.state_dict(), "rng": self.rng.bit_generator.state,
            "python_rng": list(random.getstate()[1]), "rejected_total": self.rejected_total,
            "nonfinite_skips": self.nonfinite_skips,
        }
        save_state_tree(state, partial, "controller")
        final = commit_checkpoint(partial, self.step, {"mlflow_run_id": self.tracker.run_id,
                                                       "run_name": self.run_name})
        self.tracker.log_artifact(final / "manifest.json", "checkpoints")
        prune_checkpoints(self.run_dir, self.config.trainer.keep_checkpoints)
        print(f"[photocrafter] checkpoint step {self.step}: {final}", flush=True)
        return final

    def _restore(self) -> dict:
        from rollout.checkpoint import latest_checkpoint, load_state_tree

        info = latest_checkpoint(self.run_dir)
        if info is None:
            raise FileNotFoundError(f"{self.run_dir}: no complete checkpoint to resume from")
        self.components.load_learners(info.path)
        state = load_state_tree(info.path, "controller")
        self.step = int(state["step"])
        self.critic_version = int(state["critic_version"])
        self.artist_version = int(state["artist_version"])
        self.components.data.load_state_dict(state["data"])
        self.rng.bit_generator.state = state["rng"]
        random.setstate((3, tuple(state["python_rng"]), None))
        self.rejected_total = int(state["rejected_total"])
        self.nonfinite_skips = int(state["nonfinite_skips"])
        print(f"[photocrafter] resumed from {info.path} at step {self.step}", flush=True)
        return {"mlflow_run_id": info.manifest.get("mlflow_run_id")}
