"""Does the artist's DiffusionNFT update improve its edits when the critique it follows is correct?

The coordinated loop trains the artist on edits conditioned on the critic's *sampled* critiques, and its reward
r_PA = r_comp · r_photo is gated by compliance with that critique. This probe takes the critic out: every edit is
conditioned on the pair's annotated (correct) critique, teacher-forced through the warm-start critic (the H_c
that ``photocrafter evaluate``'s "annotated critique" rows use), and scored with the same r_comp · r_photo on the
attributes the reward workers measure (the perceptual term is left out: offline it runs on a random backbone).
The sampler, the exploration, ``ArtistLearner.update`` and the weight sync are the real ones, in-process.

Every ``--eval-every`` updates it measures the deterministic artist (no exploration, one fixed noise seed per
pair) under the annotated critique on a fixed subset of training pairs and on every held-out pair: mean r_photo
and mean |Δattr|. Prints one JSON line per update and per evaluation, then a summary.

    .venv/bin/python -m bench.artist_probe --iterations 20 --eval-every 5 [--set learner.artist.lr=1e-3]

Starts from the embedded warm start (built and cached on first use) with configs/embedded.yaml's sizes; any
``--set`` override of that config applies (e.g. ``artist.exploration=1.0``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout.env import apply_runtime_defaults  # noqa: E402

apply_runtime_defaults()

import numpy as np  # noqa: E402


FLAT_GROUP_STD = 0.05
"""A group whose rewards' std is at most this gives DiffusionNFT almost nothing to compare (the loop's figure)."""


def _annotated_conditionings(critic, tasks):
    """(Conditioning, suggestions) of each task's annotated critique, teacher-forced through ``critic``."""
    from learner.sft import annotate_task
    from rollout.records.types import Conditioning

    out = []
    for task in tasks:
        critique = critic.teacher_forced(task.input, annotate_task(task))
        out.append((Conditioning(task_id=task.task_id, critique_index=0, hidden=critique.hidden),
                    critique.parsed.suggestions))
    return out


def _edit_scores(suggestions, before, after, goal) -> tuple[float, dict[str, float]]:
    """(r_comp · r_photo, per-attribute photometric scores) of one edit: the artist's reward without its perceptual
    term, composed by :func:`rewards.artist.artist_reward`."""
    from rewards.artist import artist_reward

    reward = artist_reward(task_id="", critique_index=0, edit_index=0, input_attrs=before, edit_attrs=after,
                           target_attrs=goal, suggestions=suggestions, lpips_distance=0.0, perceptual_weight=0.0)
    return reward.total, reward.attribute_scores


