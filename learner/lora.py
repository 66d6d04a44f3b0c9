"""The artist's LoRA adapters for DiffusionNFT: trained ("default"), sampling ("old"), reference (none).

Owns how the four parameter sets of ALGORITHMS.md §1.1 live in one network: two peft LoRA adapters with the
same config injected into the DiT's attention projections, switching between them for a forward pass,
disabling both for the reference prediction, the soft update old ← d·old + (1 − d)·default, and extracting or
loading one adapter's tensors by adapter-free names, merging an adapter into the base weights (the critic
learner's merged weight sync and checkpoint exports use it too), and selecting what an adapter-only weight sync
sends. It must not compute losses or step optimizers.

Adapter tensor names follow peft's saved-adapter convention, the adapter name removed:
``transformer_blocks.0.attn.to_q.lora_A.weight``. That is what :func:`adapter_state` returns, what the
samplers receive, and what peft's ``set_peft_model_state_dict`` loads into any adapter of the same config.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from learner.config import LoraConfig

TRAINED_ADAPTER = "default"
"""The adapter the optimizer trains (v_θ)."""
SAMPLING_ADAPTER = "old"
"""The adapter the samplers run (v_old); a slow copy of the trained one."""

from artist_actor.model import DIT_ATTENTION_PROJECTIONS  # noqa: F401  (the eight projections DiffusionNFT adapts)


def peft_lora_config(config: LoraConfig, default_targets: Sequence[str] = DIT_ATTENTION_PROJECTIONS):
    """A ``peft.LoraConfig`` for ``config``: rank r, scale α/r, Gaussian A and zero B (the adapter starts at 0)."""
    from peft import LoraConfig as PeftLoraConfig

    targets = list(config.target_modules) or list(default_targets)
    return PeftLoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian",
                          target_modules=targets)


def attach_nft_adapters(model: nn.Module, config: LoraConfig,
                        default_targets: Sequence[str] = DIT_ATTENTION_PROJECTIONS) -> nn.Module:
    """Inject the trained and sampling adapters into ``model`` in place; return it.

    ``default_targets`` are adapted when ``config`` names no target modules (the artist's own default,
    ``ArtistModel.lora_targets``).

    The base weights are frozen, the adapters are kept in float32 whatever the base dtype, the sampling adapter starts as an exact copy of the trained one (so the first
    rollouts come from the base model plus a zero update), and the trained adapter is the active, trainable one.
    """
    import warnings

    from peft import inject_adapter_in_model

    if not config.enabled:
        raise ValueError("learner.artist.lora.enabled is false, but DiffusionNFT trains the artist through "
                         "its LoRA adapters; set it to true")
    peft_config = peft_lora_config(config, default_targets)
    try:
        inject_adapter_in_model(peft_config, model, adapter_name=TRAINED_ADAPTER)
        with warnings.catch_warnings():
            # Two adapters in one model is the point here; peft warns about it on the second injection.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            inject_adapter_in_model(peft_config, model, adapter_name=SAMPLING_ADAPTER)
    except ValueError as error:
        raise ValueError(f"could not place LoRA on target modules {list(peft_config.target_modules)}: "
                         f"{error}") from error
    from peft.tuners.tuners_utils import cast_adapter_dtype

    for adapter in (TRAINED_ADAPTER, SAMPLING_ADAPTER):
        # A bf16 DiT gets float32 adapters: AdamW steps of ~lr·1 on bf16 weights would mostly round away.
        cast_adapter_dtype(model, adapter, autocast_adapter_dtype=True)
    for param in model.parameters():
        param.requires_grad_(False)
    soft_update_adapter(model, source=TRAINED_ADAPTER, target=SAMPLING_ADAPTER, decay=0.0)
    _activate(model, TRAINED_ADAPTER)
    return model


def _lora_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    if not layers:
        raise ValueError(f"{type(model).__name__} carries no LoRA layers; call attach_nft_adapters first")
    return layers


def _activate(model: nn.Module, adapter: str) -> None:
    # peft's set_adapter also flips requires_grad (the named adapter trainable, the others frozen). Switching
    # adapters here is only ever for no-grad forward passes, and under FSDP2 a parameter's requires_grad must
    # not change between passes, so the flags are put back at once: the trained adapter stays trainable, the
    # sampling adapter frozen, whichever one is active.
    for layer in _lora_layers(model):
        layer.set_adapter(adapter, inference_mode=adapter != TRAINED_ADAPTER)
    _restore_trainable_flags(model)


def _restore_trainable_flags(model: nn.Module) -> None:
    marker = f".{TRAINED_ADAPTER}."
    for name, param in model.named_parameters():
        if ".lora_" in name:
            param.requires_grad_(marker in name)


def adapter_parameters(model: nn.Module, adapter: str) -> dict[str, nn.Parameter]:
    """The live parameters of one adapter, keyed by adapter-free names (see the module docstring)."""
    marker = f".{adapter}."
    found = {name.replace(marker, ".", 1): param for name, param in model.named_parameters()
             if marker in name and ".lora_" in name}
    if not found:
        raise KeyError(f"model has no LoRA adapter named {adapter!r}")
    return found


def adapter_state(model: nn.Module, adapter: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Detached CPU copies of one adapter's whole tensors (optionally cast, e.g. to bf16 to halve sync bytes).

    On a sharded learner this gathers every tensor from the ranks: a collective every rank must call.
    """
    from learner.distributed import full_tensor

    return {name: full_tensor(param).to("cpu", dtype=dtype or param.dtype, copy=True).contiguous()
            for name, param in adapter_parameters(model, adapter).items()}


