"""CNTK's training progress table: the header, one line per scheduled minibatch, and the
final error line, in the format of the ProgressPrinter in CNTK's Python package (cntk/logging/
progress_print.py).

Averages are sums divided by the number of samples, where a sample is one label, that is
one sequence. "examples" is the running number of sequences.
"""

import sys
import time

HEADER = (
    " average      since    average      since      examples\n"
    "    loss       last     metric       last              \n"
    " ------------------------------------------------------"
)


def is_geometric_update(update: int) -> bool:
    """Return True for update numbers 1, 3, 7, 15, ... (2**k - 1), where CNTK's
    geometric schedule writes a line."""
    return update >= 1 and ((update + 1) & update) == 0


def format_geometric_line(
    loss_since_start: float,
    loss_since_last: float,
    metric_since_start: float,
    metric_since_last: float,
    examples: int,
) -> str:
    """Format one progress line: four averages in 8 characters with 3 significant
    digits, three spaces after each, then the examples right-aligned in 10."""
    return (
        f" {loss_since_start:8.3g}   {loss_since_last:8.3g}   "
        f"{metric_since_start:8.3g}   {metric_since_last:8.3g}    {examples:10d}"
    )


def format_minibatch_line(
    first: int, last: int, loss: float, metric: float, samples: int
):
    """Format a line of the every-N-minibatches schedule: the range of minibatches, the
    average loss and the metric as a percentage, each with the samples it covers."""
    return (
        f" Minibatch[{first:4d}-{last:4d}]: loss = {loss:0.6f} * {samples:d}, "
        f"metric = {metric * 100:0.2f}% * {samples:d};"
    )


class ProgressPrinter:
    """Writes CNTK's progress table to a text stream.

    With `freq=0` (CNTK's default) it writes the three-line header when created and a
    line after updates 1, 3, 7, 15, ...; each line shows the averages since the start
    and since the previous line. With `freq > 0` it writes a `Minibatch[a-b]` line
    every `freq` updates and a `Finished Epoch` summary when `summarize` is called.

    The trainer is the only caller and calls it on one process only, so the table is
    written once however many processes train.

    Args:
        freq: 0 for the geometric schedule, else the number of updates per line.
        stream: where lines go; None means sys.stdout at the time of each write.
        num_epochs: total epochs (sweeps) for the summary's "of N", or None.
    """

    def __init__(self, freq: int = 0, stream=None, num_epochs: int | None = None):
        if freq < 0:
            raise ValueError(f"freq must be 0 (geometric) or positive, got {freq}")
        self.freq = freq
        self.stream = stream
        self.num_epochs = num_epochs
        self.updates = 0
        self.samples = 0
        self.loss_sum = 0.0
        self.metric_sum = 0.0
        # Totals at the previous printed line and at the previous epoch summary.
        self.last_line = (0, 0, 0.0, 0.0)  # (updates, samples, loss_sum, metric_sum)
        self.last_summary = (0, 0, 0.0, 0.0)
        self.summaries = 0
        self.summary_start_time = time.monotonic()
        self.reported_values: dict[str, str] = {}
        if freq == 0:
            self.write(HEADER)

    def write(self, line: str) -> None:
        """Write one line (or several joined by newlines) and flush."""
        stream = self.stream if self.stream is not None else sys.stdout
        stream.write(line + "\n")
        stream.flush()

    def report_value(self, name: str, description: str) -> None:
        """Write `description` (such as "Learning rate per 1 samples: 0.0005") the first
        time it is reported under `name` and whenever it changes, as CNTK's learners
        report their training parameters."""
        if self.reported_values.get(name) != description:
            self.reported_values[name] = description
            self.write(description)

    def update(self, loss_sum: float, metric_sum: float, samples: int) -> None:
        """Add one update's summed loss and errors over `samples` sequences, and write a
        line when the schedule asks for one."""
        self.updates += 1
        self.samples += samples
        self.loss_sum += loss_sum
        self.metric_sum += metric_sum
        if self.freq == 0:
            if is_geometric_update(self.updates):
                self._write_geometric_line()
        elif self.updates % self.freq == 0:
            self._write_minibatch_line()

    def _window(self, since):
        updates, samples, loss_sum, metric_sum = since
        return (
            self.updates - updates,
            self.samples - samples,
            self.loss_sum - loss_sum,
            self.metric_sum - metric_sum,
        )

    def _totals(self):
        return (self.updates, self.samples, self.loss_sum, self.metric_sum)

    def _write_geometric_line(self) -> None:
        _, samples, loss_sum, metric_sum = self._window(self.last_line)
        line = format_geometric_line(
            _average(self.loss_sum, self.samples),
            _average(loss_sum, samples),
            _average(self.metric_sum, self.samples),
            _average(metric_sum, samples),
            self.samples,
        )
        self.last_line = self._totals()
        self.write(line)

    def _write_minibatch_line(self) -> None:
        _, samples, loss_sum, metric_sum = self._window(self.last_line)
        line = format_minibatch_line(
            self.last_line[0] + 1,
            self.updates,
            _average(loss_sum, samples),
            _average(metric_sum, samples),
            samples,
        )
        self.last_line = self._totals()
        self.write(line)

    def summarize(self) -> None:
        """Write the `Finished Epoch` line for the updates since the previous summary.
        As in CNTK, the geometric schedule (freq=0) writes no summary."""
        now = time.monotonic()
        updates, samples, loss_sum, metric_sum = self._window(self.last_summary)
        self.last_summary = self._totals()
        seconds = now - self.summary_start_time
        self.summary_start_time = now
        if self.freq == 0 or updates == 0:
            return
        self.summaries += 1
        of_epochs = f" of {self.num_epochs}" if self.num_epochs is not None else ""
        self.write(
            f"Finished Epoch[{self.summaries}{of_epochs}]: [Training] "
            f"loss = {_average(loss_sum, samples):0.6f} * {samples}, "
            f"metric = {_average(metric_sum, samples) * 100:0.2f}% * {samples} "
            f"{seconds:0.3f}s ({_average(samples, seconds):5.1f} samples/s);"
        )

    def write_final_error(self, metric_average: float) -> None:
        """Write the tutorial's closing line with the last minibatch's error rate."""
        self.write(f" error: {metric_average:f}")

    def state_dict(self) -> dict:
        """Return the running totals, so that a resumed run continues the same table."""
        return {
            "updates": self.updates,
            "samples": self.samples,
            "loss_sum": self.loss_sum,
            "metric_sum": self.metric_sum,
            "last_line": list(self.last_line),
            "last_summary": list(self.last_summary),
            "summaries": self.summaries,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore totals saved by state_dict."""
        self.updates = state["updates"]
        self.samples = state["samples"]
        self.loss_sum = state["loss_sum"]
        self.metric_sum = state["metric_sum"]
        self.last_line = tuple(state["last_line"])
        self.last_summary = tuple(state["last_summary"])
        self.summaries = state["summaries"]


def _average(total: float, count: float) -> float:
    # CNTK's _avg returns 0 for an empty window instead of dividing by zero.
    return total / count if count else 0.0
