"""Data-parallel training on torch.distributed.

`torchrun` starts one process per worker and gives each the environment variables RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. `init_from_environment` joins the
process group they describe: gloo when the model trains on the CPU, NCCL on CUDA, where
each process takes the GPU numbered by its LOCAL_RANK. A process started without
torchrun, or with a world size of 1, joins no group and trains alone.

Every worker reads its share of each global minibatch (CTFReader's worker_rank and
num_workers). `wrap_model` puts the model into DistributedDataParallel, which copies
rank 0's weights to every worker at the start and sums the workers' gradients during
the backward pass. It sums where DDP's default hook averages, because CNTK's update is
W <- W - lr * (sum of the per-sequence gradients over the global minibatch), and the
sum over workers of their partial sums is that gradient.
"""

import gc
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from seqlstm.embedding import SparseEmbedding

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)  # torch.distributed's default for gloo and NCCL


class WorkerLostError(RuntimeError):
    """A collective operation failed, usually because another worker stopped."""


@dataclass(frozen=True)
class Worker:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str  # "gloo" or "nccl"


def environment_world_size() -> int:
    """Return WORLD_SIZE as torchrun sets it, or 1 for a process started without it."""
    return _environment_int("WORLD_SIZE", default=1)


def environment_rank() -> int:
    """Return RANK as torchrun sets it, or 0 for a process started without it."""
    return _environment_int("RANK", default=0)


def rank_and_world_size() -> tuple[int, int]:
    """Return (rank, world_size) of the initialized process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_environment(device_type: str, timeout: timedelta = DEFAULT_TIMEOUT):
    """Join the process group that torchrun's environment variables describe.

    Args:
        device_type: "cpu" selects the gloo backend, "cuda" the NCCL backend and the GPU
            numbered LOCAL_RANK.
        timeout: how long a collective operation waits for the other workers before it
            fails.

    Returns:
        a Worker, or None when WORLD_SIZE is unset or 1 (nothing is initialized).

    Raises:
        ValueError: a torchrun variable is missing or not an integer, or device_type is
            not "cpu" or "cuda".
        RuntimeError: CUDA was requested and this process's LOCAL_RANK has no GPU.
    """
    world_size = environment_world_size()
    if world_size == 1:
        return None
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}")
    rank = _environment_int("RANK")
    local_rank = _environment_int("LOCAL_RANK")
    # NOTE: the tests run gloo on the CPU only; the NCCL branch has not been run.
    if device_type == "cuda":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if local_rank >= visible:
            raise RuntimeError(
                f"rank {rank} has LOCAL_RANK {local_rank}, but this machine shows "
                f"{visible} CUDA devices; start at most {visible} processes per node "
                f"with --device cuda"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            store=_restart_store(world_size, timeout),
            rank=rank if _uses_agent_store() else -1,
            world_size=world_size if _uses_agent_store() else -1,
            timeout=timeout,
            device_id=device if backend == "nccl" else None,
        )
    logger.info(
        "joined the %s process group as rank %d of %d on %s",
        backend,
        dist.get_rank(),
        dist.get_world_size(),
        device,
    )
    return Worker(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def _uses_agent_store() -> bool:
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def _restart_store(world_size: int, timeout: timedelta):
    """Return the key-value store for the process group, or None for torch's default
    (env://) when no torchrun agent serves one.

    The store that torchrun's agent serves at MASTER_ADDR:MASTER_PORT outlives the
    workers. After a restart (--max-restarts), the new workers would read the
    connection keys that the failed ones wrote and fail to connect, as seen with
    torch 2.14 and both the static and the c10d rendezvous. So each restart gets its
    own key prefix, numbered by TORCHELASTIC_RESTART_COUNT.
    """
    if not _uses_agent_store():
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        _environment_int("MASTER_PORT"),
        world_size,
        is_master=False,
        timeout=timeout,
    )
    restart = _environment_int("TORCHELASTIC_RESTART_COUNT", default=0)
    return dist.PrefixStore(f"seqlstm/restart_{restart}/", store)


def shut_down() -> None:
    """Leave the process group, if this process joined one.

    Call it once the DistributedDataParallel wrapper is unreachable. Its reducer
    refers to the process group, so the garbage collection here frees both, and the
    group is destroyed now. When the group was destroyed later, during interpreter
    shutdown, gloo's threads sometimes aborted the process ("terminate called
    without an active exception").
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def _environment_int(name: str, default: int | None = None) -> int:
    text = os.environ.get(name)
    if text is None:
        if default is None:
            raise ValueError(
                f"the environment variable {name} is missing; start the workers with "
                f"torchrun, which sets RANK, LOCAL_RANK and WORLD_SIZE"
            )
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"the environment variable {name} must be an integer, got {text!r}"
        ) from None


def sum_gradients_hook(
    state, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook that all-reduces a gradient bucket by sum, without DDP's
    default division by the world size."""
    group = state if state is not None else dist.group.WORLD
    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


def wrap_model(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """Return `model` in DistributedDataParallel with summed gradients.

    The constructor copies rank 0's parameters and buffers to every worker, so all
    workers start from the same weights. Every worker must then run forward and
    backward on every minibatch, a worker with an empty share included, because the
    gradient all-reduce waits for all of them.
    """
    # The gradient hook sums dense buckets, so sparse embedding gradients become dense.
    for module in model.modules():
        if isinstance(module, SparseEmbedding):
            module.sparse = False
    device_ids = [device.index] if device.type == "cuda" else None
    wrapped = DistributedDataParallel(model, device_ids=device_ids)
    wrapped.register_comm_hook(None, sum_gradients_hook)
    return wrapped


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all workers in place and return it."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def check_resumed_together(minibatches: int, device: torch.device) -> None:
    """Check that every worker resumes after the same number of minibatches.

    Raises:
        ValueError: the workers differ, as when the checkpoint folder is not shared by
            all nodes, so that some workers find no checkpoint and start over.
    """
    if rank_and_world_size()[1] == 1:
        return
    bounds = torch.tensor([minibatches, -minibatches], dtype=torch.int64, device=device)
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
    highest, lowest = int(bounds[0]), -int(bounds[1])
    if highest != lowest:
        raise ValueError(
            f"the workers resume after different minibatches ({lowest} to {highest}); "
            f"every worker reads the checkpoint in --checkpoint-dir, so put it on a "
            f"file system that all nodes share"
        )


@contextmanager
def collective_failure(what: str):
    """Raise a RuntimeError from the block, which runs collective operations, as a
    WorkerLostError that names `what` was running. Without a process group of several
    workers the error passes unchanged."""
    try:
        yield
    except RuntimeError as error:
        if rank_and_world_size()[1] == 1:
            raise
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise WorkerLostError(
            f"the all-reduce with the other workers failed during {what} ({detail}). "
            f"Another worker has probably stopped, and its own error message or "
            f"torchrun's failure summary names its rank"
        ) from error
