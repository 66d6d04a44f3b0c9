"""What a critic replica does with the tensors of a collective weight sync, whichever engine it runs.

Owns :class:`ReplicaWeights`, the replica-side state that outlives one sync, and the rule that turns a sync's
tensor stream (:func:`rollout.sync.transfer_group.receive_tensors`) into the tensors the engine loads:

- a ``full`` payload passes through (kept as the copy a later delta sync patches, when delta sync is on);
- a ``lora`` payload carries the adapter — A and B of every adapted module — and, the first time a replica
  sees one, every base tensor of the model. That first time the replica loads the whole model (merged where
  adapted), so it serves exactly the learner's weights whatever it held before, and keeps the base tensors of
  the adapted modules' parent blocks (attention, MLP). Later payloads carry only A and B: the replica reloads
  those blocks, each tensor either its base value or the merged W = W_base + (α/r)·B·A. Whole parent blocks
  are reloaded so that engines which fuse siblings into one kernel (vLLM's ``qkv_proj``, ``gate_up_proj``)
  always receive every part of a fused layer.

The silent failure of LoRA sync — an adapter whose names match nothing, so the replica keeps serving the base
model while the learner moves on — is refused here: every module the adapter names must be a module of the
served model and find its base weight, else :class:`LoraBindingError` says how many bound. The engines
(``engines.py``, ``vllm_weight_engine.py``) call :meth:`ReplicaWeights.tensors_to_load`; the served-output
probe in ``actor.py`` checks the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rollout.sync.weight_transport import SyncManifest

LORA_FACTORS = (".lora_A.weight", ".lora_B.weight")


class LoraBindingError(RuntimeError):
    """A LoRA payload whose adapter does not bind to every module it names."""


@dataclass(slots=True)
class LoadReport:
    """What one payload turned into on the replica."""

    tensors_loaded: int = 0
    lora_modules_bound: int = 0
    lora_modules_expected: int = 0


@dataclass(slots=True)
class ReplicaWeights:
    """Replica-side weight state kept between syncs."""

    model_names: frozenset[str] = frozenset()
    """Parameter names of the served model as the learner names them (Hugging Face ``state_dict`` keys): an
    adapter module binds only if its weight is one of them."""
    lora_base: dict[str, Any] = field(default_factory=dict)
    """Base tensors of the LoRA-adapted modules' parent blocks, by the learner's (Hugging Face) names."""
    mirror: dict[str, Any] = field(default_factory=dict)
    """Every tensor of the last full sync, for delta syncs (only kept when the manifest asks for it)."""
    mirror_version: int | None = None

    def mirror_for(self, manifest: SyncManifest) -> dict[str, Any] | None:
        """The dict a sync assembles into, after checking a delta applies to the version held here."""
        if manifest.delta_from is not None and manifest.delta_from != self.mirror_version:
            raise RuntimeError(f"delta sync against version {manifest.delta_from}, but this replica holds "
                               f"{self.mirror_version}; the next sync must be dense")
        if manifest.kind != "full" or not (manifest.delta_keep or manifest.delta_from is not None):
            self.mirror, self.mirror_version = {}, None
            return None
        self.mirror_version = None  # until the sync completes
        return self.mirror

    def sync_finished(self, manifest: SyncManifest) -> None:
        if manifest.kind == "full" and manifest.delta_keep:
            self.mirror_version = manifest.version

    def tensors_to_load(self, manifest: SyncManifest, received: Iterable[tuple[str, Any]], report: LoadReport,
                        device: Any = None) -> Iterator[tuple[str, Any]]:
        """The ``(name, tensor)`` pairs the engine must load for this payload, streamed where possible; LoRA
        merges run on ``device`` (the engine's), the kept base stays in host memory."""
        if manifest.kind == "full":
            for name, tensor in received:
                report.tensors_loaded += 1
                yield name, tensor
            return
        yield from self._merged(manifest, received, report, device)

    def _merged(self, manifest: SyncManifest, received: Iterable[tuple[str, Any]], report: LoadReport,
                device: Any) -> Iterator[tuple[str, Any]]:
        lora = manifest.lora
        factors: dict[str, Any] = {}
        base: dict[str, Any] = {}
        for name, tensor in received:  # an adapter is small: take the whole payload before merging
            (factors if name.endswith(LORA_FACTORS) else base)[name] = tensor
        if lora.base_included:
            parents = tuple({module.rsplit(".", 1)[0] + "." for module in lora.modules})
            self.lora_base = {name: tensor for name, tensor in base.items() if name.startswith(parents)}
        elif base:
            raise LoraBindingError(f"LoRA payload of version {manifest.version} carries {len(base)} base tensors "
                                   f"but says it does not")
        to_load = base if lora.base_included else self.lora_base
        bound = [m for m in lora.modules if f"{m}.weight" in self.lora_base and f"{m}.weight" in self.model_names
                 and f"{m}.lora_A.weight" in factors and f"{m}.lora_B.weight" in factors]
        report.lora_modules_bound, report.lora_modules_expected = len(bound), len(lora.modules)
        if not lora.modules or len(bound) != len(lora.modules):
            unbound = [m for m in lora.modules if m not in set(bound)]
            held = "no base weights" if not self.lora_base else f"base weights of {len(self.lora_base)} tensors"
            raise LoraBindingError(
                f"LoRA adapter of version {manifest.version} bound to {len(bound)} of {len(lora.modules)} modules "
                f"(unbound e.g. {unbound[:2]}; this replica holds {held}, e.g. {sorted(self.lora_base)[:1]}): "
                f"serving it would silently keep the old weights")
        merged = {f"{m}.weight": m for m in bound}
        for name, value in to_load.items():
            module = merged.get(name)
            if module is not None:
                a, b = factors[f"{module}.lora_A.weight"], factors[f"{module}.lora_B.weight"]
                on = device or value.device
                value = (value.to(on).float() + lora.scaling * (b.to(on).float() @ a.to(on).float())).to(value.dtype)
            report.tensors_loaded += 1
            yield name, value


__all__ = ["LORA_FACTORS", "LoadReport", "LoraBindingError", "ReplicaWeights"]
