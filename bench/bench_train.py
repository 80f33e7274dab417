"""Time the main training job (CNTK's sequence-classification example, 255 minibatches of
200 samples on the shipped Train.ctf) with the seqlstm model and with the plain-PyTorch
reference model, in one process and one run, and print both times and their ratio.

Both models start from the same weights and train on the same minibatches, read once
before timing. Each repeat runs the whole job with one model, then with the other, so
that both see about the same load on a shared machine. The script prints the median
of the repeats. Before timing, it checks that the two models' losses agree on the
first minibatches.

With --nproc N it instead times seqlstm's Trainer data-parallel, reading included. It
runs the same job in 1 process and in N processes (gloo on loopback, 1 thread each) in
one run. It checks that both end with the same weights, then prints samples per second
of each and the scaling ratio.

Usage: python bench/bench_train.py [--minibatches 255] [--threads N] [--device cpu]
       [--repeats 3]
       python bench/bench_train.py --nproc 2 [--minibatches 255] [--repeats 3]
"""

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seqlstm import distributed
from seqlstm.cli import default_data_path
from seqlstm.learner import Schedule
from seqlstm.model import SequenceClassifier
from seqlstm.reader import CTFReader, StreamSpec
from seqlstm.reference import ReferenceClassifier
from seqlstm.trainer import Trainer, make_batch

STREAMS = {
    "features": StreamSpec("x", 2000, True),
    "labels": StreamSpec("y", 5, False),
}


def read_minibatches(count: int, minibatch_size: int, seed: int):
    """Return the first `count` minibatches of the randomized reader, and the seconds
    it took to read them."""
    start = time.perf_counter()
    reader = CTFReader(default_data_path(), STREAMS, randomize=True, seed=seed)
    minibatches = [reader.next_minibatch(minibatch_size) for _ in range(count)]
    return minibatches, time.perf_counter() - start


class SeqlstmJob:
    """One training step of seqlstm's Trainer; returns the minibatch's average loss."""

    def __init__(self, model, lr, device):
        # train_minibatch takes the minibatches directly, so the trainer needs no reader.
        self.trainer = Trainer(
            model, reader=None, lr=Schedule.constant(lr), device=device
        )

    def step(self, minibatch) -> float:
        loss_sum, _, sequences = self.trainer.train_minibatch(minibatch)
        return loss_sum / sequences


class ReferenceJob:
    """One step of the plain-PyTorch model with torch.optim.SGD on the summed loss."""

    def __init__(self, model, lr, device):
        self.model = model
        self.device = device
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def step(self, minibatch) -> float:
        batch = make_batch(minibatch, self.device)
        logits = self.model(batch.indices, batch.values, batch.offsets, batch.lengths)
        loss = F.cross_entropy(logits, batch.labels.argmax(dim=1), reduction="sum")
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item() / batch.num_sequences


def make_jobs(weights, lr, device):
    model = SequenceClassifier(device=device)
    model.load_state_dict(weights)
    reference = ReferenceClassifier().to(device)
    reference.copy_from(model)
    return SeqlstmJob(model, lr, device), ReferenceJob(reference, lr, device)


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# Data-parallel mode (--nproc) -------------------------------------------------------

WARMUP_MINIBATCHES = 5  # untimed: first allocations and DDP's first bucket setup


def data_parallel_worker(rank, world_size, port, args, results):
    """Train the main job as worker `rank` of `world_size` and put rank 0's time,
    sequence count and final weights on `results`."""
    torch.set_num_threads(1)
    if world_size > 1:
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world_size),
            TORCHELASTIC_USE_AGENT_STORE="True",
        )
        distributed.init_from_environment("cpu")
    try:
        result = time_training(rank, world_size, args)
        if rank == 0:
            results.put(result)
    finally:
        distributed.shut_down()


def time_training(rank, world_size, args) -> dict:
    """Train the main job as worker `rank`; return the timed part's seconds and
    sequence count and the final weights."""
    torch.manual_seed(args.seed)
    model = SequenceClassifier()
    reader = CTFReader(
        default_data_path(),
        STREAMS,
        randomize=True,
        seed=args.seed,
        worker_rank=rank,
        num_workers=world_size,
    )
    trainer = Trainer(
        model,
        reader,
        lr=Schedule.constant(args.lr),
        minibatch_size=args.minibatch_size,
    )
    trainer.train(WARMUP_MINIBATCHES)
    sequences_before = trainer.state.samples_seen
    if world_size > 1:
        dist.barrier()
    start = time.perf_counter()
    trainer.train(WARMUP_MINIBATCHES + args.minibatches)
    if world_size > 1:
        dist.barrier()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "sequences": trainer.state.samples_seen - sequences_before,
        # As numpy arrays: a tensor on a queue is shared through a file
        # descriptor, which is gone once this process has exited.
        "weights": {
            name: value.numpy().copy() for name, value in model.state_dict().items()
        },
    }


