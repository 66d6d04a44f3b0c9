"""ArtistLearner: one DiffusionNFT update of the Photographic Artist's LoRA per iteration, on one rank of N.

Owns the artist's trainable state — the trained ("default") and sampling ("old") adapters, the AdamW
optimizer, the evaluation EMA, the optimizer-step count, the published sampling-policy version and the last few
published sampling adapters — and the update of ALGORITHMS.md §1.7: raw rewards → optimality r (the one place r
is computed), the training timesteps from each edit's own sampler schedule, the NFT loss accumulated over
micro-batches × timesteps, ONE clipped AdamW step, the EMA step, and the soft update of the sampling adapter,
which is then published to the samplers as a new version. It must not sample edits, score rewards or talk to
other actors: the controller brings ArtistGroups in and carries the published adapter tensors out.

Data parallel and sharded (:mod:`learner.distributed`): every rank receives the same groups and computes the same
r for every edit; the trainable edits are split over the ranks in contiguous shares, and each edit's loss is
weighted by 1 / (edits in the whole update × its timesteps), so the summed gradient is the same whatever the
number of ranks or the micro-batch an edit lands in. Each edit's noise and timesteps come from its own seed
(run seed, step, its index in the update), not from a shared stream, for the same reason. The DiT is sharded
with FSDP2 when the learner runs as a rank of a process group.

v_old is the policy that generated the edits (DiffusionNFT's sampling policy): edits record the artist version
their sampler served, and the learner keeps the sampling adapter of the last few published versions, so an
update in overlapped mode (samplers one version behind) computes v_old with the adapter the samplers actually
ran, not the one published since.

A plain class: the artist learner group (rollout) runs one per rank as a Ray actor; tests construct it directly.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from artist_actor.config import ArtistConfig
from learner.config import ArtistLearnerConfig
from learner.distributed import (ParallelContext, even_share, load_sharded, read_learner_checkpoint_meta,
                                 save_learner_checkpoint, shard_model)
from learner.ema import AdapterEMA
from learner.lora import (SAMPLING_ADAPTER, TRAINED_ADAPTER, active_adapter, adapter_parameters, adapter_state,
                          adapters_disabled, attach_nft_adapters, load_adapter_state, load_local_adapter_state,
                          local_adapter_state, soft_update_adapter)
from learner.memory import use_gradient_checkpointing
from learner.nft import (DiffusionNFTLoss, low_variance_groups, normalisation_key, num_training_timesteps,
                         old_policy_decay, optimality_probabilities, select_training_timesteps)
from learner.optim import build_adamw, clip_and_step
from rollout.records.types import ArtistGroup, ImageHandle

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "artist_learner"
"""A checkpoint's ``artist_learner/`` (torch.distributed.checkpoint shards of the adapters, EMA and AdamW moments)
and ``artist_learner.json`` beside it (step, version, world size; written by rank 0)."""


def resolve_handle(handle: ImageHandle, what: str) -> np.ndarray:
    """An array from an in-memory array or tensor, or a ``ray.ObjectRef`` to one (bf16 tensors are widened)."""
    if not isinstance(handle, (np.ndarray, torch.Tensor)):
        import ray

        if not isinstance(handle, ray.ObjectRef):
            raise TypeError(f"{what} must be an array or a ray.ObjectRef to one, got {type(handle).__name__}")
        handle = ray.get(handle)
    if isinstance(handle, torch.Tensor):
        return handle.detach().cpu().float().numpy() if handle.is_floating_point() else handle.cpu().numpy()
    return np.asarray(handle)


@dataclass(slots=True)
class _TrainingSample:
    """One edit prepared for the loss: its clean latent, schedule, r and the conditioning it was made from."""

    x0: torch.Tensor
    """float32 packed clean latent ``[L, F]``."""
    sigmas: np.ndarray
    """float64 ``[N + 1]`` sampler schedule."""
    optimality: float
    group_index: int
    """Index into the prepared groups' conditioning (hidden states, condition latents)."""
    index: int
    """Position of the edit among all trainable edits of this update (its noise seed; rank-independent)."""
    version: int
    """Artist version of the sampling adapter that generated the edit (the v_old of its loss)."""


