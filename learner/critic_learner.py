"""The Image Critic's GRPO learner: a teacher-forced prepare pass, the policy update, weights for the engines.

Owns the training copy of the critic (full fine-tune or a peft LoRA, from ``learner.critic``), its frozen
reference (a separate frozen copy, or the same network with the adapters disabled under LoRA), the AdamW
optimizer, and the critic's policy version. Three verbs:

* :meth:`CriticLearner.prepare` — one forward over prompt + response per critique (no gradient) that yields
  the old log-probs, the reference log-probs, the rollout/learner agreement metric, and H_c: the last-layer,
  post-norm hidden states over the prompt and the first N−1 generated tokens (ALGORITHMS.md §4.4), as
  :class:`~rollout.records.types.Conditioning` records for the artist.
* :meth:`CriticLearner.update` — the GRPO step on a list of :class:`~rollout.records.types.CriticGroup`.
* :meth:`CriticLearner.get_weights` — tensors by Hugging Face parameter name, for
  ``CriticRolloutActor.set_weights``.

Data parallel and sharded (:mod:`learner.distributed`): as one rank of N, ``prepare`` runs on the critiques the
learner group gave this rank and keeps them; ``update`` is given every group (without images), computes the
advantages and the global token and sequence counts from all of them, and trains on the critiques this rank
prepared, so the summed gradient equals the single-process one (GRPO's token-level aggregation over the
whole batch, not a mean of per-rank means). Micro-batches are packed by a token budget; every rank runs as many
forward passes as the busiest one (FSDP all-gathers inside each), padding with zero-weight passes.

Memory discipline at real size: a LoRA learner keeps the frozen base in bf16 on GPU and its adapters as fp32
masters; a full fine-tune keeps fp32 masters that FSDP2 shards (parameters, gradients, AdamW state) and computes
in bf16; decoder layers recompute their activations in the backward pass when gradient checkpointing is on.

It is a plain class: the critic learner group (rollout) runs one per rank as a Ray actor; tests construct it
directly. It must not generate text, compute rewards or talk to other actors; the loss math lives in
:mod:`learner.grpo`.
The token layout of a teacher-forced batch is :mod:`learner.critic_batches`'s.
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
from torch import nn

from learner.config import CriticLearnerConfig
from learner.critic_batches import (CritiqueBatch, CritiqueKey, build_critique_batch, pad_rows,
                                    token_budget_micro_batches)
from learner.distributed import (ParallelContext, full_tensor, load_sharded, read_learner_checkpoint_meta,
                                 save_learner_checkpoint, shard_model)
from learner.grpo import (GRPOLoss, grpo_advantages, logprob_agreement, overlong_penalty, token_entropy,
                          token_log_probs)
from learner.memory import use_gradient_checkpointing
from learner.optim import build_adamw, clip_and_step, trainable_parameters
from learner.state import detach_state, flatten_optimizer_state, load_module_state, unflatten_optimizer_state
from rollout.records.types import Conditioning, Critique, CriticGroup

LANGUAGE_MODEL_LINEAR_LAYERS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
"""Default LoRA targets of the critic: every linear layer of the language model (verl's ``all-linear`` for the
LLM), leaving the vision tower frozen."""

_ADAPTER = "default"
CHECKPOINT_NAME = "critic_learner"
"""A checkpoint's ``critic_learner/`` (torch.distributed.checkpoint shards of the trained tensors, every weight or
only the LoRA tensors with LoRA, and the AdamW moments) and ``critic_learner.json`` beside it (policy version, LoRA
flag, world size; written by rank 0)."""


@dataclass(kw_only=True, slots=True)
class PreparedBatch:
    """What :meth:`CriticLearner.prepare` computed for this rank's critiques, keyed by (task_id, index).

    ``update`` reads the log-probs and the critiques themselves (with their images); the controller ships
    ``conditionings`` to the artist samplers (and may drop them from the record before ``update``).
    """

    critic_version: int
    """Policy version of the weights that computed the old log-probs and H_c."""
    critiques: dict[CritiqueKey, Critique]
    """The critiques this rank prepared (and will train on), with the images the engine saw."""
    old_log_probs: dict[CritiqueKey, np.ndarray]
    """float32 ``[N]`` log π_old of each response token (learner recomputation, the PPO anchor)."""
    ref_log_probs: dict[CritiqueKey, np.ndarray]
    """float32 ``[N]`` log π_ref per response token; empty when the KL term is off (``kl_coef == 0``)."""
    conditionings: list[Conditioning]
    """One H_c record per critique, in the order given to ``prepare``."""
    padding: Critique | None = None
    """A critique to run zero-weight passes on when this rank has none of its own to train on."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Agreement and timing metrics over every rank's critiques, named ``<section>/<name>`` for MLflow."""


