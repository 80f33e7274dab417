"""Time the main training job (CNTK's sequence-classification example, 255 minibatches of
200 samples on the shipped Train.ctf) with the seqlstm model and with the plain-PyTorch
reference model, in one process and one run, and print both times and their ratio.

Both models start from the same weights and train on the same minibatches, read once
before timing. Before timing, the script checks that the two models' losses on the first
minibatches agree.

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


def train_seqlstm(model, minibatches, lr, device):
    """Train with seqlstm's Trainer; return the per-minibatch average losses."""
    # train_minibatch takes the minibatches directly, so the trainer needs no reader.
    trainer = Trainer(model, reader=None, lr=Schedule.constant(lr), device=device)
    losses = []
    for minibatch in minibatches:
        loss_sum, _, sequences = trainer.train_minibatch(minibatch)
        losses.append(loss_sum / sequences)
    return losses


def train_reference(model, minibatches, lr, device):
    """Train the plain-PyTorch model with torch.optim.SGD on the summed loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for minibatch in minibatches:
        batch = make_batch(minibatch, device)
        logits = model(batch.indices, batch.values, batch.offsets, batch.lengths)
        loss = F.cross_entropy(logits, batch.labels.argmax(dim=1), reduction="sum")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item() / batch.num_sequences)
    return losses


def timed(function, *args):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


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
    model = SequenceClassifier(device=device)
    reference = ReferenceClassifier().to(device)
    reference.copy_from(model)

    # Check first: both models, from the same weights, give the same losses.
    check_count = min(5, len(minibatches))
    check_model = SequenceClassifier(device=device)
    check_model.load_state_dict(model.state_dict())
    check_reference = ReferenceClassifier().to(device)
    check_reference.copy_from(model)
    ours = train_seqlstm(check_model, minibatches[:check_count], args.lr, device)
    theirs = train_reference(check_reference, minibatches[:check_count], args.lr, device)
    worst = max(abs(a - b) for a, b in zip(ours, theirs))
    if worst > 1e-4:
        raise SystemExit(f"the models disagree before timing: max loss difference {worst}")

    seqlstm_losses, seqlstm_seconds = timed(
        train_seqlstm, model, minibatches, args.lr, device
    )
    reference_losses, reference_seconds = timed(
        train_reference, reference, minibatches, args.lr, device
    )

    print(f"command: python bench/bench_train.py --minibatches {args.minibatches} "
          f"--device {args.device}")
    print(f"machine: {platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, float32")
    print(f"minibatches: {len(minibatches)} of {args.minibatch_size} samples, "
          f"{sum(m.num_sequences for m in minibatches)} sequences")
    print(f"reading (shared, not in the times below): {read_seconds:.3f} s")
    print(f"seqlstm:   {seqlstm_seconds:.3f} s, last loss {seqlstm_losses[-1]:.4f}")
    print(f"reference: {reference_seconds:.3f} s, last loss {reference_losses[-1]:.4f}")
    print(f"speedup (reference / seqlstm): {reference_seconds / seqlstm_seconds:.2f}x")


if __name__ == "__main__":
    main()