@dataclass(slots=True)
class _Unit:
    """One forward/backward of the DiT: a micro-batch at one column of its training timesteps."""

    members: list[int]
    """Indices into this rank's samples."""
    column: int
    weight: float
    """Loss scale: edits in the micro-batch / (edits in the update × their timesteps); 0 for alignment padding."""


class ArtistLearner:
    """DiffusionNFT learner of the artist DiT's LoRA (trained, sampling, reference = adapters off, EMA)."""

    def __init__(self, artist_path: str | Path, config: ArtistLearnerConfig | None = None,
                 artist_config: ArtistConfig | None = None, *, device: str | torch.device | None = None,
                 seed: int = 0, num_threads: int | None = None, parallel: ParallelContext | None = None,
                 kept_versions: int = 1):
        """Load the artist at ``artist_path`` and attach fresh adapters.

        ``artist_config`` must be the samplers' section (resolution, prefix drop, codec, dtype): the learner
        re-encodes each condition photo exactly as they did. ``num_threads`` pins torch's intra-op threads
        (learners share cores with samplers; oversubscribed threads were measured 10× slower on tiny models).
        ``parallel`` makes this learner one rank of a sharded group (default: a single process on ``device``).
        ``kept_versions`` published sampling adapters are kept for v_old: 1 + the samplers' allowed staleness.
        """
        from artist_actor.model import load_artist, resolve_dtype

        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.config = config or ArtistLearnerConfig()
        self.artist_config = artist_config or ArtistConfig()
        self.seed = seed
        if parallel is None:
            if device is None:
                device = "cuda" if torch.cuda.is_available() and self.config.gpus > 0 else "cpu"
            parallel = ParallelContext.single(device)
        self.parallel = parallel
        device = parallel.device
        dtype = resolve_dtype(self.artist_config.dtype, device)
        # Loaded on the host and sharded onto the device: no rank ever holds the whole DiT on its GPU.
        self.artist = load_artist(artist_path, dtype=dtype, device="cpu" if parallel.sharded else device,
                                  codec=self.artist_config.codec)
        self.artist.codec = _codec_on(self.artist.codec, device)
        # The adapters' Gaussian init comes from the run seed: the same on every rank and in every world size.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.transformer = attach_nft_adapters(self.artist.transformer, self.config.lora,
                                                   default_targets=self.artist.lora_targets)
        if use_gradient_checkpointing(self.config.gradient_checkpointing,
                                      sum(p.numel() for p in self.transformer.parameters())):
            self.transformer.enable_gradient_checkpointing()
        self.transformer.train()
        self.transformer = shard_model(self.transformer, list(self.transformer.transformer_blocks), parallel,
                                       compute_dtype=torch.bfloat16 if device.type == "cuda" else None,
                                       cpu_offload=self.config.cpu_offload)
        # FSDP2 warns that the DiT returns a view (its output tuple), since an in-place op on it would skip the
        # pre-backward hook. Nothing modifies it in place: predict_velocity slices it and computes out of place.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPQwenImageTransformer2DModel\) "
                                                  r"returned a view tensor", category=UserWarning)
        self.artist.transformer = self.transformer
        self.trained_parameters = list(adapter_parameters(self.transformer, TRAINED_ADAPTER).values())
        self.optimizer = build_adamw(self.trained_parameters, lr=self.config.lr,
                                     weight_decay=self.config.weight_decay)
        self.loss_fn = DiffusionNFTLoss(beta=self.config.beta, adv_clip_max=self.config.adv_clip_max,
                                        kl_coef=self.config.kl_coef)
        guided = self.artist_config.guidance_scale > 1.0
        train_cfg = guided if self.config.train_cfg == "auto" else bool(self.config.train_cfg)
        self.training_guidance = self.artist_config.guidance_scale if train_cfg else 1.0
        """Guidance scale of the velocities the loss compares (1 = the conditional velocity alone): the samplers'
        own scale when the guided velocity is trained (``learner.artist.train_cfg``), so v_old is their policy."""
        self.ema = AdapterEMA(adapter_parameters(self.transformer, TRAINED_ADAPTER), cap=self.config.ema_decay)
        self.step = 0
        """Optimizer steps taken (drives the old-policy decay and the EMA decay)."""
        self.version = 0
        """Version of the published sampling adapter; 0 = the initial (zero-update) adapter."""
        if kept_versions < 1:
            raise ValueError(f"kept_versions must be ≥ 1, got {kept_versions}")
        self.kept_versions = kept_versions
        self._published: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
        self._remember_published()

    def __repr__(self) -> str:
        return (f"ArtistLearner(role=artist-learner, rank={self.parallel.rank}/{self.parallel.world_size}, "
                f"step={self.step}, version={self.version})")

    def ready(self) -> dict[str, Any]:
        """Facts the controller logs at start: trainable size and what one weight sync moves."""
        params = adapter_parameters(self.transformer, SAMPLING_ADAPTER)
        return {"trainable_parameters": sum(p.numel() for p in self.trained_parameters),
                "sync_tensors": len(params), "sync_bytes": sum(p.numel() * p.element_size() for p in params.values()),
                "version": self.version, "step": self.step, "world_size": self.parallel.world_size,
                "device": str(self.parallel.device)}

    # ----------------------------------------------------------------------------------------- update
    def update(self, groups: Sequence[ArtistGroup]) -> dict[str, float]:
        """One DiffusionNFT optimizer step on the edits of ``groups``; returns ``learner/nft/*`` metrics.

        The incoming ``optimality`` fields are recomputed here from the raw rewards (per-group mean, global
        std, clip ``adv_clip_max``) and written back into the groups; groups with ``valid=False`` (and, when
        ``mask_std_threshold`` > 0, groups whose rewards barely vary) count for the std but are not trained
        on. An update with non-finite rewards, nothing to train on, or non-finite gradients is skipped and
        reported (``learner/nft/skipped`` = 1); the weights and the published version stay as they were.
        On a group of ranks every rank is given the same groups and trains on its share of the edits.
        """
        started = time.perf_counter()
        edits = [(g_index, edit, reward) for g_index, group in enumerate(groups)
                 for edit, reward in zip(group.edits, np.asarray(group.rewards, dtype=np.float64).reshape(-1))]
        for group in groups:
            if len(group.edits) != np.asarray(group.rewards).size:
                raise ValueError(f"group {group.task_id}/{group.critique_index}: {len(group.edits)} edits but "
                                 f"{np.asarray(group.rewards).size} rewards")
        if not edits:
            return self._skipped("no edits", started)
        rewards = np.array([reward for _, _, reward in edits])
        if not np.all(np.isfinite(rewards)):
            return self._skipped(f"{int(np.sum(~np.isfinite(rewards)))} non-finite rewards", started)
        keys = [self._group_key(groups[g_index]) for g_index, _, _ in edits]
        optimality = optimality_probabilities(rewards, keys, self.config.adv_clip_max)
        masked = low_variance_groups(rewards, keys, self.config.mask_std_threshold)
        masked |= np.array([not groups[g_index].valid for g_index, _, _ in edits])
        self._write_back(groups, optimality, masked)

        trainable = [(g_index, edit, float(r)) for (g_index, edit, _), r, m in zip(edits, optimality, masked)
                     if not m]
        stats = {"learner/nft/reward_mean": float(rewards.mean()), "learner/nft/reward_std": float(rewards.std()),
                 "learner/nft/r_mean": float(optimality.mean()), "learner/nft/r_std": float(optimality.std()),
                 "learner/nft/r_min": float(optimality.min()), "learner/nft/r_max": float(optimality.max()),
                 "learner/nft/masked_fraction": float(masked.mean()),
                 "learner/nft/num_samples": float(len(trainable))}
        if not trainable:
            return {**self._skipped("every group is masked", started), **stats}

        share = even_share(len(trainable), self.parallel.rank, self.parallel.world_size)
        mine = [(index, *trainable[index]) for index in share]
        # A rank with no edits of its own still runs the same number of passes (FSDP all-gathers inside each);
        # it trains on the first edit of the update with weight 0.
        padding_only = not mine
        if padding_only:
            mine = [(0, *trainable[0])]
        prepared = self._prepare_conditioning(groups, sorted({g_index for _, g_index, _, _ in mine}))
        samples = [self._training_sample(edit, r, g_index, index) for index, g_index, edit, r in mine]
        units = self._units(samples, prepared, total=len(trainable), padding_only=padding_only)
        losses = self._accumulate_gradients(samples, prepared, units)
        outcome = clip_and_step(self.optimizer, self.trained_parameters, max_norm=self.config.grad_clip)
        if not outcome.applied:
            return {**self._skipped(f"non-finite gradient norm {outcome.grad_norm}", started), **stats, **losses}
        self.step += 1
        ema_decay = self.ema.step(adapter_parameters(self.transformer, TRAINED_ADAPTER), self.step)
        old_decay = old_policy_decay(self.step, self.config.old_decay_type)
        soft_update_adapter(self.transformer, source=TRAINED_ADAPTER, target=SAMPLING_ADAPTER, decay=old_decay)
        self.version += 1
        self._remember_published()
        return {**stats, **losses, "learner/nft/grad_norm": outcome.grad_norm, "learner/nft/old_decay": old_decay,
                "learner/nft/ema_decay": ema_decay, "learner/nft/step": float(self.step),
                "learner/nft/version": float(self.version), "learner/nft/skipped": 0.0,
                "time/learner/artist_update_s": time.perf_counter() - started}

    def _group_key(self, group: ArtistGroup) -> tuple:
        return normalisation_key(group.task_id, group.critique_index, self.config.group_by, len(group.edits))

    @staticmethod
    def _write_back(groups: Sequence[ArtistGroup], optimality: np.ndarray, masked: np.ndarray) -> None:
        offset = 0
        for group in groups:
            count = len(group.edits)
            group.optimality = optimality[offset:offset + count].astype(np.float32)
            group.valid = bool(not masked[offset:offset + count].all()) if count else False
            offset += count

    def _skipped(self, reason: str, started: float) -> dict[str, float]:
        logger.warning("artist update skipped at step %d: %s; weights and version unchanged", self.step, reason)
        return {"learner/nft/skipped": 1.0, "learner/nft/step": float(self.step),
                "learner/nft/version": float(self.version),
                "time/learner/artist_update_s": time.perf_counter() - started}

    def _prepare_conditioning(self, groups: Sequence[ArtistGroup], indices: Sequence[int]) -> dict[int, tuple]:
        """Per trained group: (H_c array, its mask, packed-grid condition latents ``[1, C, h, w]``)."""
        from artist_actor.codec import images_to_pixels
        from artist_actor.sampler import artist_size, resize_image

        prepared: dict[int, tuple] = {}
        for index in indices:
            group = groups[index]
            where = f"group {group.task_id}/{group.critique_index}"
            hidden = resolve_handle(group.conditioning.hidden, f"{where}: conditioning.hidden")
            image = resolve_handle(group.condition_image, f"{where}: condition_image")
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"{where}: condition_image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
            # The samplers edited the photo resized to the artist resolution; encode the very same pixels.
            image = resize_image(image, artist_size(image.shape[0], image.shape[1], self.artist_config.resolution))
            with torch.no_grad():
                latents = self.artist.codec.encode(images_to_pixels([image]).to(self.parallel.device))
            prepared[index] = (hidden, group.conditioning.mask, latents.float())
        return prepared

    def _training_sample(self, edit, optimality: float, group_index: int, index: int) -> _TrainingSample:
        # A copy: edits arrive from Ray's object store as read-only buffers, which a tensor must not alias.
        x0 = torch.tensor(np.asarray(edit.x0), dtype=torch.float32)
        features = int(self.transformer.config.in_channels)
        if x0.ndim != 2 or x0.shape[1] != features:
            raise ValueError(f"edit {edit.task_id}/{edit.critique_index}/{edit.edit_index}: x0 has shape "
                             f"{tuple(x0.shape)}; the artist expects packed latents [L, {features}]")
        sigmas = np.asarray(edit.sigmas, dtype=np.float64).reshape(-1)
        return _TrainingSample(x0=x0, sigmas=sigmas, optimality=optimality, group_index=group_index, index=index,
                               version=int(edit.artist_version))

    def _units(self, samples: list[_TrainingSample], prepared: dict[int, tuple], *, total: int,
               padding_only: bool) -> list[_Unit]:
        """This rank's forward/backward passes, padded with zero-weight passes to the longest rank's count.

        Items of one micro-batch share the latent grid (RoPE uses one img_shapes per batch), the schedule length
        (they train on the same number of timesteps) and the sampling version (one v_old per pass).
        """
        buckets: dict[tuple, list[int]] = {}
        for index, sample in enumerate(samples):
            grid = tuple(prepared[sample.group_index][2].shape[-2:])
            buckets.setdefault((grid, sample.sigmas.size, sample.version), []).append(index)
        size = self.config.micro_batch_size
        units: list[_Unit] = []
        for (_, points, _), members in buckets.items():
            columns = num_training_timesteps(points - 1, self.config.timestep_fraction)
            for start in range(0, len(members), size):
                batch = members[start:start + size]
                weight = 0.0 if padding_only else len(batch) / (total * columns)
                units += [_Unit(batch, column, weight) for column in range(columns)]
        longest = int(self.parallel.max([len(units)])[0])
        filler = units[0]
        units += [_Unit(filler.members, filler.column, 0.0) for _ in range(longest - len(units))]
        return units

    def _timesteps(self, sample: _TrainingSample) -> torch.Tensor:
        """The sample's training timesteps: its own random subset of its schedule (seeded by its index)."""
        generator = torch.Generator().manual_seed(_sample_seed(self.seed, self.step, sample.index, -1))
        return select_training_timesteps(sample.sigmas, 1, self.config.timestep_fraction, generator=generator)[0]

    def _noise(self, sample: _TrainingSample, column: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(_sample_seed(self.seed, self.step, sample.index, column))
        return torch.randn(sample.x0.shape, generator=generator)

    def _accumulate_gradients(self, samples: list[_TrainingSample], prepared: dict[int, tuple],
                              units: list[_Unit]) -> dict[str, float]:
        timesteps = [self._timesteps(sample) for sample in samples]
        totals = {"learner/nft/loss": 0.0, "learner/nft/policy_loss": 0.0, "learner/nft/kl_loss": 0.0,
                  "learner/nft/positive_loss": 0.0, "learner/nft/negative_loss": 0.0}
        # Units come micro-batch by micro-batch: one conditioning is alive at a time, built once per micro-batch.
        # They also come version by version (``_units`` buckets by sampling version), so an older sampling adapter
        # is loaded once per run of units rather than around every forward.
        cond_members, cond = None, None
        with self._sampling_versions() as sampling_policy:
            for unit in units:
                items = [samples[i] for i in unit.members]
                if unit.members != cond_members:
                    cond_members, cond = unit.members, None  # the previous one is freed before the next is built
                    cond = self._conditioning(items, prepared)
                terms = self._unit_terms(unit, items, [timesteps[i] for i in unit.members], cond, sampling_policy)
                (terms.loss * unit.weight).backward()
                for name, value in (("loss", terms.loss), ("policy_loss", terms.policy_loss),
                                    ("kl_loss", terms.kl_loss), ("positive_loss", terms.positive_loss.mean()),
                                    ("negative_loss", terms.negative_loss.mean())):
                    totals[f"learner/nft/{name}"] += float(value.detach()) * unit.weight
        totals = dict(zip(totals, self.parallel.sum(list(totals.values()))))
        if not all(math.isfinite(v) for v in totals.values()):
            logger.warning("non-finite NFT loss terms at step %d: %s", self.step, totals)
        return totals

    def conditioning(self, groups: Sequence[ArtistGroup]):
        """The DiT conditioning of ``groups``, one item per group, exactly as an update builds it for their edits."""
        prepared = self._prepare_conditioning(groups, range(len(groups)))
        return self._condition_on([prepared[index] for index in range(len(groups))])

    def _conditioning(self, items: list[_TrainingSample], prepared: dict[int, tuple]):
        """The DiT conditioning of one micro-batch: its edits' H_c and condition-image latents."""
        return self._condition_on([prepared[s.group_index] for s in items])

    def _condition_on(self, entries: list[tuple]):
        from artist_actor.conditioning import build_conditioning

        return build_conditioning(
            [entry[0] for entry in entries], torch.cat([entry[2] for entry in entries]),
            hidden_size=self.artist.hidden_size, drop_prefix_tokens=self.artist_config.drop_prefix_tokens,
            masks=[entry[1] for entry in entries], device=self.parallel.device, dtype=self.artist.dtype)

    def _unit_terms(self, unit: _Unit, items: list[_TrainingSample], timesteps: list[torch.Tensor], cond,
                    sampling_policy):
        """The NFT loss terms of one forward/backward pass: the micro-batch noised to the unit's timestep, v_old
        from the adapter the edits were sampled with, v_ref from the base (when KL is on), v_θ with gradients; each
        the guided velocity (two forwards) when the samplers' guidance is trained."""
        from artist_actor.conditioning import guided_velocity

        device = self.parallel.device
        x0 = torch.stack([s.x0 for s in items]).to(device)
        if x0.shape[1] != cond.num_image_tokens:
            raise ValueError(f"edits have {x0.shape[1]} latent tokens but their condition image gives a "
                             f"{cond.grid[0]}×{cond.grid[1]} grid; condition_image must be the photo at the "
                             f"resolution the sampler edited")
        r = torch.tensor([s.optimality for s in items], device=device)
        t = torch.stack([steps[unit.column] for steps in timesteps]).to(device=device, dtype=torch.float32)
        noise = torch.stack([self._noise(s, unit.column) for s in items]).to(device)
        t_b = t.view(-1, 1, 1)
        xt = (1.0 - t_b) * x0 + t_b * noise
        scale = self.training_guidance
        with torch.no_grad():
            with sampling_policy(items[0].version):
                v_old = guided_velocity(self.transformer, xt, t, cond, scale)
            v_ref = None
            if self.loss_fn.kl_coef > 0:  # without a KL term the reference forward is skipped altogether
                with adapters_disabled(self.transformer):
                    v_ref = guided_velocity(self.transformer, xt, t, cond, scale)
        v_theta = guided_velocity(self.transformer, xt, t, cond, scale)
        return self.loss_fn(x0=x0, xt=xt, t=t, v_theta=v_theta, v_old=v_old, optimality=r, v_ref=v_ref)

    # ------------------------------------------------------------------------------- sampling versions
    def _remember_published(self) -> None:
        self._published[self.version] = local_adapter_state(self.transformer, SAMPLING_ADAPTER)
        while len(self._published) > self.kept_versions:
            self._published.popitem(last=False)

    @contextmanager
    def _sampling_versions(self):
        """Yields ``sampling_policy(version)``, a context inside which forward passes run the sampling adapter of
        ``version`` (the one the edits came from). An older version's adapter is loaded into the sampling slot when
        asked for and stays there for the next passes of that version; the current version's is back on exit."""
        loaded = self.version

        @contextmanager
        def sampling_policy(version: int):
            nonlocal loaded
            if version not in self._published:
                raise ValueError(f"edits were sampled with artist version {version}, but the learner is at version "
                                 f"{self.version} and keeps the sampling adapters of versions "
                                 f"{sorted(self._published)}; raise the kept versions (1 + trainer.max_staleness)")
            if version != loaded:
                load_local_adapter_state(self.transformer, SAMPLING_ADAPTER, self._published[version])
                loaded = version
            with active_adapter(self.transformer, SAMPLING_ADAPTER):
                yield

        try:
            yield sampling_policy
        finally:
            if loaded != self.version:
                load_local_adapter_state(self.transformer, SAMPLING_ADAPTER, self._published[self.version])

    # ------------------------------------------------------------------------------- weights & state
    def published_sampling_adapter(self, version: int) -> tuple[dict[str, tuple[int, ...]], dict[str, torch.Tensor]]:
        """(whole shapes, this rank's rows) of the sampling adapter published as ``version``, one of the last
        ``kept_versions``: what a collective weight sync sends from this rank (no gathering)."""
        if version not in self._published:
            raise RuntimeError(f"artist learner cannot send sampling version {version}: it is at {self.version} and "
                               f"keeps versions {sorted(self._published)}")
        shapes = {name: tuple(p.shape) for name, p in adapter_parameters(self.transformer, SAMPLING_ADAPTER).items()}
        return shapes, self._published[version]

    def get_sampler_weights(self) -> tuple[int, dict[str, torch.Tensor]]:
        """(version, sampling-adapter tensors): what ``ArtistSamplerActor.set_weights`` takes (a collective on a
        sharded learner: every rank gathers)."""
        return self.version, adapter_state(self.transformer, SAMPLING_ADAPTER)

    def get_ema_weights(self) -> tuple[int, dict[str, torch.Tensor]]:
        """(step, EMA of the trained adapter) in the same naming: for evaluation samplers and exports."""
        from learner.distributed import full_tensor

        return self.step, {name: full_tensor(value).cpu().clone() for name, value in self.ema.shadow.items()}

    def get_state(self) -> dict[str, Any]:
        """Everything a checkpoint needs to resume a single-process learner exactly (whole CPU tensors)."""
        return {"step": self.step, "version": self.version,
                "trained": adapter_state(self.transformer, TRAINED_ADAPTER),
                "sampling": adapter_state(self.transformer, SAMPLING_ADAPTER),
                "ema": self.get_ema_weights()[1],
                "optimizer": _to_cpu(self.optimizer.state_dict())}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`get_state` (same LoRA config and model, a single-process learner)."""
        missing = {"step", "version", "trained", "sampling", "ema", "optimizer"} - set(state)
        if missing:
            raise KeyError(f"artist learner state lacks {sorted(missing)}")
        load_adapter_state(self.transformer, TRAINED_ADAPTER, state["trained"])
        load_adapter_state(self.transformer, SAMPLING_ADAPTER, state["sampling"])
        self.ema.load_state_dict(state["ema"])
        # A copy: the next step must not update the caller's state in place.
        self.optimizer.load_state_dict(_to_cpu(state["optimizer"]))
        self.step, self.version = int(state["step"]), int(state["version"])
        self._published.clear()
        self._remember_published()

    def _sharded_state(self) -> dict[str, Any]:
        """The tensors a checkpoint holds, as live (possibly sharded) tensors: both adapters, EMA, AdamW."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        adapters = {name: param for name, param in self.transformer.named_parameters() if ".lora_" in name}
        return {"adapters": adapters, "ema": self.ema.shadow,
                "optimizer": get_optimizer_state_dict(self.transformer, self.optimizer)}

    def save_state(self, directory: str | Path) -> Path:
        """Write the sharded learner state (``artist_learner/``, every rank its shards) and, from rank 0,
        ``artist_learner.json`` (step, version, world size) into ``directory``."""
        return save_learner_checkpoint(self.parallel, self._sharded_state(), directory, CHECKPOINT_NAME,
                                       {"step": self.step, "version": self.version})

    def load_state(self, directory: str | Path) -> None:
        """Restore what :meth:`save_state` wrote, with any number of ranks (the state is resharded)."""
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        meta = read_learner_checkpoint_meta(directory, CHECKPOINT_NAME)
        state = self._sharded_state()
        with torch.no_grad():
            load_sharded(state, Path(directory) / CHECKPOINT_NAME)
        set_optimizer_state_dict(self.transformer, self.optimizer, state["optimizer"])
        self.step, self.version = int(meta["step"]), int(meta["version"])
        self._published.clear()
        self._remember_published()


def _sample_seed(seed: int, step: int, index: int, column: int) -> int:
    """A seed per (run seed, optimizer step, edit, timestep column); column −1 draws the edit's timesteps."""
    return (((seed * 1_000_003 + step) * 1_000_033 + index) * 1_009 + column + 1) % (2**63 - 1)


def _codec_on(codec, device: torch.device):
    """The latent codec on the learner's device (the VAE is not sharded: it encodes condition photos only)."""
    vae = getattr(codec, "vae", None)
    if vae is not None:
        vae.to(device)
    return codec


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_cpu(item) for item in value]
    return value
