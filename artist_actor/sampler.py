"""The explicit flow-matching sampler loop of the Photographic Artist (no diffusers pipeline).

Owns turning (condition photo, H_c, seed) requests into edits: resize to the artist resolution, encode the
condition with the codec, draw the initial noise from the request's own seed, integrate the probability-flow
ODE from σ = 1 to 0 over the Qwen-Image schedule with a deterministic solver, decode, and resize back. Requests
are batched by artist resolution (RoPE needs one image shape per micro-batch); results do not depend on how
requests are batched, because noise is drawn per request and H_c is right-padded with a mask.

Solvers (flow convention x_σ = (1 − σ)·x0 + σ·ε, v = ε − x0, x̂0 = x − σ·v):
- ``euler``: x ← x + (σ_{i+1} − σ_i)·v (DiffusionNFT's eval solver).
- ``dpm2``: multistep DPM-Solver++(2M) in data prediction, DiffusionNFT's rollout default. With α = 1 − σ and
  λ = log(α/σ), h = λ_{i+1} − λ_i: x ← (σ_{i+1}/σ_i)·x − α_{i+1}(e^{−h} − 1)·D, where D = x̂0_i on the first step
  and D = (1 + 1/2r)·x̂0_i − (1/2r)·x̂0_{i−1}, r = h_{i−1}/h_i afterwards. At σ₀ = 1, λ₀ = −∞: the first step is
  the DDIM step and the next degenerates to first order (r = ∞), as ALGORITHMS.md §1.5 notes. The last step
  (σ = 0, λ = +∞) returns x̂0, first order, as DPM-Solver++ does. Coefficients are computed in float64.
Both take one DiT call per step. CFG is off at guidance 1.0; above it, the unconditional branch sees a single
all-zero H_c token and the guided velocity is renormalised per token to the conditional one's norm, as the
Qwen-Image-Edit pipeline does (``artist_actor.conditioning.guided_velocity``, which the learner shares).

With ``exploration`` > 0 each edit then gets a small seeded global tone change (:mod:`artist_actor.exploration`)
and is re-encoded: the recorded x0 decodes to exactly the photo returned, so a likelihood-free learner trains on
the very edit its reward scored. At 0 (the default) nothing after the ODE changes.

It must not know about Ray, records or rewards: ``ArtistSamplerActor`` adapts records to requests.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from artist_actor.codec import images_to_pixels, pixels_to_images, token_grid
from artist_actor.conditioning import (
    ArtistConditioning,
    ConditioningError,
    build_conditioning,
    flow_match_sigmas,
    guided_velocity,
    pack_latents,
    pad_hidden_states,
    unpack_latents,
)
from artist_actor.exploration import apply_tone_changes, draw_tone_change
from artist_actor.model import ArtistModel

Solver = Literal["euler", "dpm2"]
VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass(slots=True)
class EditRequest:
    """One edit to make."""

    condition_image: np.ndarray
    """uint8 ``[H, W, 3]`` photo to edit (any size; resized to the artist resolution and back)."""
    hidden: np.ndarray | torch.Tensor
    """float ``[T, D]`` critic states H_c for this critique."""
    seed: int
    """Seed of this edit's initial noise."""
    mask: np.ndarray | None = None
    """Optional bool ``[T]``: positions of ``hidden`` that are real tokens."""


@dataclass(slots=True)
class SampledEdit:
    """What the sampler produced for one request."""

    image: np.ndarray
    """uint8 ``[H, W, 3]`` edit at the condition photo's size."""
    x0: np.ndarray
    """float32 ``[L, F]`` packed clean latent of the edit (at the artist resolution): where the ODE ended, or
    with exploration on, the latent of the tone-changed photo (``image`` is its decoding)."""
    sigmas: np.ndarray
    """float64 ``[N + 1]`` schedule the edit was integrated over."""
    seed: int


def artist_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(H, W) the artist works at: long side = ``resolution``, aspect kept, both multiples of 16."""
    scale = resolution / max(height, width)
    return (max(16, int(round(height * scale / 16)) * 16), max(16, int(round(width * scale / 16)) * 16))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[H, W, 3]`` → ``size`` (H, W) with bicubic resampling; unchanged when already that size."""
    if image.shape[:2] == tuple(size):
        return image
    from PIL import Image

    resample = Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), resample=resample))


