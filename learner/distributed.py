"""One learner as N data-parallel ranks: the process group, FSDP2 sharding, collectives and sharded state.

Owns everything a learner needs to run as rank r of N processes (one per GPU, or CPU processes with gloo):

- :class:`ParallelContext`: joining the learner's ``torch.distributed`` process group (NCCL on CUDA, gloo on
  CPU) by TCP rendezvous on rank 0's address, its device mesh, and the few collectives the learners use
  (sums of metrics, the largest micro-batch count, so every rank runs the same number of forward passes —
  FSDP all-gathers parameters inside every forward, and a rank that skipped one would hang the others);
- :func:`shard_model`: FSDP2 (``torch.distributed.fsdp.fully_shard``) over a model's repeated blocks and a root,
  with the mixed-precision policy (bf16 compute, fp32 gradient reduction, parameters stored in their own dtype:
  frozen bases in bf16, trained tensors as fp32 masters) and optional CPU offload of the sharded state;
- converting between full tensors and the local shards a rank holds (:func:`full_tensor`, :func:`shard_like`,
  :func:`local_rows`), and :func:`even_share`, the contiguous balanced split of work over ranks;
- sharded checkpoints with ``torch.distributed.checkpoint`` (:func:`save_sharded`, :func:`load_sharded`),
  which reshard on load, so a state written by 2 ranks loads into 1 rank or 4.

It must not know about losses, records or Ray: the learners call it, the learner groups (rollout) start the
ranks and hand them the rendezvous address.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True, slots=True)
class Rendezvous:
    """Where the ranks of one learner meet: rank 0's address and a free TCP port on it."""

    address: str
    port: int
    world_size: int
    timeout_s: float = 1800.0
    """How long a collective may wait for the other ranks before it fails (a lost rank never hangs forever)."""


def free_port() -> int:
    """A TCP port that is free on this host now (rank 0 asks; the others connect to it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


class ParallelContext:
    """This process's place among the learner's ranks, and the collectives over them.

    ``ParallelContext.single()`` is a world of one without a process group (a learner built directly in a
    test or a script); :meth:`join` makes the process a rank of a real group. Both expose the same methods, so
    learner code never branches on whether it is distributed.
    """

    def __init__(self, rank: int, world_size: int, device: torch.device, *, sharded: bool):
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.sharded = sharded
        """True when the models are sharded with FSDP2 over a process group (always the case for a joined
        group, even of one rank); False for a plain single-process learner."""
        self.mesh = None
        if sharded:
            from torch.distributed.device_mesh import init_device_mesh

            self.mesh = init_device_mesh(device.type, (world_size,))

    @classmethod
    def single(cls, device: torch.device | str | None = None) -> ParallelContext:
        device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        return cls(0, 1, device, sharded=False)

    @classmethod
    def join(cls, rank: int, rendezvous: Rendezvous, device: torch.device) -> ParallelContext:
        """Join (or create, on rank 0) the learner's process group; blocks until every rank has joined."""
        import torch.distributed as dist

        if not 0 <= rank < rendezvous.world_size:
            raise ValueError(f"rank {rank} is outside a world of {rendezvous.world_size}")
        if dist.is_initialized():
            if dist.get_world_size() != rendezvous.world_size or dist.get_rank() != rank:
                raise RuntimeError(f"this process already belongs to a process group (rank {dist.get_rank()} of "
                                   f"{dist.get_world_size()}); one learner rank per process")
        else:
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(
                backend, init_method=f"tcp://{rendezvous.address}:{rendezvous.port}", rank=rank,
                world_size=rendezvous.world_size, timeout=datetime.timedelta(seconds=rendezvous.timeout_s),
                **({"device_id": device} if device.type == "cuda" else {}))
        return cls(rank, rendezvous.world_size, device, sharded=True)

    # ------------------------------------------------------------------------------------------ queries
    @property
    def is_primary(self) -> bool:
        """Rank 0 speaks for the group (metrics, small checkpoint files)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.sharded and self.world_size > 1

    def __repr__(self) -> str:
        return f"ParallelContext(rank={self.rank}/{self.world_size}, device={self.device}, sharded={self.sharded})"

    # -------------------------------------------------------------------------------------- collectives
    def _collective_device(self) -> torch.device:
        # gloo reduces CPU tensors; NCCL only device tensors.
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over every rank (float64)."""
        return self._all_reduce(values, "SUM")

    def max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maximum of ``values`` over every rank (float64)."""
        return self._all_reduce(values, "MAX")

    def _all_reduce(self, values: Sequence[float], op: str) -> list[float]:
        if not self.distributed:
            return [float(v) for v in values]
        import torch.distributed as dist

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
        return tensor.cpu().tolist()

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Leave the process group (the rank's process is about to end or be reused)."""
        if self.sharded:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.sharded = False


