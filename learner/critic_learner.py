"""The Image Critic's GRPO learner: a teacher-forced prepare pass, the policy update, weights for the engines.

Owns the training copy of the critic (full fine-tune or a peft LoRA, from ``learner.critic``), its frozen
reference (a separate frozen copy, or the same network with the adapters disabled under LoRA), the AdamW
optimizer, and the critic's policy version. Three verbs:

* :meth:`CriticLearner.prepare` — one forward over prompt + response per critique (no gradient) that yields
  the old log-probs, the reference log-probs, the rollout/learner agreement metric, and H_c: the last-layer,
  post-norm hidden states over the prompt and the first N−1 generated tokens (ALGORITHMS.md §4.4), as
  :class:`~rollout.types.Conditioning` records for the artist.
* :meth:`CriticLearner.update` — the GRPO step on a list of :class:`~rollout.types.CriticGroup`.
* :meth:`CriticLearner.get_weights` — tensors by Hugging Face parameter name, for
  ``CriticRolloutActor.set_weights``.

It is a plain class: the controller applies ``ray.remote`` and owns placement. It must not generate text,
compute rewards or talk to other actors; the loss math lives in :mod:`learner.grpo`.

Token layout of one sequence (``L_p`` prompt tokens, ``N`` response tokens): position ``p`` predicts token
``p + 1``, so the response log-probs come from positions ``L_p − 1 … L_p + N − 2`` and H_c is positions
``0 … L_p + N − 2``. Batches are right-padded. Image placeholder tokens get ``mm_token_type_ids = 1`` and every
other token, generated ones included, 0 — without it transformers falls back to 1-D positions and the
log-probs silently drift from the engine's (the M-RoPE trap in ENVIRONMENT.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learner.config import CriticLearnerConfig
from learner.grpo import GRPOLoss, LogProbAgreement, grpo_advantages, logprob_agreement, overlong_penalty, \
    token_entropy, token_log_probs
from learner.optim import build_adamw, clip_and_step, trainable_parameters
from learner.state import detach_state, flatten_optimizer_state, load_module_state, load_optimizer, \
    load_tensors, save_optimizer, save_tensors, unflatten_optimizer_state
from rollout.types import Conditioning, Critique, CriticGroup

CritiqueKey = tuple[str, int]
"""(task_id, critique index): how a critique is found across prepare and update."""

LANGUAGE_MODEL_LINEAR_LAYERS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
"""Default LoRA targets of the critic: every linear layer of the language model (verl's ``all-linear`` for the
LLM), leaving the vision tower frozen."""

_ADAPTER = "default"
MODEL_FILE = "critic_model.safetensors"
"""The trained tensors a checkpoint holds for the critic (every weight, or only LoRA tensors with LoRA)."""


@dataclass(kw_only=True, slots=True)
class PreparedBatch:
    """What :meth:`CriticLearner.prepare` computed for a batch of critiques, keyed by (task_id, index).

    ``update`` reads only the log-probs; the controller ships ``conditionings`` to the artist samplers (and may
    drop them from the record before handing it back to ``update``).
    """

    critic_version: int
    """Policy version of the weights that computed the old log-probs and H_c."""
    old_log_probs: dict[CritiqueKey, np.ndarray]
    """float32 ``[N]`` log π_old of each response token (learner recomputation, the PPO anchor)."""
    ref_log_probs: dict[CritiqueKey, np.ndarray]
    """float32 ``[N]`` log π_ref per response token; empty when the KL term is off (``kl_coef == 0``)."""
    conditionings: list[Conditioning]
    """One H_c record per critique, in the order given to ``prepare``."""
    agreement: LogProbAgreement
    """Rollout-engine vs learner log-prob mismatch over every response token of the batch, both of the raw
    distribution (temperature 1: what the engines report), whatever the sampling temperature."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Agreement and timing metrics, named ``<section>/<name>`` for MLflow."""


@dataclass(slots=True)
class _Batch:
    """Model inputs for a right-padded batch of prompt + response sequences."""

    keys: list[CritiqueKey]
    model_inputs: dict[str, torch.Tensor]
    prompt_lengths: list[int]
    response_tokens: torch.Tensor
    """long ``[B, T]`` response tokens, right-padded with 0."""
    response_mask: torch.Tensor
    """float ``[B, T]``: 1 on real response tokens."""


