"""Our engine in vLLM's weight-transfer framework: gloo buckets from every learner rank into a running vLLM model.

vLLM 0.32 receives trainer weights through ``vllm.distributed.weight_transfer``: an engine registered by name in
``WeightTransferEngineFactory`` lives in each worker, and ``LLM.init_weight_transfer_engine`` /
``start_weight_update`` / ``update_weights`` / ``finish_weight_update`` drive it. The engines vLLM ships are CUDA
only (NCCL, CUDA IPC) and take one trainer sender; :class:`GlooWeightTransferEngine` is ours, registered as
:data:`ENGINE_NAME`, so the same four calls run on CPU, with the protocol of :mod:`rollout.sync.weight_transport`:

- ``init_transfer_engine`` joins the sync's gloo groups (one per learner rank; blocks until all joined, or raises
  after the endpoint's timeout);
- ``start_weight_update`` / ``finish_weight_update`` open and close vLLM's layerwise reload, the path that lets
  the CPU kernels repack weights after loading (a plain ``model.load_weights`` on a loaded CPU model fails);
- ``update_weights`` streams every bucket through :class:`~critic_actor.weight_receiver.ReplicaWeights` (LoRA
  merge, delta copy) into ``model.load_weights`` and keeps a receipt (bucket digest, bytes, tensors, LoRA binding)
  that :class:`WeightReceiptExtension` hands back through ``collective_rpc``.

This module is imported only inside vLLM workers (registration from ``engines.VLLMCriticEngine``, and vLLM's
import of the worker extension in every worker process), never by the driver, which is why it may import vLLM
at module level.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine, WeightTransferInitInfo, WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

from critic_actor.weight_receiver import LoadReport, ReplicaWeights
from rollout.sync.weight_transport import SyncManifest, TransferEndpoint
from rollout.sync.transfer_group import Receipt, TransferGroup, receive_tensors

ENGINE_NAME = "photocrafter-gloo"
"""Name of :class:`GlooWeightTransferEngine` in ``WeightTransferEngineFactory`` (``WeightTransferConfig.backend``)."""
_LAYERWISE_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    """Which sync to join: its endpoint (as a dict) and this replica's receiver index."""

    endpoint: dict
    receiver_index: int


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    """The sync's manifest (as a dict, see :meth:`rollout.sync.weight_transport.SyncManifest.to_dict`)."""

    manifest: dict


class _OnlyPartialReloadNotices(logging.Filter):
    """A LoRA payload without base tensors reloads only the adapted blocks; vLLM then warns once per untouched
    layer that it 'failed to load weights' (it puts the layer's current tensors back, which is what we want).
    Drop that notice only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to load weights" not in record.getMessage()


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """Receives bucketed, per-rank-sharded weights over gloo and loads them into the worker's model."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo
    supports_draft_weight_update = False

    def __init__(self, config, vllm_config, device: torch.device, model: torch.nn.Module) -> None:
        super().__init__(config, vllm_config, device, model)
        from critic_actor.model import expected_state_shapes

        self.group: TransferGroup | None = None
        # The learner's names for the served model's parameters (a meta-device build: nothing is allocated).
        self.weights = ReplicaWeights(model_names=frozenset(expected_state_shapes(self.model_config.model)))
        self.last_receipt: dict[str, Any] | None = None
        self._partial = False

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        self._close()
        endpoint = TransferEndpoint(**init_info.endpoint)
        self.group = TransferGroup(endpoint, endpoint.receiver_rank(init_info.receiver_index))

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        self.last_receipt = None
        initialize_layerwise_reload(self.model)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self.receive_weights(self.parse_update_info(update_info))
        if self.device.type != "cpu":  # the base class synchronizes unconditionally, which raises on a CPU host
            torch.accelerator.synchronize()

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("weight transfer not initialised: call init_weight_transfer_engine first")
        manifest = SyncManifest.from_dict(update_info.manifest)
        receipt, report = Receipt(), LoadReport()
        self._partial = manifest.kind == "lora" and not manifest.lora.base_included
        try:
            mirror = self.weights.mirror_for(manifest)
            stream = self.weights.tensors_to_load(manifest, receive_tensors(self.group, manifest, receipt, mirror),
                                                  report, device=self.device)
            loaded = self.model.load_weights(stream)
            if not loaded:
                raise RuntimeError(f"vLLM loaded no parameter from the {report.tensors_loaded} tensors of version "
                                   f"{manifest.version}")
        except BaseException:
            # vLLM ends the update session on this error without calling finish_weight_update: close the
            # layerwise reload here, which puts every layer that received nothing back as it was.
            self.finish_weight_update()
            raise
        self.weights.sync_finished(manifest)
        self.last_receipt = {"version": manifest.version, "digest": receipt.digest,
                             "bytes_received": receipt.bytes_received, "tensors_received": receipt.tensors,
                             "tensors_loaded": report.tensors_loaded, "vllm_parameters_loaded": len(loaded),
                             "lora_modules_bound": report.lora_modules_bound,
                             "lora_modules_expected": report.lora_modules_expected}

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        quiet = _OnlyPartialReloadNotices() if self._partial else None
        layerwise = logging.getLogger(_LAYERWISE_LOGGER)
        if quiet:
            layerwise.addFilter(quiet)
        try:
            finalize_layerwise_reload(self.model, self.model_config)
        finally:
            if quiet:
                layerwise.removeFilter(quiet)
            self._partial = False
            self._close()

    def shutdown(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None


class WeightReceiptExtension:
    """vLLM worker extension (``worker_extension_cls``): importing it registers the engine in every worker
    process, and ``collective_rpc("photocrafter_weight_receipt")`` reads each worker's last receipt."""

    def photocrafter_weight_receipt(self) -> dict[str, Any] | None:
        engine = getattr(self, "weight_transfer_engine", None)
        return getattr(engine, "last_receipt", None)


def register() -> None:
    """Register :class:`GlooWeightTransferEngine` under :data:`ENGINE_NAME` (once per process)."""
    if ENGINE_NAME not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(ENGINE_NAME, GlooWeightTransferEngine)


register()
