"""Minibatches from CNTK Text Format (CTF) files with the semantics of CNTK's
MinibatchSource: two-level randomization, sweeps, packing by sample count, sharding
across workers and exact resume.

A sequence's sample count is its number of lines, the count CNTK's minibatch sizes use.
The stream data of a minibatch are sequence-major and never padded:

- a sparse stream is CSR over its samples: `indices` and `values` (one entry per
  non-zero), `offsets` (samples + 1), as `seqlstm.SparseEmbedding` takes them;
- a dense stream is a (samples, dim) float32 tensor;
- `lengths` gives each sequence's number of samples of that stream.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from seqlstm.ctf import (
    DEFAULT_CHUNK_SIZE,
    CtfSequence,
    StreamSpec,
    check_streams,
    open_ctf,
    parse_tables,
    read_ctf,
)

__all__ = [
    "CTFReader",
    "CtfSequence",
    "Minibatch",
    "MinibatchDataset",
    "StreamBatch",
    "StreamSpec",
    "read_ctf",
]

logger = logging.getLogger(__name__)

STATE_VERSION = 1
MAX_LOGGED_WARNINGS = 100


@dataclass(eq=False)
class StreamBatch:
    """The samples of one stream in a minibatch, sequence-major.

    Attributes:
        lengths: int64 (N,), samples of this stream per sequence.
        values: float32, (nnz,) for a sparse stream, (samples, dim) for a dense one.
        indices: int64 (nnz,) for a sparse stream, None for a dense one.
        offsets: int64 (samples + 1,) for a sparse stream, None for a dense one.
            Sample s has the entries [offsets[s], offsets[s + 1]).
    """

    lengths: torch.Tensor
    values: torch.Tensor
    indices: torch.Tensor | None = None
    offsets: torch.Tensor | None = None

    @property
    def sparse(self) -> bool:
        return self.indices is not None

    def to(self, device) -> StreamBatch:
        """Return a copy with every tensor on `device`."""
        return StreamBatch(
            *(None if t is None else t.to(device) for t in dataclasses.astuple(self))
        )


@dataclass(eq=False)
class Minibatch:
    """Whole sequences of one minibatch, this worker's share of them.

    Attributes:
        sequence_ids: int64 (N,), the sequence ids (the 0-based line index in a file
            without ids).
        lines: int64 (N,), the 1-based first line of each sequence.
        path: the file, for `path:line:` messages.
        num_sequences, num_samples: this worker's share; samples are lines.
        global_num_sequences, global_num_samples: the whole minibatch across workers.
        end_of_sweep: a sweep ended inside this minibatch.
        sweep: the 0-based sweep of the minibatch's first sequence.
        streams: stream name to StreamBatch.
    """

    sequence_ids: torch.Tensor
    lines: torch.Tensor
    path: str
    num_sequences: int
    num_samples: int
    global_num_sequences: int
    global_num_samples: int
    end_of_sweep: bool
    sweep: int
    streams: dict[str, StreamBatch]

    def to(self, device) -> Minibatch:
        """Return a copy with every tensor on `device`."""
        return dataclasses.replace(
            self,
            sequence_ids=self.sequence_ids.to(device),
            lines=self.lines.to(device),
            streams={name: batch.to(device) for name, batch in self.streams.items()},
        )


@dataclass(eq=False)
class _Window:
    """Sequences of one randomization window: their byte ranges, first lines and line
    counts in file order, and the order in which the sweep visits them."""

    start: int  # position in the sweep of its first sequence
    chunks: np.ndarray  # chunk numbers it was built from
    begin: np.ndarray  # int64 (sequences,)
    end: np.ndarray  # int64 (sequences,)
    first_line: np.ndarray  # int64 (sequences,)
    num_lines: np.ndarray  # int64 (sequences,)
    order: np.ndarray | None  # int64 (sequences,) visit order, None for file order

    def visit(self, first: int, last: int):
        """Return the index of the sequences visited at positions [first, last)."""
        return slice(first, last) if self.order is None else self.order[first:last]


class CTFReader:
    """Read minibatches of whole sequences from a CTF file, as CNTK's MinibatchSource
    with a CTFDeserializer does.

    The file is indexed once into chunks of whole sequences, about chunk_size bytes
    each. With randomize on, each sweep visits the chunks in a random order, and the
    sequences of each group of randomization_window consecutive chunks in a random order
    too. Only the groups in use are listed in memory and the file is memory-mapped, so
    files larger than memory can be read. The same seed gives the same order in every
    run.

    NOTE: the windows are disjoint groups of chunks, where CNTK's window slides by one
    chunk, and the shuffles use numpy's PCG64 in place of CNTK's mt19937_64. So the
    order differs from CNTK's, while every sweep is still a permutation of all
    sequences.

    Memory: about 40 bytes per sequence of the listed windows (the current one and at
    most one before it), plus the mapped file pages of the chunks read from them. With
    the defaults a window covers 4 GiB of text, so lower chunk_size or
    randomization_window to read files larger than memory.

    Args:
        path: the CTF file.
        streams: stream name to StreamSpec(alias, dim, sparse); alias is the name in the
            file, and undeclared names in the file are skipped, as in CNTK.
        randomize: shuffle chunks and sequences every sweep; off, read in file order.
        max_sweeps: stop after this many sweeps (next_minibatch returns None); None
            repeats forever.
        seed: seed of the shuffles. Sweep k uses seed and k, so sweeps differ.
        chunk_size: bytes per chunk; a chunk never splits a sequence.
        randomization_window: chunks per randomization window (CNTK's default is 128).
        max_errors: malformed sequences to skip, each logged once with its
            `path:line:`, before an error is raised. A skipped sequence is left out of
            later sweeps and counts once. 0 raises at the first malformed sequence, as
            CNTK's default does. A declared stream missing from a sequence always
            raises. Each worker counts the sequences it parsed itself.
        worker_rank, num_workers: this worker's shard. All workers form the same global
            minibatches; this one keeps the sequences at positions k with
            k % num_workers == worker_rank, and parses only those.

    Raises:
        ValueError: an invalid argument (named in the message), or a malformed file
            start (empty, UTF-16, no sequence id on the first line).
        FileNotFoundError, OSError: the file cannot be read.
    """

    def __init__(
        self,
        path,
        streams: dict[str, StreamSpec],
        randomize: bool = True,
        max_sweeps: int | None = None,
        seed: int = 0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        randomization_window: int = 128,
        max_errors: int = 0,
        worker_rank: int = 0,
        num_workers: int = 1,
    ):
        self._streams = check_streams(streams)
        _check_int("chunk_size", chunk_size, minimum=1)
        _check_int("randomization_window", randomization_window, minimum=1)
        _check_int("max_errors", max_errors, minimum=0)
        _check_int("seed", seed, minimum=0)
        _check_int("num_workers", num_workers, minimum=1)
        _check_int("worker_rank", worker_rank, minimum=0)
        if worker_rank >= num_workers:
            raise ValueError(
                f"worker_rank must be below num_workers ({num_workers}), "
                f"got {worker_rank}"
            )
        if max_sweeps is not None:
            _check_int("max_sweeps", max_sweeps, minimum=1)

        self.path = os.fspath(path)
        self.randomize = bool(randomize)
        self.max_sweeps = max_sweeps
        self.seed = int(seed)
        self.chunk_size = int(chunk_size)
        self.randomization_window = int(randomization_window)
        self.max_errors = int(max_errors)
        self.worker_rank = int(worker_rank)
        self.num_workers = int(num_workers)

        # The descriptor stays open so that fstat reads the status of the mapped file
        # even after it is removed or renamed. _check_unchanged compares against it.
        self._descriptor = open(self.path, "rb")
        self._opened_stat = _file_identity(os.fstat(self._descriptor.fileno()))
        self._file = open_ctf(self.path)
        index = self._file.index(self.chunk_size)
        self._has_ids = bool(index["has_ids"])
        self._chunk_begin = index["begin"]
        self._chunk_end = index["end"]
        self._chunk_first_line = index["first_line"]
        self._chunk_sequences = index["num_sequences_per_chunk"]
        self.num_chunks = len(self._chunk_begin)
        self.sweep_num_sequences = int(index["num_sequences"])
        self.sweep_num_samples = int(index["num_samples"])

        self._sweep = 0
        self._position = 0  # sequences of the current sweep already taken, all workers
        # First lines of the malformed sequences this worker skipped. Later sweeps
        # leave them out without parsing them again, so each counts once.
        self._skipped_lines: set[int] = set()
        self._reported_skips = 0
        self._logged_warnings: set[str] = set()
        self._warnings_capped = False
        self._layout: tuple[int, np.ndarray, np.ndarray] | None = None
        self._windows: dict[tuple[int, int], _Window] = {}

    @property
    def streams(self) -> dict[str, StreamSpec]:
        return dict(self._streams)

    @property
    def skipped_sequences(self) -> int:
        """Malformed sequences skipped so far by this worker (see max_errors)."""
        return len(self._skipped_lines)

    def next_minibatch(self, num_samples: int) -> Minibatch | None:
        """Read the next minibatch of whole sequences.

        Sequences are taken in sweep order while their sample counts (lines) add up to
        at most num_samples. The first sequence is always taken, so a sequence longer
        than num_samples comes alone. A minibatch can hold the end of one sweep and the
        start of the next, as in CNTK.

        NOTE: num_samples is not capped, so a value far above sweep_num_samples builds
        a minibatch of that many sweeps, taking time and memory in proportion, and a
        value near 2**63 with max_sweeps None does not return.

        Args:
            num_samples: the maximum number of samples (lines) of the global minibatch.

        Returns:
            This worker's share of the minibatch, or None after max_sweeps sweeps.

        Raises:
            ValueError: num_samples is below 1, or a sequence is malformed (the message
                starts with `path:line:`).
        """
        _check_int("num_samples", num_samples, minimum=1)
        if self._finished():
            return None
        self._check_unchanged()

        first_sweep, first_position = self._sweep, self._position
        end_of_sweep = False
        pieces = []
        taken_samples = 0
        taken_sequences = 0
        while not self._finished():
            window = self._window_at(self._sweep, self._position)
            offset = self._position - window.start
            # Each sequence has at least one line, so num_samples sequences are enough.
            candidates = window.num_lines[window.visit(offset, offset + num_samples)]
            totals = np.cumsum(candidates) + taken_samples
            count = int(np.searchsorted(totals, num_samples, side="right"))
            if taken_sequences == 0:
                count = max(count, 1)
            if count == 0:
                break
            pieces.append((window, offset, offset + count))
            taken_samples = int(totals[count - 1])
            taken_sequences += count
            self._position += count
            if self._position == self.sweep_num_sequences:
                self._sweep += 1
                self._position = 0
                end_of_sweep = True
            if count < len(candidates):
                break

        selected = {
            name: np.concatenate(
                [getattr(w, name)[w.visit(a, b)] for w, a, b in pieces]
            )
            for name in ("begin", "end", "first_line")
        }
        share = slice(self.worker_rank, None, self.num_workers)
        try:
            minibatch = self._parse(
                selected["begin"][share],
                selected["end"][share],
                selected["first_line"][share],
            )
        except ValueError:
            # Stay before the minibatch, so that state_dict() and a retry see it.
            self._sweep, self._position = first_sweep, first_position
            raise
        minibatch.global_num_sequences = taken_sequences
        minibatch.global_num_samples = taken_samples
        minibatch.end_of_sweep = end_of_sweep
        minibatch.sweep = first_sweep
        if end_of_sweep and self._reported_skips != len(self._skipped_lines):
            self._reported_skips = len(self._skipped_lines)
            logger.warning(
                "%s: skipped %d malformed sequences in total (max_errors=%d)",
                self.path,
                self._reported_skips,
                self.max_errors,
            )
        return minibatch

    def state_dict(self) -> dict:
        """Return the reading position, to resume with load_state_dict().

        The position is global (shared by all workers), so a run may resume with a
        different number of workers.
        """
        return {
            "version": STATE_VERSION,
            "sweep": self._sweep,
            "position": self._position,
            "skipped_lines": sorted(self._skipped_lines),
            "seed": self.seed,
            "randomize": self.randomize,
            "chunk_size": self.chunk_size,
            "randomization_window": self.randomization_window,
            "sweep_num_sequences": self.sweep_num_sequences,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position saved by state_dict().

        Raises:
            ValueError: the state is from another version, file or configuration (the
                message names the differing key), or its position is invalid.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        missing = [key for key in self.state_dict() if key not in state]
        if missing:
            raise ValueError(f"state is missing the keys {missing}")
        if state["version"] != STATE_VERSION:
            raise ValueError(
                f"state['version'] must be {STATE_VERSION}, got {state['version']!r}"
            )
        for key in (
            "seed",
            "randomize",
            "chunk_size",
            "randomization_window",
            "sweep_num_sequences",
        ):
            expected = getattr(self, key)
            if state[key] != expected:
                raise ValueError(
                    f"state[{key!r}] is {state[key]!r}, "
                    f"but this reader has {expected!r}. "
                    f"The saved position applies only to the same file and settings"
                )
        sweep, position = state["sweep"], state["position"]
        _check_int("state['sweep']", sweep, minimum=0)
        _check_int("state['position']", position, minimum=0)
        if position >= self.sweep_num_sequences:
            raise ValueError(
                f"state['position'] must be below the {self.sweep_num_sequences} "
                f"sequences of a sweep, got {position}"
            )
        skipped_lines = state["skipped_lines"]
        if not isinstance(skipped_lines, (list, tuple)):
            raise TypeError(
                "state['skipped_lines'] must be a list of line numbers, "
                f"got {type(skipped_lines).__name__}"
            )
        for line in skipped_lines:
            _check_int("state['skipped_lines'] entries", line, minimum=1)
        self._sweep = int(sweep)
        self._position = int(position)
        self._skipped_lines = {int(line) for line in skipped_lines}
        self._reported_skips = len(self._skipped_lines)

    def _check_unchanged(self) -> None:
        """Raise OSError if the file was truncated or rewritten since it was opened,
        because the index no longer matches it and reading it could crash.

        NOTE: a change during a parse is not detected, and a truncation then ends the
        process with SIGBUS. Keep the file unchanged while a reader is open.
        """
        now = _file_identity(os.fstat(self._descriptor.fileno()))
        if now != self._opened_stat:
            raise OSError(
                f"{self.path}: the file changed after it was opened (size "
                f"{self._opened_stat[0]} -> {now[0]} bytes); create a new reader "
                f"to read the new contents"
            )

    # Sweep order --------------------------------------------------------------------
    # Sweep k visits the chunks in the order permutation(seed, k), cut into windows
    # of randomization_window chunks. Window w lists its chunks' sequences and
    # shuffles them with (seed, k, w). Every window depends on (seed, k, w) alone, so
    # resuming needs only the sweep and the position within it.

    def _finished(self) -> bool:
        return self.max_sweeps is not None and self._sweep >= self.max_sweeps

    def _sweep_layout(self, sweep: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the chunk order of a sweep and the sweep position of each window's
        first sequence (with the sweep's length appended)."""
        if self._layout is None or self._layout[0] != sweep:
            if self.randomize:
                generator = np.random.default_rng([self.seed, sweep, 0])
                order = generator.permutation(self.num_chunks)
            else:
                order = np.arange(self.num_chunks)
            sizes = self._chunk_sequences[order]
            window_sizes = np.add.reduceat(
                sizes, np.arange(0, self.num_chunks, self.randomization_window)
            )
            starts = np.concatenate([[0], np.cumsum(window_sizes)])
            self._layout = (sweep, order, starts)
        return self._layout[1], self._layout[2]

    def _window_at(self, sweep: int, position: int) -> _Window:
        order, starts = self._sweep_layout(sweep)
        number = int(np.searchsorted(starts, position, side="right")) - 1
        key = (sweep, number)
        if key not in self._windows:
            self._evict_windows()
            self._windows[key] = self._load_window(
                sweep, number, order, int(starts[number])
            )
        return self._windows[key]

    def _load_window(self, sweep: int, number: int, order: np.ndarray, start: int):
        first = number * self.randomization_window
        chunks = order[first : first + self.randomization_window]
        tables = [
            self._file.scan_chunk(
                self._has_ids,
                int(self._chunk_begin[c]),
                int(self._chunk_end[c]),
                int(self._chunk_first_line[c]),
            )
            for c in chunks
        ]
        names = ("begin", "end", "first_line", "num_lines")
        if len(tables) == 1:
            columns = {name: tables[0][name] for name in names}
        else:
            columns = {
                name: np.concatenate([t[name] for t in tables]) for name in names
            }
        order = None
        if self.randomize:
            generator = np.random.default_rng([self.seed, sweep, 1 + number])
            order = generator.permutation(len(columns["begin"]))
        return _Window(start=start, chunks=chunks, order=order, **columns)

    def _evict_windows(self) -> None:
        """Keep at most one other window, the one a minibatch may still be taking
        sequences from, and release the file pages of the windows dropped."""
        while len(self._windows) > 1:
            window = self._windows.pop(next(iter(self._windows)))
            for c in window.chunks:
                self._file.release(int(self._chunk_begin[c]), int(self._chunk_end[c]))

    # Parsing -------------------------------------------------------------------------

    def _parse(self, begins, ends, first_lines) -> Minibatch:
        if self._skipped_lines:
            known_good = ~np.isin(first_lines, list(self._skipped_lines))
            begins, ends = begins[known_good], ends[known_good]
            first_lines = first_lines[known_good]
        # The parser counts every malformed sequence it meets, but a minibatch that
        # spans sweeps can meet one sequence several times, so the budget is checked
        # here on distinct first lines.
        parsed = parse_tables(
            self._file,
            self._has_ids,
            self._streams,
            begins,
            ends,
            first_lines,
            max_skipped=len(first_lines) if self.max_errors > 0 else 0,
        )
        kept = np.zeros(len(first_lines), dtype=bool)
        kept[parsed["position"]] = True
        skipped_first_lines = first_lines[~kept].tolist() if parsed["skipped"] else []
        for line, message in zip(skipped_first_lines, parsed["skipped"]):
            if line in self._skipped_lines:
                continue
            if len(self._skipped_lines) == self.max_errors:
                raise ValueError(
                    f"{message} ({self.max_errors} malformed sequences were skipped "
                    f"before, the maximum that max_errors allows)"
                )
            self._skipped_lines.add(line)
            logger.warning(
                "%s (sequence skipped, max_errors=%d)", message, self.max_errors
            )
        self._log_new_warnings(parsed)

        streams = {}
        for name, spec in self._streams.items():
            data = parsed["streams"][name]
            if spec.sparse:
                streams[name] = StreamBatch(
                    lengths=torch.from_numpy(data["lengths"]),
                    values=torch.from_numpy(data["values"]),
                    indices=torch.from_numpy(data["indices"]),
                    offsets=torch.from_numpy(data["offsets"]),
                )
            else:
                streams[name] = StreamBatch(
                    lengths=torch.from_numpy(data["lengths"]),
                    values=torch.from_numpy(data["values"]),
                )
        return Minibatch(
            sequence_ids=torch.from_numpy(parsed["id"]),
            lines=torch.from_numpy(parsed["first_line"]),
            path=self.path,
            num_sequences=len(parsed["id"]),
            num_samples=int(parsed["num_lines"].sum()),
            global_num_sequences=0,
            global_num_samples=0,
            end_of_sweep=False,
            sweep=0,
            streams=streams,
        )

    def _log_new_warnings(self, parsed: dict) -> None:
        """Log each distinct parser warning once, because every sweep parses the same
        lines again, and stop after MAX_LOGGED_WARNINGS of them."""
        for message in parsed["warnings"]:
            if message in self._logged_warnings:
                continue
            if len(self._logged_warnings) >= MAX_LOGGED_WARNINGS:
                if not self._warnings_capped:
                    logger.warning(
                        "%s: further parser warnings are not logged", self.path
                    )
                    self._warnings_capped = True
                return
            self._logged_warnings.add(message)
            logger.warning("%s", message)


class MinibatchDataset(torch.utils.data.IterableDataset):
    """An IterableDataset view of a CTFReader, so that a DataLoader can drive it.

    Iterating yields reader.next_minibatch(num_samples) until it returns None, so use
    the DataLoader with batch_size=None. Iterating again continues where the reader
    stopped, because the reader holds the position.

    NOTE: only DataLoader(num_workers=0) is supported, since worker processes would each
    read the same minibatches. Iterating in a worker raises RuntimeError. Shard across
    training processes with CTFReader's worker_rank and num_workers instead.
    """

    def __init__(self, reader: CTFReader, num_samples: int):
        _check_int("num_samples", num_samples, minimum=1)
        self.reader = reader
        self.num_samples = num_samples

    def __iter__(self):
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError(
                "MinibatchDataset must be read with DataLoader(num_workers=0), because "
                "each worker process would read the same minibatches; shard with "
                "CTFReader(worker_rank=..., num_workers=...) instead"
            )
        while (minibatch := self.reader.next_minibatch(self.num_samples)) is not None:
            yield minibatch


def _file_identity(status: os.stat_result) -> tuple[int, int]:
    return status.st_size, status.st_mtime_ns


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