def local_adapter_state(model: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """Copies of the part of one adapter this rank holds (its shards; the whole tensors when not sharded),
    on the parameters' device: a snapshot cheap enough to keep per policy version."""
    from learner.distributed import local_tensor

    return {name: local_tensor(param).clone() for name, param in adapter_parameters(model, adapter).items()}


@torch.no_grad()
def load_local_adapter_state(model: nn.Module, adapter: str, state: Mapping[str, torch.Tensor]) -> None:
    """Inverse of :func:`local_adapter_state` (same model, same sharding)."""
    from learner.distributed import local_tensor

    for name, param in adapter_parameters(model, adapter).items():
        local_tensor(param).copy_(state[name])


@torch.no_grad()
def load_adapter_state(model: nn.Module, adapter: str, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` (adapter-free names, whole tensors) into one adapter; every tensor must match by name and
    shape. On a sharded learner each rank keeps its own shard of every tensor (no communication)."""
    from learner.distributed import local_tensor, shard_like

    params = adapter_parameters(model, adapter)
    missing, unknown = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unknown:
        raise KeyError(f"adapter {adapter!r} state does not match the model: missing {missing[:3]}, "
                       f"unknown {unknown[:3]} ({len(missing)} missing, {len(unknown)} unknown)")
    for name, param in params.items():
        value = state[name]
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(f"{name}: state has shape {tuple(value.shape)}, adapter has {tuple(param.shape)}")
        local_tensor(param).copy_(local_tensor(shard_like(value, param)))


@torch.no_grad()
def soft_update_adapter(model: nn.Module, *, source: str, target: str, decay: float) -> None:
    """target ← decay·target + (1 − decay)·source, tensor by tensor (decay 0 copies ``source``)."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"soft-update decay must be in [0, 1], got {decay}")
    sources = adapter_parameters(model, source)
    for name, param in adapter_parameters(model, target).items():
        param.mul_(decay).add_(sources[name].detach(), alpha=1.0 - decay)


@contextmanager
def active_adapter(model: nn.Module, adapter: str) -> Iterator[None]:
    """Forward passes inside run with ``adapter``; afterwards the trained adapter is active again.

    Switch only between whole forward passes: flipping adapters between a forward and its backward would
    change which parameters require gradients under a live autograd graph.
    """
    _activate(model, adapter)
    try:
        yield
    finally:
        _activate(model, TRAINED_ADAPTER)


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Forward passes inside run the base model alone (the reference policy v_ref)."""
    layers = _lora_layers(model)
    for layer in layers:
        layer.enable_adapters(False)
    _restore_trainable_flags(model)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        _activate(model, TRAINED_ADAPTER)


def adapter_sync_state(model: nn.Module, adapter: str, *,
                       include_base: bool) -> tuple[dict[str, torch.Tensor], list[str], float]:
    """What an adapter-only weight sync sends: (tensors by name, adapted module names, scaling α/r).

    The tensors are ``<module>.lora_A.weight`` ``[r, in]`` and ``<module>.lora_B.weight`` ``[out, r]`` of every
    module carrying ``adapter`` and, with ``include_base``, every base tensor of the model by its adapter-free
    name (what a replica that never received this adapter needs: it then serves exactly the learner's weights
    whatever it held before, and keeps the adapted blocks' base to merge later factors into). Live tensors,
    not copies.
    """
    from peft.tuners.lora import LoraLayer

    tensors: dict[str, torch.Tensor] = {}
    modules: list[str] = []
    scalings: set[float] = set()
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if adapter in getattr(module, "lora_embedding_A", {}):
            raise ValueError(f"{name}: adapter sync does not handle LoRA on embeddings; send the merged model")
        if adapter in module.lora_A:
            modules.append(name)
            scalings.add(float(module.scaling[adapter]))
            tensors[f"{name}.lora_A.weight"] = module.lora_A[adapter].weight.detach()
            tensors[f"{name}.lora_B.weight"] = module.lora_B[adapter].weight.detach()
    if not modules:
        raise KeyError(f"model has no LoRA adapter named {adapter!r}")
    if len(scalings) != 1:
        raise ValueError(f"adapter {adapter!r} scales its modules differently ({sorted(scalings)}); adapter sync "
                         f"sends one α/r, so send the merged model instead")
    if include_base:
        tensors.update({name.replace(".base_layer.", "."): tensor for name, tensor in model.state_dict().items()
                        if ".lora_" not in name})
    return tensors, modules, scalings.pop()


@torch.no_grad()
def merged_state_dict(model: nn.Module, adapter: str, *, dtype: torch.dtype | None = None,
                      keep: bool = True) -> dict[str, torch.Tensor]:
    """The base model's ``state_dict`` by its own names with ``adapter`` merged in (W + α/r · B·A), on the CPU.

    Works for any peft-injected model (the critic's ``get_peft_model`` wrapper or the DiT's injected adapters):
    LoRA tensors are dropped, ``.base_layer.`` is removed from names, and every adapted weight becomes its
    merged value (computed in float32), so the result loads into an adapter-free copy of the model with
    ``strict=True``. ``dtype`` casts every result (e.g. to the serving dtype). On a sharded learner every tensor is
    gathered from the ranks first (a collective every rank must call); ranks with ``keep=False`` take part in the
    gathers but keep nothing, so only the rank that uses the result holds the model in host memory.
    """
    from peft.tuners.lora import LoraLayer

    from learner.distributed import full_tensor

    adapted = {f"{name}.base_layer.weight": module for name, module in model.named_modules()
               if isinstance(module, LoraLayer) and adapter in module.lora_A}
    merged: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if ".lora_" in name:
            continue
        full = full_tensor(tensor)
        module = adapted.get(name)
        if module is not None:  # the factors are gathered on every rank too (collectives)
            lora_a = full_tensor(module.lora_A[adapter].weight).float()
            lora_b = full_tensor(module.lora_B[adapter].weight).float()
            if keep:
                delta = (lora_b.to(full.device) @ lora_a.to(full.device)) * module.scaling[adapter]
                full = (full.float() + delta).to(full.dtype)
        if keep:
            merged[name.replace(".base_layer.", ".")] = full.to("cpu", dtype=dtype or full.dtype, copy=True)
    return merged