class ResponseForward(nn.Module):
    """The critic forward every learner pass goes through: last-layer states and the logits at response positions.

    One module so FSDP2 has one root to unshard around the whole pass (the embedding, final norm and LM head
    live in it; each decoder layer and vision block is its own unit). The LM head runs on the response
    positions alone: at real size the full ``[B, L, V]`` logits of a 1k-token vision prompt would dominate
    memory for nothing.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, model_inputs: dict[str, torch.Tensor], prompt_lengths: list[int],
                response_lengths: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model.model(**model_inputs, use_cache=False).last_hidden_state
        rows = []
        for row, (prompt_length, n) in enumerate(zip(prompt_lengths, response_lengths)):
            positions = hidden[row, prompt_length - 1: prompt_length - 1 + n]
            rows.append(torch.nn.functional.pad(positions, (0, 0, 0, width - n)))
        return hidden, self.model.lm_head(torch.stack(rows))


class CriticLearner:
    """Trains the critic with GRPO; a plain class so tests construct it directly (the learner group runs one
    per rank)."""

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
        parallel: ParallelContext | None = None,
    ):
        """Load the critic at ``model_path`` for training plus its reference.

        ``min_pixels``/``max_pixels`` must be the rollout actors' bounds (``critic.min_pixels``/``max_pixels``)
        so the learner sees the same vision tokens the engine saw; ``temperature`` is the rollout sampling
        temperature (the learner's log-probs are those of the sampling distribution, as verl computes them);
        ``max_new_tokens`` is the overlong-shaping horizon. ``parallel`` makes this learner one rank of a
        sharded group (default: a single process on ``device``).
        """
        from critic_actor.model import load_critic, load_critic_processor

        torch.manual_seed(seed)
        self.config = config
        self.parallel = parallel or ParallelContext.single(device)
        self.device = self.parallel.device
        self.temperature = temperature if temperature > 0 else 1.0
        self.max_new_tokens = max_new_tokens
        self.policy_version = 0
        cuda = self.device.type == "cuda"
        # On GPU the computation runs in bf16. Frozen weights are stored in bf16 too (a LoRA learner's base: 2
        # bytes per parameter); trained weights stay fp32 masters (full fine-tune), as FSDP2's mixed precision
        # expects. Models are loaded on the host and sharded onto the device.
        load_device = "cpu" if self.parallel.sharded else str(self.device)
        frozen_dtype = "bfloat16" if cuda else "float32"
        self.model, _ = load_critic(model_path, dtype=frozen_dtype if config.lora.enabled else "float32",
                                    device=load_device)
        self.processor = load_critic_processor(model_path, min_pixels=min_pixels, max_pixels=max_pixels)
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.hidden_size = int(text_config.hidden_size)
        self.image_token_id = int(self.model.config.image_token_id)
        self.spatial_merge_size = int(self.model.config.vision_config.spatial_merge_size)
        self.gradient_checkpointing = use_gradient_checkpointing(
            config.gradient_checkpointing, sum(p.numel() for p in self.model.parameters()))

        self.peft_model = None
        self.reference: ResponseForward | None = None
        if config.lora.enabled:
            self.peft_model = self._attach_lora()
        else:
            self.model.requires_grad_(True)
        if self.gradient_checkpointing:
            # Non-reentrant checkpointing: works with frozen inputs (LoRA) and with FSDP2's hooks.
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        compute_dtype = torch.bfloat16 if cuda else None
        self.policy = shard_model(ResponseForward(self.model), _transformer_blocks(self.model), self.parallel,
                                  compute_dtype=compute_dtype, cpu_offload=config.cpu_offload)
        if not config.lora.enabled and config.kl_coef > 0:
            reference, _ = load_critic(model_path, dtype=frozen_dtype, device=load_device)
            reference.requires_grad_(False).eval()
            self.reference = shard_model(ResponseForward(reference), _transformer_blocks(reference), self.parallel,
                                         compute_dtype=compute_dtype, cpu_offload=config.cpu_offload)
        self.model.train()
        self.trainable = trainable_parameters(self.model)
        self.optimizer = build_adamw(self.trainable, lr=config.lr, weight_decay=config.weight_decay)
        self.loss_fn = GRPOLoss(
            clip_ratio_low=config.clip_ratio_low, clip_ratio_high=config.clip_ratio_high,
            clip_ratio_c=config.clip_ratio_c, loss_agg_mode=config.loss_agg_mode, kl_coef=config.kl_coef,
            entropy_coef=config.entropy_coef, loss_scale_factor=float(max_new_tokens))

    def __repr__(self) -> str:
        mode = f"lora r{self.config.lora.rank}" if self.peft_model is not None else "full"
        return (f"CriticLearner(critic-learner, rank={self.parallel.rank}/{self.parallel.world_size}, {mode}, "
                f"version={self.policy_version})")

    # ------------------------------------------------------------------------------------------ verbs

    def ready(self) -> dict[str, Any]:
        """Cheap liveness probe: the policy version, the number of trainable parameters and the layout."""
        return {"policy_version": self.policy_version, "trainable_parameters": sum(p.numel() for p in self.trainable),
                "world_size": self.parallel.world_size, "device": str(self.device),
                "gradient_checkpointing": self.gradient_checkpointing}

    @torch.no_grad()
    def prepare(self, critiques: Sequence[Critique], *, padding: Critique | None = None) -> PreparedBatch:
        """Old and reference log-probs, H_c and the rollout agreement for ``critiques`` (no gradient).

        On a group of ranks every rank calls this with its own critiques (possibly none, then ``padding`` — any
        critique of the batch — keeps its passes in step with the other ranks'); the agreement metrics are
        reduced over all ranks.
        """
        started = time.perf_counter()
        critiques = list(critiques)
        padding = critiques[0] if critiques else padding
        if padding is None:
            raise ValueError("prepare: no critiques given")
        old: dict[CritiqueKey, np.ndarray] = {}
        ref: dict[CritiqueKey, np.ndarray] = {}
        conditionings: list[Conditioning] = []
        # Sums over this rank's tokens: |Δ log p|, k3 KL(rollout ‖ learner), token count; and the largest |Δ|.
        agreement = np.zeros(3)
        largest = 0.0
        self.policy.eval()
        try:
            for chunk, real in self._aligned_micro_batches(critiques, padding):
                batch = self._build_batch(chunk)
                with self._autocast():
                    hidden, logits = self._forward(self.policy, batch)
                log_probs = token_log_probs(logits, batch.response_tokens)
                ref_log_probs = self._reference_log_probs(batch) if self.config.kl_coef > 0 else None
                if not real:
                    continue
                # The engine reports log-probs at temperature 1; compare like with like.
                learner_t1 = log_probs if self.temperature == 1.0 else \
                    token_log_probs(logits * self.temperature, batch.response_tokens)
                rollout = pad_rows([np.asarray(c.rollout_logprobs, dtype=np.float32) for c in chunk],
                                   batch.response_tokens.shape[1], learner_t1.device)
                mismatch = logprob_agreement(rollout, learner_t1, batch.response_mask)
                tokens = mismatch.num_tokens
                agreement += [mismatch.mean_abs_diff * tokens, mismatch.kl * tokens, tokens]
                largest = max(largest, mismatch.max_abs_diff)
                for row, critique in enumerate(chunk):
                    key = (critique.task_id, critique.index)
                    n = len(critique.completion_token_ids)
                    learner = log_probs[row, :n].float().cpu()
                    old[key] = learner.numpy().astype(np.float32)
                    if ref_log_probs is not None:
                        ref[key] = ref_log_probs[row, :n].cpu().numpy().astype(np.float32)
                    context = batch.prompt_lengths[row] + n - 1
                    conditionings.append(Conditioning(
                        task_id=critique.task_id, critique_index=critique.index,
                        hidden=self._ship(hidden[row, :context]), mask=np.ones(context, dtype=bool),
                        prompt_length=batch.prompt_lengths[row], critic_version=self.policy_version))
        finally:
            self.policy.train()
        total_abs, total_kl, tokens = self.parallel.sum(list(agreement))
        largest = self.parallel.max([largest])[0]
        metrics = {
            "learner/grpo/rollout_logprob_abs_diff/mean": total_abs / max(tokens, 1.0),
            "learner/grpo/rollout_logprob_abs_diff/max": largest,
            "learner/grpo/rollout_kl": total_kl / max(tokens, 1.0),
            "time/learner/critic_prepare_s": time.perf_counter() - started,
        }
        return PreparedBatch(critic_version=self.policy_version,
                             critiques={(c.task_id, c.index): c for c in critiques}, old_log_probs=old,
                             ref_log_probs=ref, conditionings=conditionings, padding=padding, metrics=metrics)

    def update(self, groups: Sequence[CriticGroup], prepared: PreparedBatch) -> dict[str, float]:
        """One GRPO optimizer step on ``groups``; returns metrics. Bumps the policy version when applied.

        Advantages are recomputed here from the rewards with this learner's knobs (overlong shaping, std
        normalisation, zero-variance filtering), so one place decides them; :func:`critic_advantages` gives
        the controller the same numbers for logging. On a group of ranks every rank gets every group (images
        may be left out: each rank trains on the critiques it prepared, with the images it kept). A step with
        non-finite loss or gradients is skipped and reported (``learner/grpo/step_applied`` = 0), weights
        untouched; so is a step whose rewards contain NaN/inf (``learner/grpo/nonfinite_reward_groups`` counts
        the groups that had them).
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
            metrics.update({"learner/grpo/step_applied": 0.0,
                            "time/learner/critic_update_s": time.perf_counter() - started})
            return metrics
        mine = [(prepared.critiques[(c.task_id, c.index)], a) for c, a in items
                if (c.task_id, c.index) in prepared.critiques]
        prepared_on_ranks = int(self.parallel.sum([len(mine)])[0])
        if prepared_on_ranks != len(items):
            missing = [(c.task_id, c.index) for c, _ in items if (c.task_id, c.index) not in prepared.critiques]
            raise KeyError(f"update: {len(items)} critiques to train on but the ranks prepared "
                           f"{prepared_on_ranks} of them (e.g. missing here: {missing[:3]})")

        # Normalisers of the whole batch (every rank computes them from every group): each rank's loss is its
        # share of the batch loss, and the ranks' gradients are summed.
        num_tokens = float(sum(len(c.completion_token_ids) for c, _ in items))
        num_sequences = float(len(items))
        advantage_of = {(c.task_id, c.index): a for c, a in mine}
        totals = dict(loss=0.0, policy_loss=0.0, kl=0.0, entropy=0.0, clip_fraction=0.0, dual_clip_fraction=0.0,
                      approx_kl_old=0.0, ratio_mean=0.0)
        padding = mine[0][0] if mine else prepared.padding
        for chunk, real in self._aligned_micro_batches([c for c, _ in mine], padding):
            batch = self._build_batch(chunk)
            width = batch.response_mask.shape[1]
            if real:
                old = pad_rows([prepared.old_log_probs[k] for k in batch.keys], width, self.device)
                ref = (pad_rows([prepared.ref_log_probs[k] for k in batch.keys], width, self.device)
                       if self.config.kl_coef > 0 else None)
                adv = torch.tensor([advantage_of[k] for k in batch.keys], dtype=torch.float32, device=self.device)
            else:
                old = torch.zeros_like(batch.response_mask)
                ref = torch.zeros_like(batch.response_mask) if self.config.kl_coef > 0 else None
                adv = torch.zeros(len(chunk), dtype=torch.float32, device=self.device)
            with self._autocast():
                _, logits = self._forward(self.policy, batch)
            log_probs = token_log_probs(logits, batch.response_tokens)
            if self.config.entropy_coef > 0:
                entropy = token_entropy(logits)
            else:
                with torch.no_grad():
                    entropy = token_entropy(logits.detach())
            out = self.loss_fn(log_probs, old, adv, batch.response_mask, ref_log_probs=ref, entropy=entropy,
                               num_tokens=num_tokens, num_sequences=num_sequences)
            # A padding pass keeps FSDP's collectives in step and contributes nothing.
            (out.loss * (1.0 if real else 0.0)).backward()
            if not real:
                continue
            # Additive metrics (loss terms are already normalised by the batch counts) and token-weighted
            # means of the per-micro-batch fractions.
            weight = out.num_tokens / num_tokens
            totals["loss"] += float(out.loss.detach())
            totals["policy_loss"] += out.policy_loss
            totals["kl"] += out.kl
            totals["entropy"] += out.entropy
            for name in ("clip_fraction", "dual_clip_fraction", "approx_kl_old", "ratio_mean"):
                totals[name] += getattr(out, name) * weight
        totals = dict(zip(totals, self.parallel.sum(list(totals.values()))))

        # A non-finite loss leaves non-finite gradients, and then the guarded step is skipped on every rank
        # alike (the gradient norm is global).
        outcome = clip_and_step(self.optimizer, self.trainable, max_norm=self.config.grad_clip)
        applied = outcome.applied and all(np.isfinite(list(totals.values())))
        if applied:
            self.policy_version += 1
        lengths = [len(c.completion_token_ids) for c, _ in items]
        all_adv = np.array([a for _, a in items], dtype=np.float32)
        metrics.update({f"learner/grpo/{name}": value for name, value in totals.items()})
        metrics.update({
            "learner/grpo/grad_norm": outcome.grad_norm,
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
        replica with mixed weights), so the untouched weights travel too. On a sharded learner every rank must
        call this (the tensors are gathered from all ranks).
        """
        if self.peft_model is None:
            return {name: full_tensor(tensor).cpu().clone() for name, tensor in self.model.state_dict().items()}
        from learner.lora import merged_state_dict

        return merged_state_dict(self.model, _ADAPTER)

    @torch.no_grad()
    def probe_log_probs(self, token_ids: Sequence[int]) -> np.ndarray:
        """log p(token_ids[i] | token_ids[:i]) for i ≥ 1 under the current weights, at temperature 1, text only:
        the served-output probe a weight sync compares every rollout replica against."""
        ids = torch.tensor([list(token_ids)], device=self.device)
        n = ids.shape[1] - 1
        training = self.policy.training
        self.policy.eval()
        try:
            # Through the policy's FSDP root like every other pass (on a sharded learner every rank runs it).
            with self._autocast():
                _, logits = self.policy({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, [1], [n], n)
        finally:
            self.policy.train(training)
        return logits[0].float().log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0].double().cpu().numpy()

    def get_state(self) -> dict[str, Any]:
        """Everything a checkpoint needs to resume a single-process learner exactly: trained tensors, AdamW,
        version. ``model`` holds every parameter for a full fine-tune, or only the LoRA tensors with LoRA."""
        optimizer_tensors, optimizer_meta = flatten_optimizer_state(self.optimizer.state_dict())
        return {"model": self._trained_state(), "optimizer": optimizer_tensors, "optimizer_meta": optimizer_meta,
                "policy_version": self.policy_version}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state returned by :meth:`get_state` (same model and config, a single-process learner)."""
        load_module_state(self.model, state["model"], strict=self.peft_model is None)
        # Copies: torch's load_state_dict keeps same-device tensors as they are, and the next step would then
        # update the caller's state in place.
        moments = detach_state(state["optimizer"], device=self.device)
        self.optimizer.load_state_dict(unflatten_optimizer_state(moments, state["optimizer_meta"]))
        self.policy_version = int(state["policy_version"])

    def _sharded_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        # Frozen tensors (a LoRA learner's base) are the checkpoint the run started from: not saved again.
        model_state, optimizer_state = get_state_dict(self.policy, self.optimizer,
                                                      options=StateDictOptions(ignore_frozen_params=True))
        return {"model": model_state, "optimizer": optimizer_state}

    def save_state(self, directory: str | Path) -> Path:
        """Write the sharded learner state (``critic_learner/``, every rank its shards) and, from rank 0,
        ``critic_learner.json`` (policy version, LoRA or not, world size) into ``directory``."""
        return save_learner_checkpoint(self.parallel, self._sharded_state(), directory, CHECKPOINT_NAME,
                                       {"policy_version": self.policy_version, "lora": self.peft_model is not None})

    def load_state(self, directory: str | Path) -> None:
        """Restore what :meth:`save_state` wrote, with any number of ranks (the state is resharded)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        meta = read_learner_checkpoint_meta(directory, CHECKPOINT_NAME)
        if bool(meta["lora"]) != (self.peft_model is not None):
            raise ValueError(f"{directory}: checkpoint lora={meta['lora']} but learner.critic.lora.enabled="
                             f"{self.peft_model is not None}; resume with the config the checkpoint was written with")
        state = self._sharded_state()
        load_sharded(state, Path(directory) / CHECKPOINT_NAME)
        set_state_dict(self.policy, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"],
                       options=StateDictOptions(ignore_frozen_params=True, strict=False))
        self.policy_version = int(meta["policy_version"])

    # --------------------------------------------------------------------------------------- internals

    def _attach_lora(self):
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        lora = self.config.lora
        targets: Any = list(lora.target_modules) or LANGUAGE_MODEL_LINEAR_LAYERS
        peft_config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=0.0, target_modules=targets)
        # get_peft_model wraps in place: self.model's modules now carry the adapters (float32 even on a bf16
        # base), and the PeftModel gives the reference forward (disable_adapter) and freezes every base weight.
        return get_peft_model(self.model, peft_config, adapter_name=_ADAPTER)

    def _ship(self, hidden: torch.Tensor) -> np.ndarray | torch.Tensor:
        """H_c as it travels to the samplers: in the dtype it was computed in. On GPU that is a bf16 tensor (half
        the bytes of float32: ~21 MB instead of 42 MB per critique at the 7B critic's 2.9k tokens); on the CPU
        a float32 array. The samplers and the artist learner widen it themselves."""
        if hidden.dtype == torch.bfloat16:
            return hidden.detach().cpu().clone()
        return hidden.detach().float().cpu().numpy()

    def _trained_state(self) -> dict[str, torch.Tensor]:
        return {name: full_tensor(p).cpu().clone() for name, p in self.model.named_parameters() if p.requires_grad}

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    @contextmanager
    def _reference_model(self):
        if self.peft_model is not None:
            with self.peft_model.disable_adapter():
                yield self.policy
        else:
            yield self.reference

    def _reference_log_probs(self, batch: CritiqueBatch) -> torch.Tensor:
        with torch.no_grad(), self._reference_model() as reference, self._autocast():
            _, logits = self._forward(reference, batch)
            return token_log_probs(logits, batch.response_tokens)

    def _forward(self, policy: nn.Module, batch: CritiqueBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(post-norm last-layer states ``[B, L, D]``, logits ``[B, T, V]`` at the positions that predict each
        response token, temperature applied)."""
        response_lengths = [int(n) for n in batch.response_mask.sum(dim=1).tolist()]
        hidden, logits = policy(batch.model_inputs, batch.prompt_lengths, response_lengths,
                                batch.response_tokens.shape[1])
        return hidden, logits.float() / self.temperature

    def _aligned_micro_batches(self, critiques: list[Critique], padding: Critique):
        """Yield (micro-batch, real) for this rank's critiques, then zero-weight ``padding`` passes until every
        rank has run as many passes as the busiest one."""
        batches = self._micro_batches(critiques)
        longest = int(self.parallel.max([len(batches)])[0])
        for chunk in batches:
            yield chunk, True
        for _ in range(longest - len(batches)):
            yield [padding], False

    def _micro_batches(self, critiques: list[Critique]) -> list[list[Critique]]:
        lengths = [len(c.prompt_token_ids) + len(c.completion_token_ids) for c in critiques]
        return [[critiques[i] for i in members] for members in token_budget_micro_batches(
            lengths, max_tokens=self.config.max_tokens_per_micro_batch, max_sequences=self.config.micro_batch_size)]

    def _build_batch(self, critiques: Sequence[Critique]) -> CritiqueBatch:
        return build_critique_batch(critiques, self.processor, image_token_id=self.image_token_id,
                                    spatial_merge_size=self.spatial_merge_size, device=self.device)



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


def _transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP2 shards one by one: the language model's decoder layers and the vision tower's
    blocks (Qwen2.5-VL's layout in transformers)."""
    inner = getattr(model, "model", None)
    layers = getattr(getattr(inner, "language_model", None), "layers", None)
    blocks = getattr(getattr(inner, "visual", None), "blocks", None)
    if layers is None or blocks is None:
        raise ValueError(f"{type(model).__name__} does not have Qwen2.5-VL's model.language_model.layers and "
                         f"model.visual.blocks; the critic learner shards those")
    return [*layers, *blocks]


__all__ = ["CriticLearner", "PreparedBatch", "ResponseForward", "critic_advantages", "LANGUAGE_MODEL_LINEAR_LAYERS"]
