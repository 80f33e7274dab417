"""Time the main training job (CNTK's sequence-classification example, 255 minibatches of
200 samples on the shipped Train.ctf) with the seqlstm model and with the plain-PyTorch
reference model, in one process and one run, and print both times and their ratio.

Both models start from the same weights and train on the same minibatches, read once
before timing. The two training steps alternate minibatch by minibatch, so that both
see the same load on a shared machine. Before timing, the script checks that the two
models' losses agree on the first minibatches.

Usage: python bench/bench_train.py [--minibatches 255] [--threads N] [--device cpu]
"""

import argparse
import platform
import time

import torch
import torch.nn.functional as F

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minibatches", type=int, default=255)
    parser.add_argument("--minibatch-size", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.0005)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
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

    ours, theirs = make_jobs(weights, args.lr, device)
    seconds = {"seqlstm": 0.0, "reference": 0.0}
    losses = {"seqlstm": 0.0, "reference": 0.0}
    for minibatch in minibatches:
        for name, job in (("seqlstm", ours), ("reference", theirs)):
            synchronize(device)
            start = time.perf_counter()
            losses[name] = job.step(minibatch)
            synchronize(device)
            seconds[name] += time.perf_counter() - start

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
    for name in ("seqlstm", "reference"):
        print(
            f"{name:9}: {seconds[name]:.3f} s, last minibatch loss {losses[name]:.4f}"
        )
    print(
        f"speedup (reference / seqlstm): {seconds['reference'] / seconds['seqlstm']:.2f}x"
    )


if __name__ == "__main__":
    main()
