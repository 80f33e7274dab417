"""Per-minibatch training records: a JSON-lines log, TensorBoard scalars and a plot.

Each record has `minibatch` (1-based), `samples` (sequences seen so far, the "examples"
of the progress table), `loss` and `metric` (the minibatch's averages) and `seconds`
(training time so far).
"""

import json
from pathlib import Path


class MetricsLog:
    """Appends one JSON object per line to a file, flushed after each record."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        """Append `record` as one line."""
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def truncate_after(self, minibatch: int) -> None:
        """Drop the records of minibatches after `minibatch`, which a run that is
        resumed from an older checkpoint trains again."""
        self.file.close()
        kept = [r for r in read_metrics_log(self.path) if r["minibatch"] <= minibatch]
        with open(self.path, "w", encoding="utf-8") as file:
            for record in kept:
                file.write(json.dumps(record) + "\n")
        self.file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        self.file.close()


def read_metrics_log(path) -> list[dict]:
    """Read the records of a metrics log.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: a line is not a JSON record with the expected keys, naming path:line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    records = []
    with open(path, "rb") as file:
        for number, raw_line in enumerate(file, start=1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}:{number}: not UTF-8 text ({error.reason} at byte "
                    f"{error.start}), so not a metrics log"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}:{number}: invalid JSON ({error.msg})"
                ) from None
            required = {"minibatch", "samples", "loss", "metric"}
            if not isinstance(record, dict) or not required <= set(record):
                raise ValueError(
                    f"{path}:{number}: a metrics record needs minibatch, samples, loss "
                    f"and metric, got {line.strip()[:80]}"
                )
            for key in sorted(required):
                value = record[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(
                        f"{path}:{number}: {key} must be a number, got {value!r}"
                    )
            records.append(record)
    return records


class TensorBoardLog:
    """Writes the records as TensorBoard scalars `loss` and `metric` against samples.

    Raises:
        ImportError: the tensorboard package is not installed (on construction).
    """

    def __init__(self, log_dir):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(
                "--tensorboard needs the tensorboard package; install it with "
                "`pip install tensorboard`"
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, record: dict) -> None:
        """Add the record's loss and metric at step = samples seen."""
        self.writer.add_scalar("loss", record["loss"], record["samples"])
        self.writer.add_scalar("metric", record["metric"], record["samples"])

    def close(self) -> None:
        self.writer.close()


def plot_metrics(log_path, output_path) -> None:
    """Draw loss and error against samples seen from a metrics log into an image file
    (format from its suffix, such as .png or .pdf).

    Raises:
        ImportError: matplotlib is not installed.
        FileNotFoundError, ValueError: as read_metrics_log.
    """
    records = read_metrics_log(log_path)
    if not records:
        raise ValueError(f"{log_path}: the metrics log has no records to plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "plot needs matplotlib; install it with `pip install matplotlib` "
            "(or the seqlstm[plot] extra)"
        ) from None
    samples = [r["samples"] for r in records]
    figure, (loss_axes, metric_axes) = plt.subplots(2, 1, sharex=True, figsize=(7, 6))
    loss_axes.plot(samples, [r["loss"] for r in records], linewidth=0.8)
    loss_axes.set_ylabel("loss (cross entropy)")
    metric_axes.plot(samples, [r["metric"] for r in records], linewidth=0.8)
    metric_axes.set_ylabel("error rate")
    metric_axes.set_xlabel("samples seen (sequences)")
    loss_axes.set_title(f"training curve: {Path(log_path).name}")
    figure.tight_layout()
    figure.savefig(output_path)
    plt.close(figure)
