"""Critic generation engines: vLLM (default) and transformers ``generate``, behind one small interface.

Owns turning (prompt text, pixel-bounded image, sampling settings) into :class:`EngineSample` records — token
ids, the log-prob of every sampled token under the engine's *raw* distribution (full softmax of the model's
logits at temperature 1, before suppression, top-p or temperature; exactly what the learner's teacher-forced
forward recomputes), finish reason — loading new weights into the engine in place (a state dict, or a collective
sync received bucket by bucket), and the raw log-probs of a fixed token sequence (the served-output probe). It
must not know about tasks, records or Ray: :mod:`critic_actor.actor` does that.

vLLM is imported only inside :class:`VLLMCriticEngine`. With ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` the engine
core and its model live in this process, so weights are loaded in place (no restart). Collective syncs go through
vLLM's weight-transfer calls with our gloo engine (:mod:`critic_actor.vllm_weight_engine`).
"""

from __future__ import annotations

import logging

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rollout.sync.weight_transport import SyncManifest, TransferEndpoint

SUPPRESSED_LOGIT_BIAS = -100.0
"""vLLM clamps logit_bias to ±100; at -100 a suppressed token's probability is ~e^-100 (never sampled)."""


@dataclass(frozen=True, slots=True)
class SamplingSpec:
    """Sampling settings of one generate call."""

    n: int
    """Responses per prompt."""
    temperature: float
    """0 = greedy."""
    top_p: float
    max_new_tokens: int
    seeds: tuple[int, ...]
    """One seed per prompt (same length as the prompts), so a prompt's samples do not depend on its batch."""


@dataclass(frozen=True, slots=True)
class EnginePrompt:
    """One prompt: chat-formatted text with one image placeholder, and the pixel-bounded image."""

    text: str
    image: np.ndarray


@dataclass(slots=True)
class EngineSample:
    """One generated response."""

    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: np.ndarray
    text: str
    finish_reason: str


class CriticEngine(Protocol):
    def generate(self, prompts: list[EnginePrompt], spec: SamplingSpec) -> list[list[EngineSample]]: ...

    def load_weights(self, named_tensors: Iterable[tuple[str, "object"]]) -> None: ...

    def receive_weights(self, endpoint: TransferEndpoint, receiver_index: int,
                        manifest: SyncManifest) -> dict[str, Any]: ...

    def prompt_log_probs(self, token_ids: Sequence[int]) -> np.ndarray: ...

    def shutdown(self) -> None: ...


