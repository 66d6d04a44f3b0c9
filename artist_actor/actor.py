"""ArtistSamplerActor: one sampler replica that turns (photo, critique conditioning) records into K edits each.

Owns one loaded artist, its sampling ("old") LoRA adapter and the policy version it serves. Records in,
records out: ``sample`` resolves image / H_c handles, derives each edit's seed from (base seed, step, task,
critique, edit index), runs :class:`artist_actor.sampler.FlowMatchSampler`, and returns ``Edit`` records tagged
with the artist and critic versions, plus a ``RejectedRecord`` for every critique it could not use (so one bad
record never stops a run). ``set_weights`` loads the old-policy adapter tensors the learner sends, handed over
whole (object store) or received bucket by bucket from the learner's ranks (``receive_weights``, the collective
path of :mod:`rollout.sync.weight_transport`); the adapter is float32 whatever the DiT's dtype, as the learner's is,
so a bf16 sampler serves exactly the learner's v_old.

A sampler colocated with an artist-learner rank (one GPU, taking turns) frees its activations on ``release``
— and moves the DiT to host memory when the learner's peak would not fit beside it (``offload``) — and takes the
GPU back on ``wake``; in between it refuses to sample. Both report the process's memory around the change
(:mod:`rollout.cluster.residency`).

A plain class: ``ArtistSamplerGroup`` applies ``ray.remote``; unit tests construct it directly. It must not
train, score or talk to other actors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from artist_actor.config import ArtistConfig
from rollout.cluster.startup import actor_device
from rollout.records.types import Conditioning, Edit, PhotoTask, RejectedRecord
from rollout.sync.links import worker_members
from rollout.sync.weight_transport import SyncManifest, TransferEndpoint

SAMPLING_ADAPTER = "old"
"""Name of the LoRA adapter the sampler runs (DiffusionNFT's sampling policy v_old)."""


@dataclass(slots=True)
class ArtistSampleResult:
    """What one ``sample`` call produced."""

    edits: list[Edit] = field(default_factory=list)
    """K edits per usable critique, in input order (critique-major, then edit index)."""
    rejected: list[RejectedRecord] = field(default_factory=list)
    """Critiques that could not be sampled, with the reason."""


def edit_seed(base_seed: int, step: int, task_id: str, critique_index: int, edit_index: int) -> int:
    """A stable 63-bit seed per edit: the same record at the same step always gets the same noise."""
    key = f"{base_seed}:{step}:{task_id}:{critique_index}:{edit_index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def resolve_handles(handles: Mapping[Any, Any]) -> tuple[dict[Any, Any], dict[Any, str]]:
    """Resolve ImageHandle-style values (arrays, ``ray.ObjectRef``s, image paths, tensors) into arrays.

    Returns ``(arrays, errors)`` keyed like ``handles``; object refs are fetched in one ``ray.get``.
    """
    arrays: dict[Any, Any] = {}
    errors: dict[Any, str] = {}
    refs = {key: handle for key, handle in handles.items() if type(handle).__name__ == "ObjectRef"}
    if refs:
        import ray

        try:
            arrays.update(zip(refs, ray.get(list(refs.values()))))
        except Exception:  # one lost object must not take the whole batch down: retry one by one
            for key, ref in refs.items():
                try:
                    arrays[key] = ray.get(ref)
                except Exception as single:
                    errors[key] = f"{type(single).__name__}: {single}"
        for key, value in list(arrays.items()):
            if hasattr(value, "numpy"):  # H_c shipped as a bf16 tensor by a GPU learner
                arrays[key] = _resolve_local(value)
    for key, handle in handles.items():
        if key in refs:
            continue
        try:
            arrays[key] = _resolve_local(handle)
        except (TypeError, OSError, ValueError) as error:
            errors[key] = str(error)
    return arrays, errors


def _resolve_local(handle: Any) -> Any:
    if isinstance(handle, np.ndarray):
        return handle
    if isinstance(handle, str):
        from PIL import Image

        with Image.open(handle) as image:
            return np.asarray(image.convert("RGB"))
    if hasattr(handle, "numpy"):  # a torch tensor; bf16 has no numpy dtype, so widen first
        return handle.detach().cpu().float().numpy() if handle.is_floating_point() else handle.detach().cpu().numpy()
    raise TypeError(f"cannot resolve a {type(handle).__name__} into an array")


class ArtistSamplerActor:
    """One artist sampler replica (dashboard name ``artist-sampler-<index>``)."""

    def __init__(
        self,
        index: int,
        artist_path: str,
        config: ArtistConfig | Mapping[str, Any],
        *,
        lora_alpha: float = 64.0,
        lora_targets: Sequence[str] | None = None,
        device: str | None = None,
        num_threads: int | None = None,
        images_as_refs: bool = False,
        cpu_fallback: bool = False,
    ):
        import torch

        from artist_actor.model import load_artist
        from artist_actor.sampler import FlowMatchSampler

        if num_threads:
            # Replicas share cores; unpinned torch threads oversubscribe them (measured 10× slowdowns).
            torch.set_num_threads(int(num_threads))
        self.index = index
        self.config = config if isinstance(config, ArtistConfig) else ArtistConfig.model_validate(dict(config))
        if device is None:
            device = actor_device(f"artist-sampler-{index}", self.config.gpus_per_sampler, cpu_fallback)
        cfg = self.config
        self.model = load_artist(artist_path, dtype=cfg.dtype, device=device, codec=cfg.codec)
        self.sampler = FlowMatchSampler(self.model, num_steps=cfg.num_steps, solver=cfg.solver,
                                        guidance_scale=cfg.guidance_scale, drop_prefix_tokens=cfg.drop_prefix_tokens,
                                        resolution=cfg.resolution, max_batch_size=cfg.max_batch_size,
                                        exploration=cfg.exploration)
        self.lora_alpha = float(lora_alpha)
        # The learner's adapter targets: the configured list, else the artist's own default (artist_lora_targets).
        self.lora_targets = tuple(lora_targets or self.model.lora_targets)
        self.images_as_refs = images_as_refs
        self._version = 0
        self._lora_rank: int | None = None
        self._released = False
        self._offloaded = False

    def ready(self) -> dict[str, Any]:
        """Identity and what the replica serves; returns once the model is loaded."""
        return {"role": "artist-sampler", "index": self.index, "policy_version": self._version,
                "hidden_size": self.model.hidden_size, "codec": self.model.codec.name,
                "device": str(self.model.device), "dtype": str(self.model.dtype).removeprefix("torch."),
                "sync_members": worker_members(self.model.device)}

    def policy_version(self) -> int:
        return self._version

    def sample(
        self,
        tasks: Sequence[PhotoTask],
        conditioning: Sequence[Conditioning],
        k: int | None = None,
        step: int = 0,
        images_apart: bool = False,
    ) -> ArtistSampleResult | tuple:
        """K edits for every conditioning record (its photo is the task with the same ``task_id``).

        ``images_apart``: return ``(result, image_0, …, image_{n−1})`` instead, one image per (record, edit) slot
        in input order (``None`` for a refused record's slots), the edits' ``image`` left ``None``. Called with
        ``num_returns = 1 + n``, each image is then a return value of the call, owned by the caller: it outlives
        this replica, so a sampler lost after it answered loses none of its edits.
        """
        from artist_actor.sampler import EditRequest

        if self._released:
            raise RuntimeError(f"{self!r} released its GPU for the learner's turn; wake it before it samples")
        k = int(k or self.config.edits_per_critique)
        photos = {task.task_id: task for task in tasks}
        result = ArtistSampleResult()
        requests: list[EditRequest] = []
        owners: list[tuple[Conditioning, int]] = []
        # Fetch every handle once, all object-store reads in one round trip (K edits share one photo and H_c).
        wanted = {task.task_id: task.input for task in tasks if any(c.task_id == task.task_id for c in conditioning)}
        images, image_errors = resolve_handles(wanted)
        hiddens, hidden_errors = resolve_handles({(c.task_id, c.critique_index): c.hidden for c in conditioning})
        for record in conditioning:
            record_id = f"{record.task_id}#{record.critique_index}"
            key = (record.task_id, record.critique_index)
            if record.task_id not in photos:
                reason = f"no task {record.task_id!r} in this batch"
            elif record.task_id in image_errors or key in hidden_errors:
                reason = f"could not read the photo or H_c: {image_errors.get(record.task_id) or hidden_errors[key]}"
            else:
                reason = ""
            if not reason:
                image = np.asarray(images[record.task_id])
                hidden = np.asarray(hiddens[key], dtype=np.float32)
                reason = self.sampler.check(EditRequest(condition_image=image, hidden=hidden, mask=record.mask, seed=0))
            if reason:
                result.rejected.append(RejectedRecord(record_id=record_id, stage="artist", reason=reason))
                continue
            for edit_index in range(k):
                seed = edit_seed(self.config.seed, step, record.task_id, record.critique_index, edit_index)
                requests.append(EditRequest(condition_image=image, hidden=hidden, mask=record.mask, seed=seed))
                owners.append((record, edit_index))
        slots: dict[tuple[str, int, int], np.ndarray] = {}
        for (record, edit_index), sampled in zip(owners, self.sampler.sample(requests)):
            if images_apart:
                slots[(record.task_id, record.critique_index, edit_index)] = sampled.image
            result.edits.append(Edit(
                task_id=record.task_id, critique_index=record.critique_index, edit_index=edit_index,
                seed=sampled.seed, image=None if images_apart else self._publish(sampled.image), x0=sampled.x0,
                sigmas=sampled.sigmas, artist_version=self._version, critic_version=record.critic_version))
        if not images_apart:
            return result
        return (result, *[slots.get((record.task_id, record.critique_index, edit_index))
                          for record in conditioning for edit_index in range(k)])

    def _publish(self, image: np.ndarray) -> Any:
        if not self.images_as_refs:
            return image
        import ray

        # Edits travel by reference: the controller routes refs, the reward workers fetch the pixels. Each put
        # costs ~1.2 ms of object-store IPC here (measured; overlapping puts with sampling on a thread gained
        # nothing), which is the sampler actor's main overhead over the bare loop at the embedded size.
        return ray.put(image)

    def set_weights(self, version: int, lora_state: Mapping[str, Any]) -> int:
        """Serve ``version``: load the sampling adapter's tensors; returns the number of tensors loaded.

        ``lora_state`` maps adapter-free peft names (``transformer_blocks.0.attn.to_q.lora_A.weight``; a
        ``base_model.model.`` prefix is accepted) to tensors or arrays. The adapter (rank from the tensors,
        α from the constructor) is injected on first use; an empty state keeps the base model. Any name or
        shape that does not match the adapter raises, leaving the previous weights and version in place.
        """
        import torch

        # torch.tensor copies the (small) adapter: arrays from the object store are read-only buffers.
        state = {_adapter_free(name): torch.tensor(np.asarray(value)) if not torch.is_tensor(value) else value
                 for name, value in lora_state.items()}
        if state:
            params = self._adapter_parameters(_rank_of(state))
            missing, unknown = sorted(set(params) - set(state)), sorted(set(state) - set(params))
            if missing or unknown:
                raise KeyError(f"{self!r}: LoRA state does not match the sampling adapter: {len(missing)} missing "
                               f"(e.g. {missing[:2]}), {len(unknown)} unknown (e.g. {unknown[:2]})")
            for name, param in params.items():
                if tuple(state[name].shape) != tuple(param.shape):
                    raise ValueError(f"{self!r}: {name} has shape {tuple(state[name].shape)}, the adapter "
                                     f"expects {tuple(param.shape)}")
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(state[name].to(param.device, param.dtype))
        self._version = int(version)
        return len(state)

    def receive_weights(self, version: int, endpoint: TransferEndpoint, receiver_index: int,
                        manifest: SyncManifest | Mapping[str, Any]) -> dict[str, Any]:
        """Join a collective sync as receiver ``receiver_index`` and serve the adapter it carries as ``version``.

        Returns ``{"policy_version", "digest", "bytes_received", "tensors"}``; the digest of the bucket checksums
        lets the group check every replica received what the learner sent. A transfer that fails, or an adapter
        that does not match the sampling adapter, raises and leaves the previous weights and version in place.
        """
        from rollout.sync.receiving import Receipt, receive_tensors
        from rollout.sync.transfer_group import TransferGroup

        manifest = manifest if isinstance(manifest, SyncManifest) else SyncManifest.from_dict(manifest)
        if manifest.version != version:
            raise ValueError(f"manifest is for version {manifest.version}, not {version}")
        receipt = Receipt()
        with TransferGroup(endpoint, endpoint.receiver_rank(receiver_index), device=self.model.device) as group:
            tensors = dict(receive_tensors(group, manifest, receipt))
        self.set_weights(version, tensors)
        return {"policy_version": version, "digest": receipt.digest, "bytes_received": receipt.bytes_received,
                "tensors": receipt.tensors, "links": receipt.links}

    # ------------------------------------------------------------------ turns on a shared GPU
    def release(self, offload: bool = False) -> dict[str, Any]:
        """Give the shared GPU to the learner: free the activations and caches, and with ``offload`` move the DiT
        and codec to host memory (on a CPU there is nothing to move); the memory report around it."""
        from rollout.cluster.residency import measured

        def change() -> str:
            self._released = True
            if offload and self.model.device.type == "cuda":
                self._device = self.model.device
                self.model.transformer.to("cpu")
                _codec_to(self.model.codec, "cpu")
                self._offloaded = True
                return "DiT and codec to host"
            return "activations and caches"

        return measured(f"artist-sampler-{self.index}", "release", change)

    def wake(self, tags: Sequence[str] = ("weights", "kv_cache")) -> dict[str, Any]:
        """Take the shared GPU back: the DiT returns to it when it was offloaded (``weights`` in ``tags``); a
        sampler samples again once woken for anything else too (it keeps no cache between calls)."""
        from rollout.cluster.residency import measured

        def change() -> str:
            how = "awake"
            if self._offloaded and "weights" in tags:
                self.model.transformer.to(self._device)
                _codec_to(self.model.codec, self._device)
                self._offloaded, how = False, "DiT and codec to the GPU"
            self._released = self._offloaded
            return how

        return measured(f"artist-sampler-{self.index}", "wake", change)

    def _adapter_parameters(self, rank: int) -> dict[str, Any]:
        transformer = self.model.transformer
        if self._lora_rank is None:
            from peft import LoraConfig, inject_adapter_in_model

            config = LoraConfig(r=rank, lora_alpha=self.lora_alpha, target_modules=list(self.lora_targets),
                                init_lora_weights=False)
            inject_adapter_in_model(config, transformer, adapter_name=SAMPLING_ADAPTER)
            # peft creates the adapter in the base weights' dtype. The learner keeps its adapters in float32
            # on any DiT (a soft-updated old adapter would round away in bf16) and computes v_old with them; both
            # sync paths deliver those float32 tensors unrounded (the collective manifest names float32 for every
            # adapter tensor whatever the DiT's dtype), so serving them in float32 makes the samplers' policy
            # exactly that v_old. LoRA is ~1 % of the DiT's weights: the float32 adapter matmuls cost little.
            from peft.tuners.tuners_utils import cast_adapter_dtype

            cast_adapter_dtype(transformer, SAMPLING_ADAPTER, autocast_adapter_dtype=True)
            transformer.requires_grad_(False)
            self._lora_rank = rank
        elif rank != self._lora_rank:
            raise ValueError(f"{self!r}: LoRA rank changed from {self._lora_rank} to {rank}; restart the samplers "
                             f"with the new adapter config")
        marker = f".{SAMPLING_ADAPTER}."
        return {name.replace(marker, ".", 1): param for name, param in transformer.named_parameters()
                if marker in name and ".lora_" in name}

    def __repr__(self) -> str:
        # getattr: Ray formats a constructor's failure with repr, before the version exists.
        return f"ArtistSamplerActor(artist-sampler-{self.index}, policy_version={getattr(self, '_version', None)})"


def _codec_to(codec: Any, device: Any) -> None:
    vae = getattr(codec, "vae", None)  # the pixel-unshuffle codec holds no weights
    if vae is not None:
        vae.to(device)


def _adapter_free(name: str) -> str:
    return name.removeprefix("base_model.model.")


def _rank_of(state: Mapping[str, Any]) -> int:
    for name, tensor in state.items():
        if name.endswith("lora_A.weight"):
            return int(tensor.shape[0])
    raise KeyError("LoRA state has no lora_A.weight tensors")
