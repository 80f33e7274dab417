"""The CTF grammar as CNTK's CNTKTextFormatReader reads it: sequence ids, comments,
aliases, dense and sparse values, jagged streams, blank and very long lines, and the
`path:line:` error of each malformed form."""

import logging
import re

import numpy as np
import pytest
import torch

from seqlstm import StreamSpec, read_ctf
from seqlstm.reader import CTFReader

STREAMS = {"features": StreamSpec("x", 2000, True), "labels": StreamSpec("y", 5, False)}


@pytest.fixture
def write(tmp_path):
    """Return a function that writes text (or bytes) to a fresh .ctf file."""
    counter = iter(range(1000))

    def write_file(content) -> str:
        path = tmp_path / f"input{next(counter)}.ctf"
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8", newline="")
        else:
            path.write_bytes(content)
        return str(path)

    return write_file


def at(path: str, line: int) -> str:
    return "^" + re.escape(f"{path}:{line}:")


def words(sequence) -> list[int]:
    return sequence.streams["features"].col_indices().tolist()


def dense(sequence, name="labels") -> list[list[float]]:
    return sequence.streams[name].tolist()


# Sequence ids -------------------------------------------------------------------------


def test_ids_group_consecutive_lines(write):
    path = write("7 |x 1:1 |y 1 0 0 0 0\n7 |x 2:1\n9 |x 3:1 |y 0 1 0 0 0\n")
    first, second = read_ctf(path, STREAMS)
    assert (first.id, first.line, words(first)) == (7, 1, [1, 2])
    assert (second.id, second.line, words(second)) == (9, 3, [3])


def test_ids_repeated_later_start_new_sequence(write):
    path = write(
        "0 |x 1:1 |y 1 0 0 0 0\n1 |x 2:1 |y 1 0 0 0 0\n0 |x 3:1 |y 1 0 0 0 0\n"
    )
    sequences = read_ctf(path, STREAMS)
    assert [s.id for s in sequences] == [0, 1, 0]
    assert [words(s) for s in sequences] == [[1], [2], [3]]


def test_line_without_id_continues_sequence(write):
    path = write(
        "5 |x 1:1 |y 1 0 0 0 0\n|x 2:1\n |x 3:1\n\t|x 4:1\n6 |x 5:1 |y 1 0 0 0 0\n"
    )
    first, second = read_ctf(path, STREAMS)
    assert first.id == 5
    assert words(first) == [1, 2, 3, 4]
    assert (second.id, second.line) == (6, 5)


def test_file_without_ids_has_one_sequence_per_line(write):
    path = write("|x 1:1 |y 1 0 0 0 0\n|x 2:1 |y 0 1 0 0 0\n|x 3:1 |y 0 0 1 0 0\n")
    sequences = read_ctf(path, STREAMS)
    assert [s.id for s in sequences] == [0, 1, 2]
    assert [s.line for s in sequences] == [1, 2, 3]
    assert [words(s) for s in sequences] == [[1], [2], [3]]


def test_id_above_int64_raises(write):
    path = write("0 |x 1:1 |y 1 0 0 0 0\n9223372036854775808 |x 1:1 |y 1 0 0 0 0\n")
    with pytest.raises(ValueError, match=at(path, 2) + ".*too large"):
        read_ctf(path, STREAMS)


def test_id_at_int64_max_loads(write):
    path = write("9223372036854775807 |x 1:1 |y 1 0 0 0 0\n")
    (sequence,) = read_ctf(path, STREAMS)
    assert sequence.id == 2**63 - 1


def test_first_line_with_leading_blank_raises(write):
    path = write(" 0 |x 1:1 |y 1 0 0 0 0\n")
    with pytest.raises(ValueError, match=at(path, 1) + ".*sequence id"):
        read_ctf(path, STREAMS)


