"""The placement planner: its choice against an exhaustive search, the idle ceiling on 8, 64 and 256 GPUs, the
shipped cluster configs, and the config ``photocrafter plan --out`` writes."""

from __future__ import annotations

import argparse

import pytest

from rollout.cluster.capacity import Split, time_plan
from rollout.cluster.placement import plan_resources
from rollout.cluster.planner import IDLE_CEILING, all_pool_sizes, brute_force, config_for, propose
from rollout.config import PROJECT_ROOT, load_config

CONFIG_8 = PROJECT_ROOT / "configs" / "cluster-8gpu.yaml"
CONFIG_64 = PROJECT_ROOT / "configs" / "cluster-64gpu.yaml"


def test_every_pool_size_assignment_is_listed_once():
    # 6 GPUs over a pool of 2-GPU replicas and three 1-GPU pools: each at least one unit, all 6 used
    sizes = list(all_pool_sizes((2, 1, 1, 1), 6))
    assert len(sizes) == len(set(sizes))
    assert all(2 * a + b + c + d == 6 and min(a, b, c, d) >= 1 for a, b, c, d in sizes)
    assert (1, 1, 1, 2) in sizes and (2, 1, 0, 1) not in sizes
    # one replica leaves 4 GPUs for three pools (3 ways); two replicas leave 2, too few for three pools
    assert sorted(sizes) == sorted([(1, b, c, 4 - b - c) for b in range(1, 3) for c in range(1, 4 - b)])


@pytest.mark.parametrize(("path", "gpus", "per_node", "overrides"), [
    (CONFIG_8, 8, 8, []),
    (CONFIG_8, 12, 4, ["trainer.batch_size=32"]),
    (CONFIG_64, 10, 8, ["trainer.batch_size=8", "trainer.max_staleness=0"]),
    (CONFIG_8, 9, 8, ["critic.gpus_per_replica=2", "placement.critic=disaggregated", "learner.artist.kl_coef=0"]),
])
def test_the_planner_finds_the_split_an_exhaustive_search_finds(path, gpus, per_node, overrides):
    config = load_config(path, overrides)
    proposal = propose(config, gpus=gpus, gpus_per_node=per_node)
    best = brute_force(config, gpus=gpus, gpus_per_node=per_node)
    assert proposal.best.plan is not None and best.plan is not None
    assert proposal.best.step_s == pytest.approx(best.step_s, rel=1e-9), (proposal.best.split, best.split)
    # …and it weighed fewer splits than the exhaustive search had to
    assert proposal.best.split.total_gpus == gpus


@pytest.mark.parametrize("gpus", [8, 64, 256])
def test_the_proposal_keeps_idle_under_the_ceiling(gpus):
    config = load_config(CONFIG_8 if gpus == 8 else CONFIG_64)
    proposal = propose(config, gpus=gpus)
    plan = proposal.best.plan
    assert plan.idle <= IDLE_CEILING and not proposal.notes
    assert plan.total_gpus == gpus
    # the proposal fits in memory: its resource plan has no problem
    assert plan_resources(config_for(config, proposal.best.split, gpus)).ok


def test_the_64_gpu_config_meets_its_step_idle_and_throughput_targets():
    config = load_config(CONFIG_64)
    plan = time_plan(config, plan_resources(config))
    assert plan.total_gpus == 64 and plan.edits == 2048
    assert plan.step_s <= 400 and plan.idle <= 0.25 and plan.edits_per_gpu_second >= 0.08
    # the gradient-checkpointing recompute is counted: 5 forwards per trained timestep with the KL term
    assert plan.stage("artist_update").detail.count("× 5 forwards") == 1


@pytest.mark.parametrize("path", [CONFIG_8, CONFIG_64])
def test_the_shipped_cluster_configs_use_the_planners_choice(path):
    config = load_config(path)
    assert Split.from_config(config) == propose(config).best.split


def test_a_model_that_cannot_fit_is_never_proposed():
    # A fully fine-tuned 7B critic needs its state sharded over several GPUs: on 48 GiB GPUs the planner must
    # give its learner enough ranks, and every role of the proposal fits.
    config = load_config(CONFIG_64, ["cluster.gpu_memory_gib=48"])
    proposal = propose(config, gpus=16)
    assert plan_resources(config_for(config, proposal.best.split, 16)).ok
    one_rank = config_for(config, Split(critic_colocated=False, artist_colocated=False, replicas=4,
                                        gpus_per_replica=1.0, critic_learner=1, samplers=4, gpus_per_sampler=1.0,
                                        artist_learner=7), 16)
    assert not plan_resources(one_rank).ok


def test_plan_writes_a_config_that_loads_with_the_proposed_split(tmp_path, capsys):
    from rollout.commands.plan import run

    out = tmp_path / "proposed.yaml"
    code = run(argparse.Namespace(config=str(CONFIG_64), overrides=[], gpus=256, gpus_per_node=8,
                                  gpu_memory_gib=None, out=out))
    printed = capsys.readouterr().out
    assert code == 0 and "<- proposed" in printed and "configured" in printed
    written = load_config(out)
    assert written.cluster.num_gpus == 256
    assert time_plan(written, plan_resources(written)).total_gpus == 256
    assert Split.from_config(written) == propose(load_config(CONFIG_64), gpus=256).best.split