@dataclass(slots=True)
class _ForwardResult:
    hidden: torch.Tensor
    """``[B, L, D]`` last-layer post-norm hidden states."""
    response_logits: torch.Tensor
    """``[B, T, V]`` logits (temperature applied) at the positions that predict each response token."""


class CriticLearner:
    """Trains the critic with GRPO; a plain class so tests construct it directly (the controller wraps it)."""

    def __init__(
        self,
        model_path: str | Path,
        config: CriticLearnerConfig,
        *,
        min_pixels: int,
        max_pixels: int,
        temperature: float = 1.0,
        max_new_tokens: int = 1280,
        device: str | None = None,
        seed: int = 0,
    ):
        """Load the critic at ``model_path`` for training plus its reference.

        ``min_pixels``/``max_pixels`` must be the rollout actors' bounds (``critic.min_pixels``/``max_pixels``)
        so the learner sees the same vision tokens the engine saw; ``temperature`` is the rollout sampling
        temperature (the learner's log-probs are those of the sampling distribution, as verl computes them);
        ``max_new_tokens`` is the overlong-shaping horizon.
        """
        from critic_actor.model import load_critic, load_critic_processor

        torch.manual_seed(seed)
        self.config = config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.temperature = temperature if temperature > 0 else 1.0
        self.max_new_tokens = max_new_tokens
        self.policy_version = 0
        # fp32 master weights everywhere; on CUDA the forward runs under bf16 autocast (verl's mixed precision).
        self.model, _ = load_critic(model_path, dtype="float32", device=str(self.device))
        self.processor = load_critic_processor(model_path, min_pixels=min_pixels, max_pixels=max_pixels)
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.hidden_size = int(text_config.hidden_size)
        self.image_token_id = int(self.model.config.image_token_id)
        self.spatial_merge_size = int(self.model.config.vision_config.spatial_merge_size)

        self.peft_model = None
        self.reference = None
        if config.lora.enabled:
            self.peft_model = self._attach_lora()
        else:
            self.model.requires_grad_(True)
            if config.kl_coef > 0:
                reference_dtype = "bfloat16" if self.device.type == "cuda" else "float32"
                self.reference, _ = load_critic(model_path, dtype=reference_dtype, device=str(self.device))
                self.reference.requires_grad_(False)
        self.model.train()
        self.trainable = trainable_parameters(self.model)
        self.optimizer = build_adamw(self.trainable, lr=config.lr, weight_decay=config.weight_decay)
        self.loss_fn = GRPOLoss(
            clip_ratio_low=config.clip_ratio_low, clip_ratio_high=config.clip_ratio_high,
            clip_ratio_c=config.clip_ratio_c, loss_agg_mode=config.loss_agg_mode, kl_coef=config.kl_coef,
            entropy_coef=config.entropy_coef, loss_scale_factor=float(max_new_tokens))

    def __repr__(self) -> str:
        mode = f"lora r{self.config.lora.rank}" if self.peft_model is not None else "full"
        return f"CriticLearner(critic-learner, {mode}, version={self.policy_version})"

    # ------------------------------------------------------------------------------------------ verbs

    def ready(self) -> dict[str, int]:
        """Cheap liveness probe: the policy version and the number of trainable parameters."""
        return {"policy_version": self.policy_version, "trainable_parameters": sum(p.numel() for p in self.trainable)}

    @torch.no_grad()
    def prepare(self, critiques: Sequence[Critique]) -> PreparedBatch:
        """Old and reference log-probs, H_c and the rollout agreement for ``critiques`` (no gradient)."""
        started = time.perf_counter()
        if not critiques:
            raise ValueError("prepare: no critiques given")
        old: dict[CritiqueKey, np.ndarray] = {}
        ref: dict[CritiqueKey, np.ndarray] = {}
        conditionings: list[Conditioning] = []
        rollout_chunks, learner_chunks = [], []
        self.model.eval()
        try:
            for chunk in _chunks(list(critiques), self.config.micro_batch_size):
                batch = self._build_batch(chunk)
                with self._autocast():
                    result = self._forward(self.model, batch)
                log_probs = token_log_probs(result.response_logits, batch.response_tokens)
                # The engines report the raw distribution's log-probs (temperature 1); compare those with ours.
                raw_log_probs = log_probs if self.temperature == 1.0 else token_log_probs(
                    result.response_logits * self.temperature, batch.response_tokens)
                ref_log_probs = self._reference_log_probs(batch) if self.config.kl_coef > 0 else None
                for row, critique in enumerate(chunk):
                    key = (critique.task_id, critique.index)
                    n = len(critique.completion_token_ids)
                    old[key] = log_probs[row, :n].cpu().numpy().astype(np.float32)
                    if ref_log_probs is not None:
                        ref[key] = ref_log_probs[row, :n].cpu().numpy().astype(np.float32)
                    context = batch.prompt_lengths[row] + n - 1
                    hidden = result.hidden[row, :context].float().cpu().numpy()
                    conditionings.append(Conditioning(
                        task_id=critique.task_id, critique_index=critique.index, hidden=hidden,
                        mask=np.ones(context, dtype=bool), prompt_length=batch.prompt_lengths[row],
                        critic_version=self.policy_version))
                    rollout_chunks.append(torch.as_tensor(np.asarray(critique.rollout_logprobs, dtype=np.float32)))
                    learner_chunks.append(raw_log_probs[row, :n].float().cpu())
        finally:
            self.model.train()
        rollout_flat = torch.cat(rollout_chunks)
        learner_flat = torch.cat(learner_chunks)
        agreement = logprob_agreement(rollout_flat[None], learner_flat[None], torch.ones(1, len(rollout_flat)))
        metrics = {
            "learner/grpo/rollout_logprob_abs_diff/mean": agreement.mean_abs_diff,
            "learner/grpo/rollout_logprob_abs_diff/max": agreement.max_abs_diff,
            "learner/grpo/rollout_kl": agreement.kl,
            "time/learner/critic_prepare_s": time.perf_counter() - started,
        }
        return PreparedBatch(critic_version=self.policy_version, old_log_probs=old, ref_log_probs=ref,
                             conditionings=conditionings, agreement=agreement, metrics=metrics)

    def update(self, groups: Sequence[CriticGroup], prepared: PreparedBatch) -> dict[str, float]:
        """One GRPO optimizer step on ``groups``; returns metrics. Bumps the policy version when applied.

        Advantages are recomputed here from the rewards with this learner's knobs (overlong shaping, std
        normalisation, zero-variance filtering), so one place decides them; :func:`critic_advantages` gives
        the controller the same numbers for logging. A step with non-finite loss or gradients is skipped and
        reported (``learner/grpo/step_applied`` = 0), weights untouched; so is a step whose rewards contain
        NaN/inf (``learner/grpo/nonfinite_reward_groups`` counts the groups that had them).
        """
        started = time.perf_counter()
        if prepared.critic_version != self.policy_version:
            raise ValueError(f"update: prepared batch was computed at critic version {prepared.critic_version} "
                             f"but the learner is at {self.policy_version}; run prepare again on these critiques")
        unscorable = [g.task_id for g in groups if not all(np.isfinite(r.total) for r in g.rewards)]
        if unscorable:
            # A NaN/inf reward would poison every advantage of its group: skip the step, keep the weights.
            return {"learner/grpo/step_applied": 0.0, "learner/grpo/nonfinite_reward_groups": float(len(unscorable)),
                    "learner/grpo/groups_total": float(len(groups)),
                    "time/learner/critic_update_s": time.perf_counter() - started}
        advantages, kept = critic_advantages(groups, self.config, self.max_new_tokens)
        items: list[tuple[Critique, float]] = []
        for group, group_adv, keep in zip(groups, advantages, kept):
            if keep:
                items.extend(zip(group.critiques, (float(a) for a in group_adv)))
        metrics: dict[str, float] = {
            "learner/grpo/groups_kept": float(sum(kept)),
            "learner/grpo/groups_total": float(len(groups)),
        }
        if not items:
            metrics.update({"learner/grpo/step_applied": 0.0, "time/learner/critic_update_s": time.perf_counter() - started})
            return metrics
        missing = [(c.task_id, c.index) for c, _ in items if (c.task_id, c.index) not in prepared.old_log_probs]
        if missing:
            raise KeyError(f"update: {len(missing)} critique(s) were not prepared, e.g. {missing[:3]}")

        num_tokens = float(sum(len(c.completion_token_ids) for c, _ in items))
        num_sequences = float(len(items))
        totals = dict(loss=0.0, policy_loss=0.0, kl=0.0, entropy=0.0, clip_fraction=0.0, dual_clip_fraction=0.0,
                      approx_kl_old=0.0, ratio_mean=0.0)
        finite = True
        for chunk in _chunks(items, self.config.micro_batch_size):
            critiques = [c for c, _ in chunk]
            batch = self._build_batch(critiques)
            old = _pad([prepared.old_log_probs[k] for k in batch.keys], batch.response_mask.shape[1], self.device)
            ref = (_pad([prepared.ref_log_probs[k] for k in batch.keys], batch.response_mask.shape[1], self.device)
                   if self.config.kl_coef > 0 else None)
            adv = torch.tensor([a for _, a in chunk], dtype=torch.float32, device=self.device)
            with self._autocast():
                result = self._forward(self.model, batch)
            log_probs = token_log_probs(result.response_logits, batch.response_tokens)
            if self.config.entropy_coef > 0:
                entropy = token_entropy(result.response_logits)
            else:
                with torch.no_grad():
                    entropy = token_entropy(result.response_logits.detach())
            out = self.loss_fn(log_probs, old, adv, batch.response_mask, ref_log_probs=ref, entropy=entropy,
                               num_tokens=num_tokens, num_sequences=num_sequences)
            if not torch.isfinite(out.loss):
                finite = False
                break
            out.loss.backward()
            # Additive metrics (loss terms are already normalised by the mini-batch counts) and token-weighted
            # means of the per-micro-batch fractions.
            weight = out.num_tokens / num_tokens
            totals["loss"] += float(out.loss.detach())
            totals["policy_loss"] += out.policy_loss
            totals["kl"] += out.kl
            totals["entropy"] += out.entropy
            for name in ("clip_fraction", "dual_clip_fraction", "approx_kl_old", "ratio_mean"):
                totals[name] += getattr(out, name) * weight

        if finite:
            outcome = clip_and_step(self.optimizer, self.trainable, max_norm=self.config.grad_clip)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            outcome = None
        applied = outcome is not None and outcome.applied
        if applied:
            self.policy_version += 1
        lengths = [len(c.completion_token_ids) for c, _ in items]
        all_adv = np.array([a for _, a in items], dtype=np.float32)
        metrics.update({f"learner/grpo/{name}": value for name, value in totals.items()})
        metrics.update({
            "learner/grpo/grad_norm": outcome.grad_norm if outcome is not None else float("nan"),
            "learner/grpo/step_applied": float(applied),
            "learner/grpo/response_length/mean": float(np.mean(lengths)),
            "learner/grpo/response_length/max": float(np.max(lengths)),
            "learner/grpo/advantage/mean": float(all_adv.mean()),
            "learner/grpo/advantage/abs_mean": float(np.abs(all_adv).mean()),
            "learner/grpo/policy_version": float(self.policy_version),
            "time/learner/critic_update_s": time.perf_counter() - started,
        })
        return metrics

    def get_weights(self) -> dict[str, torch.Tensor]:
        """CPU tensors by Hugging Face name: the model's full ``state_dict()``, for ``CriticRolloutActor.set_weights``.

        With LoRA the adapters are merged (W + α/r · B·A) into the base weights they adapt and every tensor keeps
        the base model's own name, so the engine loads a plain checkpoint and never needs to know about
        adapters. The rollout actor accepts only the complete parameter set (a partial load could leave a
        replica with mixed weights), so the untouched weights travel too.
        """
        if self.peft_model is None:
            return detach_state(self.model.state_dict())
        from learner.lora import merged_state_dict

        return merged_state_dict(self.model, _ADAPTER)

    def get_state(self) -> dict[str, Any]:
        """Everything a checkpoint needs to resume this learner exactly: trained tensors, AdamW, version.

        ``model`` holds every parameter for a full fine-tune, or only the LoRA tensors (peft names) with LoRA.
        """
        optimizer_tensors, optimizer_meta = flatten_optimizer_state(self.optimizer.state_dict())
        return {"model": self._trained_state(), "optimizer": optimizer_tensors, "optimizer_meta": optimizer_meta,
                "policy_version": self.policy_version}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state returned by :meth:`get_state` (same model and config)."""
        load_module_state(self.model, state["model"], strict=self.peft_model is None)
        # Copies: torch's load_state_dict keeps same-device tensors as they are, and the next step would then
        # update the caller's state in place.
        moments = detach_state(state["optimizer"], device=self.device)
        self.optimizer.load_state_dict(unflatten_optimizer_state(moments, state["optimizer_meta"]))
        self.policy_version = int(state["policy_version"])

    def save_state(self, directory: str | Path) -> Path:
        """Write ``critic_model.safetensors`` and ``critic_optimizer.safetensors`` into ``directory``."""
        directory = Path(directory)
        save_tensors(directory / MODEL_FILE, self._trained_state(),
                     {"policy_version": str(self.policy_version), "lora": str(self.peft_model is not None)})
        save_optimizer(directory / "critic_optimizer.safetensors", self.optimizer)
        return directory

    def load_state(self, directory: str | Path) -> None:
        """Restore what :meth:`save_state` wrote."""
        directory = Path(directory)
        tensors, metadata = load_tensors(directory / MODEL_FILE, device=self.device)
        if metadata.get("lora") != str(self.peft_model is not None):
            raise ValueError(f"{directory}: checkpoint lora={metadata.get('lora')} but learner.critic.lora.enabled="
                             f"{self.peft_model is not None}; resume with the config the checkpoint was written with")
        load_module_state(self.model, tensors, strict=self.peft_model is None)
        load_optimizer(directory / "critic_optimizer.safetensors", self.optimizer)
        self.policy_version = int(metadata["policy_version"])

    # --------------------------------------------------------------------------------------- internals

    def _attach_lora(self):
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        lora = self.config.lora
        targets: Any = list(lora.target_modules) or LANGUAGE_MODEL_LINEAR_LAYERS
        peft_config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=0.0, target_modules=targets)
        # get_peft_model wraps in place: self.model's modules now carry the adapters, and the PeftModel gives
        # the reference forward (disable_adapter) and freezes every base weight.
        return get_peft_model(self.model, peft_config, adapter_name=_ADAPTER)

    def _trained_state(self) -> dict[str, torch.Tensor]:
        return detach_state({name: p for name, p in self.model.named_parameters() if p.requires_grad})

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    @contextmanager
    def _reference_model(self):
        if self.peft_model is not None:
            with self.peft_model.disable_adapter():
                yield self.model
        else:
            yield self.reference

    def _reference_log_probs(self, batch: _Batch) -> torch.Tensor:
        with torch.no_grad(), self._reference_model() as reference, self._autocast():
            result = self._forward(reference, batch)
            return token_log_probs(result.response_logits, batch.response_tokens)

    def _forward(self, model, batch: _Batch) -> _ForwardResult:
        """One forward over the batch: post-norm last-layer states, and logits only at response positions.

        The language-model head runs on the response positions alone: at real size the full ``[B, L, V]``
        logits of a 1k-token vision prompt would dominate memory for nothing.
        """
        hidden = model.model(**batch.model_inputs, use_cache=False).last_hidden_state
        width = batch.response_tokens.shape[1]
        rows = []
        for row, prompt_length in enumerate(batch.prompt_lengths):
            n = int(batch.response_mask[row].sum())
            positions = hidden[row, prompt_length - 1: prompt_length - 1 + n]
            rows.append(torch.nn.functional.pad(positions, (0, 0, 0, width - n)))
        logits = model.lm_head(torch.stack(rows))
        return _ForwardResult(hidden=hidden, response_logits=logits.float() / self.temperature)

    def _build_batch(self, critiques: Sequence[Critique]) -> _Batch:
        sequences, prompt_lengths, response_lengths, images = [], [], [], []
        for critique in critiques:
            prompt = list(critique.prompt_token_ids)
            completion = list(critique.completion_token_ids)
            where = f"critique ({critique.task_id!r}, {critique.index})"
            if not completion:
                raise ValueError(f"{where} has an empty completion; nothing to train on")
            if len(critique.rollout_logprobs) != len(completion):
                raise ValueError(f"{where}: {len(critique.rollout_logprobs)} rollout log-probs for "
                                 f"{len(completion)} completion tokens")
            if self.image_token_id in completion:
                raise ValueError(f"{where}: the response contains the image placeholder token; rollouts must "
                                 f"suppress vision special tokens (critic_actor.model.vision_special_token_ids)")
            sequences.append(prompt + completion)
            prompt_lengths.append(len(prompt))
            response_lengths.append(len(completion))
            images.append(_resolve_image(critique.image, where))
        vision = self.processor.image_processor(images=images, return_tensors="pt")
        grids = vision["image_grid_thw"]
        for critique, prompt_length, grid in zip(critiques, prompt_lengths, grids):
            expected = int(grid.prod()) // self.spatial_merge_size ** 2
            found = sum(1 for t in critique.prompt_token_ids if t == self.image_token_id)
            if expected != found:
                raise ValueError(
                    f"critique ({critique.task_id!r}, {critique.index}): its prompt has {found} image tokens but "
                    f"its image gives {expected} at the learner's pixel bounds; give the learner the rollout "
                    f"actors' critic.min_pixels/max_pixels and keep Critique.image as the engine saw it")
        width = max(len(s) for s in sequences)
        pad_id = 0
        input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            input_ids[row, :len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            attention[row, :len(sequence)] = 1
        # 1 on image placeholders of the prompt, 0 on text and on every generated token (M-RoPE positions).
        mm_token_type_ids = ((input_ids == self.image_token_id) & (attention == 1)).to(torch.int)
        response_width = max(response_lengths)
        response_tokens = torch.zeros((len(sequences), response_width), dtype=torch.long)
        response_mask = torch.zeros((len(sequences), response_width), dtype=torch.float32)
        for row, (critique, n) in enumerate(zip(critiques, response_lengths)):
            response_tokens[row, :n] = torch.tensor(list(critique.completion_token_ids), dtype=torch.long)
            response_mask[row, :n] = 1.0
        model_inputs = {
            "input_ids": input_ids, "attention_mask": attention, "mm_token_type_ids": mm_token_type_ids,
            "pixel_values": vision["pixel_values"], "image_grid_thw": grids,
        }
        return _Batch(
            keys=[(c.task_id, c.index) for c in critiques],
            model_inputs={k: v.to(self.device) for k, v in model_inputs.items()},
            prompt_lengths=prompt_lengths,
            response_tokens=response_tokens.to(self.device),
            response_mask=response_mask.to(self.device),
        )


def critic_advantages(
    groups: Sequence[CriticGroup], config: CriticLearnerConfig, max_new_tokens: int
) -> tuple[list[np.ndarray], list[bool]]:
    """Per-group float32 advantages and whether each group is kept, from the groups' reward totals.

    Rewards are first shaped by DAPO's overlong penalty (when ``config.overlong_buffer`` > 0), then normalised
    within each group (:func:`learner.grpo.grpo_advantages`). With ``filter_zero_variance_groups`` a group whose
    rewards are all equal is dropped (it would only add KL and entropy terms with zero policy gradient).
    """
    advantages, kept = [], []
    for group in groups:
        if len(group.rewards) != len(group.critiques):
            raise ValueError(f"group {group.task_id!r}: {len(group.critiques)} critiques but "
                             f"{len(group.rewards)} rewards")
        rewards = np.array([r.total for r in group.rewards], dtype=np.float64)
        if not np.all(np.isfinite(rewards)):
            raise ValueError(f"group {group.task_id!r}: non-finite reward total {rewards.tolist()}")
        if config.overlong_buffer > 0:
            lengths = [len(c.completion_token_ids) for c in group.critiques]
            rewards = rewards + overlong_penalty(lengths, max_length=max_new_tokens, buffer=config.overlong_buffer,
                                                 penalty=config.overlong_penalty)
        group_adv = grpo_advantages(rewards, [0] * len(rewards), norm_by_std=config.norm_adv_by_std)
        advantages.append(group_adv)
        zero_variance = len(rewards) > 1 and float(np.ptp(rewards)) == 0.0
        kept.append(not (config.filter_zero_variance_groups and zero_variance))
    return advantages, kept


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _pad(arrays: Sequence[np.ndarray], width: int, device: torch.device) -> torch.Tensor:
    out = torch.zeros((len(arrays), width), dtype=torch.float32)
    for row, values in enumerate(arrays):
        out[row, :len(values)] = torch.as_tensor(np.asarray(values, dtype=np.float32))
    return out.to(device)


def _resolve_image(handle: Any, where: str) -> np.ndarray:
    """The uint8 ``[H, W, 3]`` image behind a handle: an array, a path, or a Ray object reference."""
    if handle is None:
        raise ValueError(f"{where} carries no image; the rollout actor must set Critique.image to the image it "
                         f"fed the engine")
    if isinstance(handle, np.ndarray):
        image = handle
    elif isinstance(handle, (str, Path)):
        from PIL import Image

        with Image.open(handle) as opened:
            image = np.asarray(opened.convert("RGB"))
    else:
        import ray

        if not isinstance(handle, ray.ObjectRef):
            raise TypeError(f"{where}: image handle of type {type(handle).__name__} is not an array, path or "
                            f"ray.ObjectRef")
        image = np.asarray(ray.get(handle))
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{where}: image must be uint8 [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    return image


__all__ = ["CriticLearner", "PreparedBatch", "critic_advantages", "LANGUAGE_MODEL_LINEAR_LAYERS"]