def test_id_followed_by_text_raises(write):
    path = write("0a |x 1:1 |y 1 0 0 0 0\n")
    with pytest.raises(ValueError, match=at(path, 1) + ".*found `a`"):
        read_ctf(path, STREAMS)


# Comments, names and aliases ----------------------------------------------------------


def test_comment_runs_to_next_bar(write):
    path = write("0 |# a comment |x 1:1|####|y 0 0 1 0 0 |# trailing\n")
    (sequence,) = read_ctf(path, STREAMS)
    assert words(sequence) == [1]
    assert dense(sequence) == [[0, 0, 1, 0, 0]]


def test_comment_with_tab_before_bar(write):
    path = write("0\t|####\t|x 4:4|####|y 0 1 0 0 0\n")
    (sequence,) = read_ctf(path, STREAMS)
    assert sequence.streams["features"].values().tolist() == [4.0]
    assert dense(sequence) == [[0, 1, 0, 0, 0]]


def test_comment_only_line_raises(write):
    path = write("0 |x 1:1 |y 1 0 0 0 0\n0 |# nothing else\n")
    with pytest.raises(ValueError, match=at(path, 2) + ".*no sample"):
        read_ctf(path, STREAMS)


def test_alias_differs_from_stream_name(write):
    path = write("0 |S0 3:1 |S1 0 0 0 1 0\n")
    streams = {"words": StreamSpec("S0", 10, True), "label": StreamSpec("S1", 5, False)}
    (sequence,) = read_ctf(path, streams)
    assert sequence.streams["words"].col_indices().tolist() == [3]
    assert sequence.streams["label"].tolist() == [[0, 0, 0, 1, 0]]


def test_undeclared_streams_are_skipped(write):
    path = write("0 |z 1 2 3 |x 1:1 |xx 5:5 |X 6:6 |y 1 0 0 0 0 |w junk: ::\n")
    (sequence,) = read_ctf(path, STREAMS)
    assert words(sequence) == [1]
    assert dense(sequence) == [[1, 0, 0, 0, 0]]


def test_line_with_only_undeclared_streams_raises(write):
    path = write("0 |x 1:1 |y 1 0 0 0 0\n0 |z 1 2\n")
    with pytest.raises(ValueError, match=at(path, 2) + ".*sequence id 0 has no sample"):
        read_ctf(path, STREAMS)


def test_utf8_alias(write):
    path = write("0 |wörter 3:1 |y 1 0 0 0 0\n")
    streams = {"words": StreamSpec("wörter", 10, True), "labels": STREAMS["labels"]}
    (sequence,) = read_ctf(path, streams)
    assert sequence.streams["words"].col_indices().tolist() == [3]


def test_bar_followed_by_blank_raises(write):
    path = write("0 |x 1:1 | y 1 0 0 0 0\n")
    with pytest.raises(ValueError, match=at(path, 1) + ".*followed by a stream name"):
        read_ctf(path, STREAMS)


def test_bar_at_line_end_raises(write):
    path = write("0 |x 1:1 |y 1 0 0 0 0 |\n")
    with pytest.raises(ValueError, match=at(path, 1) + ".*end of the line"):
        read_ctf(path, STREAMS)


def test_text_between_samples_raises(write):
    path = write("0 |x 1:1 junk |y 1 0 0 0 0\n")
    with pytest.raises(ValueError, match=at(path, 1) + ".*got `junk`"):
        read_ctf(path, STREAMS)


# Dense and sparse values --------------------------------------------------------------


def test_dense_values_parse_exactly(write):
    streams = {"v": StreamSpec("v", 6, False)}
    path = write("0 |v 1.5 -2 3e-1 +4 45. 9.10e-11\n")
    (sequence,) = read_ctf(path, streams)
    expected = np.array([1.5, -2, 3e-1, 4, 45.0, 9.10e-11], dtype=np.float32)
    assert sequence.streams["v"].dtype == torch.float32
    assert np.array_equal(sequence.streams["v"].numpy()[0], expected)