class VLLMCriticEngine:
    """A ``vllm.LLM`` on the critic checkpoint, one image per prompt, pixel bounds from config."""

    def __init__(self, model_path: str | Path, *, dtype: str, min_pixels: int, max_pixels: int,
                 suppressed_token_ids: list[int], seed: int = 0, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.5, enforce_eager: bool = True, max_model_len: int | None = None):
        from vllm import LLM
        from vllm.config import WeightTransferConfig

        from critic_actor.model import resolve_dtype
        from critic_actor.vllm_weight_engine import ENGINE_NAME

        torch_dtype = resolve_dtype(dtype)
        self._suppressed = {int(i): SUPPRESSED_LOGIT_BIAS for i in suppressed_token_ids}
        self.llm = LLM(
            model=str(model_path),
            dtype=str(torch_dtype).removeprefix("torch."),
            seed=seed,
            enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            limit_mm_per_prompt={"image": 1, "video": 0},
            mm_processor_kwargs={"size": {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}},
            logprobs_mode="raw_logprobs",
            disable_log_stats=True,
            # Collective syncs arrive through vLLM's weight-transfer calls into our gloo engine; importing the
            # extension in each worker registers that engine there too.
            weight_transfer_config=WeightTransferConfig(backend=ENGINE_NAME),
            worker_extension_cls="critic_actor.vllm_weight_engine.WeightReceiptExtension",
        )
        # vLLM's CPU worker replaces torch.set_num_threads with a function that skips the call and logs a
        # warning; libraries in this process call it on every request, which floods the job log with a
        # message about a skipped no-op. Keep that logger's errors only.
        logging.getLogger("vllm.v1.worker.cpu_worker").setLevel(logging.ERROR)

    def generate(self, prompts: list[EnginePrompt], spec: SamplingSpec) -> list[list[EngineSample]]:
        from PIL import Image
        from vllm import SamplingParams

        requests, params = [], []
        for prompt, seed in zip(prompts, spec.seeds, strict=True):
            requests.append({"prompt": prompt.text, "multi_modal_data": {"image": Image.fromarray(prompt.image)}})
            params.append(SamplingParams(
                n=spec.n, temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_new_tokens,
                seed=seed, logprobs=0, logit_bias=dict(self._suppressed) or None, skip_special_tokens=True,
            ))
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        results = []
        for output in outputs:
            samples = []
            for completion in output.outputs:
                token_ids = list(completion.token_ids)
                logprobs = np.array([step[token].logprob for step, token in zip(completion.logprobs, token_ids)],
                                    dtype=np.float32)
                samples.append(EngineSample(prompt_token_ids=list(output.prompt_token_ids), token_ids=token_ids,
                                            logprobs=logprobs, text=completion.text,
                                            finish_reason="length" if completion.finish_reason == "length" else "stop"))
            results.append(samples)
        return results

    def load_weights(self, named_tensors: Iterable[tuple[str, object]]) -> None:
        import torch

        tensors = [(name, torch.as_tensor(value)) for name, value in named_tensors]
        # The worker's reload path maps HF names to vLLM's fused parameters and re-runs the post-load
        # processing (CPU kernels repack weights after the first load, so a plain model.load_weights fails).
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": tensors, "is_checkpoint_format": True})
        self._drop_caches()

    def receive_weights(self, endpoint: TransferEndpoint, receiver_index: int,
                        manifest: SyncManifest) -> dict[str, Any]:
        """Join a collective sync and load what it carries; returns the workers' receipt (they must agree)."""
        self.llm.init_weight_transfer_engine(
            {"init_info": {"endpoint": asdict(endpoint), "receiver_index": receiver_index}})
        self.llm.start_weight_update()
        self.llm.update_weights({"update_info": {"manifest": manifest.to_dict()}})
        self.llm.finish_weight_update(weight_version=str(manifest.version))
        self._drop_caches()
        receipts = self.llm.collective_rpc("photocrafter_weight_receipt")
        if any(r is None or r["digest"] != receipts[0]["digest"] for r in receipts):
            raise RuntimeError(f"the engine's workers disagree on what they received: {receipts}")
        return receipts[0]

    def _drop_caches(self) -> None:
        # Every cache derived from the old weights must go, on the scheduler side as well as in the worker
        # (the worker alone dropping its vision encoder outputs makes the scheduler report cache misses):
        # cached prefix KV blocks, vision encoder outputs, and the processed multi-modal items.
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()

    def prompt_log_probs(self, token_ids: Sequence[int]) -> np.ndarray:
        """log p(token_ids[i] | token_ids[:i]) for i ≥ 1 under the served weights (raw logits, temperature 1)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        output = self.llm.generate([{"prompt_token_ids": list(token_ids)}], params, use_tqdm=False)[0]
        return np.array([step[token].logprob for step, token in zip(output.prompt_logprobs[1:], token_ids[1:])],
                        dtype=np.float64)

    def shutdown(self) -> None:
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is not None:
            del llm
            import gc

            gc.collect()


class TransformersCriticEngine:
    """``generate`` of the transformers model: slower, but runs wherever transformers does."""

    def __init__(self, model_path: str | Path, *, dtype: str, min_pixels: int, max_pixels: int,
                 suppressed_token_ids: list[int], device: str | None = None):
        from critic_actor.model import load_critic, load_critic_processor

        from critic_actor.weight_receiver import ReplicaWeights

        self.model, _ = load_critic(model_path, dtype=dtype, device=device)
        self.processor = load_critic_processor(model_path, min_pixels=min_pixels, max_pixels=max_pixels)
        self._weights = ReplicaWeights(model_names=frozenset(self.model.state_dict()))
        self._suppressed = list(suppressed_token_ids)
        eos = self.model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos])
        self._pad = self.model.generation_config.pad_token_id

    def generate(self, prompts: list[EnginePrompt], spec: SamplingSpec) -> list[list[EngineSample]]:
        import torch
        from PIL import Image

        results = []
        for prompt, seed in zip(prompts, spec.seeds, strict=True):
            inputs = self.processor(text=[prompt.text], images=[Image.fromarray(prompt.image)], return_tensors="pt",
                                    return_mm_token_type_ids=True).to(self.model.device)
            prompt_ids = inputs["input_ids"][0].tolist()
            greedy = spec.temperature <= 0
            # Explicit values for every knob: real checkpoints ship generation configs (Qwen2.5-VL-Instruct:
            # top_k 1, repetition penalty 1.05) that would otherwise silently change the rollout distribution.
            sampling = {"do_sample": True, "temperature": spec.temperature, "top_p": spec.top_p, "top_k": 0} \
                if not greedy else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
            sampling["repetition_penalty"] = 1.0
            torch.manual_seed(seed)
            with torch.no_grad():
                out = self.model.generate(**inputs, **sampling, max_new_tokens=spec.max_new_tokens,
                                          num_return_sequences=1 if greedy else spec.n,
                                          suppress_tokens=self._suppressed or None,
                                          output_logits=True, return_dict_in_generate=True, pad_token_id=self._pad)
            generated = out.sequences[:, len(prompt_ids):]
            # Raw logits (before suppression/temperature), the same distribution the vLLM engine reports.
            logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1)
            token_logprobs = logprobs.gather(-1, generated.unsqueeze(-1)).squeeze(-1)
            samples = []
            for row in range(generated.shape[0]):
                ids = generated[row].tolist()
                length, finish = len(ids), "length"
                for position, token in enumerate(ids):
                    if token in self._eos:
                        length, finish = position + 1, "stop"
                        break
                ids = ids[:length]
                samples.append(EngineSample(
                    prompt_token_ids=prompt_ids, token_ids=ids,
                    logprobs=token_logprobs[row, :length].cpu().numpy().astype(np.float32),
                    text=self.processor.tokenizer.decode(ids, skip_special_tokens=True), finish_reason=finish))
            if greedy:  # transformers refuses n > 1 greedy sequences; they would all be identical anyway
                samples = [replace(samples[0], token_ids=list(samples[0].token_ids)) for _ in range(spec.n)]
            results.append(samples)
        return results

    def load_weights(self, named_tensors: Iterable[tuple[str, object]]) -> None:
        import torch

        own = self.model.state_dict()
        unknown = []
        with torch.no_grad():
            for name, value in named_tensors:
                if name not in own:
                    unknown.append(name)
                    continue
                own[name].copy_(torch.as_tensor(value).to(own[name].dtype))
        if unknown:
            raise KeyError(f"{len(unknown)} weight names are not parameters of the critic, e.g. {unknown[:3]}")

    def receive_weights(self, endpoint: TransferEndpoint, receiver_index: int,
                        manifest: SyncManifest) -> dict[str, Any]:
        """Join a collective sync and load what it carries into the transformers model."""
        from critic_actor.weight_receiver import LoadReport
        from rollout.sync.transfer_group import Receipt, TransferGroup, receive_tensors

        receipt, report = Receipt(), LoadReport()
        with TransferGroup(endpoint, endpoint.receiver_rank(receiver_index)) as group:
            mirror = self._weights.mirror_for(manifest)
            self.load_weights(self._weights.tensors_to_load(
                manifest, receive_tensors(group, manifest, receipt, mirror), report, device=self.model.device))
        self._weights.sync_finished(manifest)
        return {"version": manifest.version, "digest": receipt.digest, "bytes_received": receipt.bytes_received,
                "tensors_received": receipt.tensors, "tensors_loaded": report.tensors_loaded,
                "lora_modules_bound": report.lora_modules_bound,
                "lora_modules_expected": report.lora_modules_expected}

    def prompt_log_probs(self, token_ids: Sequence[int]) -> np.ndarray:
        """log p(token_ids[i] | token_ids[:i]) for i ≥ 1 under the loaded weights (raw logits, temperature 1)."""
        import torch

        ids = torch.tensor([list(token_ids)], device=self.model.device)
        with torch.no_grad():
            logits = self.model(input_ids=ids).logits[0, :-1].float()
        return logits.log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0].double().cpu().numpy()

    def shutdown(self) -> None:
        self.model = None
