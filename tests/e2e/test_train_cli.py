"""The real ``photocrafter train`` / ``resume`` commands on the embedded config, as a user runs them.

One uninterrupted run (A) and one run stopped after step 2 and resumed (B) share the module: A's MLflow run must
show every reward component, learner metrics, stage times, weight-sync figures and a sample grid; B must
reproduce A's metrics after the resume. Both move weights over the collective (``sync.backend: collective``) for
both models. B starts as a multi-GPU run would: each learner is 2 data-parallel ranks (on 4 logical GPUs that
these CPU ranks run without), each sending its own shards at every sync, and it resumes with 1 rank per learner,
as A runs throughout. The training set has 4 pairs and the batch 2 photos, so the checkpoint at step 2 sits
exactly on an epoch boundary, where a resume must continue training rather than run zero steps. A third run (C)
colocates both models — each learner rank shares its bundle with the replica or sampler that takes turns with it,
weights synced in place — and must reach A's losses with A's seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rollout.config import PROJECT_ROOT
from run_sizes import PLUMBING, cli_sets

STEPS = 4
# The artist edits at 32 px (8 × 8 tokens): the loop is the same, each step four times cheaper than at 64 px.
# The loop starts from the random-initialised tiny models (PLUMBING: no warm start): this file tests the loop's
# plumbing, resume and export; tests/unit/test_sft.py covers the embedded warm start.
COMMON = ["--set", f"trainer.steps={STEPS}", "--set", "data.num_train=4", "--set", "data.num_eval=2",
          "--set", "tracking.sample_grid_every=2", "--set", "artist.resolution=32", "--set", "sync.backend=collective",
          *cli_sets(PLUMBING)]
TWO_RANKS_PER_LEARNER = ["--set", "learner.critic.gpus=2", "--set", "learner.artist.gpus=2",
                         "--set", "cluster.num_gpus=4", "--set", "cluster.num_cpus=10", "--set", "cluster.cpu_fallback=true"]


def photocrafter(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "rollout.commands.cli", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def metric_history(db: Path, run_name: str) -> tuple[dict[str, dict[int, float]], object]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
            if r.info.run_name == run_name]
    assert len(runs) == 1, f"expected one MLflow run named {run_name}, found {len(runs)}"
    run = runs[0]
    history = {}
    for key in run.data.metrics:
        history[key] = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
    return history, run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    a = photocrafter("train", *COMMON, "--set", "trainer.checkpoint_every=2", "--set", f"trainer.output_dir={out}",
                     "--set", "trainer.run_name=A")
    assert a.returncode == 0, a.stdout[-3000:] + a.stderr[-3000:]
    b = photocrafter("train", *COMMON, "--set", "trainer.steps=2", "--set", f"trainer.output_dir={out}",
                     "--set", "trainer.run_name=B", *TWO_RANKS_PER_LEARNER)
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    b2 = photocrafter("resume", "--run", str(out / "B"), "--set", f"trainer.steps={STEPS}",
                      "--set", "learner.critic.gpus=0", "--set", "learner.artist.gpus=0", "--set", "cluster.num_gpus=0",
                      "--set", "cluster.num_cpus=8")
    assert b2.returncode == 0, b2.stdout[-3000:] + b2.stderr[-3000:]
    return out, a, b, b2


def test_train_logs_every_component_to_mlflow(runs):
    out, a, _, _ = runs
    history, run = metric_history(out / "mlflow.db", "A")
    assert run.info.status == "FINISHED"
    for key in ["reward/artist/total/mean", "reward/artist/compliance/mean", "reward/artist/photometric/mean",
                "reward/artist/perceptual/mean", "reward/critic/total/mean", "reward/critic/format/mean",
                "reward/critic/rank/mean", "reward/critic/suggestion/mean", "learner/grpo/loss", "learner/grpo/kl",
                "learner/nft/loss", "time/stage/critic_rollout_s", "time/stage/artist_sample_s",
                "time/stage/rewards_s", "time/stage/update_s", "time/stage/sync_s", "perf/edits_per_s",
                "policy/critic_version", "policy/artist_version", "sync/critic_bytes", "sync/artist_bytes",
                "sync/critic_probe_abs_diff"]:
        assert key in history, f"{key} missing from the MLflow run"
        assert sorted(history[key]) == list(range(1, STEPS + 1)), f"{key} not logged at every step"
    # Both learners published a new version at every step, over the collective, and the replicas served the
    # critic learner's weights (fp32 on both sides: the probe agrees to float rounding).
    assert history["policy/artist_version"][STEPS] == STEPS
    assert history["policy/critic_version"][STEPS] == STEPS
    assert "weight sync: collective" in a.stderr
    assert max(history["sync/critic_probe_abs_diff"].values()) < 1e-4
    assert all(v >= 1.0 for v in history["sync/critic_sent_fraction"].values())  # a full fine-tune: every byte
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    samples = [f.path for f in client.list_artifacts(run.info.run_id, "samples")]
    assert "samples/step_000002.png" in samples
    assert run.data.tags["rewards.lpips_backbone"] in ("random", "pretrained")
    console_steps = [line for line in a.stdout.splitlines() if line.startswith("step ")]
    assert len(console_steps) == STEPS and console_steps[-1].startswith(f"step {STEPS}/{STEPS}")
    checkpoints = sorted(p.name for p in (out / "A" / "checkpoints").glob("step_*"))
    assert checkpoints == ["step_00000002", "step_00000004"]


COLOCATED = ["--set", "placement.critic=colocated", "--set", "placement.artist=colocated"]


@pytest.fixture(scope="module")
def colocated_run(runs):
    out = runs[0]
    c = photocrafter("train", *COMMON, *COLOCATED, "--set", f"trainer.output_dir={out}", "--set", "trainer.run_name=C")
    assert c.returncode == 0, c.stdout[-3000:] + c.stderr[-3000:]
    return out, c


def test_a_colocated_run_reaches_the_disaggregated_runs_losses(colocated_run):
    out, _ = colocated_run
    reference, _ = metric_history(out / "mlflow.db", "A")
    colocated, run = metric_history(out / "mlflow.db", "C")
    assert run.info.status == "FINISHED"
    # Same seed, same work: only where the actors sit and the order of their turns differ. Tolerances as for a
    # resumed run (artist rewards go through uint8 pixels, whose roundings last-bit float differences can flip).
    for key, rel in [("learner/grpo/loss", 1e-4), ("reward/critic/total/mean", 1e-4), ("learner/nft/loss", 2e-3),
                     ("reward/artist/total/mean", 2e-3)]:
        for step in range(1, STEPS + 1):
            assert colocated[key][step] == pytest.approx(reference[key][step], rel=rel, abs=1e-6), (key, step)
    # Every step changed turns four times on the critic's shared CPU bundle (prepare, re-score, update, sync) and
    # twice on the artist's, and measured each role's memory after it released.
    assert set(colocated["colocation/critic/switches"].values()) == {4.0}
    assert set(colocated["colocation/artist/switches"].values()) == {2.0}
    for role in ("critic/rollout", "critic/learner", "artist/sampler", "artist/learner"):
        assert min(colocated[f"colocation/{role}_rss_after_release_mb"].values()) > 50
        assert f"colocation/{role}_released_mb" in colocated
    assert colocated["policy/artist_version"][STEPS] == colocated["policy/critic_version"][STEPS] == STEPS


def test_resume_at_epoch_boundary_reproduces_uninterrupted_run(runs):
    out, _, b, b2 = runs
    assert "resumed from" in b2.stdout and "at step 2" in b2.stdout
    # B's learners ran as 2 ranks and wrote sharded checkpoints, which 1 rank per learner resumed from.
    checkpoint = out / "B" / "checkpoints" / "step_00000002"
    for learner in ("critic_learner", "artist_learner"):
        assert (checkpoint / learner / ".metadata").is_file()
        assert json.loads((checkpoint / f"{learner}.json").read_text())["world_size"] == 2
        assert len(list((checkpoint / learner).glob("*.distcp"))) == 2  # one shard file per rank
    reference, _ = metric_history(out / "mlflow.db", "A")
    resumed, run = metric_history(out / "mlflow.db", "B")
    assert run.info.status == "FINISHED"
    # The resumed run continued the same MLflow run and trained the steps after the epoch boundary.
    assert sorted(resumed["reward/artist/total/mean"]) == [1, 2, 3, 4]
    # Critic metrics match to 1e-4. Artist metrics get 2e-3: edits are rounded to uint8 pixels, and two
    # uninterrupted runs of this config already differ by up to 3e-4 (relative) in the artist reward at step 2,
    # before any checkpoint exists, because last-bit float differences flip pixel roundings.
    for key, rel in [("reward/critic/total/mean", 1e-4), ("learner/grpo/loss", 1e-4),
                     ("critic/response_len/mean", 1e-4), ("reward/artist/total/mean", 2e-3),
                     ("reward/artist/perceptual/mean", 2e-3), ("learner/nft/loss", 2e-3)]:
        for step in (3, 4):
            assert resumed[key][step] == pytest.approx(reference[key][step], rel=rel, abs=1e-6), (key, step)


def test_export_writes_the_checkpoint_as_plain_model_directories(runs, tmp_path):
    """The exported critic carries the trained weights; the exported artist, with no adapters, predicts what
    the checkpoint's EMA adapter predicts, and differs from the model the run started from."""
    from artist_actor.conditioning import build_conditioning, predict_velocity
    from artist_actor.model import load_artist
    from critic_actor.model import load_critic
    from learner.artist_learner import ArtistLearner
    from learner.critic_learner import CriticLearner
    from learner.lora import TRAINED_ADAPTER, load_adapter_state
    from rollout.checkpoint import latest_checkpoint
    from rollout.config import load_config
    from rollout.models import resolve_model_paths

    out, _, _, _ = runs
    exported = tmp_path / "exported"
    result = photocrafter("export", str(out / "A"), "--out", str(exported))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((exported / "export.json").read_text())
    step_dir = latest_checkpoint(out / "A").path
    assert record["step"] == STEPS and record["artist_weights"] == "ema"

    config = load_config(out / "A" / "config.yaml")
    critic_base, artist_base = resolve_model_paths(config)
    critic, _ = load_critic(exported / "critic", dtype="float32", device="cpu")
    trained = CriticLearner(critic_base, config.learner.critic, min_pixels=config.critic.min_pixels,
                            max_pixels=config.critic.max_pixels, device="cpu")
    trained.load_state(step_dir)
    state = critic.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in trained.get_weights().items())
    learner = ArtistLearner(artist_base, config.learner.artist, config.artist, device="cpu")
    learner.load_state(step_dir)
    load_adapter_state(learner.transformer, TRAINED_ADAPTER, learner.ema.state_dict())
    plain, base = load_artist(exported / "artist"), load_artist(artist_base)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, plain.codec.latent_channels, 32, 32, generator=generator)
    cond = build_conditioning([torch.randn(6, plain.hidden_size, generator=generator)], latents,
                              hidden_size=plain.hidden_size)
    x_t = torch.randn(1, cond.num_image_tokens, 4 * plain.codec.latent_channels, generator=generator)
    with torch.no_grad():
        expected = predict_velocity(learner.transformer, x_t, 0.5, cond)
        got = predict_velocity(plain.transformer, x_t, 0.5, cond)
        started = predict_velocity(base.transformer, x_t, 0.5, cond)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert (got - started).abs().max() > 1e-6


def test_export_names_what_is_missing(tmp_path):
    result = photocrafter("export", str(tmp_path), "--out", str(tmp_path / "x"), timeout=120)
    assert result.returncode == 2
    assert "no manifest.json" in result.stderr and "runs/<run>/checkpoints/step_N" in result.stderr


def test_bad_override_fails_fast_with_one_line():
    result = photocrafter("train", "--set", "trainer.stepz=3", timeout=120)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "trainer.stepz: unknown key; did you mean 'steps'?" in line