def test_dense_values_round_correctly(write):
    texts = ["0.1", "3.14159265358979", "16777217", "1e-40", "-0.0", "02.0", "1E5"]
    streams = {"v": StreamSpec("v", len(texts), False)}
    path = write("0 |v " + " ".join(texts) + "\n")
    (sequence,) = read_ctf(path, streams)
    expected = np.array([float(t) for t in texts], dtype=np.float32)
    assert np.array_equal(sequence.streams["v"].numpy()[0], expected)


@pytest.mark.parametrize(
    "token", [".5", "2,0", "2:0", "2.0f", "2#0", "1e", "-", "inf", "nan", "0x10", "1e+"]
)
def test_dense_invalid_number_raises(write, token):
    path = write(f"0 |x 1:1 |y 1 {token} 0 0 0\n")
    with pytest.raises(ValueError, match=at(path, 1)) as error:
        read_ctf(path, STREAMS)
    assert "stream `y`" in str(error.value)
    assert f"`{token}`" in str(error.value)


def test_dense_number_above_float_range_raises(write):
    path = write("0 |x 1:1 |y 1e39 0 0 0 0\n")
    with pytest.raises(ValueError, match=at(path, 1) + ".*float32 range"):
        read_ctf(path, STREAMS)


def test_sparse_values_and_pairs(write):
    path = write("0 |x 3:0.5 7:-2 1999:1e2 |y 1 0 0 0 0\n")
    (sequence,) = read_ctf(path, STREAMS)
    features = sequence.streams["features"]
    assert features.col_indices().tolist() == [3, 7, 1999]
    assert features.values().tolist() == [0.5, -2.0, 100.0]


def test_sparse_duplicate_indices_kept(write):
    path = write("0 |x 3:1 3:2 |y 1 0 0 0 0\n")
    (sequence,) = read_ctf(path, STREAMS)
    assert words(sequence) == [3, 3]


def test_empty_sparse_sample_has_no_entries(write):
    path = write("0 |x |y 1 0 0 0 0\n0 |x 4:1\n0 |x\n")
    (sequence,) = read_ctf(path, STREAMS)
    features = sequence.streams["features"]
    assert features.shape == (3, 2000)
    assert features.crow_indices().tolist() == [0, 0, 1, 1]
    assert features.col_indices().tolist() == [4]


def test_empty_dense_sample_zero_filled(write, caplog):
    path = write("0 |x 1:1 |y\n")
    with caplog.at_level(logging.WARNING):
        (sequence,) = read_ctf(path, STREAMS)
    assert dense(sequence) == [[0, 0, 0, 0, 0]]
    assert "0 of 5 values" in caplog.text


def test_no_blank_needed_before_bar(write):
    path = write("0 |x 5:5|y 0 0 0 0 1\n")
    (sequence,) = read_ctf(path, STREAMS)
    assert words(sequence) == [5]
    assert dense(sequence) == [[0, 0, 0, 0, 1]]


def test_tabs_separate_values(write):
    path = write("0\t|x\t5:5\t6:6\t|y\t0\t0\t0\t0\t1\n")
    (sequence,) = read_ctf(path, STREAMS)
    assert sequence.streams["features"].col_indices().tolist() == [5, 6]
    assert dense(sequence) == [[0, 0, 0, 0, 1]]


@pytest.mark.parametrize(
    ("token", "fragment"),
    [
        ("a:1", "invalid sparse index `a`"),
        ("3", "expects index:value pairs, got `3`"),
        ("3:", "invalid number ``"),
        ("3:1:2", "invalid number `1:2`"),
        ("3:x", "invalid number `x`"),
        (":1", "invalid sparse index ``"),
        ("99999999999999999999999:1", "is out of range"),
    ],
)
def test_sparse_invalid_pair_raises(write, token, fragment):
    path = write(f"0 |x {token} |y 1 0 0 0 0\n")
    with pytest.raises(ValueError, match=at(path, 1) + ".*stream `x`") as error:
        read_ctf(path, STREAMS)
    assert fragment in str(error.value)


