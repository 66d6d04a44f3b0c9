"""Inference on photos with a trained pair: the critic writes a critique, its H_c conditions the artist.

Owns the single-process path that ``enhance``, ``evaluate`` and the warm-start SFT use outside the Ray loop:

* :class:`CriticRunner` — greedy critique of one photo with transformers' ``generate`` (vision special tokens
  suppressed), and the critic's post-norm last-layer states H_c over the prompt and the first N−1 generated
  tokens (ALGORITHMS.md §4.4, the same span ``CriticLearner.prepare`` hands the artist), or over a plain
  instruction text (stage-I conditioning).
* :class:`PhotoPipeline` — critic then artist on one photo, returning the critique and the edit.

It loads models through ``critic_actor.model`` / ``artist_actor.model`` and samples with
``artist_actor.sampler``; it must not train, and it must not know about Ray or rewards.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rollout.records.types import ParsedCritique


@dataclass(slots=True)
class CritiqueResult:
    """One greedy critique of one photo."""

    text: str
    """The response text (special tokens skipped)."""
    parsed: ParsedCritique
    hidden: np.ndarray
    """float32 ``[T, D]`` H_c: prompt + first N−1 generated tokens."""
    image: np.ndarray
    """The photo exactly as the critic saw it (pixel-bounded)."""


@dataclass(slots=True)
class EnhanceResult:
    critique: CritiqueResult
    edited: np.ndarray
    """uint8 ``[H, W, 3]`` edit at the input photo's size."""


class CriticRunner:
    """A loaded critic for inference: critique a photo, or encode a text into H_c."""

    def __init__(self, critic_path: str | Path, *, min_pixels: int, max_pixels: int, max_new_tokens: int = 96,
                 device: str = "cpu", model=None, processor=None):
        """Load the critic at ``critic_path`` (or wrap an already loaded ``model``/``processor`` pair, as the
        SFT trainer does so that stage-II conditioning comes from the weights it is training)."""
        from critic_actor.model import load_critic, load_critic_processor, vision_special_token_ids

        if model is None:
            model, _ = load_critic(critic_path, dtype="float32", device=device)
        self.model = model
        self.processor = processor or load_critic_processor(critic_path, min_pixels=min_pixels,
                                                            max_pixels=max_pixels)
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.image_token_id = int(model.config.image_token_id)
        self.suppressed = [[token] for token in vision_special_token_ids(self.processor.tokenizer)]

    def critique(self, image: np.ndarray) -> CritiqueResult:
        """Greedy critique of ``image`` (uint8 ``[H, W, 3]``) with its H_c."""
        import torch

        from critic_actor.grammar import parse_critique

        seen, inputs = self._photo_inputs(image)
        prompt_length = int(inputs["input_ids"].shape[1])
        with self._evaluating(), torch.no_grad():
            generated = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                bad_words_ids=self.suppressed or None)
            completion = generated[0, prompt_length:]
            text = self.processor.tokenizer.decode(completion, skip_special_tokens=True)
            # H_c spans the prompt and the first N−1 generated tokens: the states the last token was
            # sampled from, exactly what the learner's prepare pass hands the artist.
            context = generated[:, : prompt_length + max(0, completion.shape[0] - 1)]
            hidden = self.hidden_states(context, inputs)
        return CritiqueResult(text=text, parsed=parse_critique(text), hidden=hidden, image=seen)

    def teacher_forced(self, image: np.ndarray, text: str) -> CritiqueResult:
        """``text`` as this critic's critique of ``image``, without generating: H_c over the prompt and the
        text's tokens, the span :meth:`critique` gives for a generated response that ends in end-of-turn.

        Conditions the artist on a given critique (e.g. the annotated, correct one) through this critic's
        states, so the artist can be measured apart from what the critic would have written."""
        import torch

        from critic_actor.grammar import parse_critique

        seen, inputs = self._photo_inputs(image)
        ids = self.processor.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        context = torch.cat([inputs["input_ids"], ids.to(self.device)], dim=1)
        with self._evaluating():
            hidden = self.hidden_states(context, inputs)
        return CritiqueResult(text=text, parsed=parse_critique(text), hidden=hidden, image=seen)

    def _photo_inputs(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
        """The photo as the critic sees it (fitted to its pixel bounds) and its prompt inputs on this device."""
        from critic_actor.inputs import build_critic_inputs, fit_to_pixel_bounds

        seen = fit_to_pixel_bounds(image, self.min_pixels, self.max_pixels)
        return seen, {k: v.to(self.device) for k, v in build_critic_inputs(self.processor, seen).items()}

    @contextlib.contextmanager
    def _evaluating(self):
        """The model in eval mode for the block, then back to whatever mode it was in (SFT shares the model)."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    def hidden_states(self, input_ids, vision_inputs: dict) -> np.ndarray:
        """float32 ``[T, D]`` post-norm last-layer states of ``input_ids`` ``[1, T]`` with the photo's vision
        inputs (``pixel_values``, ``image_grid_thw``)."""
        import torch

        mm_token_type_ids = (input_ids == self.image_token_id).to(torch.int)
        with torch.no_grad():
            out = self.model.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                   mm_token_type_ids=mm_token_type_ids,
                                   pixel_values=vision_inputs["pixel_values"],
                                   image_grid_thw=vision_inputs["image_grid_thw"], use_cache=False)
        return out.last_hidden_state[0].float().cpu().numpy()

    def text_hidden_states(self, text: str) -> np.ndarray:
        """float32 ``[T, D]`` H_c of a plain instruction text in the critic's chat format (no image)."""
        import torch

        messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
        prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        ids = self.processor.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids.to(self.device)
        with torch.no_grad():
            out = self.model.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                   mm_token_type_ids=torch.zeros_like(ids, dtype=torch.int), use_cache=False)
        return out.last_hidden_state[0].float().cpu().numpy()


