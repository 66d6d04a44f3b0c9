"""Warm-start supervised fine-tuning: the critic learns the grammar, the artist learns to edit.

Owns the three warm-start stages that precede the coordinated RL (ALGORITHMS.md, paper stages I–II):

* annotation targets (:func:`annotate_task`): a critic response rendered in the critic grammar from what is
  known about a synthetic pair — reasoning naming the defects, the corrective suggestions (the known inverse
  tone ops and one restoration op per degradation label) with magnitude words, and a score that falls with the
  severity of the degradation;
* :class:`CriticSFT` — teacher-forced cross-entropy on the annotation tokens (prompt tokens masked);
* :class:`ArtistSFT` — flow-matching regression of the DiT's velocity onto ε − x0 for (degraded → target)
  pairs, conditioned on the critic's H_c of an instruction text (stage ``artist``), of the annotation critique
  teacher-forced under the photo (stage ``annotated``: the conditioning the RL loop gives the artist when the
  critic is right, and one that always agrees with the target it regresses to), or of the critic's own greedy
  critique of the photo (stage ``adapt``).

Each trainer writes complete model directories (transformers layout for the critic, diffusers layout for the
artist) so ``critic.model`` / ``artist.model`` can point at them directly. It must not run rollouts or
rewards, and it must not know about Ray.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from learner.export import write_artist_dir, write_critic_dir
from rollout.records.types import EditOp, PhotoTask, Suggestion

ArtistStage = Literal["artist", "annotated", "adapt"]
ARTIST_STAGES: tuple[str, ...] = ("artist", "annotated", "adapt")

_DEFECT_WORDS: dict[tuple[str, int], str] = {
    ("exposure", 1): "too dark", ("exposure", -1): "too bright",
    ("contrast", 1): "flat", ("contrast", -1): "too harsh",
    ("saturation", 1): "dull", ("saturation", -1): "oversaturated",
    ("warmth", 1): "too cold", ("warmth", -1): "too warm",
}
"""What the input looks like when the fix is to move ``attribute`` in ``direction``."""

_DEGRADATION_WORDS = {"blur": "blurry", "noise": "noisy", "haze": "hazy", "lowlight": "underlit",
                      "rain": "rainy", "jpeg": "blocky"}
_LEVEL_ADVERBS = {1: "slightly", 2: "moderately", 3: "very"}

SCORE_CEILING = 90
"""Annotation score of a photo with nothing to fix; each unit of severity takes :data:`SCORE_PER_SEVERITY`."""
SCORE_PER_SEVERITY = 8
MIN_RESIDUAL_SIGMA = 0.02
"""Smallest σ an ``input_residual`` artist is trained at: the Qwen-Image schedule's terminal σ, the smallest
noise level a sampler ever evaluates the DiT at."""
DEGRADATION_SEVERITY = 3
"""Severity of one restoration degradation, in tone-level units (a level-3 tone op weighs the same)."""


def degradation_severity(task: PhotoTask) -> int:
    """Sum of the known ops' levels plus :data:`DEGRADATION_SEVERITY` per degradation label."""
    return sum(op.level for op in task.known_ops) + DEGRADATION_SEVERITY * len(task.degradations)


def annotation_score(task: PhotoTask) -> int:
    """The annotated 0–100 score: strictly falls with :func:`degradation_severity` until it reaches 5."""
    return max(5, SCORE_CEILING - SCORE_PER_SEVERITY * degradation_severity(task))


def annotation_suggestions(task: PhotoTask) -> list[Suggestion]:
    """The corrective suggestions for ``task``: its known tone ops, then one restoration op per label."""
    suggestions = [Suggestion(text="", op=op) for op in task.known_ops]
    suggestions += [Suggestion(text="", restoration=label) for label in task.degradations]
    return suggestions


