"""Command line: `python -m seqlstm train | eval | plot`.

`train` with no arguments runs CNTK's sequence-classification example on the shipped
Train.ctf and prints CNTK's progress table on stdout. Status goes to stderr through
logging. An error the user can cause (a bad option, a missing or malformed file) prints
one line to stderr and exits with status 1.
"""

import argparse
import logging
import os
import sys
from contextlib import ExitStack
from importlib import resources
from pathlib import Path

logger = logging.getLogger("seqlstm")

# Largest hidden_size for which a CPU run defaults to 1 thread. The LSTM's time steps
# run one after another, and at this size one step's recurrent GEMM for a few dozen
# sequences is about 10^5 multiply-adds. By estimate, that is where a second thread's
# start and synchronization cost about as much as it saves.
SINGLE_THREAD_MAX_HIDDEN_SIZE = 32


class StderrHandler(logging.StreamHandler):
    """Log handler that writes to whatever sys.stderr is at the time of each record, so
    that a redirected stderr (as in tests) receives the records."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(verbose: bool, prefix: str = "seqlstm: ", quiet: bool = False):
    """Send the package's log records to stderr as `{prefix}message` lines. `quiet`
    keeps only warnings and errors, unless `verbose`."""
    package_logger = logging.getLogger("seqlstm")
    level = logging.INFO
    if verbose:
        level = logging.DEBUG
    elif quiet:
        level = logging.WARNING
    package_logger.setLevel(level)
    handler = next(
        (h for h in package_logger.handlers if isinstance(h, StderrHandler)), None
    )
    if handler is None:
        handler = StderrHandler()
        package_logger.addHandler(handler)
        package_logger.propagate = False
    handler.setFormatter(logging.Formatter(prefix + "%(message)s"))


def log_prefix(command: str) -> tuple[str, int | None]:
    """Return the prefix of log and error lines and this worker's rank: under torchrun
    with several workers, `train` names the rank in every line."""
    from seqlstm import distributed

    if command != "train" or distributed.environment_world_size() == 1:
        return "seqlstm: ", None
    rank = distributed.environment_rank()
    return f"seqlstm: rank {rank}: ", rank


class UsageError(Exception):
    """An invalid combination of options."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line and exits with status 1."""

    def error(self, message):
        self.exit(1, f"{self.prog}: error: {message}\n")


def default_data_path() -> str:
    """Return the path of the shipped Train.ctf."""
    return str(resources.files("seqlstm").joinpath("data", "Train.ctf"))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def thread_count(text: str) -> int:
    """Parse --threads: a positive integer up to the number of CPUs this process may
    use, because OpenMP fails or crashes when asked for far more threads than that."""
    value = positive_int(text)
    available = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    )
    available = available or os.cpu_count() or 1
    if value > available:
        raise argparse.ArgumentTypeError(
            f"must be at most the {available} CPUs available, got {text}"
        )
    return value


MAX_SEED = 2**64 - 1  # the largest seed torch.manual_seed accepts


def seed_value(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"must be an integer from 0 to 2**64 - 1, got {text}"
        )
    return value


