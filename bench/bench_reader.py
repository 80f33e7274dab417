"""Benchmark the CTF reader on a generated file in the shape of CNTK's
sequence-classification tutorial (`|x` one-hot words over 2000 ids on every line, `|y`
one-hot over 5 classes on the first line of each sequence).

It writes the file under /tmp and deletes it afterwards, checks that the C++ parser and
the plain-Python parser of bench/plain_ctf.py give the same arrays on a prefix of it,
then reports, all measured in this one process and run:

- MB/s and sequences/s of the C++ parser over the whole file, by wall-clock and by
  CPU time (the parser is single-threaded, so the CPU-time figure is per core);
- the same for the plain-Python parser over the prefix, and the ratio of the two;
- CTFReader end to end (randomized, 200-sample minibatches, one sweep);
- the peak resident memory of each run above the process's resident memory before it.

Usage, from the repository root after an in-place build:

    python bench/bench_reader.py [--megabytes 250] [--python-megabytes 20]
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plain_ctf import parse_ctf_text  # noqa: E402

from seqlstm import CTFReader, StreamSpec  # noqa: E402
from seqlstm.ctf import open_ctf, parse_tables  # noqa: E402

STREAMS = {"features": StreamSpec("x", 2000, True), "labels": StreamSpec("y", 5, False)}
TRAIN = Path(__file__).resolve().parent.parent / "seqlstm" / "data" / "Train.ctf"
MEGABYTE = 1e6


def train_sequence_lengths() -> np.ndarray:
    """Return the line count of each sequence of the shipped Train.ctf."""
    ids = [line.split("\t", 1)[0] for line in TRAIN.read_text().splitlines()]
    starts = [k for k in range(len(ids)) if k == 0 or ids[k] != ids[k - 1]]
    return np.diff(starts + [len(ids)])


def generate_block(rng, lengths: np.ndarray, first_id: int, count: int) -> str:
    """Write `count` sequences with Train.ctf's length distribution as CTF text."""
    sequence_lengths = rng.choice(lengths, size=count)
    words = rng.integers(0, 2000, size=int(sequence_lengths.sum()))
    labels = rng.integers(0, 5, size=count)
    label_text = [" ".join("1" if j == k else "0" for j in range(5)) for k in range(5)]
    lines = []
    word = 0
    for k in range(count):
        sequence_id = first_id + k
        lines.append(f"{sequence_id}\t|x {words[word]}:1\t|y {label_text[labels[k]]}\n")
        for t in range(1, sequence_lengths[k]):
            lines.append(f"{sequence_id}\t|x {words[word + t]}:1\n")
        word += sequence_lengths[k]
    return "".join(lines)


def generate_files(folder: str, megabytes: float, prefix_megabytes: float, seed: int):
    """Write the benchmark file and a prefix of it, and return both paths."""
    rng = np.random.default_rng(seed)
    lengths = train_sequence_lengths()
    path = os.path.join(folder, "bench.ctf")
    prefix_path = os.path.join(folder, "prefix.ctf")
    written = 0
    next_id = 0
    with open(path, "w") as output, open(prefix_path, "w") as prefix:
        while written < megabytes * MEGABYTE:
            block = generate_block(rng, lengths, next_id, 20_000)
            next_id += 20_000
            output.write(block)
            if written < prefix_megabytes * MEGABYTE:
                prefix.write(block)
            written += len(block)
    return path, prefix_path


def cpu_model() -> str:
    with open("/proc/cpuinfo") as file:
        for line in file:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def peak_rss_reset() -> int:
    """Reset the peak resident set size (Linux) and return the current one, in bytes."""
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")
    return rss_bytes("VmRSS")


def rss_bytes(field: str) -> int:
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def parse_whole_file(path: str) -> tuple[int, dict]:
    """Parse every sequence with the C++ parser, one chunk per call, and release each
    chunk's pages after it is parsed. Return the sequence count and the last chunk's
    result."""
    ctf_file = open_ctf(path)
    index = ctf_file.index(32 * 2**20)
    sequences = 0
    parsed = {}
    for begin, end, line in zip(index["begin"], index["end"], index["first_line"]):
        parsed = parse_tables(
            ctf_file, index["has_ids"], STREAMS, [begin], [end], [line], max_skipped=0
        )
        sequences += len(parsed["id"])
        ctf_file.release(int(begin), int(end))
    return sequences, parsed