def annotation_reasoning(task: PhotoTask) -> str:
    """A short sentence naming every defect, e.g. ``"Slightly too dark, very dull, blurry."``."""
    parts = [f"{_LEVEL_ADVERBS[op.level]} {_DEFECT_WORDS[(op.attribute, op.direction)]}" for op in task.known_ops]
    parts += [_DEGRADATION_WORDS[label] for label in task.degradations]
    if not parts:
        return "Looks fine."
    text = ", ".join(parts)
    return text[0].upper() + text[1:] + "."


def annotate_task(task: PhotoTask) -> str:
    """The critic target for ``task`` in the critic grammar; ``ValueError`` when nothing is known to fix."""
    from critic_actor.grammar import render_critique

    suggestions = annotation_suggestions(task)
    if not suggestions:
        raise ValueError(f"task {task.task_id!r} has no known ops and no degradation labels: there is no "
                         f"correct critique to teach; give synthetic pairs (photocrafter make-data)")
    return render_critique(annotation_reasoning(task), suggestions, annotation_score(task))


def instruction_text(task: PhotoTask) -> str:
    """Stage-I artist conditioning text: the corrective suggestions as plain sentences."""
    from critic_actor.grammar import render_suggestion

    return " ".join(render_suggestion(s) for s in annotation_suggestions(task)) or "Keep the photo as it is."


def ops_of(suggestions: Sequence[Suggestion]) -> list[EditOp]:
    """The tone ops among parsed suggestions, in order."""
    return [s.op for s in suggestions if s.op is not None]


def _load_image(handle, what: str) -> np.ndarray:
    from critic_actor.inputs import resolve_image

    if isinstance(handle, (str, Path)):
        # Files go through the project's one reader, with the conversions training data gets (docs/data.md).
        from rollout.records.images import read_image

        handle = read_image(handle)
    return resolve_image(handle, what)


@dataclass(slots=True)
class _CriticExample:
    input_ids: torch.Tensor
    """``[1, L]`` prompt + target + end-of-turn."""
    labels: torch.Tensor
    """``[1, L]`` target ids, −100 on the prompt."""
    vision: dict[str, torch.Tensor]


def clipped_step(module: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn) -> float:
    """Train mode, ``loss_fn()``, backward, gradient norm clipped to 1, one optimiser step; the loss before it."""
    module.train()
    loss = loss_fn()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())


class CriticSFT:
    """Teacher-forced SFT of the critic on annotation targets; a plain class (no Ray)."""

    def __init__(self, critic_path: str | Path, *, min_pixels: int, max_pixels: int, lr: float = 2e-3,
                 weight_decay: float = 0.0, device: str = "cpu", seed: int = 0):
        from critic_actor.model import load_critic, load_critic_processor

        torch.manual_seed(seed)
        self.source = Path(critic_path)
        self.device = device
        self.model, _ = load_critic(critic_path, dtype="float32", device=device)
        self.processor = load_critic_processor(critic_path, min_pixels=min_pixels, max_pixels=max_pixels)
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.model.requires_grad_(True).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        self.end_of_turn = self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._cache: dict[str, _CriticExample] = {}

    def example(self, task: PhotoTask) -> _CriticExample:
        """Model inputs and masked labels for one task (cached: the same photo always gives the same ids)."""
        from critic_actor.inputs import build_critic_inputs, fit_to_pixel_bounds

        if task.task_id in self._cache:
            return self._cache[task.task_id]
        image = fit_to_pixel_bounds(_load_image(task.input, f"task {task.task_id} input"),
                                    self.min_pixels, self.max_pixels)
        inputs = build_critic_inputs(self.processor, image)
        target = self.processor.tokenizer(annotate_task(task), add_special_tokens=False)["input_ids"]
        target = torch.tensor([*target, self.end_of_turn], dtype=torch.long)[None]
        prompt = inputs["input_ids"]
        example = _CriticExample(
            input_ids=torch.cat([prompt, target], dim=1),
            labels=torch.cat([torch.full_like(prompt, -100), target], dim=1),
            vision={"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"]})
        self._cache[task.task_id] = example
        return example

    def loss(self, tasks: Sequence[PhotoTask]) -> torch.Tensor:
        """Mean per-token cross-entropy of the annotation targets of ``tasks`` (graph kept for backward)."""
        total, count = torch.zeros((), device=self.device), 0
        image_token_id = int(self.model.config.image_token_id)
        for task in tasks:
            ex = self.example(task)
            ids = ex.input_ids.to(self.device)
            out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                             mm_token_type_ids=(ids == image_token_id).to(torch.int),
                             pixel_values=ex.vision["pixel_values"].to(self.device),
                             image_grid_thw=ex.vision["image_grid_thw"].to(self.device), use_cache=False)
            # Position t predicts token t + 1.
            logits = out.logits[0, :-1].float()
            labels = ex.labels[0, 1:].to(self.device)
            total = total + torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
            count += int((labels != -100).sum())
        return total / max(count, 1)

    def step(self, tasks: Sequence[PhotoTask]) -> float:
        """One optimiser step on ``tasks``; returns the loss before the step."""
        return clipped_step(self.model, self.optimizer, lambda: self.loss(tasks))

    def save(self, out_dir: str | Path) -> Path:
        """Write the trained critic in the transformers layout (weights, config, processor, tokenizer)."""
        return write_critic_dir(self.model, self.processor, self.source, out_dir)


