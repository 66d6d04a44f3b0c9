"""ArtistLearner: one DiffusionNFT update of the Photographic Artist's LoRA per iteration.

Owns the artist's trainable state — the trained ("default") and sampling ("old") adapters, the AdamW
optimizer, the evaluation EMA, the optimizer-step count and the published sampling-policy version — and the
update of ALGORITHMS.md §1.7: raw rewards → optimality r (the one place r is computed), the training
timesteps from each edit's own sampler schedule, the NFT loss accumulated over micro-batches × timesteps,
ONE clipped AdamW step, the EMA step, and the soft update of the sampling adapter, which is then published
to the samplers as a new version. It must not sample edits, score rewards or talk to other actors: the
controller brings ArtistGroups in and carries the published adapter tensors out.

A plain class: the controller wraps it with ``ray.remote`` (one ``artist-learner`` actor); tests construct it
directly.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from artist_actor.config import ArtistConfig
from learner.config import ArtistLearnerConfig
from learner.ema import AdapterEMA
from learner.lora import (SAMPLING_ADAPTER, TRAINED_ADAPTER, active_adapter, adapter_parameters, adapter_state,
                          adapters_disabled, attach_nft_adapters, load_adapter_state, soft_update_adapter)
from learner.nft import (DiffusionNFTLoss, low_variance_groups, normalisation_key, old_policy_decay,
                         optimality_probabilities, select_training_timesteps)
from learner.optim import build_adamw, clip_and_step
from learner.state import load_optimizer, load_tensors, save_optimizer, save_tensors
from rollout.types import ArtistGroup, ImageHandle

logger = logging.getLogger(__name__)

ADAPTERS_FILE = "artist_adapters.safetensors"
"""Checkpoint file of the trained, sampling and EMA adapter tensors."""
OPTIMIZER_FILE = "artist_optimizer.safetensors"
"""Checkpoint file of the AdamW moments."""


def resolve_handle(handle: ImageHandle, what: str) -> np.ndarray:
    """An array from an in-memory array or a ``ray.ObjectRef`` (``ray.get`` only for references)."""
    if isinstance(handle, (np.ndarray, torch.Tensor)):
        return np.asarray(handle)
    import ray

    if isinstance(handle, ray.ObjectRef):
        return np.asarray(ray.get(handle))
    raise TypeError(f"{what} must be an array or a ray.ObjectRef to one, got {type(handle).__name__}")


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


class ArtistLearner:
    """DiffusionNFT learner of the artist DiT's LoRA (trained, sampling, reference = adapters off, EMA)."""

    def __init__(self, artist_path: str | Path, config: ArtistLearnerConfig | None = None,
                 artist_config: ArtistConfig | None = None, *, device: str | torch.device | None = None,
                 seed: int = 0, num_threads: int | None = None):
        """Load the artist at ``artist_path`` and attach fresh adapters.

        ``artist_config`` must be the samplers' section (resolution, prefix drop, codec, dtype): the learner
        re-encodes each condition photo exactly as they did. ``num_threads`` pins torch's intra-op threads
        (learners share cores with samplers; oversubscribed threads were measured 10× slower on tiny models).
        """
        from artist_actor.model import load_artist

        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.config = config or ArtistLearnerConfig()
        self.artist_config = artist_config or ArtistConfig()
        self.seed = seed
        if device is None:
            device = "cuda" if torch.cuda.is_available() and self.config.gpus > 0 else "cpu"
        self.artist = load_artist(artist_path, dtype=self.artist_config.dtype, device=device,
                                  codec=self.artist_config.codec)
        self.transformer = attach_nft_adapters(self.artist.transformer, self.config.lora)
        self.transformer.train()
        self.trained_parameters = list(adapter_parameters(self.transformer, TRAINED_ADAPTER).values())
        self.optimizer = build_adamw(self.trained_parameters, lr=self.config.lr,
                                     weight_decay=self.config.weight_decay)
        self.loss_fn = DiffusionNFTLoss(beta=self.config.beta, adv_clip_max=self.config.adv_clip_max,
                                        kl_coef=self.config.kl_coef)
        self.ema = AdapterEMA(adapter_state(self.transformer, TRAINED_ADAPTER), cap=self.config.ema_decay)
        self.step = 0
        """Optimizer steps taken (drives the old-policy decay and the EMA decay)."""
        self.version = 0
        """Version of the published sampling adapter; 0 = the initial (zero-update) adapter."""

    def __repr__(self) -> str:
        return f"ArtistLearner(role=artist-learner, step={self.step}, version={self.version})"

    def ready(self) -> dict[str, Any]:
        """Facts the controller logs at start: trainable size and what one weight sync moves."""
        state = adapter_state(self.transformer, SAMPLING_ADAPTER)
        return {"trainable_parameters": sum(p.numel() for p in self.trained_parameters),
                "sync_tensors": len(state), "sync_bytes": sum(t.numel() * t.element_size() for t in state.values()),
                "version": self.version, "step": self.step}

    # ----------------------------------------------------------------------------------------- update
    def update(self, groups: Sequence[ArtistGroup]) -> dict[str, float]:
        """One DiffusionNFT optimizer step on the edits of ``groups``; returns ``learner/nft/*`` metrics.

        The incoming ``optimality`` fields are recomputed here from the raw rewards (per-group mean, global
        std, clip ``adv_clip_max``) and written back into the groups; groups with ``valid=False`` (and, when
        ``mask_std_threshold`` > 0, groups whose rewards barely vary) count for the std but are not trained
        on. An update with non-finite rewards, nothing to train on, or non-finite gradients is skipped and
        reported (``learner/nft/skipped`` = 1); the weights and the published version stay as they were.
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

        prepared = self._prepare_conditioning(groups, sorted({g for (g, _, _), m in zip(edits, masked) if not m}))
        samples = [self._training_sample(edit, float(r), g_index)
                   for (g_index, edit, _), r, m in zip(edits, optimality, masked) if not m]
        stats = {"learner/nft/reward_mean": float(rewards.mean()), "learner/nft/reward_std": float(rewards.std()),
                 "learner/nft/r_mean": float(optimality.mean()), "learner/nft/r_std": float(optimality.std()),
                 "learner/nft/r_min": float(optimality.min()), "learner/nft/r_max": float(optimality.max()),
                 "learner/nft/masked_fraction": float(masked.mean()), "learner/nft/num_samples": float(len(samples))}
        if not samples:
            return {**self._skipped("every group is masked", started), **stats}

        losses = self._accumulate_gradients(samples, prepared)
        outcome = clip_and_step(self.optimizer, self.trained_parameters, max_norm=self.config.grad_clip)
        if not outcome.applied:
            return {**self._skipped(f"non-finite gradient norm {outcome.grad_norm}", started), **stats, **losses}
        self.step += 1
        ema_decay = self.ema.step(adapter_state(self.transformer, TRAINED_ADAPTER), self.step)
        old_decay = old_policy_decay(self.step, self.config.old_decay_type)
        soft_update_adapter(self.transformer, source=TRAINED_ADAPTER, target=SAMPLING_ADAPTER, decay=old_decay)
        self.version += 1
        return {**stats, **losses, "learner/nft/grad_norm": outcome.grad_norm, "learner/nft/old_decay": old_decay,
                "learner/nft/ema_decay": ema_decay, "learner/nft/step": float(self.step), "learner/nft/version": float(self.version),
                "learner/nft/skipped": 0.0, "time/learner/artist_update_s": time.perf_counter() - started}

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
        return {"learner/nft/skipped": 1.0, "learner/nft/step": float(self.step), "learner/nft/version": float(self.version),
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
                latents = self.artist.codec.encode(images_to_pixels([image]).to(self.artist.device))
            prepared[index] = (hidden, group.conditioning.mask, latents.float())
        return prepared

    def _training_sample(self, edit, optimality: float, group_index: int) -> _TrainingSample:
        x0 = torch.as_tensor(np.asarray(edit.x0, dtype=np.float32))
        features = int(self.transformer.config.in_channels)
        if x0.ndim != 2 or x0.shape[1] != features:
            raise ValueError(f"edit {edit.task_id}/{edit.critique_index}/{edit.edit_index}: x0 has shape "
                             f"{tuple(x0.shape)}; the artist expects packed latents [L, {features}]")
        sigmas = np.asarray(edit.sigmas, dtype=np.float64).reshape(-1)
        return _TrainingSample(x0=x0, sigmas=sigmas, optimality=optimality, group_index=group_index)

    def _micro_batches(self, samples: list[_TrainingSample], prepared: dict[int, tuple]) -> list[list[int]]:
        # Items of one micro-batch must share the latent grid (RoPE uses one img_shapes per batch) and the
        # schedule length (they train on the same number of timesteps).
        buckets: dict[tuple, list[int]] = {}
        for index, sample in enumerate(samples):
            grid = tuple(prepared[sample.group_index][2].shape[-2:])
            buckets.setdefault((grid, sample.sigmas.size), []).append(index)
        size = self.config.micro_batch_size
        return [members[i:i + size] for members in buckets.values() for i in range(0, len(members), size)]

    def _accumulate_gradients(self, samples: list[_TrainingSample], prepared: dict[int, tuple]) -> dict[str, float]:
        from artist_actor.conditioning import build_conditioning, predict_velocity

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        device, dtype = self.artist.device, self.artist.dtype
        batches = self._micro_batches(samples, prepared)
        totals = {"learner/nft/loss": 0.0, "learner/nft/policy_loss": 0.0, "learner/nft/kl_loss": 0.0,
                  "learner/nft/positive_loss": 0.0, "learner/nft/negative_loss": 0.0}
        for members in batches:
            items = [samples[i] for i in members]
            hidden = [prepared[s.group_index][0] for s in items]
            masks = [prepared[s.group_index][1] for s in items]
            latents = torch.cat([prepared[s.group_index][2] for s in items])
            cond = build_conditioning(hidden, latents, hidden_size=self.artist.hidden_size,
                                      drop_prefix_tokens=self.artist_config.drop_prefix_tokens, masks=masks,
                                      device=device, dtype=dtype)
            x0 = torch.stack([s.x0 for s in items]).to(device)
            if x0.shape[1] != cond.num_image_tokens:
                raise ValueError(f"edits have {x0.shape[1]} latent tokens but their condition image gives a "
                                 f"{cond.grid[0]}×{cond.grid[1]} grid; condition_image must be the photo at the "
                                 f"resolution the sampler edited")
            r = torch.tensor([s.optimality for s in items], device=device)
            timesteps = select_training_timesteps(np.stack([s.sigmas for s in items]), len(items),
                                                  self.config.timestep_fraction, generator=generator)
            scale = 1.0 / (len(batches) * timesteps.shape[1])
            for column in range(timesteps.shape[1]):
                t = timesteps[:, column].to(device=device, dtype=torch.float32)
                noise = torch.randn(x0.shape, generator=generator).to(device)
                t_b = t.view(-1, 1, 1)
                xt = (1.0 - t_b) * x0 + t_b * noise
                with torch.no_grad():
                    with active_adapter(self.transformer, SAMPLING_ADAPTER):
                        v_old = predict_velocity(self.transformer, xt, t, cond)
                    v_ref = None
                    if self.loss_fn.kl_coef > 0:
                        with adapters_disabled(self.transformer):
                            v_ref = predict_velocity(self.transformer, xt, t, cond)
                v_theta = predict_velocity(self.transformer, xt, t, cond)
                terms = self.loss_fn(x0=x0, xt=xt, t=t, v_theta=v_theta, v_old=v_old, optimality=r, v_ref=v_ref)
                (terms.loss * scale).backward()
                for key, value in (("learner/nft/loss", terms.loss), ("learner/nft/policy_loss", terms.policy_loss),
                                   ("learner/nft/kl_loss", terms.kl_loss), ("learner/nft/positive_loss", terms.positive_loss.mean()),
                                   ("learner/nft/negative_loss", terms.negative_loss.mean())):
                    totals[key] += float(value.detach()) * scale
        if not all(math.isfinite(v) for v in totals.values()):
            logger.warning("non-finite NFT loss terms at step %d: %s", self.step, totals)
        return totals

    # ------------------------------------------------------------------------------- weights & state
    def get_sampler_weights(self) -> tuple[int, dict[str, torch.Tensor]]:
        """(version, sampling-adapter tensors): what ``ArtistSamplerActor.set_weights`` takes."""
        return self.version, adapter_state(self.transformer, SAMPLING_ADAPTER)

    def get_ema_weights(self) -> tuple[int, dict[str, torch.Tensor]]:
        """(step, EMA of the trained adapter) in the same naming: for evaluation samplers and exports."""
        return self.step, self.ema.state_dict()

    def get_state(self) -> dict[str, Any]:
        """Everything a checkpoint needs to resume this learner exactly (CPU tensors and plain values)."""
        return {"step": self.step, "version": self.version,
                "trained": adapter_state(self.transformer, TRAINED_ADAPTER),
                "sampling": adapter_state(self.transformer, SAMPLING_ADAPTER),
                "ema": self.ema.state_dict(),
                "optimizer": _to_cpu(self.optimizer.state_dict())}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`get_state` (same LoRA config and model)."""
        missing = {"step", "version", "trained", "sampling", "ema", "optimizer"} - set(state)
        if missing:
            raise KeyError(f"artist learner state lacks {sorted(missing)}")
        load_adapter_state(self.transformer, TRAINED_ADAPTER, state["trained"])
        load_adapter_state(self.transformer, SAMPLING_ADAPTER, state["sampling"])
        self.ema.load_state_dict(state["ema"])
        # A copy: the next step must not update the caller's state in place.
        self.optimizer.load_state_dict(_to_cpu(state["optimizer"]))
        self.step, self.version = int(state["step"]), int(state["version"])

    def save_state(self, directory: str | Path) -> Path:
        """Write ``artist_adapters.safetensors`` (trained/, sampling/, ema/ tensors; step and version in the
        metadata) and ``artist_optimizer.safetensors`` into ``directory``."""
        directory = Path(directory)
        tensors = {f"{part}/{name}": value for part, values in (
            ("trained", adapter_state(self.transformer, TRAINED_ADAPTER)),
            ("sampling", adapter_state(self.transformer, SAMPLING_ADAPTER)),
            ("ema", self.ema.state_dict())) for name, value in values.items()}
        save_tensors(directory / ADAPTERS_FILE, tensors, {"step": str(self.step), "version": str(self.version)})
        save_optimizer(directory / OPTIMIZER_FILE, self.optimizer)
        return directory

    def load_state(self, directory: str | Path) -> None:
        """Restore what :meth:`save_state` wrote (same model and LoRA config)."""
        directory = Path(directory)
        tensors, metadata = load_tensors(directory / ADAPTERS_FILE)
        parts: dict[str, dict[str, torch.Tensor]] = {"trained": {}, "sampling": {}, "ema": {}}
        for key, value in tensors.items():
            part, _, name = key.partition("/")
            if part not in parts:
                raise KeyError(f"{directory / ADAPTERS_FILE}: unexpected tensor {key!r}")
            parts[part][name] = value
        load_adapter_state(self.transformer, TRAINED_ADAPTER, parts["trained"])
        load_adapter_state(self.transformer, SAMPLING_ADAPTER, parts["sampling"])
        self.ema.load_state_dict(parts["ema"])
        load_optimizer(directory / OPTIMIZER_FILE, self.optimizer)
        self.step, self.version = int(metadata["step"]), int(metadata["version"])


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_cpu(item) for item in value]
    return value