class PhotoPipeline:
    """Critic then artist on one photo, from model directories (base, SFT or materialised RL checkpoint)."""

    def __init__(self, critic_path: str | Path, artist_path: str | Path, *, min_pixels: int, max_pixels: int,
                 max_new_tokens: int = 96, resolution: int = 64, num_steps: int = 6, solver: str = "dpm2",
                 drop_prefix_tokens: int = 0, device: str = "cpu"):
        from artist_actor.model import load_artist
        from artist_actor.sampler import FlowMatchSampler

        self.critic = CriticRunner(critic_path, min_pixels=min_pixels, max_pixels=max_pixels,
                                   max_new_tokens=max_new_tokens, device=device)
        self.artist = load_artist(artist_path, dtype="float32", device=device)
        if self.artist.hidden_size != self.critic.model.config.text_config.hidden_size:
            raise ValueError(f"artist {artist_path} expects H_c width {self.artist.hidden_size} but critic "
                             f"{critic_path} has hidden size {self.critic.model.config.text_config.hidden_size}; "
                             f"pair an artist with the critic it was trained with")
        # No exploration: the pipeline shows the artist's own deterministic edit.
        self.sampler = FlowMatchSampler(self.artist, num_steps=num_steps, solver=solver, resolution=resolution,
                                        drop_prefix_tokens=drop_prefix_tokens)

    @classmethod
    def from_config(cls, critic_path: str | Path, artist_path: str | Path, config, device: str = "cpu"
                    ) -> PhotoPipeline:
        """The pipeline a run config describes (``TrainConfig``): the critic's pixel bounds and response length,
        the artist's resolution, ODE steps, solver and H_c prefix drop, exactly as its training used them."""
        return cls(critic_path, artist_path, min_pixels=config.critic.min_pixels,
                   max_pixels=config.critic.max_pixels, max_new_tokens=config.critic.max_new_tokens,
                   resolution=config.artist.resolution, num_steps=config.artist.num_steps,
                   solver=config.artist.solver, drop_prefix_tokens=config.artist.drop_prefix_tokens, device=device)

    def enhance(self, image: np.ndarray, seed: int = 0) -> EnhanceResult:
        """Critique ``image`` and edit it conditioned on that critique's H_c."""
        return self.enhance_with_seeds(image, [seed])[0]

    def enhance_with_seeds(self, image: np.ndarray, seeds: list[int]) -> list[EnhanceResult]:
        """One greedy critique of ``image``, then one edit per artist noise seed, all conditioned on it."""
        return self.edit_with_critique(image, self.critic.critique(image), seeds)

    def edit_with_critique(self, image: np.ndarray, critique: CritiqueResult, seeds: list[int]) -> list[EnhanceResult]:
        """One edit of ``image`` per artist noise seed, conditioned on ``critique``'s H_c (the critic's greedy
        critique, or a given one from :meth:`CriticRunner.teacher_forced`)."""
        return self.edit_many([(image, critique, seeds)])[0]

    def edit_many(self, jobs: list[tuple[np.ndarray, CritiqueResult, list[int]]]) -> list[list[EnhanceResult]]:
        """:meth:`edit_with_critique` for several photos in one sampler call (the sampler batches by size; the
        edits do not depend on the batching)."""
        from artist_actor.sampler import EditRequest

        requests = [EditRequest(condition_image=image, hidden=critique.hidden, seed=seed)
                    for image, critique, seeds in jobs for seed in seeds]
        edits = iter(self.sampler.sample(requests))
        return [[EnhanceResult(critique=critique, edited=next(edits).image) for _ in seeds]
                for _, critique, seeds in jobs]