def initial_noise(seed: int, tokens: int, features: int) -> torch.Tensor:
    """float32 ``[tokens, features]`` standard normal noise from ``seed`` alone (CPU generator, so it is the
    same on every device and independent of batch composition)."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(tokens, features, generator=generator, dtype=torch.float32)


def solve_flow_ode(velocity: VelocityFn, noise: torch.Tensor, sigmas: np.ndarray, solver: Solver) -> torch.Tensor:
    """Integrate dx/dσ = v from σ = sigmas[0] (= 1) to sigmas[-1] (= 0); return the clean latent."""
    if solver not in ("euler", "dpm2"):
        raise ValueError(f"unknown solver {solver!r}; use euler or dpm2")
    sigmas = np.asarray(sigmas, dtype=np.float64)
    x = noise.float()
    previous_x0: torch.Tensor | None = None
    previous_h = math.nan
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        v = velocity(x, float(sigma)).float()
        if solver == "euler":
            x = x + float(sigma_next - sigma) * v
            continue
        x0_hat = x - float(sigma) * v
        if sigma_next <= 0.0:
            x = x0_hat
            break
        lam = _half_log_snr(sigma)
        h = _half_log_snr(sigma_next) - lam
        if previous_x0 is None or not math.isfinite(previous_h) or not math.isfinite(h):
            data = x0_hat
        else:
            half_inv_r = h / (2.0 * previous_h)
            data = (1.0 + half_inv_r) * x0_hat - half_inv_r * previous_x0
        x = float(sigma_next / sigma) * x - float((1.0 - sigma_next) * math.expm1(-h)) * data
        previous_x0, previous_h = x0_hat, h
    return x


def _half_log_snr(sigma: float) -> float:
    """λ(σ) = log((1 − σ)/σ); −∞ at σ = 1."""
    return -math.inf if sigma >= 1.0 else math.log((1.0 - sigma) / sigma)


class FlowMatchSampler:
    """Deterministic ODE sampling of edits from a loaded artist."""

    def __init__(
        self,
        model: ArtistModel,
        *,
        num_steps: int = 6,
        solver: Solver = "dpm2",
        guidance_scale: float = 1.0,
        drop_prefix_tokens: int = 0,
        resolution: int = 512,
        max_batch_size: int = 16,
        exploration: float = 0.0,
    ):
        if resolution % 16:
            raise ValueError(f"artist resolution must be a multiple of 16; got {resolution}")
        self.model = model
        self.num_steps = num_steps
        self.solver = solver
        self.guidance_scale = guidance_scale
        self.drop_prefix_tokens = drop_prefix_tokens
        self.resolution = resolution
        self.max_batch_size = max(1, max_batch_size)
        if exploration < 0:
            raise ValueError(f"exploration scale must be ≥ 0; got {exploration}")
        self.exploration = exploration

    def schedule(self, size: tuple[int, int]) -> np.ndarray:
        """The σ schedule for an artist image of ``size`` (H, W) pixels."""
        rows, cols = token_grid(size, self.model.codec)
        return flow_match_sigmas(self.num_steps, rows * cols, self.model.scheduler_config)

    def check(self, request: EditRequest) -> str:
        """Why ``request`` cannot be sampled (empty string when it can)."""
        image = np.asarray(request.condition_image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            return f"condition image must be uint8 [H, W, 3]; got {image.dtype} {image.shape}"
        size = artist_size(image.shape[0], image.shape[1], self.resolution)
        try:
            pad_hidden_states([request.hidden], self.model.hidden_size, token_grid(size, self.model.codec),
                              self.drop_prefix_tokens, [request.mask])
        except ConditioningError as error:
            return str(error)
        return ""

    @torch.no_grad()
    def sample(self, requests: Sequence[EditRequest]) -> list[SampledEdit]:
        """Sample every request; results are in request order. Raises on a request :meth:`check` refuses."""
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            image = request.condition_image
            by_size[artist_size(image.shape[0], image.shape[1], self.resolution)].append(index)
        results: list[SampledEdit | None] = [None] * len(requests)
        for size, indices in by_size.items():
            for start in range(0, len(indices), self.max_batch_size):
                chunk = indices[start: start + self.max_batch_size]
                for index, edit in zip(chunk, self._sample_batch([requests[i] for i in chunk], size)):
                    results[index] = edit
        return results  # type: ignore[return-value]

    def conditioning(self, requests: Sequence[EditRequest], size: tuple[int, int]) -> ArtistConditioning:
        """The DiT conditioning of same-size ``requests`` edited at ``size``: H_c and condition-photo latents."""
        model = self.model
        # The K edits of a critique (and the G critiques of a photo) share one condition photo: encode it once.
        slots: dict[int, int] = {}
        unique: list[np.ndarray] = []
        for request in requests:
            if id(request.condition_image) not in slots:
                slots[id(request.condition_image)] = len(unique)
                unique.append(resize_image(request.condition_image, size))
        encoded = model.codec.encode(images_to_pixels(unique).to(model.device))
        condition_latents = encoded[[slots[id(r.condition_image)] for r in requests]]
        return build_conditioning([r.hidden for r in requests], condition_latents, hidden_size=model.hidden_size,
                                  drop_prefix_tokens=self.drop_prefix_tokens, masks=[r.mask for r in requests],
                                  device=model.device, dtype=model.dtype)

    def _sample_batch(self, requests: Sequence[EditRequest], size: tuple[int, int]) -> list[SampledEdit]:
        model = self.model
        cond = self.conditioning(requests, size)
        sigmas = self.schedule(size)
        features = cond.image_latents.shape[2]
        noise = torch.stack([initial_noise(r.seed, cond.num_image_tokens, features) for r in requests])
        velocity = self._velocity_fn(cond)
        x0 = solve_flow_ode(velocity, noise.to(model.device), sigmas, self.solver)
        decoded = model.codec.decode(unpack_latents(x0.to(model.dtype), cond.grid))
        if self.exploration > 0:
            x0, decoded = self._explore(decoded, [r.seed for r in requests])
        images = pixels_to_images(decoded)
        x0_cpu = x0.float().cpu().numpy()
        return [
            SampledEdit(image=resize_image(image, r.condition_image.shape[:2]), x0=np.ascontiguousarray(x0_cpu[i]),
                        sigmas=sigmas.copy(), seed=int(r.seed))
            for i, (image, r) in enumerate(zip(images, requests))
        ]

    def _explore(self, decoded: torch.Tensor, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, decoded photos) after each edit's seeded tone change: the changed photos are encoded, and the
        latents decoded once more, so the returned x0 decodes to exactly the returned photos."""
        codec, dtype = self.model.codec, self.model.dtype
        changes = [draw_tone_change(seed, self.exploration) for seed in seeds]
        changed = apply_tone_changes(decoded.float(), changes)
        latents = codec.encode(changed.to(decoded.dtype))
        return pack_latents(latents).float(), codec.decode(latents.to(dtype))

    def _velocity_fn(self, cond: ArtistConditioning) -> VelocityFn:
        transformer, scale = self.model.transformer, self.guidance_scale
        return lambda x, sigma: guided_velocity(transformer, x, sigma, cond, scale)
