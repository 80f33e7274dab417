"""Training loop with CNTK's semantics: the objective is the sum of the per-sequence
losses, the learner steps with a per-sample rate (seqlstm.learner), and progress is
written as CNTK's table (seqlstm.progress).

With several processes (torch.distributed initialized), each process reads its share of
every minibatch and trains through DistributedDataParallel, which sums the gradients of
all workers in the backward pass (seqlstm.distributed). `reduce_across_workers` sums the
minibatch totals, and only rank 0 writes progress and checkpoints.
"""

import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from seqlstm import (
    distributed,
    ops,  # noqa: F401  (loads the extension that defines the operators)
)
from seqlstm.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from seqlstm.learner import CNTKSGD, Schedule, describe_value
from seqlstm.metrics_log import MetricsLog, TensorBoardLog
from seqlstm.progress import ProgressPrinter

logger = logging.getLogger(__name__)

FEATURES = "features"
LABELS = "labels"


class TrainingError(RuntimeError):
    """Error that stops training, such as a loss that is no longer finite."""


@dataclass
class Batch:
    """One minibatch on the training device: sparse words in CSR form and the labels."""

    indices: torch.Tensor  # (nnz,) int64
    values: torch.Tensor  # (nnz,) float32
    offsets: torch.Tensor  # (S + 1,) int64
    lengths: torch.Tensor  # (N,) int64, on the CPU
    labels: torch.Tensor  # (N, C) float32, one row per sequence

    @property
    def num_sequences(self) -> int:
        return self.lengths.shape[0]


def make_batch(minibatch, device) -> Batch:
    """Move a reader minibatch to `device` and check that the label stream has exactly
    one sample per sequence.

    Raises:
        ValueError: a sequence has no label or more than one, naming its sequence id
            and `path:line`.
    """
    features = minibatch.streams[FEATURES]
    labels = minibatch.streams[LABELS]
    # numpy on the reader's CPU tensors: one small check per minibatch without the
    # per-operator overhead of torch.
    bad = (labels.lengths.numpy() != 1).nonzero()[0]
    if bad.size > 0:
        position = int(bad[0])
        raise ValueError(
            f"{minibatch.path}:{int(minibatch.lines[position])}: sequence "
            f"{int(minibatch.sequence_ids[position])} has "
            f"{int(labels.lengths[position])} label samples, expected exactly 1 "
            f"(one class per sequence)"
        )
    return Batch(
        indices=features.indices.to(device, non_blocking=True),
        values=features.values.to(device, non_blocking=True),
        offsets=features.offsets.to(device, non_blocking=True),
        lengths=features.lengths,
        labels=labels.values.to(device, non_blocking=True),
    )


def loss_and_errors(logits: torch.Tensor, labels: torch.Tensor):
    """Return the summed loss and the number of misclassified sequences, as 0-d tensors.

    The loss is CNTK's cross_entropy_with_softmax, -log softmax(z)[class], and an
    error is argmax z != class, CNTK's classification_error. The class of a one-hot
    label row y is argmax y, with ties to the lowest index in both argmaxes as in
    CNTK's ClassificationErrorNode.

    Args:
        logits: (N, C) model output.
        labels: (N, C) one-hot label rows.
    """
    # NOTE: a label row that is not one-hot counts as its argmax class, where CNTK
    # would compute logsumexp(z) - sum_k y_k z_k with the row as it is.
    if logits.device.type == "cpu":
        # One fused operator in place of the torch operators below, whose per-call
        # overhead outweighs their arithmetic at a few dozen rows.
        return _softmax_cross_entropy(logits, labels)
    classes = labels.argmax(dim=1)
    loss = F.cross_entropy(logits, classes, reduction="sum")
    errors = (logits.detach().argmax(dim=1) != classes).sum()
    return loss, errors


def model_loss_and_errors(model, batch: Batch):
    """Run `model` (a SequenceClassifier) on `batch` and return loss_and_errors of its
    logits, computed together with the dense layer where a fused operator exists."""
    states = model.last_states(
        batch.indices, batch.values, batch.offsets, batch.lengths
    )
    if states.device.type == "cpu":
        # The dense layer's GEMMs and autograd nodes cost more than their arithmetic
        # at a few dozen rows, so one operator computes logits, loss and errors.
        return _linear_softmax_cross_entropy(
            states, model.dense.weight, model.dense.bias, batch.labels
        )
    return loss_and_errors(model.dense(states), batch.labels)