# Jagged streams and whole-sequence checks ---------------------------------------------


def test_jagged_streams_keep_own_lengths(write):
    path = write(
        "0 |x 1:1 |y 1 0 0 0 0\n0 |x 2:1\n"
        "0 |x 3:1 |y 0 1 0 0 0\n1 |x 4:1 |y 0 0 1 0 0\n"
    )
    reader = CTFReader(path, STREAMS, randomize=False, max_sweeps=1)
    minibatch = reader.next_minibatch(100)
    assert minibatch.streams["features"].lengths.tolist() == [3, 1]
    assert minibatch.streams["labels"].lengths.tolist() == [2, 1]
    assert minibatch.num_samples == 4


def test_no_stream_on_every_line_raises(write):
    path = write("0 |x 1:1\n0 |y 1 0 0 0 0\n")
    with pytest.raises(
        ValueError, match=at(path, 1) + ".*no stream has a sample on each"
    ):
        read_ctf(path, STREAMS)


def test_missing_stream_raises_even_when_lenient(write):
    path = write("0 |x 1:1 |y 1 0 0 0 0\n1 |x 1:1\n")
    reader = CTFReader(path, STREAMS, randomize=False, max_errors=5)
    with pytest.raises(ValueError, match=at(path, 2) + ".*no sample of stream `y`"):
        reader.next_minibatch(100)


# Lines: blank, long, line ends --------------------------------------------------------


def test_blank_line_inside_file_raises(write):
    path = write("0 |x 1:1 |y 1 0 0 0 0\n\n1 |x 1:1 |y 1 0 0 0 0\n")
    with pytest.raises(ValueError, match=at(path, 2) + ".*no sample"):
        read_ctf(path, STREAMS)


def test_blank_line_at_end_raises(write):
    path = write("0 |x 1:1 |y 1 0 0 0 0\n \n")
    with pytest.raises(ValueError, match=at(path, 2) + ".*no sample"):
        read_ctf(path, STREAMS)


def test_blank_line_without_ids_raises(write):
    path = write("|x 1:1 |y 1 0 0 0 0\n\n|x 1:1 |y 1 0 0 0 0\n")
    with pytest.raises(ValueError, match=at(path, 2)):
        read_ctf(path, STREAMS)


def test_very_long_sparse_line(write):
    indices = list(range(200_000))
    streams = {"x": StreamSpec("x", 200_000, True), "y": STREAMS["labels"]}
    path = write(
        "0 |x " + " ".join(f"{i}:{i % 7}" for i in indices) + " |y 1 0 0 0 0\n"
    )
    (sequence,) = read_ctf(path, streams)
    assert sequence.streams["x"].col_indices().tolist() == indices
    assert sequence.streams["x"].values().tolist() == [float(i % 7) for i in indices]


def test_very_long_dense_line(write):
    values = np.arange(100_000, dtype=np.float32) / 8
    streams = {"v": StreamSpec("v", len(values), False)}
    path = write("|v " + " ".join(repr(float(v)) for v in values) + "\n")
    (sequence,) = read_ctf(path, streams)
    assert np.array_equal(sequence.streams["v"].numpy()[0], values)


def test_carriage_return_inside_line_is_blank(write):
    path = write("0 |x 1:1\r|y 1 0 0 0 0\r\n")
    (sequence,) = read_ctf(path, STREAMS)
    assert words(sequence) == [1]
    assert dense(sequence) == [[1, 0, 0, 0, 0]]


def test_incomplete_value_at_end_of_file_raises(write):
    for text in [
        "0 |x 1:1 |y 1 0 0 0 -",
        "0 |x 1:1 |y 1 0 0 0 12.+e",
        "0 |y 1 0 0 0 0 |x 1:",
    ]:
        path = write(text)
        with pytest.raises(ValueError, match=at(path, 1)):
            read_ctf(path, STREAMS)