class ArtistSFT:
    """Flow-matching SFT of the artist's DiT on (degraded → target) pairs; a plain class (no Ray).

    Stage ``artist`` conditions on the critic's H_c of :func:`instruction_text`; stage ``annotated`` on H_c of the
    photo's annotation critique (:func:`annotate_task`) teacher-forced by the critic under the photo, as the RL
    loop's prepare pass computes H_c of a sampled critique; stage ``adapt`` on H_c of the critic's own greedy
    critique of the input. H_c is computed once per task with the critic frozen and cached, and the DiT sees it
    through ``artist_actor.conditioning.build_conditioning`` with the run's ``drop_prefix_tokens``, as the
    samplers and the DiffusionNFT learner do.
    """

    def __init__(self, artist_path: str | Path, critic_path: str | Path, *, stage: ArtistStage = "artist",
                 min_pixels: int, max_pixels: int, resolution: int = 64, lr: float = 3e-4,
                 max_new_tokens: int = 96, drop_prefix_tokens: int = 0, device: str = "cpu", seed: int = 0):
        from artist_actor.model import load_artist
        from rollout.pipeline import CriticRunner

        if stage not in ARTIST_STAGES:
            raise ValueError(f"artist SFT stage must be one of {', '.join(ARTIST_STAGES)}; got {stage!r}")
        if resolution % 16:
            raise ValueError(f"artist resolution must be a multiple of 16; got {resolution}")
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.stage = stage
        self.resolution = resolution
        self.drop_prefix_tokens = drop_prefix_tokens
        self.device = device
        self.source = Path(artist_path)
        self.artist = load_artist(artist_path, dtype="float32", device=device)
        self.critic = CriticRunner(critic_path, min_pixels=min_pixels, max_pixels=max_pixels,
                                   max_new_tokens=max_new_tokens, device=device)
        self.critic.model.requires_grad_(False)
        self.transformer = self.artist.transformer
        self.transformer.requires_grad_(True).train()
        self.optimizer = torch.optim.AdamW(self.transformer.parameters(), lr=lr, weight_decay=0.0)
        self._cache: dict[str, tuple[np.ndarray, torch.Tensor, torch.Tensor]] = {}
        self.format_ok: dict[str, bool] = {}

    def _prepared(self, task: PhotoTask) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """(H_c, condition latents ``[C, h, w]``, target latents ``[C, h, w]``) of one task, cached."""
        from artist_actor.codec import images_to_pixels
        from artist_actor.sampler import artist_size, resize_image

        if task.task_id in self._cache:
            return self._cache[task.task_id]
        source = _load_image(task.input, f"task {task.task_id} input")
        target = _load_image(task.target, f"task {task.task_id} target")
        if source.shape != target.shape:
            raise ValueError(f"task {task.task_id}: input {source.shape} and target {target.shape} differ in size")
        if self.stage == "artist":
            hidden = self.critic.text_hidden_states(instruction_text(task))
        elif self.stage == "annotated":
            hidden = self.critic.teacher_forced(source, annotate_task(task)).hidden
        else:
            critique = self.critic.critique(source)
            hidden = critique.hidden
            self.format_ok[task.task_id] = critique.parsed.format_ok
        size = artist_size(source.shape[0], source.shape[1], self.resolution)
        pixels = images_to_pixels([resize_image(source, size), resize_image(target, size)]).to(self.device)
        with torch.no_grad():
            latents = self.artist.codec.encode(pixels)
        prepared = (hidden, latents[0], latents[1])
        self._cache[task.task_id] = prepared
        return prepared

    def loss(self, tasks: Sequence[PhotoTask], sigmas: torch.Tensor | None = None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """Flow-matching regression at random σ (or the given ones); x_t = (1 − σ)·x0 + σ·ε.

        A velocity artist regresses its velocity onto ε − x0 (σ uniform in [0, 1)). An ``input_residual``
        artist regresses its clean-photo estimate x̂0 = x_t − σ·v onto x0 instead (σ uniform in
        [:data:`MIN_RESIDUAL_SIGMA`, 1)): the same minimiser, but the velocity error of an x0-predicting
        network grows as 1/σ and would let the few smallest σ of a batch dominate it. All ``tasks`` must
        share one artist resolution (the embedded data do).
        """
        from artist_actor.conditioning import pack_latents, predict_velocity

        prepared = [self._prepared(task) for task in tasks]
        clean = pack_latents(torch.stack([p[2] for p in prepared]))
        cond = self.conditioning(tasks)
        batch = clean.shape[0]
        residual = self.artist.prediction == "input_residual"
        if sigmas is None:
            sigmas = torch.rand(batch, generator=self.generator)
            if residual:
                sigmas = MIN_RESIDUAL_SIGMA + (1.0 - MIN_RESIDUAL_SIGMA) * sigmas
        if noise is None:
            noise = torch.randn(clean.shape, generator=self.generator)
        sigmas, noise = sigmas.to(self.device), noise.to(self.device)
        noisy = (1.0 - sigmas[:, None, None]) * clean + sigmas[:, None, None] * noise
        predicted = predict_velocity(self.transformer, noisy, sigmas, cond).float()
        if residual:
            return torch.nn.functional.mse_loss(noisy - sigmas[:, None, None] * predicted, clean)
        return torch.nn.functional.mse_loss(predicted, noise - clean)

    def conditioning(self, tasks: Sequence[PhotoTask]):
        """The DiT conditioning of a batch of ``tasks``: their H_c and condition-photo latents."""
        from artist_actor.conditioning import build_conditioning

        prepared = [self._prepared(task) for task in tasks]
        return build_conditioning([p[0] for p in prepared], torch.stack([p[1] for p in prepared]),
                                  hidden_size=self.artist.hidden_size, drop_prefix_tokens=self.drop_prefix_tokens,
                                  device=self.device, dtype=self.artist.dtype)

    def step(self, tasks: Sequence[PhotoTask]) -> float:
        """One optimiser step on ``tasks``; returns the loss before the step."""
        return clipped_step(self.transformer, self.optimizer, lambda: self.loss(tasks))

    def save(self, out_dir: str | Path) -> Path:
        """Write a complete artist directory: the trained DiT, and the base's VAE, scheduler and codec file."""
        return write_artist_dir(self.transformer, self.source, out_dir)


def run_sft_loop(trainer: CriticSFT | ArtistSFT, tasks: Sequence[PhotoTask], *, steps: int, batch_size: int,
                 seed: int = 0, log_every: int = 10, log=print) -> list[float]:
    """``steps`` optimiser steps over shuffled epochs of ``tasks``; returns the loss of every step."""
    if not tasks:
        raise ValueError("no training tasks")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be ≥ 1; got {steps} and {batch_size}")
    rng = np.random.default_rng(seed)
    order: list[int] = []
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(1, steps + 1):
        batch = []
        while len(batch) < min(batch_size, len(tasks)):
            if not order:
                order = rng.permutation(len(tasks)).tolist()
            batch.append(tasks[order.pop()])
        losses.append(trainer.step(batch))
        if log and (step % log_every == 0 or step == 1 or step == steps):
            log(f"step {step}/{steps} loss {losses[-1]:.4f} ({time.perf_counter() - started:.0f}s)")
    return losses


def write_warmstart_manifest(out_dir: str | Path, **fields) -> Path:
    """Record what a warm-start directory holds (stage, sources, steps, losses) next to the models."""
    path = Path(out_dir) / "warmstart.json"
    existing = json.loads(path.read_text()) if path.is_file() else {}
    existing.update(fields)
    path.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
    return path


def build_warm_start(critic_dir: str | Path, artist_dir: str | Path, tasks: Sequence[PhotoTask],
                     out_dir: str | Path, *, critic_steps: int, critic_batch_size: int, critic_lr: float,
                     artist_steps: int, artist_batch_size: int, artist_lr: float, resolution: int,
                     max_new_tokens: int, min_pixels: int, max_pixels: int, artist_stage: ArtistStage = "annotated",
                     drop_prefix_tokens: int = 0, seed: int = 0, log=print) -> Path:
    """A complete warm start in ``out_dir`` (``critic/``, ``artist/``, ``warmstart.json``): critic SFT on the
    annotation targets of ``tasks``, then artist SFT of ``artist_stage`` with that critic's H_c — the commands
    ``photocrafter sft --stage critic`` and ``--stage ARTIST_STAGE`` run in a row."""
    out = Path(out_dir)
    pixels = dict(min_pixels=min_pixels, max_pixels=max_pixels)
    annotated = [task for task in tasks if task.known_ops or task.degradations]
    critic = CriticSFT(critic_dir, lr=critic_lr, seed=seed, **pixels)
    critic_losses = run_sft_loop(critic, annotated, steps=critic_steps, batch_size=critic_batch_size, seed=seed,
                                 log_every=max(1, critic_steps // 4), log=log)
    critic.save(out / "critic")
    del critic
    artist_tasks = annotated if artist_stage == "annotated" else tasks
    artist = ArtistSFT(artist_dir, out / "critic", stage=artist_stage, lr=artist_lr, seed=seed,
                       resolution=resolution, max_new_tokens=max_new_tokens, drop_prefix_tokens=drop_prefix_tokens,
                       **pixels)
    artist_losses = run_sft_loop(artist, artist_tasks, steps=artist_steps, batch_size=artist_batch_size, seed=seed,
                                 log_every=max(1, artist_steps // 4), log=log)
    artist.save(out / "artist")

    def summary(losses: list[float], steps: int, batch_size: int, source: Path, count: int) -> dict:
        window = max(1, min(10, len(losses) // 4))
        return {"steps": steps, "batch_size": batch_size, "seed": seed, "tasks": count, "source": str(source),
                "loss_first": sum(losses[:window]) / window, "loss_last": sum(losses[-window:]) / window}

    artist_summary = summary(artist_losses, artist_steps, artist_batch_size, Path(artist_dir), len(artist_tasks))
    if artist.format_ok:
        artist_summary["critique_format_rate"] = sum(artist.format_ok.values()) / len(artist.format_ok)
    write_warmstart_manifest(out, critic_sft=summary(critic_losses, critic_steps, critic_batch_size,
                                                     Path(critic_dir), len(annotated)),
                             **{f"{artist_stage}_sft": {**artist_summary, "drop_prefix_tokens": drop_prefix_tokens}})
    return out
