"""Several processes through torchrun: the process group, the data shards, gathering outputs.

``torchrun --nproc_per_node=N tools/train.py ...`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``;
``init_distributed`` then joins the process group (NCCL on CUDA, gloo on the CPU) and gives each
process its GPU. Without those variables everything here is the single-process identity, so a plain
``python tools/train.py`` run is unchanged.

Training: every rank draws the same seeded permutation of the training set each epoch and takes its
own slice of it (``ShardSampler``), so the union over ranks is the epoch a single process would see
and a resumed run sees the same batches again (past those a mid-epoch stop had done: ``skip``).
Evaluation: each rank runs every ``world``-th image (no padding, so no image counts twice) and
``gather_outputs`` puts the outputs back in dataset order on every rank, so every rank computes the
same metrics and takes the same schedule decisions.
"""
from __future__ import annotations

import gc
import hashlib
import logging
import os
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from ..data.collate import collate_samples
from .outputs import SHARED_FIELDS, Outputs


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Only the main process writes files, logs and TensorBoard events."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_distributed(device_name: str) -> World:
    """Join the torchrun process group if this process was started by torchrun (else a World of
    one). On CUDA each process uses the GPU of its ``LOCAL_RANK``."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return world


def leave_process_group() -> None:
    """Destroy the process group (if any) and free what still holds it, while Python is fully alive.
    ``destroy_process_group`` only drops torch's own references: a DistributedDataParallel left in a
    reference cycle (a trainer unwound by an exception) keeps gloo's worker threads running until the
    interpreter's final collection, and a worker that then frees a tensor Python made aborts the
    process (SIGABRT, "terminate called without an active exception") instead of exiting with its
    code. The collection here joins those threads first."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        gc.collect()


def wrap_ddp(module: torch.nn.Module, device: torch.device, **options) -> DistributedDataParallel:
    """``module`` in DistributedDataParallel on ``device`` (its GPU; the CPU under gloo). The trainer
    wraps each phase's step after the phase froze the rest of the model: DDP puts its all-reduce
    hooks on the parameters that require gradient when it is built, so only the phase's trainable
    parameters are exchanged, and the frozen ones, which get no gradient, cannot stall its reducer.
    ``tools/benchmark.py ddp`` measures this against one wrap of the whole model. ``options`` go to
    DistributedDataParallel."""
    return DistributedDataParallel(module, device_ids=[device.index or 0] if device.type == "cuda" else None,
                                   **options)


def current_world() -> World:
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier() -> None:
    if current_world().distributed:
        dist.barrier()


def broadcast_from_rank0(tensor: torch.Tensor) -> None:
    """Overwrite ``tensor`` in place with rank 0's values (nothing outside torchrun)."""
    if current_world().distributed:
        dist.broadcast(tensor, src=0)


def all_equal(value) -> bool:
    """Whether every rank passed an equal (picklable) value."""
    world = current_world()
    if not world.distributed:
        return True
    values = [None] * world.size
    dist.all_gather_object(values, value)
    return all(v == values[0] for v in values)


class ShardSampler(Sampler[int]):
    """This rank's slice of a permutation drawn from ``generator`` (seeded identically on every
    rank). With one process it yields exactly what ``RandomSampler(generator=...)`` yields, so a
    single-process run keeps its sample order. With several, the permutation is padded by wrapping
    around to a multiple of the world size, so every rank runs the same number of steps.
    (torch's ``DistributedSampler`` reseeds its own generator every epoch, which would change the
    single-process order of existing runs, hence this sampler.)

    An epoch of ``epoch_images`` > ``n`` (``train.epoch_images``) chains as many fresh permutations
    as it takes, the last one cut short, before the slicing: ``epoch_images`` samples, every image
    once per whole pass. Otherwise an epoch is one permutation, as always."""

    def __init__(self, n: int, generator: torch.Generator, world: World, epoch_images: int = 0):
        self.n, self.generator, self.world = n, generator, world
        self.per_epoch = max(n, epoch_images)
        self.skip = 0  # leading samples of this rank's slice left out (the batches a resumed epoch has done)

    def __len__(self) -> int:
        return -(-self.per_epoch // self.world.size)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).tolist()
        while len(order) < self.per_epoch:
            order += torch.randperm(self.n, generator=self.generator).tolist()
        order = order[:self.per_epoch]
        if self.world.size > 1:
            total = len(self) * self.world.size
            order = (order * (total // self.per_epoch + 1))[:total][self.world.rank::self.world.size]
        return iter(order[self.skip:])


class EvalShardSampler(Sampler[int]):
    """Images rank, rank + world, rank + 2 world, ... in order: each image on exactly one rank."""

    def __init__(self, n: int, world: World):
        self.indices = list(range(world.rank, n, world.size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def gather_outputs(outputs: Outputs) -> Outputs:
    """The per-image outputs of every rank concatenated and sorted by dataset index (``index``), on
    every rank; what is not per image (``outputs.SHARED_FIELDS``) is taken from this rank."""
    world = current_world()
    if not world.distributed:
        return outputs
    parts = [None] * world.size
    dist.all_gather_object(parts, outputs)
    merged = Outputs.concat(parts)
    order = torch.argsort(merged.index)
    return replace(merged.map_rows(lambda t: t[order]), **{k: getattr(outputs, k) for k in SHARED_FIELDS})


def check_same_weights(model: torch.nn.Module, world: World) -> None:
    """RuntimeError unless every rank holds the same weights (DDP averages the same gradients
    everywhere, so a difference is a bug); logs their digest."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    if not all_equal(digest.hexdigest()):
        raise RuntimeError(f"the {world.size} ranks ended with different weights")
    logging.getLogger("raccnn").info("weights identical on all %d ranks (sha256 %s)", world.size,
                                     digest.hexdigest()[:16])


def make_loaders(datasets: dict, data: dict, world: World, generator: torch.Generator, pin_memory: bool,
                 epoch_images: int = 0):
    """(train loader, its ShardSampler, validation loader) of a training run: ``data.batch_size`` per
    process, the sample order drawn from ``generator`` (which also seeds the loader's workers), at
    least ``epoch_images`` training images an epoch."""
    sampler = ShardSampler(len(datasets["train"]), generator, world, epoch_images)
    train = DataLoader(datasets["train"], batch_size=data["batch_size"], sampler=sampler,
                       drop_last=len(sampler) > data["batch_size"], num_workers=data["num_workers"],
                       generator=generator, pin_memory=pin_memory, collate_fn=collate_samples)
    val = DataLoader(datasets["val"], batch_size=data["eval_batch_size"], num_workers=data["num_workers"],
                     sampler=EvalShardSampler(len(datasets["val"]), world), collate_fn=collate_samples)
    return train, sampler, val