def _evaluate(sampler, tasks, conditionings, endpoints, resolution: int) -> dict[str, float]:
    """Mean r_photo and |Δattr| of the deterministic artist's edits (exploration off, edit seed of step 0), and
    r_photo's two parts: the score of the attributes the degradation left alone (kept within τ or not) and of
    those it changed (progress toward the target). ``endpoints`` maps a task id to its (input, target)
    attributes."""
    from rewards.artist import compliance_reward
    from rewards.attributes import NEGLIGIBLE_CHANGE, compute_attributes
    from rollout.records.types import TONE_ATTRIBUTES

    exploring = sampler.sampler.exploration
    sampler.sampler.exploration = 0.0
    try:
        result = sampler.sample(tasks, [c for c, _ in conditionings], k=1, step=0)
    finally:
        sampler.sampler.exploration = exploring
    by_task = {edit.task_id: edit.image for edit in result.edits}
    photometric, errors, complied, kept, progress = [], [], [], [], []
    for task, (_, suggestions) in zip(tasks, conditionings):
        before, goal = endpoints[task.task_id]
        after = compute_attributes(by_task[task.task_id], resolution)
        _, scores = _edit_scores(suggestions, before, after, goal)
        photometric.append(np.mean(list(scores.values())))
        errors.append(np.mean([abs(after[k] - goal[k]) for k in TONE_ATTRIBUTES]))
        complied.append(compliance_reward(suggestions, before, after) == 1.0)
        for attribute, score in scores.items():
            touched = abs(before[attribute] - goal[attribute]) >= NEGLIGIBLE_CHANGE[attribute]
            (progress if touched else kept).append(score)
    return {"r_photo": float(np.mean(photometric)),
            "untouched_kept": float(np.mean(kept)) if kept else None,
            "touched_progress": float(np.mean(progress)) if progress else None,
            "mean_abs_dattr": float(np.mean(errors)),
            "compliance": float(np.mean(complied))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/embedded.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--photos", type=int, default=4, help="photos per update (one annotated critique each)")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--probe-train", type=int, default=32, help="training pairs in the in-distribution probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from artist_actor.actor import ArtistSamplerActor
    from learner.artist_learner import ArtistLearner
    from rewards.attributes import compute_attributes
    from rollout.config import load_config
    from rollout.data.sources import image_limits, manifest_paths
    from rollout.data.stream import PhotoTaskStream, load_task_images
    from rollout.models import ensure_embedded_warm_start
    from rollout.pipeline import CriticRunner
    from rollout.records.types import ArtistGroup

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = load_config(args.config, args.set)
    warm = ensure_embedded_warm_start()
    limits = image_limits(config.data)
    train_manifest, eval_manifest = manifest_paths(config.data)
    train = [load_task_images(t, limits) for t in PhotoTaskStream.from_manifest(train_manifest, shuffle=False).tasks]
    held_out = [load_task_images(t, limits) for t in PhotoTaskStream.from_manifest(eval_manifest, shuffle=False).tasks]
    rng = np.random.default_rng(args.seed)
    probe_indices = sorted(rng.choice(len(train), size=min(args.probe_train, len(train)), replace=False))
    probe_train = [train[i] for i in probe_indices]
    resolution = config.rewards.attribute_resolution
    endpoints = {task.task_id: (compute_attributes(task.input, resolution), compute_attributes(task.target, resolution))
                 for task in train + held_out}

    critic = CriticRunner(warm / "critic", min_pixels=config.critic.min_pixels, max_pixels=config.critic.max_pixels)
    started = time.perf_counter()
    train_conditionings = _annotated_conditionings(critic, train)
    probe_conditionings = [train_conditionings[i] for i in probe_indices]
    held_conditionings = _annotated_conditionings(critic, held_out)
    artist_config = config.artist.model_copy(update={"seed": args.seed})
    learner = ArtistLearner(str(warm / "artist"), config.learner.artist, artist_config, seed=args.seed)
    sampler = ArtistSamplerActor(0, str(warm / "artist"), artist_config, lora_alpha=config.learner.artist.lora.alpha)
    learner.ready()
    print(json.dumps({"event": "start", "train_pairs": len(train), "held_out_pairs": len(held_out),
                      "critiques_s": round(time.perf_counter() - started, 1), "lr": config.learner.artist.lr,
                      "exploration": artist_config.exploration, "k": artist_config.edits_per_critique}), flush=True)

    def evaluate(step: int) -> dict:
        record = {"event": "eval", "step": step,
                  "train": _evaluate(sampler, probe_train, probe_conditionings, endpoints, resolution),
                  "held_out": _evaluate(sampler, held_out, held_conditionings, endpoints, resolution)}
        print(json.dumps(record), flush=True)
        return record

    evaluations = [evaluate(0)]
    order = rng.permutation(len(train))
    rewards_seen, flat_groups = [], []
    for iteration in range(args.iterations):
        picks = [order[(iteration * args.photos + j) % len(order)] for j in range(args.photos)]
        tasks = [train[i] for i in picks]
        conditionings = [train_conditionings[i] for i in picks]
        result = sampler.sample(tasks, [c for c, _ in conditionings], step=iteration + 1)
        groups = []
        for task, (conditioning, suggestions) in zip(tasks, conditionings):
            edits = [e for e in result.edits if e.task_id == task.task_id]
            before, goal = endpoints[task.task_id]
            rewards = [_edit_scores(suggestions, before, compute_attributes(edit.image, resolution), goal)[0]
                       for edit in edits]
            groups.append(ArtistGroup(task_id=task.task_id, critique_index=0, conditioning=conditioning,
                                      condition_image=task.input, edits=edits,
                                      rewards=np.asarray(rewards, np.float32),
                                      optimality=np.zeros(len(edits), np.float32)))
        metrics = learner.update(groups)
        version, weights = learner.get_sampler_weights()
        sampler.set_weights(version, weights)
        spread = [float(np.std(g.rewards)) for g in groups]
        rewards_seen.append(float(np.mean([g.rewards.mean() for g in groups])))
        flat_groups.append(float(np.mean([s <= FLAT_GROUP_STD for s in spread])))
        print(json.dumps({"event": "update", "step": iteration + 1, "reward": round(rewards_seen[-1], 4),
                          "in_group_std": round(statistics.fmean(spread), 4), "flat_groups": flat_groups[-1],
                          "grad_norm": round(metrics.get("learner/nft/grad_norm", float("nan")), 5),
                          "policy_loss": round(metrics.get("learner/nft/policy_loss", float("nan")), 5)}),
              flush=True)
        if (iteration + 1) % args.eval_every == 0 or iteration + 1 == args.iterations:
            evaluations.append(evaluate(iteration + 1))
    first, last = evaluations[0], evaluations[-1]
    print(json.dumps({"event": "summary", "steps": args.iterations,
                      "train_r_photo": [first["train"]["r_photo"], last["train"]["r_photo"]],
                      "held_out_r_photo": [first["held_out"]["r_photo"], last["held_out"]["r_photo"]],
                      "train_mean_abs_dattr": [first["train"]["mean_abs_dattr"], last["train"]["mean_abs_dattr"]],
                      "held_out_mean_abs_dattr": [first["held_out"]["mean_abs_dattr"],
                                                  last["held_out"]["mean_abs_dattr"]],
                      "flat_group_fraction": round(statistics.fmean(flat_groups), 3),
                      "wall_s": round(time.perf_counter() - started, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    from rollout.commands.entry import run_main

    run_main(main, "bench.artist_probe", supervise=True)
