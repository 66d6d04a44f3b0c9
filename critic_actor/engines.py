"""Critic generation engines: vLLM (default) and transformers ``generate``, behind one small interface.

Owns turning (prompt text, pixel-bounded image, sampling settings) into :class:`EngineSample` records — token
ids, the log-prob of every sampled token under the engine's *raw* distribution (full softmax of the model's
logits at temperature 1, before suppression, top-p or temperature; exactly what the learner's teacher-forced
forward recomputes), finish reason — loading new weights into the engine in place (a state dict, or a collective
sync received bucket by bucket), and the raw log-probs of a fixed token sequence (the served-output probe). It
must not know about tasks, records or Ray: :mod:`critic_actor.actor` does that.

vLLM is imported only inside :class:`VLLMCriticEngine`. With ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` the engine
core and its model live in this process, so weights are loaded in place (no restart); a tensor-parallel engine
runs its workers as processes of the replica (vLLM's multiprocessing executor). Collective syncs go through vLLM's
weight-transfer calls into our bucket engine (:mod:`critic_actor.vllm_weight_engine`), one receiver per worker.
"""

from __future__ import annotations

import logging
import os
import warnings

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

    receivers: int
    """Worker processes that each join a collective sync as one receiver (a tensor-parallel vLLM: its TP size)."""

    def receive_weights(self, endpoint: TransferEndpoint, first_receiver: int,
                        manifest: SyncManifest) -> dict[str, Any]: ...

    def prompt_log_probs(self, token_ids: Sequence[int]) -> np.ndarray: ...

    def release(self) -> str: ...

    def wake(self, tags: Sequence[str]) -> str: ...

    def shutdown(self) -> None: ...


IMPORT_NOTICE_LOGGERS = ("vllm", "torch._opaque_base", "torch._library.opaque_object", "torch.utils.cpp_extension")
"""Loggers that speak while vLLM is imported, before vLLM configures its logging: vLLM about its build (no Triton
CPU backend), torch about APIs vLLM still calls and about a CUDA toolkit a CPU host lacks. Nothing a user of this
project can act on."""

LAYERWISE_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


def _quiet_import_notices() -> None:
    """Hold the import-time notices to vLLM's own level (``VLLM_LOGGING_LEVEL``: ERROR unless the run is
    verbose, see ``rollout.env``), and its import-time FutureWarnings with them."""
    level = os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper()
    if logging.getLevelName(level) in (logging.ERROR, logging.CRITICAL):
        for name in IMPORT_NOTICE_LOGGERS:
            logging.getLogger(name).setLevel(level)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.")


class RecomputedBufferReloadNotice(logging.Filter):
    """Drops vLLM's ``<layer>: Failed to load weights`` for layers that hold buffers and no parameters.

    Every sync loads weights through vLLM's layerwise reload, which counts all of a layer's tensors as loadable,
    including buffers the model computes when it is built and no checkpoint holds: the rotary embeddings'
    cos/sin cache (``RotaryEmbedding``, ``MRotaryEmbedding``) and the vision input's normalisation constants
    (``FusedMMInputNorm``). No sync carries them, so after each one vLLM reports those layers as not loaded and
    puts their tensors back as they were — which is what they should hold. The notice is dropped for exactly
    those layers; a layer with parameters that received nothing is still reported.
    """

    def __init__(self, layers: frozenset[str]):
        super().__init__()
        self.layers = layers

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "%s: Failed to load weights" and bool(record.args)
                    and record.args[0] in self.layers)


def quiet_recomputed_buffer_notices(model: Any) -> list[str]:
    """Install :class:`RecomputedBufferReloadNotice` in this vLLM worker for ``model``'s buffer-only layers (run
    in every worker through ``LLM.apply_model``); returns their class names."""
    with_parameters = {type(m).__name__ for m in model.modules() if next(m.parameters(recurse=False), None) is not None}
    buffer_only = frozenset(type(m).__name__ for m in model.modules()
                            if next(m.buffers(recurse=False), None) is not None) - with_parameters
    reload_logger = logging.getLogger(LAYERWISE_RELOAD_LOGGER)
    for old in [f for f in reload_logger.filters if isinstance(f, RecomputedBufferReloadNotice)]:
        reload_logger.removeFilter(old)
    reload_logger.addFilter(RecomputedBufferReloadNotice(buffer_only))
    return sorted(buffer_only)


