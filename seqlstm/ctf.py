"""CNTK Text Format (CTF) files through the C++ parser: stream declarations, conversion
of parsed arrays to tensors, and read_ctf for loading a whole small file."""

from __future__ import annotations

import logging
import os
import warnings
from typing import NamedTuple

import numpy as np
import torch

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 32 * 2**20  # bytes, CNTK's chunkSizeInBytes default


class StreamSpec(NamedTuple):
    """Declaration of one CTF stream: its name in the file, its dimension, and whether
    it is sparse (`index:value` pairs) or dense (dim numbers per sample)."""

    alias: str
    dim: int
    sparse: bool


class CtfSequence(NamedTuple):
    """One sequence of a CTF file as read_ctf returns it.

    `id` is the sequence id, or the 0-based line index in a file without ids. `line` is
    the 1-based number of its first line. `streams` maps each stream name to a tensor of
    shape (samples, dim): float32 for a dense stream, a sparse CSR float32 tensor for a
    sparse one.
    """

    id: int
    line: int
    streams: dict[str, torch.Tensor]


def check_streams(streams) -> dict[str, StreamSpec]:
    """Validate a stream declaration and return it as a dict of StreamSpec.

    Args:
        streams: dict from stream name to StreamSpec, or to an (alias, dim, sparse)
            tuple.

    Raises:
        TypeError: streams is not a dict, or an entry is not a StreamSpec or a 3-tuple.
        ValueError: no streams, an empty or invalid alias, an alias declared twice, or a
            dimension below 1. The message names the stream.
    """
    if not isinstance(streams, dict):
        raise TypeError(
            "streams must be a dict from name to StreamSpec, "
            f"got {type(streams).__name__}"
        )
    if not streams:
        raise ValueError("streams must declare at least one stream, got an empty dict")
    checked: dict[str, StreamSpec] = {}
    aliases: dict[str, str] = {}
    for name, spec in streams.items():
        if not isinstance(name, str):
            raise TypeError(f"streams keys must be str, got {name!r}")
        if not isinstance(spec, tuple) or len(spec) != 3:
            raise TypeError(
                f"streams[{name!r}] must be StreamSpec(alias, dim, sparse), "
                f"got {spec!r}"
            )
        alias, dim, sparse = spec
        if not isinstance(alias, str) or not alias:
            raise ValueError(
                f"streams[{name!r}].alias must be a non-empty str, got {alias!r}"
            )
        if any(c in "| " or ord(c) < 0x20 for c in alias) or alias.startswith("#"):
            raise ValueError(
                f"streams[{name!r}].alias must not contain blanks, `|` or control "
                f"characters, nor start with `#`, got {alias!r}"
            )
        if alias in aliases:
            raise ValueError(
                f"streams[{name!r}].alias {alias!r} is already the alias of "
                f"streams[{aliases[alias]!r}]"
            )
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"streams[{name!r}].dim must be an int >= 1, got {dim!r}")
        if not isinstance(sparse, (bool, np.bool_)):
            raise TypeError(f"streams[{name!r}].sparse must be a bool, got {sparse!r}")
        aliases[alias] = name
        checked[name] = StreamSpec(alias, int(dim), bool(sparse))
    return checked


def open_ctf(path):
    """Map a CTF file for the C++ parser; raises FileNotFoundError or OSError."""
    from seqlstm import _C

    return _C.CtfFile(os.fspath(path))


def parse_tables(
    ctf_file,
    has_ids: bool,
    streams: dict[str, StreamSpec],
    begins,
    ends,
    first_lines,
    max_skipped: int,
) -> dict:
    """Parse the sequences with the given byte ranges and return the parser's dict with
    the stream list replaced by a dict from stream name to per-stream arrays."""
    parsed = ctf_file.parse(
        has_ids,
        [tuple(spec) for spec in streams.values()],
        np.ascontiguousarray(begins, dtype=np.int64),
        np.ascontiguousarray(ends, dtype=np.int64),
        np.ascontiguousarray(first_lines, dtype=np.int64),
        max_skipped,
    )
    parsed["streams"] = dict(zip(streams, parsed["streams"]))
    return parsed


def read_ctf(path, streams) -> list[CtfSequence]:
    """Read a whole CTF file into memory, in file order.

    Meant for tests, tools and small data; CTFReader reads large files in a bounded
    window.

    Args:
        path: the CTF file.
        streams: dict from stream name to StreamSpec(alias, dim, sparse).

    Returns:
        A list of CtfSequence(id, line, streams), one per sequence of the file, where
        streams maps each name to a (samples, dim) tensor.

    Raises:
        ValueError: malformed input, with a message that starts with `path:line:`.
        FileNotFoundError, OSError: the file cannot be read.
    """
    specs = check_streams(streams)
    ctf_file = open_ctf(path)
    index = ctf_file.index(DEFAULT_CHUNK_SIZE)
    sequences: list[CtfSequence] = []
    # Each chunk is parsed as one range, which the parser splits into sequences.
    for begin, end, first_line in zip(
        index["begin"], index["end"], index["first_line"]
    ):
        parsed = parse_tables(
            ctf_file,
            index["has_ids"],
            specs,
            [begin],
            [end],
            [first_line],
            max_skipped=0,
        )
        log_warnings(parsed)
        sequences += split_sequences(parsed, specs)
    return sequences


def log_warnings(parsed: dict) -> None:
    """Log the parser's warnings, and how many it did not keep."""
    for message in parsed["warnings"]:
        logger.warning("%s", message)
    unlisted = parsed["num_warnings"] - len(parsed["warnings"])
    if unlisted > 0:
        logger.warning("%d further warnings of the same kind were not listed", unlisted)


def split_sequences(parsed: dict, streams: dict[str, StreamSpec]) -> list[CtfSequence]:
    """Cut the parser's concatenated stream arrays into one CtfSequence each."""
    num_sequences = len(parsed["id"])
    per_stream = {}
    for name, spec in streams.items():
        data = parsed["streams"][name]
        sample_ends = np.concatenate([[0], np.cumsum(data["lengths"])])
        per_stream[name] = (spec, data, sample_ends)

    sequences = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        for k in range(num_sequences):
            sequences.append(_sequence_at(parsed, per_stream, k))
    return sequences


def _sequence_at(parsed: dict, per_stream: dict, k: int) -> CtfSequence:
    tensors = {}
    for name, (spec, data, sample_ends) in per_stream.items():
        first, last = int(sample_ends[k]), int(sample_ends[k + 1])
        if spec.sparse:
            offsets = data["offsets"][first : last + 1]
            entries = slice(int(offsets[0]), int(offsets[-1]))
            tensors[name] = torch.sparse_csr_tensor(
                torch.from_numpy(offsets - offsets[0]),
                torch.from_numpy(data["indices"][entries].copy()),
                torch.from_numpy(data["values"][entries].copy()),
                size=(last - first, spec.dim),
                check_invariants=False,  # the parser builds valid CSR
            )
        else:
            tensors[name] = torch.from_numpy(data["values"][first:last].copy())
    return CtfSequence(int(parsed["id"][k]), int(parsed["first_line"][k]), tensors)
