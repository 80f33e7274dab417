"""A CTF file that changes or disappears while a CTFReader reads it."""

import os

import pytest

from seqlstm.reader import CTFReader, StreamSpec

STREAMS = {"x": StreamSpec("x", 10, True), "y": StreamSpec("y", 2, False)}
LINES = "".join(f"{i}\t|x {i % 10}:1\t|y 1 0\n" for i in range(50))


def make_reader(path):
    path.write_text(LINES)
    return CTFReader(path, STREAMS, randomize=False, chunk_size=64)


def test_reader_file_truncated(tmp_path):
    path = tmp_path / "data.ctf"
    reader = make_reader(path)
    assert reader.next_minibatch(5).num_sequences == 5
    os.truncate(path, 20)
    with pytest.raises(OSError, match=r"data\.ctf: the file changed after it was"):
        reader.next_minibatch(5)


def test_reader_file_rewritten_same_size(tmp_path):
    path = tmp_path / "data.ctf"
    reader = make_reader(path)
    reader.next_minibatch(5)
    stat = os.stat(path)
    path.write_text(LINES.replace("|y 1 0", "|y 0 1"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(OSError, match=r"data\.ctf: the file changed"):
        reader.next_minibatch(5)


def test_reader_file_removed_keeps_reading(tmp_path):
    path = tmp_path / "data.ctf"
    reader = make_reader(path)
    reader.next_minibatch(5)
    path.unlink()
    minibatch = reader.next_minibatch(5)
    assert minibatch.num_sequences == 5
    assert minibatch.sequence_ids.tolist() == [5, 6, 7, 8, 9]
