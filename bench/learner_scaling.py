"""Learner scaling on this machine: one update of the same global batch on 1 and on 2 data-parallel ranks.

Each learner runs as a real learner group on a private local Ray cluster (rank actors, a gloo process group,
FSDP2 over the ranks). For each learner and each world size it prints the median over ``--repeats`` updates of

- ``update_s``: wall time of one update of the whole group, as the controller waits for it;
- ``rank_compute_s``: the update's time inside rank 0 (its share of the batch, the collectives included);

and the ratio of 2 ranks to 1 on the same global batch (ideal: 0.5 when compute dominates and each rank has a
core of its own). The critic's update is one GRPO step on ``--photos`` × ``--group-size`` critiques (prepare
included, as each step needs it); the artist's one DiffusionNFT step on ``--edits`` edits. The models are the
embedded tiny ones (widened with ``--width`` for the DiT so that compute, not overhead, dominates).

    python -m bench.learner_scaling [--repeats 3] [--learner both|critic|artist]

Numbers depend on the machine and its load: 2 ranks on 2 cores share them with Ray's own daemons.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def _critiques(model_dir, photos: int, group_size: int, response_tokens: int, min_pixels: int, max_pixels: int):
    """Critiques with the critic's real prompt and pixel bounds and random completions (timing only)."""
    from critic_actor.inputs import build_critic_inputs
    from critic_actor.model import load_critic_processor, vision_special_token_ids
    from rollout.records.types import Critique, CriticGroup, CritiqueReward, ParsedCritique

    processor = load_critic_processor(model_dir, min_pixels=min_pixels, max_pixels=max_pixels)
    banned = set(vision_special_token_ids(processor.tokenizer))
    vocab = len(processor.tokenizer)
    rng = np.random.default_rng(0)
    critiques, groups = [], []
    for photo in range(photos):
        image = rng.integers(0, 256, (84, 112, 3), dtype=np.uint8)
        prompt = build_critic_inputs(processor, image)["input_ids"][0].tolist()
        members = []
        for index in range(group_size):
            tokens = [int(t) for t in rng.integers(0, vocab, response_tokens) if int(t) not in banned]
            members.append(Critique(
                task_id=f"photo-{photo}", index=index, text="", prompt_token_ids=prompt, completion_token_ids=tokens,
                rollout_logprobs=np.full(len(tokens), -np.log(vocab), np.float32), finish_reason="length",
                parsed=ParsedCritique(), policy_version=0, image=image))
        rewards = [CritiqueReward(task_id=c.task_id, critique_index=c.index, total=float(r), format=1.0,
                                  rank=0.0, suggestion=0.0) for c, r in zip(members, rng.uniform(0, 1, group_size))]
        critiques += members
        groups.append(CriticGroup(task_id=f"photo-{photo}", critiques=members, rewards=rewards,
                                  advantages=np.zeros(group_size, np.float32)))
    return critiques, groups