def add_data_options(parser, randomized: bool) -> None:
    """Add the options that describe the CTF file and its streams."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        default=None,
        metavar="FILE",
        help="CTF file to read (default: the shipped copy of CNTK's Train.ctf)",
    )
    group.add_argument(
        "--input-stream",
        default="x",
        metavar="ALIAS",
        help="alias of the sparse word stream in the CTF file (default: x)",
    )
    group.add_argument(
        "--input-dim",
        type=positive_int,
        default=2000,
        metavar="N",
        help="dimension of the input stream, the vocabulary size (default: 2000)",
    )
    group.add_argument(
        "--label-stream",
        default="y",
        metavar="ALIAS",
        help="alias of the dense one-hot label stream, one sample per sequence "
        "(default: y)",
    )
    group.add_argument(
        "--label-dim",
        type=positive_int,
        default=5,
        metavar="N",
        help="dimension of the label stream, the number of classes (default: 5)",
    )
    group.add_argument(
        "--minibatch-size",
        type=positive_int,
        default=200,
        metavar="N",
        help="samples per minibatch, counted as lines of the CTF file as CNTK counts "
        "them; a minibatch holds whole sequences (default: 200)",
    )
    group.add_argument(
        "--max-errors",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="malformed CTF entries to skip with a warning before failing (default: 0)",
    )
    if randomized:
        group.add_argument(
            "--no-randomize",
            action="store_true",
            help="read sequences in file order instead of a new random order per sweep",
        )


def add_runtime_options(parser) -> None:
    """Add --device and --threads."""
    group = parser.add_argument_group("runtime")
    group.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="device to run the model on (default: cpu)",
    )
    group.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        metavar="N",
        help="CPU threads for torch operators, at most the CPUs available. Default for train: 1 on the CPU when "
        f"--hidden-size is at most {SINGLE_THREAD_MAX_HIDDEN_SIZE} (as in the "
        "tutorial's model), torch's choice otherwise. Such small LSTMs have too "
        "little work per time step to gain from a second thread, and run many times "
        "slower when other processes compete for the cores",
    )


def build_parser() -> ArgumentParser:
    """Return the parser of the `seqlstm` command and its subcommands."""
    parser = ArgumentParser(
        prog="seqlstm",
        description="Train and evaluate an LSTM sequence classifier on CNTK Text Format "
        "(CTF) data with CNTK's semantics.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    train = commands.add_parser(
        "train",
        help="train a classifier and print CNTK's progress table",
        description="Train Embedding -> LSTM -> last step -> Dense with softmax "
        "cross-entropy and SGD, as CNTK's sequence-classification example does. "
        "Defaults reproduce that example.",
    )
    train.add_argument(
        "--verbose", action="store_true", help="log debug messages to stderr"
    )
    add_data_options(train, randomized=True)
    _add_model_options(train)
    _add_training_options(train)
    _add_output_options(train)
    add_runtime_options(train)

    evaluate = commands.add_parser(
        "eval",
        help="print loss and error of a saved model over one sweep of a CTF file",
        description="Evaluate a model written by `train --save` over one sweep of a "
        "CTF file, in file order, and print the average loss and error rate.",
    )
    evaluate.add_argument(
        "--verbose", action="store_true", help="log debug messages to stderr"
    )
    evaluate.add_argument(
        "--model",
        required=True,
        metavar="PATH",
        help="model file written by train --save",
    )
    add_data_options(evaluate, randomized=False)
    add_runtime_options(evaluate)

    plot = commands.add_parser(
        "plot",
        help="draw loss and error from a metrics log (needs matplotlib)",
        description="Draw loss and error rate against samples seen from a metrics log "
        "written by `train --metrics-log`.",
    )
    plot.add_argument(
        "--verbose", action="store_true", help="log debug messages to stderr"
    )
    plot.add_argument("log", metavar="LOG", help="metrics log (JSON lines)")
    plot.add_argument(
        "-o",
        "--output",
        default="curve.png",
        metavar="IMAGE",
        help="image file to write; the suffix picks the format (default: curve.png)",
    )
    return parser


def _add_model_options(parser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--embedding-dim",
        type=positive_int,
        default=50,
        metavar="N",
        help="size of the word embedding (default: 50)",
    )
    group.add_argument(
        "--hidden-size",
        type=positive_int,
        default=25,
        metavar="N",
        help="LSTM cell size (default: 25)",
    )
    group.add_argument(
        "--proj-size",
        type=non_negative_int,
        default=25,
        metavar="N",
        help="size of the learned projection of the LSTM output, 0 for none; it may "
        "equal --hidden-size (default: 25, CNTK's LSTM(25, 25))",
    )
    group.add_argument(
        "--init",
        choices=("cntk", "torch"),
        default="cntk",
        help="weight initialisation: cntk is glorot-uniform weights and zero biases, "
        "torch is torch.nn's default per layer (default: cntk)",
    )


def _add_training_options(parser) -> None:
    group = parser.add_argument_group("training")
    length = group.add_mutually_exclusive_group()
    length.add_argument(
        "--minibatches",
        type=positive_int,
        default=None,
        metavar="N",
        help="minibatches to train, counting those before a resume (default: 255)",
    )
    length.add_argument(
        "--sweeps",
        type=positive_int,
        default=None,
        metavar="N",
        help="train for N sweeps over the data instead of a number of minibatches",
    )
    group.add_argument(
        "--lr",
        default="0.0005",
        metavar="SCHEDULE",
        help="learning rate, or a schedule such as 0.01*10:0.005 (0.01 for 10 "
        "schedule units, then 0.005) (default: 0.0005)",
    )
    group.add_argument(
        "--lr-unit",
        choices=("sample", "minibatch"),
        default="sample",
        help="sample: the rate multiplies the gradient summed over the minibatch's "
        "sequences; minibatch: it multiplies their mean gradient (default: sample)",
    )
    group.add_argument(
        "--schedule-unit",
        type=positive_int,
        default=None,
        metavar="SAMPLES",
        help="samples (sequences) per unit of the --lr and --momentum schedules "
        "(default: one sweep of the data)",
    )
    group.add_argument(
        "--momentum",
        default="0",
        metavar="SCHEDULE",
        help="momentum, or a schedule in --lr's syntax; 0 is plain SGD (default: 0)",
    )
    group.add_argument(
        "--momentum-unit",
        choices=("sample", "minibatch"),
        default="minibatch",
        help="minibatch: the momentum applies once per minibatch; sample: it applies "
        "per sequence, so a minibatch of N sequences uses momentum**N "
        "(default: minibatch)",
    )
    group.add_argument(
        "--no-unit-gain",
        action="store_true",
        help="add lr * gradient to the momentum term instead of CNTK's default "
        "(1 - momentum) * lr * gradient",
    )
    group.add_argument(
        "--dist-timeout",
        type=positive_int,
        default=1800,
        metavar="SECONDS",
        help="with several workers under torchrun, seconds a worker waits for the "
        "others in a gradient all-reduce before it fails (default: 1800)",
    )
    group.add_argument(
        "--seed",
        type=seed_value,
        default=0,
        help="seed of the weight initialisation and of the reader's randomization "
        "(default: 0)",
    )


def _add_output_options(parser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "--progress-freq",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="0: CNTK's table with a line after minibatches 1, 3, 7, 15, ...; N: a "
        "line every N minibatches and a summary per sweep (default: 0)",
    )
    group.add_argument(
        "--save", default=None, metavar="PATH", help="write the trained model here"
    )
    group.add_argument(
        "--eval-data",
        default=None,
        metavar="FILE",
        help="after training, print loss and error over one sweep of this CTF file",
    )
    group.add_argument(
        "--checkpoint-dir",
        default=None,
        metavar="DIR",
        help="write DIR/checkpoint.pt (model, learner, reader position, random "
        "state) every --checkpoint-every minibatches and at the end",
    )
    group.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        default=100,
        metavar="N",
        help="minibatches between checkpoints, 0 for only at the end (default: 100)",
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in --checkpoint-dir; with the same options "
        "and thread count the result is bit-identical to a run that was never stopped",
    )
    group.add_argument(
        "--metrics-log",
        default=None,
        metavar="PATH",
        help="append one JSON line per minibatch (minibatch, samples, loss, metric, "
        "seconds) to PATH",
    )
    group.add_argument(
        "--tensorboard",
        default=None,
        metavar="DIR",
        help="write loss and metric per minibatch as TensorBoard scalars to DIR "
        "(needs the tensorboard package)",
    )


def make_reader(args, path, randomize: bool, max_sweeps, seed: int = 0, shard=True):
    """Create the CTFReader of the input and label streams for `path`. With `shard`,
    each process of a distributed run reads its own share of every minibatch."""
    from seqlstm import distributed
    from seqlstm.reader import CTFReader, StreamSpec

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: file not found")
    rank, world_size = distributed.rank_and_world_size() if shard else (0, 1)
    streams = {
        "features": StreamSpec(args.input_stream, args.input_dim, True),
        "labels": StreamSpec(args.label_stream, args.label_dim, False),
    }
    return CTFReader(
        path,
        streams,
        randomize=randomize,
        max_sweeps=max_sweeps,
        seed=seed,
        max_errors=args.max_errors,
        worker_rank=rank,
        num_workers=world_size,
    )


def check_output_paths(args) -> None:
    """Reject output paths that could not be written, before training spends time on a
    result that would then be lost."""
    for option, path, is_folder in (
        ("--save", args.save, False),
        ("--metrics-log", args.metrics_log, False),
        ("--checkpoint-dir", args.checkpoint_dir, True),
        ("--tensorboard", args.tensorboard, True),
    ):
        if path is None:
            continue
        path = Path(path)
        if is_folder and path.exists() and not path.is_dir():
            raise UsageError(f"{option} {path}: exists and is not a folder")
        if not is_folder and path.is_dir():
            raise UsageError(f"{option} {path}: is a folder, expected a file path")
        # The folders that are missing are created on writing, so the nearest
        # existing one must be a writable folder.
        existing = path if is_folder else path.parent
        existing = existing.absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise UsageError(f"{option} {path}: {existing} is not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {path}: cannot write in {existing}")


def setup_runtime(args, hidden_size: int | None = None):
    """Apply --threads and return the torch device of --device.

    Without --threads, a CPU run of a model with hidden_size at most
    SINGLE_THREAD_MAX_HIDDEN_SIZE uses 1 thread.
    """
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    elif (
        args.device == "cpu"
        and hidden_size is not None
        and hidden_size <= SINGLE_THREAD_MAX_HIDDEN_SIZE
    ):
        torch.set_num_threads(1)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested, but CUDA is not available")
    return torch.device(args.device)


def run_train(args) -> None:
    """Train with the parsed options (see build_parser for each one). Under torchrun
    with several workers, train data-parallel (see seqlstm.distributed)."""
    from datetime import timedelta

    import torch

    from seqlstm import distributed
    from seqlstm.checkpoint import save_model
    from seqlstm.learner import Schedule
    from seqlstm.metrics_log import MetricsLog, TensorBoardLog
    from seqlstm.model import SequenceClassifier
    from seqlstm.progress import ProgressPrinter
    from seqlstm.trainer import Trainer, evaluate

    if args.resume and args.checkpoint_dir is None:
        raise UsageError("--resume needs --checkpoint-dir")
    lr = Schedule.parse(args.lr, args.schedule_unit)
    momentum = Schedule.parse(args.momentum, args.schedule_unit)
    for _, value in momentum.values:
        if not 0.0 <= value < 1.0:
            raise UsageError(
                f"--momentum values must be in [0, 1), got {args.momentum}"
            )
    minibatches = args.minibatches
    if minibatches is None and args.sweeps is None:
        minibatches = 255
    check_output_paths(args)
    device = setup_runtime(args, args.hidden_size)
    data = args.data if args.data is not None else default_data_path()
    for path in (data, args.eval_data):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{path}: file not found")
    worker = distributed.init_from_environment(
        args.device, timedelta(seconds=args.dist_timeout)
    )
    if worker is not None:
        device = worker.device
    resume = args.resume or _restarted_with_checkpoint(args.checkpoint_dir)

    torch.manual_seed(args.seed)
    model_config = {
        "input_dim": args.input_dim,
        "num_classes": args.label_dim,
        "embedding_dim": args.embedding_dim,
        "hidden_size": args.hidden_size,
        "proj_size": args.proj_size,
    }
    try:
        model = SequenceClassifier(**model_config, init=args.init, device=device)
    except RuntimeError as error:
        # Allocation failures of a model too large for the memory land here.
        raise UsageError(
            f"cannot build the model {model_config}: {error}; lower --input-dim, "
            f"--embedding-dim or --hidden-size"
        ) from None
    reader = make_reader(
        args,
        data,
        randomize=not args.no_randomize,
        max_sweeps=args.sweeps,
        seed=args.seed,
    )
    logger.info(
        "training on %s: %s, minibatch size %d, %s, lr %s per %s, device %s",
        data,
        model_config,
        args.minibatch_size,
        f"{minibatches} minibatches" if minibatches else f"{args.sweeps} sweeps",
        args.lr,
        args.lr_unit,
        device,
    )

    with ExitStack() as cleanup:
        metrics_log = None
        if args.metrics_log is not None:
            metrics_log = MetricsLog(args.metrics_log)
            cleanup.callback(metrics_log.close)
        tensorboard = None
        if args.tensorboard is not None:
            tensorboard = TensorBoardLog(args.tensorboard)
            cleanup.callback(tensorboard.close)
        # The table is written by one process only, header included.
        printer = None
        if worker is None or worker.rank == 0:
            printer = ProgressPrinter(freq=args.progress_freq, num_epochs=args.sweeps)
        trainer = Trainer(
            model,
            reader,
            lr=lr,
            momentum=momentum,
            lr_unit=args.lr_unit,
            momentum_unit=args.momentum_unit,
            unit_gain=not args.no_unit_gain,
            minibatch_size=args.minibatch_size,
            printer=printer,
            metrics_log=metrics_log,
            tensorboard=tensorboard,
            checkpoint_dir=args.checkpoint_dir,
            checkpoint_every=args.checkpoint_every,
            config={"model": model_config},
            device=device,
        )
        if resume:
            trainer.resume()
        if worker is not None:
            distributed.check_resumed_together(trainer.state.minibatches, device)
        state = trainer.train(minibatches)
    logger.info(
        "trained %d minibatches, %d sequences, in %.2f s",
        state.minibatches,
        state.samples_seen,
        state.elapsed_seconds,
    )

    if args.save is not None and trainer.rank == 0:
        save_model(model, args.save)
        logger.info("model written to %s", args.save)
    if args.eval_data is not None and trainer.rank == 0:
        eval_reader = make_reader(
            args, args.eval_data, randomize=False, max_sweeps=1, shard=False
        )
        print_evaluation(evaluate(model, eval_reader, args.minibatch_size, device))


def _restarted_with_checkpoint(checkpoint_dir) -> bool:
    """Return True when torchrun has restarted this worker after a failure and a
    checkpoint exists to resume from."""
    import os

    from seqlstm.checkpoint import CHECKPOINT_NAME

    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if restarts == 0 or checkpoint_dir is None:
        return False
    if not (Path(checkpoint_dir) / CHECKPOINT_NAME).is_file():
        logger.warning(
            "torchrun restart %d: no checkpoint in %s yet, so training starts over",
            restarts,
            checkpoint_dir,
        )
        return False
    logger.info(
        "torchrun restart %d: resuming from the checkpoint in %s", restarts, checkpoint_dir
    )
    return True


def print_evaluation(result) -> None:
    """Print the average loss and error rate of an evaluation on stdout."""
    loss_sum, error_sum, sequences = result
    if sequences == 0:
        raise ValueError("the evaluation data contains no sequences")
    print(
        f"Evaluation: loss = {loss_sum / sequences:f}, "
        f"error = {error_sum / sequences:f} over {sequences} sequences"
    )


def run_eval(args) -> None:
    """Evaluate a saved model over one sweep of --data, in file order."""
    from seqlstm.checkpoint import load_model
    from seqlstm.trainer import evaluate

    device = setup_runtime(args)
    model = load_model(args.model, device=device)
    if model.config["input_dim"] != args.input_dim or model.config["num_classes"] != (
        args.label_dim
    ):
        raise UsageError(
            f"{args.model} was trained with --input-dim {model.config['input_dim']} "
            f"and --label-dim {model.config['num_classes']}, got {args.input_dim} "
            f"and {args.label_dim}"
        )
    data = args.data if args.data is not None else default_data_path()
    reader = make_reader(args, data, randomize=False, max_sweeps=1, shard=False)
    print_evaluation(evaluate(model, reader, args.minibatch_size, device))


def run_plot(args) -> None:
    """Draw a metrics log into an image."""
    from seqlstm.metrics_log import plot_metrics

    plot_metrics(args.log, args.output)
    logger.info("plot written to %s", args.output)


def main(argv=None) -> int:
    """Run the `seqlstm` command; return the exit status."""
    args = build_parser().parse_args(argv)
    # Ranks other than 0 log only warnings and errors, so that status appears once.
    prefix, rank = log_prefix(args.command)
    configure_logging(args.verbose, prefix, quiet=rank not in (None, 0))
    commands = {"train": run_train, "eval": run_eval, "plot": run_plot}
    from seqlstm import distributed
    from seqlstm.trainer import TrainingError

    try:
        commands[args.command](args)
    except (
        UsageError,
        TrainingError,
        distributed.WorkerLostError,
        ValueError,
        OSError,
        ImportError,
    ) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"{prefix}error: {message}", file=sys.stderr)
        return 1
    finally:
        distributed.shut_down()
    return 0