# ------------------------------------------------------------------------------------------- sharding
def even_share(count: int, rank: int, world_size: int) -> range:
    """Indices ``[start, stop)`` of rank ``rank`` in a contiguous split of ``count`` items whose shares differ
    by at most one (the first ``count % world_size`` ranks take one more)."""
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def shard_model(root: nn.Module, blocks: Iterable[nn.Module], context: ParallelContext, *,
                compute_dtype: torch.dtype | None, cpu_offload: bool = False) -> nn.Module:
    """Shard ``root`` with FSDP2: each of ``blocks`` (the repeated transformer layers) is its own unit, so at
    most one block's full parameters exist at a time during forward and backward, and ``root`` takes the rest.

    ``compute_dtype`` (bf16 on GPU, None to compute in each parameter's own dtype) is the mixed-precision
    ``param_dtype``; gradients are reduced in float32, and parameters keep their storage dtype: a frozen base
    loaded in bf16 stays bf16, trained tensors stay float32 masters. ``cpu_offload`` keeps the sharded
    parameters, gradients and optimizer state in host memory (the optimizer step then runs on the CPU).
    Without a sharded context the module is returned unchanged (moved to the context's device).
    """
    if not context.sharded:
        return root.to(context.device)
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32 if compute_dtype else None)
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    blocks = list(blocks)
    for block in blocks:
        fully_shard(block, mesh=context.mesh, mp_policy=policy, offload_policy=offload)
    fully_shard(root, mesh=context.mesh, mp_policy=policy, offload_policy=offload)
    if context.world_size > 1:
        # Each rank's loss is already normalised by the GLOBAL token/sample counts, so gradients must be
        # summed over ranks, not averaged (FSDP's default divides by the world size).
        # Plain SUM reductions (gloo has no pre-multiplied sum).
        for unit in (root, *blocks):
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)
    return root


def is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a parameter or gradient: gathered from every rank when it is sharded (a
    collective: every rank must ask for the same tensors in the same order), else the tensor itself."""
    tensor = tensor.detach()
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The part of a (possibly sharded) tensor this rank holds."""
    tensor = tensor.detach()
    return tensor.to_local() if is_sharded(tensor) else tensor


def local_rows(tensor: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's dim-0 chunk of a tensor, cut like FSDP2 shards parameters (``torch.chunk`` rows): its own shard
    when the tensor is sharded, the same rows of a tensor every rank holds whole (a buffer, a gathered state),
    the tensor itself when it has no dim 0. What weight sync sends from each rank (``learner.weight_sender``)."""
    from rollout.sync.weight_transport import shard_rows

    tensor = tensor.detach()
    if is_sharded(tensor):
        return tensor.to_local()
    if tensor.dim() == 0:
        return tensor
    start, stop = shard_rows(tensor.shape[0], world_size, rank)
    return tensor[start:stop]


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` laid out like ``like``: this rank's shard of it (no communication: every rank holds ``full``)
    when ``like`` is sharded, else ``full`` on ``like``'s device and dtype."""
    full = full.detach().to(device=like.device, dtype=like.dtype)
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


# ------------------------------------------------------------------------------------ sharded checkpoints
def save_sharded(state: dict, directory: str | Path) -> None:
    """Write ``state`` (model/optimizer state dicts of DTensors or plain tensors, plus plain values) as a
    ``torch.distributed.checkpoint`` directory; every rank writes its own shards (a collective)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    Path(directory).mkdir(parents=True, exist_ok=True)
    dcp.save(state, checkpoint_id=str(directory), no_dist=not dist.is_initialized())


def load_sharded(state: dict, directory: str | Path, *, may_lack: Sequence[str] = ("optimizer",)) -> None:
    """Fill ``state`` in place from a checkpoint written by :func:`save_sharded`, resharding to this world.

    Every tensor of every section must be in the checkpoint, except in the sections named by ``may_lack``: an
    optimizer has no moments yet for a parameter that never received a gradient (e.g. the text-stream output of
    the DiT's last block, whose output is never read), while the learner it is loaded into has initialised them
    all; those keep their fresh values. The checkpoint's ``.metadata`` is read with pickle by
    ``torch.distributed.checkpoint``: load only checkpoints you wrote or trust.
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    if not (Path(directory) / ".metadata").is_file():
        raise FileNotFoundError(f"{directory} is not a sharded learner checkpoint (no .metadata)")
    saved = FileSystemReader(str(directory)).read_metadata().state_dict_metadata
    missing = [f"{section}.{name}" for section, values in state.items() if section not in may_lack
               and isinstance(values, dict) for name in values if f"{section}.{name}" not in saved]
    if missing:
        raise KeyError(f"{directory}: the checkpoint lacks {len(missing)} tensor(s) this learner has, e.g. "
                       f"{missing[:3]}; was it written with another model or LoRA config?")
    dcp.load(state, checkpoint_id=str(directory), planner=DefaultLoadPlanner(allow_partial_load=True),
             no_dist=not dist.is_initialized())


def save_learner_checkpoint(parallel: ParallelContext, state: dict, directory: str | Path, name: str,
                            meta: dict) -> Path:
    """A learner's checkpoint in ``directory``: ``state`` sharded under ``<name>/`` (every rank its shards) and
    ``<name>.json`` (``meta`` and the world size) from rank 0. Returns ``directory`` once every rank has written."""
    import json

    directory = Path(directory)
    save_sharded(state, directory / name)
    if parallel.is_primary:
        (directory / f"{name}.json").write_text(json.dumps({**meta, "world_size": parallel.world_size}))
    parallel.barrier()
    return directory


def read_learner_checkpoint_meta(directory: str | Path, name: str) -> dict:
    """The ``<name>.json`` :func:`save_learner_checkpoint` wrote into ``directory``; FileNotFoundError naming both
    when it is not there."""
    import json

    path = Path(directory) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no {name.replace('_', ' ')} checkpoint ({path.name} missing)")
    return json.loads(path.read_text())


__all__ = ["ParallelContext", "Rendezvous", "even_share", "full_tensor", "free_port", "load_sharded",
           "local_rows", "local_tensor", "read_learner_checkpoint_meta", "save_learner_checkpoint", "save_sharded",
           "shard_like", "shard_model"]