def _artist_groups(hidden: int, edits: int, resolution: int, version: int, seed: int):
    from artist_actor.conditioning import flow_match_sigmas
    from artist_actor.model import QWEN_IMAGE_SCHEDULER_CONFIG
    from rollout.records.types import ArtistGroup, Conditioning, Edit

    rng = np.random.default_rng(seed)
    tokens = (resolution // 4) ** 2
    sigmas = flow_match_sigmas(6, tokens, QWEN_IMAGE_SCHEDULER_CONFIG)
    groups, k = [], 4
    for g in range(edits // k):
        conditioning = Conditioning(task_id=f"p{g}", critique_index=0,
                                    hidden=rng.standard_normal((32, hidden)).astype(np.float32))
        group_edits = [Edit(task_id=f"p{g}", critique_index=0, edit_index=e, seed=e, image=None,
                            x0=rng.uniform(-1, 1, (tokens, 48)).astype(np.float32), sigmas=sigmas,
                            artist_version=version, critic_version=0) for e in range(k)]
        groups.append(ArtistGroup(task_id=f"p{g}", critique_index=0, conditioning=conditioning,
                                  condition_image=rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8),
                                  edits=group_edits, rewards=rng.uniform(0, 1, k).astype(np.float32),
                                  optimality=np.zeros(k, np.float32)))
    return groups


def bench_critic(ranks: int, repeats: int, args) -> dict:
    from learner.config import CriticLearnerConfig
    from rollout.cluster.learner_groups import CriticLearnerGroup
    from rollout.models import ensure_embedded_models

    model_dir = ensure_embedded_models().critic
    bounds = {"min_pixels": 3136, "max_pixels": 12544}
    critiques, groups = _critiques(model_dir, args.photos, args.group_size, args.response_tokens, **bounds)
    config = CriticLearnerConfig(micro_batch_size=4, kl_coef=0.01, lr=1e-6)
    group = CriticLearnerGroup(str(model_dir), config, ranks=ranks, num_threads=1, namespace=f"bench-critic-{ranks}",
                               learner_kwargs={**bounds, "max_new_tokens": args.response_tokens})
    walls, inside = [], []
    try:
        for repeat in range(repeats + 1):
            started = time.perf_counter()
            group.prepare(critiques)
            metrics = group.collect(group.launch_update(groups))
            if repeat:  # the first update warms up allocators and FSDP's lazy initialisation
                walls.append(time.perf_counter() - started)
                inside.append(metrics["time/actor/critic_update_s"])
    finally:
        group.shutdown()
    return {"update_s": statistics.median(walls), "rank_compute_s": statistics.median(inside)}


def bench_artist(ranks: int, repeats: int, args) -> dict:
    import json as _json

    from artist_actor.config import ArtistConfig
    from artist_actor.model import PROJECT_FILE
    from learner.config import ArtistLearnerConfig, LoraConfig
    from rollout.cluster.learner_groups import ArtistLearnerGroup
    from rollout.models import ensure_embedded_models

    artist_dir = ensure_embedded_models().artist
    hidden = _json.loads((artist_dir / PROJECT_FILE).read_text())["critic_hidden_size"]
    config = ArtistLearnerConfig(micro_batch_size=4, lora=LoraConfig(rank=8, alpha=16.0))
    group = ArtistLearnerGroup(str(artist_dir), config, ArtistConfig(resolution=args.resolution), ranks=ranks,
                               num_threads=1, namespace=f"bench-artist-{ranks}", learner_kwargs={"seed": 0})
    walls, inside = [], []
    try:
        for repeat in range(repeats + 1):
            batch = _artist_groups(hidden, args.edits, args.resolution, version=repeat, seed=repeat)
            started = time.perf_counter()
            metrics = group.collect(group.launch_update(batch))
            if repeat:
                walls.append(time.perf_counter() - started)
                inside.append(metrics["time/actor/artist_update_s"])
    finally:
        group.shutdown()
    return {"update_s": statistics.median(walls), "rank_compute_s": statistics.median(inside)}


def main(argv: list[str] | None = None) -> int:
    from rollout.env import apply_runtime_defaults

    apply_runtime_defaults()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learner", choices=("both", "critic", "artist"), default="both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--response-tokens", type=int, default=64)
    parser.add_argument("--edits", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=64)
    args = parser.parse_args(argv)

    import ray

    ray.init(address="local", num_cpus=4, num_gpus=0, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        for name, run in (("critic", bench_critic), ("artist", bench_artist)):
            if args.learner not in ("both", name):
                continue
            one, two = run(1, args.repeats, args), run(2, args.repeats, args)
            print(json.dumps({"learner": name, "ranks_1": one, "ranks_2": two,
                              "update_ratio_2_over_1": round(two["update_s"] / one["update_s"], 3),
                              "rank_compute_ratio_2_over_1": round(two["rank_compute_s"] / one["rank_compute_s"], 3)}),
                  flush=True)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
