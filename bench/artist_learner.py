"""Does DiffusionNFT teach the tiny artist? A fixed-seed learning run with a photometric reward, plus timings.

Each iteration: the sampler (``ArtistSamplerActor``, the real one, in-process) makes K edits per photo with the
published sampling adapter; each edit is scored by how close its mean L* (``rewards.attributes``) lands to that
of its target (the photo brightened by +1 EV with ``rewards.operators``): R = −|L*(edit) − L*(target)| / 10;
``ArtistLearner.update`` takes one DiffusionNFT step; the new sampling adapter is synced to the sampler.
H_c is a fixed random ``[T, D]`` array per photo (this run is about the artist learning; the Ray test conditions
on the real tiny critic's states).

Prints one JSON line per iteration and a closing summary line: mean reward of the first and last
``--window`` iterations, learner step time, sync bytes and sync time (in-process ``set_weights``).

    .venv/bin/python bench/artist_learner.py --iterations 30 --lr 1e-3 [--artist DIR]

The embedded artist starts at the identity edit (zero output projection), so its K edits of a photo are alike
and DiffusionNFT has nothing to compare unless each edit explores (``--exploration``, artist.exploration: a
seeded global tone change per edit, recorded as the edit). Seed 0, 30 iterations at lr 1e-3
(tests/unit/test_artist_learner_learning.py): −1.454 → −0.533 with ``--exploration 1``; −1.559 → −1.559 with 0.
From a warm-start artist (``--artist runs/results/ws1/artist --rank 8 --alpha 16``, 20 iterations, window 5)
the reference lr is enough: mean reward −1.17 → −0.38 at 3e-4, −0.95 → −0.17 at 3e-3 (docs/results.md).
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
import torch  # noqa: E402


def photos(resolution: int, count: int) -> list[np.ndarray]:
    """Real photographs shipped with scikit-image, resized to the artist resolution."""
    from PIL import Image
    from skimage import data

    sources = [data.chelsea(), data.astronaut(), data.coffee(), data.rocket()]
    return [np.asarray(Image.fromarray(image).resize((resolution, resolution), Image.Resampling.BICUBIC))
            for image in sources[:count]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artist", metavar="DIR", help="artist directory to start from, e.g. a warm start's "
                        "artist/ (default: the embedded random-initialised artist)")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--photos", type=int, default=2)
    parser.add_argument("--k", type=int, default=8, help="edits per photo (the NFT group)")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="sampler ODE steps")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=64.0)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--ev", type=float, default=1.0, help="target brightening in EV")
    parser.add_argument("--exploration", type=float, default=1.0,
                        help="artist.exploration: the seeded global tone change of each edit (0 = the plain ODE edit)")
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from artist_actor.actor import ArtistSamplerActor
    from artist_actor.config import ArtistConfig
    from learner.artist_learner import ArtistLearner
    from learner.config import ArtistLearnerConfig, LoraConfig
    from rewards.attributes import compute_attributes
    from rewards.operators import apply_adjustments
    from rollout.models import ensure_embedded_models
    from rollout.records.types import ArtistGroup, Conditioning, PhotoTask

    artist_dir = Path(args.artist) if args.artist else ensure_embedded_models().artist
    artist_config = ArtistConfig(resolution=args.resolution, num_steps=args.steps, edits_per_critique=args.k,
                                 solver="dpm2", seed=args.seed, exploration=args.exploration)
    learner_config = ArtistLearnerConfig(lr=args.lr, micro_batch_size=args.micro_batch,
                                         lora=LoraConfig(rank=args.rank, alpha=args.alpha))
    learner = ArtistLearner(artist_dir, learner_config, artist_config, seed=args.seed)
    sampler = ArtistSamplerActor(0, str(artist_dir), artist_config, lora_alpha=args.alpha)

    rng = np.random.default_rng(args.seed)
    inputs = photos(args.resolution, args.photos)
    tasks = [PhotoTask(task_id=f"photo{i}", input=image, target=apply_adjustments(image, {"exposure": args.ev}))
             for i, image in enumerate(inputs)]
    target_exposure = {task.task_id: compute_attributes(task.target).exposure for task in tasks}
    hidden_size = learner.artist.hidden_size
    conditionings = [Conditioning(task_id=task.task_id, critique_index=0,
                                  hidden=rng.standard_normal((8, hidden_size)).astype(np.float32))
                     for task in tasks]
    info = learner.ready()
    print(json.dumps({"event": "start", **info, "photos": args.photos, "k": args.k,
                      "resolution": args.resolution, "steps": args.steps, "lr": args.lr}), flush=True)

    history, update_times, sync_times, sample_times = [], [], [], []
    for iteration in range(args.iterations):
        started = time.perf_counter()
        result = sampler.sample(tasks, conditionings, k=args.k, step=iteration)
        sample_times.append(time.perf_counter() - started)
        groups = []
        for task, conditioning in zip(tasks, conditionings):
            edits = [e for e in result.edits if e.task_id == task.task_id]
            rewards = np.array([-abs(compute_attributes(e.image).exposure - target_exposure[task.task_id]) / 10.0
                                for e in edits], dtype=np.float32)
            groups.append(ArtistGroup(task_id=task.task_id, critique_index=0, conditioning=conditioning,
                                      condition_image=task.input, edits=edits, rewards=rewards,
                                      optimality=np.zeros(len(edits), np.float32)))
        mean_reward = float(np.mean(np.concatenate([g.rewards for g in groups])))
        metrics = learner.update(groups)
        update_times.append(metrics["time/learner/artist_update_s"])
        started = time.perf_counter()
        version, weights = learner.get_sampler_weights()
        sampler.set_weights(version, weights)
        sync_times.append(time.perf_counter() - started)
        history.append(mean_reward)
        print(json.dumps({"iteration": iteration, "mean_reward": round(mean_reward, 4),
                          "served_version": result.edits[0].artist_version,
                          **{k: round(v, 5) for k, v in metrics.items()},
                          "sample_s": round(sample_times[-1], 3), "sync_s": round(sync_times[-1], 4)}), flush=True)

    window = min(args.window, len(history))
    first, last = statistics.fmean(history[:window]), statistics.fmean(history[-window:])
    print(json.dumps({"event": "summary", "first_mean_reward": round(first, 4), "last_mean_reward": round(last, 4),
                      "gain": round(last - first, 4), "reward_std_first": round(statistics.pstdev(history[:window]), 4),
                      "learner_step_s_median": round(statistics.median(update_times), 3),
                      "sample_s_median": round(statistics.median(sample_times), 3),
                      "sync_s_median": round(statistics.median(sync_times), 4),
                      "sync_bytes": info["sync_bytes"], "sync_tensors": info["sync_tensors"]}), flush=True)
    return 0


if __name__ == "__main__":
    from rollout.commands.entry import run_main

    run_main(main, "bench.artist_learner", supervise=True)