def test_utf16_big_endian_raises(write):
    path = write(b"\xfe\xff" + "0 |x 1:1 |y 1 0 0 0 0\n".encode("utf-16-be"))
    with pytest.raises(ValueError, match=at(path, 1) + ".*UTF-16"):
        read_ctf(path, STREAMS)


def test_utf16_without_bom_raises(write):
    path = write("0 |x 1:1 |y 1 0 0 0 0\n".encode("utf-16-le"))
    with pytest.raises(ValueError, match=at(path, 1) + ".*UTF-16"):
        read_ctf(path, STREAMS)


def test_bom_only_file_raises(write):
    path = write(b"\xef\xbb\xbf")
    with pytest.raises(ValueError, match=at(path, 1) + ".*no sequences"):
        read_ctf(path, STREAMS)


# Stream declarations and files -------------------------------------------------------


def test_streams_empty_raises(write):
    path = write("0 |x 1:1\n")
    with pytest.raises(ValueError, match="streams must declare at least one stream"):
        read_ctf(path, {})


def test_streams_not_dict_raises(write):
    path = write("0 |x 1:1\n")
    with pytest.raises(TypeError, match="streams must be a dict"):
        read_ctf(path, [StreamSpec("x", 5, True)])


def test_stream_entry_not_spec_raises(write):
    path = write("0 |x 1:1\n")
    with pytest.raises(TypeError, match=r"streams\['x'\] must be StreamSpec"):
        read_ctf(path, {"x": "x"})


def test_stream_dim_zero_raises(write):
    path = write("0 |x 1:1\n")
    with pytest.raises(
        ValueError, match=r"streams\['x'\].dim must be an int >= 1, got 0"
    ):
        read_ctf(path, {"x": StreamSpec("x", 0, True)})


def test_stream_alias_empty_raises(write):
    path = write("0 |x 1:1\n")
    with pytest.raises(
        ValueError, match=r"streams\['x'\].alias must be a non-empty str"
    ):
        read_ctf(path, {"x": StreamSpec("", 3, True)})


def test_stream_alias_with_blank_raises(write):
    path = write("0 |x 1:1\n")
    with pytest.raises(
        ValueError, match=r"streams\['x'\].alias must not contain blanks"
    ):
        read_ctf(path, {"x": StreamSpec("a b", 3, True)})


def test_stream_alias_comment_mark_raises(write):
    path = write("0 |x 1:1\n")
    with pytest.raises(ValueError, match=r"streams\['x'\].alias .*start with `#`"):
        read_ctf(path, {"x": StreamSpec("#x", 3, True)})


def test_stream_alias_twice_raises(write):
    path = write("0 |x 1:1\n")
    streams = {"a": StreamSpec("x", 3, True), "b": StreamSpec("x", 3, False)}
    with pytest.raises(ValueError, match=r"streams\['b'\].alias 'x' is already"):
        read_ctf(path, streams)


def test_missing_file_raises(tmp_path):
    path = tmp_path / "absent.ctf"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        read_ctf(path, STREAMS)


def test_directory_raises(tmp_path):
    with pytest.raises(OSError, match=re.escape(str(tmp_path))):
        read_ctf(tmp_path, STREAMS)


def test_invalid_utf8_byte_escaped_in_message(write):
    path = write(b"0 |x 560\x80:1 |y 1 0 0 0 0\n")
    with pytest.raises(ValueError, match=at(path, 1)) as error:
        read_ctf(path, STREAMS)
    assert "`560\\x80`" in str(error.value)


def test_utf8_token_kept_in_message(write):
    path = write("0 |x 1:1 |y 1 é 0 0 0\n")
    with pytest.raises(ValueError, match=at(path, 1) + ".*invalid number `é`"):
        read_ctf(path, STREAMS)