def timed(function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def check_same_arrays(prefix_path: str) -> None:
    """Compare the C++ parser with the plain-Python parser on the prefix file."""
    sequences, parsed = parse_whole_file(prefix_path)
    plain = parse_ctf_text(Path(prefix_path).read_text(), STREAMS)
    if len(plain["id"]) != sequences or sequences != len(parsed["id"]):
        raise SystemExit(
            f"check failed: {sequences} sequences from C++, "
            f"{len(plain['id'])} from Python (the prefix must fit in one 32 MiB chunk)"
        )
    if not np.array_equal(parsed["id"], plain["id"]):
        raise SystemExit("check failed: sequence ids differ")
    for name in STREAMS:
        for key, expected in plain[name].items():
            if not np.array_equal(parsed["streams"][name][key], expected):
                raise SystemExit(f"check failed: {name}.{key} differs")


def read_with_reader(path: str, **settings) -> int:
    reader = CTFReader(path, STREAMS, max_sweeps=1, seed=0, **settings)
    sequences = 0
    while (minibatch := reader.next_minibatch(200)) is not None:
        sequences += minibatch.num_sequences
    return sequences


def measure(label: str, size: int, function, *args) -> dict:
    baseline = peak_rss_reset()
    sequences, wall, cpu = timed(function, *args)
    peak = rss_bytes("VmHWM") - baseline
    row = {
        "label": label,
        "megabytes": size / MEGABYTE,
        "sequences": sequences,
        "mb_per_s": size / MEGABYTE / wall,
        "mb_per_cpu_s": size / MEGABYTE / cpu,
        "sequences_per_s": sequences / wall,
        "peak_mb": peak / MEGABYTE,
    }
    print(
        f"| {label} | {row['megabytes']:.0f} | {sequences:,} | "
        f"{row['mb_per_s']:.1f} | {row['mb_per_cpu_s']:.1f} | "
        f"{row['sequences_per_s']:,.0f} | {row['peak_mb']:.0f} |",
        flush=True,
    )
    return row


def plain_python(path: str) -> int:
    return len(parse_ctf_text(Path(path).read_text(), STREAMS)["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=250, help="file size, MB")
    parser.add_argument(
        "--python-megabytes",
        type=float,
        default=20,
        help="size of the prefix that the plain-Python parser reads, MB (at most 32)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the generated data"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(
        prefix="seqlstm-bench-reader-", dir="/tmp"
    ) as folder:
        started = time.perf_counter()
        path, prefix_path = generate_files(
            folder, args.megabytes, args.python_megabytes, args.seed
        )
        size, prefix_size = os.path.getsize(path), os.path.getsize(prefix_path)
        print(
            f"generated {size / MEGABYTE:.0f} MB "
            f"in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
        print(f"command: python {' '.join(sys.argv)}")
        print(
            f"machine: {cpu_model()}, {os.cpu_count()} CPUs; Python "
            f"{platform.python_version()}; file: {size / MEGABYTE:.0f} MB, "
            f"plain-Python prefix: {prefix_size / MEGABYTE:.0f} MB"
        )
        print()
        check_same_arrays(prefix_path)

        print(
            "| run | MB | sequences | MB/s | MB per CPU-s | sequences/s | peak RSS MB |"
        )
        print("|---|---|---|---|---|---|---|")
        plain = measure("plain Python, prefix", prefix_size, plain_python, prefix_path)
        native_prefix = measure(
            "C++ parser, prefix",
            prefix_size,
            lambda p: parse_whole_file(p)[0],
            prefix_path,
        )
        native = measure(
            "C++ parser, whole file", size, lambda p: parse_whole_file(p)[0], path
        )
        measure("CTFReader, 32 MiB chunks, window 128", size, read_with_reader, path)
        measure(
            "CTFReader, 4 MiB chunks, window 4",
            size,
            lambda p: read_with_reader(p, chunk_size=4 * 2**20, randomization_window=4),
            path,
        )
        print()
        print(
            f"C++ / plain Python on the same prefix: "
            f"{native_prefix['mb_per_s'] / plain['mb_per_s']:.1f}x by wall-clock, "
            f"{native_prefix['mb_per_cpu_s'] / plain['mb_per_cpu_s']:.1f}x by CPU time"
        )
        print(
            f"C++ parser per core over {size / MEGABYTE:.0f} MB: "
            f"{native['mb_per_cpu_s']:.0f} MB per CPU-second"
        )


if __name__ == "__main__":
    main()