_softmax_cross_entropy = torch.ops.seqlstm.softmax_cross_entropy.default
_linear_softmax_cross_entropy = torch.ops.seqlstm.linear_softmax_cross_entropy.default


@dataclass
class TrainState:
    """Counters that a checkpoint restores alongside model, learner and reader."""

    minibatches: int = 0  # minibatches trained so far
    samples_seen: int = 0  # sequences trained so far, across all workers
    elapsed_seconds: float = 0.0  # training time so far, resumed runs included
    last_metric: float = 0.0  # error rate of the last minibatch


class Trainer:
    """Trains a SequenceClassifier on minibatches from a CTFReader.

    Args:
        model: a SequenceClassifier; its parameters with requires_grad are trained.
        reader: a CTFReader with streams named "features" (sparse) and "labels" (dense).
        lr: learning-rate schedule.
        momentum: momentum schedule (constant 0 is CNTK's plain sgd).
        lr_unit, momentum_unit, unit_gain: see seqlstm.learner.CNTKSGD.
        minibatch_size: samples (lines of the longest stream) per minibatch.
        printer: writes the progress table on rank 0; None writes nothing.
        metrics_log, tensorboard: optional per-minibatch records.
        checkpoint_dir: where checkpoints go; None for none.
        checkpoint_every: minibatches between checkpoints (0: only at the end).
        device: where the model and minibatches live.
    """

    def __init__(
        self,
        model,
        reader,
        lr: Schedule,
        momentum: Schedule | None = None,
        lr_unit: str = "sample",
        momentum_unit: str = "minibatch",
        unit_gain: bool = True,
        minibatch_size: int = 200,
        printer: ProgressPrinter | None = None,
        metrics_log: MetricsLog | None = None,
        tensorboard: TensorBoardLog | None = None,
        checkpoint_dir=None,
        checkpoint_every: int = 0,
        config: dict | None = None,
        device="cpu",
    ):
        if minibatch_size < 1:
            raise ValueError(f"minibatch_size must be at least 1, got {minibatch_size}")
        if checkpoint_every < 0:
            raise ValueError(
                f"checkpoint_every must be 0 or more, got {checkpoint_every}"
            )
        self.model = model
        self.reader = reader
        self.lr = lr
        self.momentum = momentum if momentum is not None else Schedule.constant(0.0)
        self.lr_unit = lr_unit
        self.momentum_unit = momentum_unit
        self.minibatch_size = minibatch_size
        self.trained_parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = CNTKSGD(
            self.trained_parameters,
            lr_unit=lr_unit,
            momentum_unit=momentum_unit,
            unit_gain=unit_gain,
        )
        self.rank, self.world_size = distributed.rank_and_world_size()
        # The module that runs forward and backward; checkpoints save the bare model.
        self.network = model
        if self.world_size > 1:
            self.network = distributed.wrap_model(model, torch.device(device))
        self.printer = printer if self.rank == 0 else None
        self.metrics_log = metrics_log if self.rank == 0 else None
        self.tensorboard = tensorboard if self.rank == 0 else None
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.config = dict(config or {})
        self.device = torch.device(device)
        self.state = TrainState()
        self.checkpointed_minibatch = None  # minibatch of the last checkpoint written

    # Reduction across workers. DistributedDataParallel sums the gradients during
    # backward (see seqlstm.distributed.wrap_model), and the totals are summed here.
    def reduce_across_workers(self, loss_sum, error_sum, sequences):
        """Sum the minibatch totals over all workers and return them as floats. With
        one process it only converts them."""
        if self.world_size == 1:
            return float(loss_sum), float(error_sum), float(sequences)
        # TODO: this second all-reduce per step costs about as much as the gradients'
        # on a 2-core machine (bench/RESULTS.md); the totals could ride in the last
        # gradient bucket of DDP's communication hook instead.
        totals = torch.tensor(
            [float(loss_sum), float(error_sum), float(sequences)],
            dtype=torch.float64,
            device=self.device,
        )
        loss_sum, error_sum, sequences = distributed.all_reduce_sum(totals).tolist()
        return loss_sum, error_sum, sequences

    def train_minibatch(self, minibatch) -> tuple[float, float, int]:
        """Train on one minibatch, advance the counters in `state`, and return the
        minibatch's summed loss, error count and number of sequences over all workers.

        Raises:
            TrainingError: the loss is NaN or infinite; nothing was updated.
        """
        # What optimizer.zero_grad(set_to_none=True) does, without its profiler record.
        for param in self.trained_parameters:
            param.grad = None
        loss_sum, error_sum, sequences = 0.0, 0.0, 0
        with distributed.collective_failure(f"minibatch {self.state.minibatches + 1}"):
            if minibatch.num_sequences > 0:
                batch = make_batch(minibatch, self.device)
                if self.world_size > 1:
                    # DistributedDataParallel reduces gradients only for a backward that
                    # follows its own forward, so the fused loss operator is not used here.
                    logits = self.network(
                        batch.indices, batch.values, batch.offsets, batch.lengths
                    )
                    loss, errors = loss_and_errors(logits, batch.labels)
                else:
                    loss, errors = model_loss_and_errors(self.model, batch)
                loss.backward()
                loss_sum, error_sum, sequences = (
                    loss.item(),
                    errors.item(),
                    batch.num_sequences,
                )
            elif self.world_size > 1:
                self._backward_zero_gradients()
            loss_sum, error_sum, sequences = self.reduce_across_workers(
                loss_sum, error_sum, sequences
            )
        number = self.state.minibatches + 1
        if not math.isfinite(loss_sum):
            raise TrainingError(
                f"minibatch {number}: the loss is {loss_sum}. Training stopped before "
                f"updating the weights. Lower the learning rate or check the input values"
            )

        sweep = minibatch.sweep
        lr = self.lr.value_at(self.state.samples_seen, sweep)
        momentum = self.momentum.value_at(self.state.samples_seen, sweep)
        if self.printer is not None:
            self.printer.report_value(
                "lr", describe_value("Learning rate", self.lr_unit, lr)
            )
            if momentum != 0.0 or "momentum" in self.printer.reported_values:
                self.printer.report_value(
                    "momentum", describe_value("Momentum", self.momentum_unit, momentum)
                )
        self.optimizer.update(int(sequences), lr, momentum)
        self.state.minibatches = number
        self.state.samples_seen += int(sequences)
        self.state.last_metric = error_sum / sequences if sequences else 0.0
        return loss_sum, error_sum, int(sequences)

    def _backward_zero_gradients(self) -> None:
        """Join the gradient all-reduce with zero gradients, for a worker whose share
        of the minibatch is empty: DDP reduces only when every worker runs backward."""
        indices = torch.zeros(1, dtype=torch.int64, device=self.device)
        values = torch.zeros(1, dtype=torch.float32, device=self.device)
        offsets = torch.tensor([0, 1], dtype=torch.int64, device=self.device)
        lengths = torch.ones(1, dtype=torch.int64)
        logits = self.network(indices, values, offsets, lengths)
        (logits.sum() * 0.0).backward()

    def train(self, minibatches: int | None = None) -> TrainState:
        """Train until `minibatches` minibatches are done in all (counting those before a
        resume), or until the reader ends when it is None.

        Returns:
            the final TrainState.
        """
        progress_bar = _progress_bar(minibatches, self.state.minibatches)
        start = time.monotonic()
        elapsed_before = self.state.elapsed_seconds
        try:
            while minibatches is None or self.state.minibatches < minibatches:
                minibatch = self.reader.next_minibatch(self.minibatch_size)
                if minibatch is None:
                    break
                loss_sum, error_sum, sequences = self.train_minibatch(minibatch)
                self.state.elapsed_seconds = elapsed_before + time.monotonic() - start
                self._record(loss_sum, error_sum, sequences, minibatch.end_of_sweep)
                if progress_bar is not None:
                    progress_bar.update(1)
                if (
                    self.checkpoint_every
                    and self.state.minibatches % self.checkpoint_every == 0
                ):
                    self.save_checkpoint()
        finally:
            if progress_bar is not None:
                progress_bar.close()
        if self.printer is not None:
            self.printer.write_final_error(self.state.last_metric)
        if self.checkpointed_minibatch != self.state.minibatches:
            self.save_checkpoint()
        return self.state

    def _record(self, loss_sum, error_sum, sequences, end_of_sweep) -> None:
        if self.printer is not None:
            self.printer.update(loss_sum, error_sum, sequences)
            if end_of_sweep:
                self.printer.summarize()
        loss = loss_sum / sequences if sequences else 0.0
        metric = error_sum / sequences if sequences else 0.0
        record = {
            "minibatch": self.state.minibatches,
            "samples": self.state.samples_seen,
            "loss": loss,
            "metric": metric,
            "seconds": round(self.state.elapsed_seconds, 6),
        }
        if self.metrics_log is not None:
            self.metrics_log.write(record)
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def save_checkpoint(self) -> None:
        """Write the checkpoint of the current state to checkpoint_dir (rank 0 only)."""
        if self.checkpoint_dir is None or self.rank != 0:
            return
        path = save_checkpoint(
            self.checkpoint_dir,
            {
                "config": self.config,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "reader": self.reader.state_dict(),
                "rng": _rng_state(),
                "progress": self.printer.state_dict() if self.printer else None,
                "train_state": {
                    "minibatches": self.state.minibatches,
                    "samples_seen": self.state.samples_seen,
                    "elapsed_seconds": self.state.elapsed_seconds,
                    "last_metric": self.state.last_metric,
                },
            },
        )
        self.checkpointed_minibatch = self.state.minibatches
        logger.info(
            "checkpoint after minibatch %d written to %s", self.state.minibatches, path
        )

    def resume(self) -> None:
        """Restore model, learner, reader position, random state and counters from the
        checkpoint in checkpoint_dir.

        Raises:
            FileNotFoundError: there is no checkpoint.
            ValueError: the checkpoint's model configuration differs from this model's,
                or one of its entries does not fit this run.
        """
        checkpoint = load_checkpoint(self.checkpoint_dir)
        saved_model = checkpoint["config"].get("model")
        current_model = self.config.get("model")
        if saved_model != current_model:
            raise ValueError(
                f"the checkpoint in {self.checkpoint_dir} is of a model {saved_model}, "
                f"but this run builds {current_model}; use the same model options"
            )
        path = Path(self.checkpoint_dir) / CHECKPOINT_NAME
        saved = checkpoint["train_state"]
        unknown = set(saved) - {field.name for field in dataclasses.fields(TrainState)}
        if unknown:
            raise ValueError(
                f"{path}: train_state has unknown keys {sorted(unknown)}; the checkpoint "
                "was written by another version of seqlstm or was edited"
            )
        try:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.reader.load_state_dict(checkpoint["reader"])
            _set_rng_state(checkpoint["rng"])
            if self.printer is not None and checkpoint["progress"] is not None:
                self.printer.load_state_dict(checkpoint["progress"])
        except (KeyError, TypeError, RuntimeError) as error:
            raise ValueError(
                f"{path}: the checkpoint does not fit this run ({error}); start without "
                "--resume or use the checkpoint's own options"
            ) from error
        self.state = TrainState(**saved)
        if self.metrics_log is not None:
            self.metrics_log.truncate_after(self.state.minibatches)
        logger.info("resumed after minibatch %d", self.state.minibatches)


def evaluate(model, reader, minibatch_size: int = 200, device="cpu"):
    """Return the summed loss, the error count and the number of sequences of `model`
    over everything `reader` yields, without training."""
    loss_sum = 0.0
    error_sum = 0.0
    sequences = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        while (minibatch := reader.next_minibatch(minibatch_size)) is not None:
            if minibatch.num_sequences == 0:
                continue
            batch = make_batch(minibatch, device)
            loss, errors = model_loss_and_errors(model, batch)
            loss_sum += loss.item()
            error_sum += errors.item()
            sequences += batch.num_sequences
    model.train(was_training)
    return loss_sum, error_sum, sequences


def _progress_bar(total, initial):
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, file=sys.stderr, unit="minibatch")


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