def run_workers(world_size, args) -> dict:
    """Start `world_size` worker processes, wait for them and return rank 0's result."""
    # This process serves the workers' key-value store, as torchrun's agent does, so
    # that the store outlives the workers in whatever order they exit. When rank 0
    # served it, rank 1 could abort at exit after rank 0 had gone.
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    results = mp.get_context("spawn").SimpleQueue()
    workers = mp.start_processes(
        data_parallel_worker,
        args=(world_size, store.port, args, results),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    # Read the result while the workers run: rank 0 cannot exit before its result,
    # larger than a pipe's buffer, is read. join raises if a worker failed.
    while results.empty():
        if workers.join(timeout=0.2):
            raise SystemExit("the workers exited without a result")
    result = results.get()
    while not workers.join():
        pass
    return result


def run_data_parallel(args) -> None:
    """Time the main job in 1 process and in args.nproc processes, best of
    args.repeats runs each, alternating so that both see the same machine load."""
    best = {}
    for _ in range(args.repeats):
        for world_size in (1, args.nproc):
            result = run_workers(world_size, args)
            if world_size not in best or result["seconds"] < best[world_size]["seconds"]:
                best[world_size] = result

    # Both train the same global minibatches from the same weights, so their weights
    # must agree; 1e-5 allows for the different order of float32 summation.
    single, parallel = best[1], best[args.nproc]
    difference = max(
        float(abs(parallel["weights"][name] - value).max())
        for name, value in single["weights"].items()
    )
    if difference > 1e-5:
        raise SystemExit(
            f"{args.nproc} processes end with weights that differ from 1 process's by "
            f"{difference}"
        )

    print(
        f"command: python bench/bench_train.py --nproc {args.nproc} "
        f"--minibatches {args.minibatches} --repeats {args.repeats}"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, gloo on loopback, 1 torch thread per process, float32"
    )
    print(
        f"timed: {args.minibatches} minibatches of {args.minibatch_size} samples after "
        f"{WARMUP_MINIBATCHES} untimed ones, reading included, best of {args.repeats}"
    )
    print(f"max weight difference, {args.nproc} processes vs 1: {difference:.2e}")
    rates = {}
    for world_size in (1, args.nproc):
        result = best[world_size]
        rates[world_size] = result["sequences"] / result["seconds"]
        print(
            f"{world_size} process{'es' if world_size > 1 else '  '}: "
            f"{result['seconds']:.3f} s, {result['sequences']} samples (sequences), "
            f"{rates[world_size]:.0f} samples/s"
        )
    print(f"scaling ({args.nproc} processes / 1): {rates[args.nproc] / rates[1]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minibatches", type=int, default=255)
    parser.add_argument("--minibatch-size", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.0005)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="time data-parallel training in 1 and in NPROC processes (CPU, gloo)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of the whole job per model (median reported), or with --nproc, "
        "runs of each process count (fastest reported)",
    )
    args = parser.parse_args()
    if args.nproc is not None:
        if args.nproc < 2:
            parser.error(f"--nproc must be at least 2, got {args.nproc}")
        if args.device != "cpu" or args.threads is not None:
            parser.error("--nproc runs on the CPU with 1 thread per process")
        run_data_parallel(args)
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    minibatches, read_seconds = read_minibatches(
        args.minibatches, args.minibatch_size, args.seed
    )
    torch.manual_seed(args.seed)
    weights = SequenceClassifier().state_dict()

    # Check first: from the same weights, both give the same losses.
    ours, theirs = make_jobs(weights, args.lr, device)
    for number, minibatch in enumerate(minibatches[:5], start=1):
        difference = abs(ours.step(minibatch) - theirs.step(minibatch))
        if difference > 1e-4:
            raise SystemExit(
                f"minibatch {number}: the models' losses differ by {difference}"
            )

    # Each repeat trains both models through the whole job from the same weights, one
    # job after the other, so that neither finds its caches filled by the other.
    times = {"seqlstm": [], "reference": []}
    losses = {}
    for _ in range(args.repeats):
        jobs = dict(zip(("seqlstm", "reference"), make_jobs(weights, args.lr, device)))
        for name, job in jobs.items():
            synchronize(device)
            start = time.perf_counter()
            for minibatch in minibatches:
                losses[name] = job.step(minibatch)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    seconds = {name: statistics.median(values) for name, values in times.items()}

    print(
        f"command: python bench/bench_train.py --minibatches {args.minibatches} "
        f"--device {args.device}"
        + (f" --threads {args.threads}" if args.threads is not None else "")
    )
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, float32"
    )
    print(
        f"minibatches: {len(minibatches)} of {args.minibatch_size} samples, "
        f"{sum(m.num_sequences for m in minibatches)} sequences"
    )
    print(f"reading (once, not in the times below): {read_seconds:.3f} s")
    print(f"repeats: {args.repeats}, each the whole job; the times are medians")
    for name in ("seqlstm", "reference"):
        print(
            f"{name:9}: {seconds[name]:.3f} s (range {min(times[name]):.3f} to "
            f"{max(times[name]):.3f}), last minibatch loss {losses[name]:.4f}"
        )
    print(
        f"speedup (reference / seqlstm): {seconds['reference'] / seconds['seqlstm']:.2f}x"
    )


if __name__ == "__main__":
    main()