def merge_worker_receipts(receipts: Sequence[dict[str, Any] | None], workers: int) -> dict[str, Any]:
    """One replica's receipt from its workers' (one per tensor-parallel rank, each receiving every tensor): every
    worker must have received, and the same bytes; the replica reports the first worker's figures, its workers'
    count and every worker's receiver index."""
    if len(receipts) != workers or any(r is None for r in receipts):
        raise RuntimeError(f"{sum(r is not None for r in receipts)} of the engine's {workers} workers received the "
                           f"sync ({len(receipts)} answered)")
    if any(r["digest"] != receipts[0]["digest"] for r in receipts):
        raise RuntimeError(f"the engine's workers disagree on what they received: "
                           f"{[r['digest'] for r in receipts]}")
    receivers = sorted(r.get("receiver", 0) for r in receipts)
    if receivers != list(range(workers)):
        raise RuntimeError(f"the engine's workers joined as receivers {receivers}, expected 0..{workers - 1}")
    return {**receipts[0], "workers": workers}


class VLLMCriticEngine:
    """A ``vllm.LLM`` on the critic checkpoint, one image per prompt, pixel bounds from config."""

    def __init__(self, model_path: str | Path, *, dtype: str, min_pixels: int, max_pixels: int,
                 suppressed_token_ids: list[int], seed: int = 0, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.5, enforce_eager: bool = True, max_model_len: int | None = None,
                 sleep_mode: bool = False):
        """``sleep_mode``: the replica shares its GPU with a learner rank (colocated) and sleeps through the
        learner's turns; vLLM needs it at start, and has it on CUDA only."""
        _quiet_import_notices()
        from vllm import LLM
        from vllm.config import WeightTransferConfig

        from critic_actor.model import resolve_dtype
        from critic_actor.vllm_weight_engine import ENGINE_NAME

        torch_dtype = resolve_dtype(dtype)
        self._suppressed = {int(i): SUPPRESSED_LOGIT_BIAS for i in suppressed_token_ids}
        self.receivers = int(tensor_parallel_size)
        """Worker processes that each receive a collective sync (one per tensor-parallel rank)."""
        # Tensor-parallel workers as processes of this replica: the replica's actor already holds every GPU of
        # its placement-group bundle, and inside a placement group vLLM would otherwise pick its Ray executor,
        # whose worker actors then wait for GPUs that bundle no longer has.
        executor = {"distributed_executor_backend": "mp"} if tensor_parallel_size > 1 else {}
        self.sleep_mode = sleep_mode
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
            # Collective syncs arrive through vLLM's weight-transfer calls into our bucket engine; importing the
            # extension in each worker registers that engine there too.
            weight_transfer_config=WeightTransferConfig(backend=ENGINE_NAME),
            worker_extension_cls="critic_actor.vllm_weight_engine.WeightReceiptExtension",
            # The run decides whether loaders draw progress bars (rollout.env: off unless verbose).
            use_tqdm_on_load=os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "") != "1",
            **executor,
            **({"enable_sleep_mode": True} if sleep_mode else {}),
        )
        # vLLM's CPU worker replaces torch.set_num_threads with a function that skips the call and logs a
        # warning; libraries in this process call it on every request, which floods the job log with a
        # message about a skipped no-op. Keep that logger's errors only.
        logging.getLogger("vllm.v1.worker.cpu_worker").setLevel(logging.ERROR)
        self.llm.apply_model(quiet_recomputed_buffer_notices)

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

        with warnings.catch_warnings():
            # Arrays from the object store are read-only buffers; these tensors are only read (vLLM copies them
            # into its parameters), so aliasing them without a copy is safe, and torch's warning is not a problem.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensors = [(name, torch.as_tensor(value)) for name, value in named_tensors]
        # The worker's reload path maps HF names to vLLM's fused parameters and re-runs the post-load
        # processing (CPU kernels repack weights after the first load, so a plain model.load_weights fails).
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": tensors, "is_checkpoint_format": True})
        self._drop_caches()

    def receive_weights(self, endpoint: TransferEndpoint, first_receiver: int,
                        manifest: SyncManifest) -> dict[str, Any]:
        """Join a collective sync with every worker (receivers ``first_receiver`` .. ``+ receivers - 1``) and
        load what it carries; returns the workers' receipt (every worker must report the same digest)."""
        self.llm.init_weight_transfer_engine(
            {"init_info": {"endpoint": asdict(endpoint), "first_receiver": first_receiver}})
        self.llm.start_weight_update()
        self.llm.update_weights({"update_info": {"manifest": manifest.to_dict()}})
        self.llm.finish_weight_update(weight_version=str(manifest.version))
        self._drop_caches()
        return merge_worker_receipts(self.llm.collective_rpc("photocrafter_weight_receipt"), self.receivers)

    def _drop_caches(self) -> None:
        # Every cache derived from the old weights must go, on the scheduler side as well as in the worker
        # (the worker alone dropping its vision encoder outputs makes the scheduler report cache misses):
        # cached prefix KV blocks, vision encoder outputs, and the processed multi-modal items.
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()

    def release(self) -> str:
        """The learner's turn on this GPU: sleep level 1 (weights to host memory, KV cache freed) in sleep mode;
        without it (vLLM's CPU build has none) only the prefix, encoder and multi-modal caches go."""
        if self.sleep_mode:
            self.llm.sleep(level=1)
            return "vllm sleep level 1 (weights to host, KV cache freed)"
        self._drop_caches()
        return "caches (vLLM has no sleep mode here)"

    def wake(self, tags: Sequence[str]) -> str:
        """Reallocate what ``tags`` names (``weights`` before an in-place sync, ``kv_cache`` before serving)."""
        if not self.sleep_mode:
            return "nothing slept"
        self.llm.wake_up(tags=list(tags))
        return f"vllm wake_up {'+'.join(tags)}"

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
        self._device = self.model.device
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

    receivers = 1
    """One process receives a collective sync."""

    def receive_weights(self, endpoint: TransferEndpoint, first_receiver: int,
                        manifest: SyncManifest) -> dict[str, Any]:
        """Join a collective sync and load what it carries into the transformers model."""
        from critic_actor.weight_receiver import LoadReport
        from rollout.sync.receiving import Receipt, receive_tensors
        from rollout.sync.transfer_group import TransferGroup

        receipt, report = Receipt(), LoadReport()
        with TransferGroup(endpoint, endpoint.receiver_rank(first_receiver), device=self.model.device) as group:
            mirror = self._weights.mirror_for(manifest)
            # A full payload is copied into the model tensor by tensor: it may arrive as views of reused buffers.
            received = receive_tensors(group, manifest, receipt, mirror, owned=manifest.kind != "full")
            self.load_weights(self._weights.tensors_to_load(manifest, received, report, device=self.model.device))
        self._weights.sync_finished(manifest)
        return {"version": manifest.version, "digest": receipt.digest, "bytes_received": receipt.bytes_received,
                "tensors_received": receipt.tensors, "tensors_loaded": report.tensors_loaded,
                "lora_modules_bound": report.lora_modules_bound, "links": receipt.links, "workers": 1,
                "lora_modules_expected": report.lora_modules_expected}

    def release(self) -> str:
        """The learner's turn on this GPU: the weights go to host memory (on a CPU there is nothing to move)."""
        if self._device.type != "cuda":
            return "caches (weights already in host memory)"
        self.model.to("cpu")
        return "weights to host"

    def wake(self, tags: Sequence[str]) -> str:
        if self._device.type != "cuda" or "weights" not in tags:
            return "nothing slept"
        self.model.to(self._device)
        return "weights to the GPU"

    def prompt_log_probs(self, token_ids: Sequence[int]) -> np.ndarray:
        """log p(token_ids[i] | token_ids[:i]) for i ≥ 1 under the loaded weights (raw logits, temperature 1)."""
        import torch

        ids = torch.tensor([list(token_ids)], device=self.model.device)
        with torch.no_grad():
            logits = self.model(input_ids=ids).logits[0, :-1].float()
        return logits.log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0].double().cpu().numpy()

    def shutdown(self) -> None:
        self.model = None
