"""The files in tests/data/ctf_cases, each one a kind of input that users have fed to
CTF readers, with the result that tests/data/ctf_cases/EXPECTED.md gives for it."""

import logging
import re
from pathlib import Path

import pytest
import torch

from seqlstm import CTFReader, StreamSpec, read_ctf

CASES = Path(__file__).parent / "data" / "ctf_cases"
STREAMS = {"features": StreamSpec("x", 2000, True), "labels": StreamSpec("y", 5, False)}


def case(name: str) -> Path:
    return CASES / name


def at(name: str, line: int) -> str:
    """Return a regex for a message that starts with the case file's path and line."""
    return "^" + re.escape(f"{case(name)}:{line}:")


def words(sequence) -> list[int]:
    """Return the sparse x indices of a sequence, one per sample (one-hot samples)."""
    features = sequence.streams["features"]
    assert torch.equal(features.crow_indices(), torch.arange(features.shape[0] + 1))
    return features.col_indices().tolist()


def label(sequence) -> list[float]:
    return sequence.streams["labels"].tolist()


def one_hot(k: int) -> list[list[float]]:
    return [[1.0 if j == k else 0.0 for j in range(5)]]


def read_all_minibatches(path: Path):
    """Read one sweep in file order through CTFReader, as a trainer would."""
    reader = CTFReader(path, STREAMS, randomize=False, max_sweeps=1)
    minibatches = []
    while (minibatch := reader.next_minibatch(1000)) is not None:
        minibatches.append(minibatch)
    return minibatches


# Files that load -------------------------------------------------------------------


def check_reference_sequences(sequences):
    assert len(sequences) == 2
    assert sequences[0].id == 0
    assert words(sequences[0]) == [560, 0]
    assert label(sequences[0]) == one_hot(0)
    assert sequences[1].id == 1
    assert words(sequences[1]) == [424]
    assert label(sequences[1]) == one_hot(1)


def test_lf_reference_loads():
    sequences = read_ctf(case("lf_reference.ctf"), STREAMS)
    check_reference_sequences(sequences)
    assert [s.line for s in sequences] == [1, 3]


@pytest.mark.parametrize(
    "name",
    [
        "crlf.ctf",
        "utf8_bom_crlf.ctf",
        "no_trailing_newline.ctf",
        "tab_separated.ctf",
        "space_separated.ctf",
    ],
)
def test_variant_equals_lf_reference(name):
    sequences = read_ctf(case(name), STREAMS)
    check_reference_sequences(sequences)
    assert [s.line for s in sequences] == [1, 3]


def test_variant_minibatch_equals_lf_reference():
    for name in ["crlf.ctf", "utf8_bom_crlf.ctf", "no_trailing_newline.ctf"]:
        reference = read_all_minibatches(case("lf_reference.ctf"))[0]
        variant = read_all_minibatches(case(name))[0]
        assert variant.sequence_ids.tolist() == reference.sequence_ids.tolist()
        for stream in ("features", "labels"):
            expected = reference.streams[stream]
            got = variant.streams[stream]
            assert torch.equal(got.lengths, expected.lengths)
            assert torch.equal(got.values, expected.values)
        assert torch.equal(
            variant.streams["features"].indices, reference.streams["features"].indices
        )


def test_sparse_index_last_valid_loads():
    (sequence,) = read_ctf(case("sparse_index_last_valid.ctf"), STREAMS)
    assert words(sequence) == [1999, 0]
    assert label(sequence) == one_hot(4)


def test_dense_too_few_values_zero_filled(caplog):
    with caplog.at_level(logging.WARNING):
        (sequence,) = read_ctf(case("dense_too_few_values.ctf"), STREAMS)
    assert label(sequence) == [[0.0, 1.0, 0.0, 0.0, 0.0]]
    assert words(sequence) == [3, 4]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert re.match(at("dense_too_few_values.ctf", 1), messages[0])
    assert "stream `y`" in messages[0]
    assert "3 of 5 values" in messages[0]


def test_dense_too_few_values_warns_in_reader(caplog):
    with caplog.at_level(logging.WARNING):
        (minibatch,) = read_all_minibatches(case("dense_too_few_values.ctf"))
    assert minibatch.streams["labels"].values.tolist() == [[0.0, 1.0, 0.0, 0.0, 0.0]]
    assert any("3 of 5 values" in r.getMessage() for r in caplog.records)


def test_label_on_first_line():
    first, second = read_ctf(case("label_on_first_line.ctf"), STREAMS)
    assert (first.id, second.id) == (0, 1)
    assert words(first) == [560, 0, 0]
    assert label(first) == one_hot(0)
    assert words(second) == [424]
    assert label(second) == one_hot(3)


def test_label_on_last_line():
    first, second = read_ctf(case("label_on_last_line.ctf"), STREAMS)
    assert words(first) == [11, 12]
    assert label(first) == one_hot(1)
    assert words(second) == [13]
    assert label(second) == one_hot(2)


def test_label_twice_returns_two_label_samples():
    (sequence,) = read_ctf(case("label_twice.ctf"), STREAMS)
    assert sequence.id == 0
    assert label(sequence) == one_hot(0) + one_hot(1)
    (minibatch,) = read_all_minibatches(case("label_twice.ctf"))
    assert minibatch.streams["labels"].lengths.tolist() == [2]
    assert minibatch.streams["features"].lengths.tolist() == [2]


def test_minibatch_packing_by_sample_count():
    reader = CTFReader(
        case("minibatch_packing.ctf"), STREAMS, randomize=False, max_sweeps=1
    )
    minibatches = []
    while (minibatch := reader.next_minibatch(4)) is not None:
        minibatches.append(minibatch)
    assert [m.sequence_ids.tolist() for m in minibatches] == [[100], [101, 102], [103]]
    assert [m.num_samples for m in minibatches] == [4, 4, 6]
    assert [m.num_sequences for m in minibatches] == [1, 2, 1]
    assert [m.streams["labels"].values.shape[0] for m in minibatches] == [1, 2, 1]
    assert [m.end_of_sweep for m in minibatches] == [False, False, True]
    assert reader.next_minibatch(4) is None


# Files that raise --------------------------------------------------------------------

ERROR_CASES = [
    # (file, line, fragments the message must contain)
    ("utf16le_bom.ctf", 1, ["UTF-16", "UTF-8"]),
    ("empty_file.ctf", 1, ["empty", "no sequences"]),
    ("id_without_streams.ctf", 2, ["sequence id 1", "no sample"]),
    ("duplicate_stream_on_line.ctf", 1, ["stream `x`", "more than once"]),
    (
        "sparse_index_equal_to_dim.ctf",
        2,
        ["stream `x`", "index 2000", "dimension 2000"],
    ),
    ("sparse_index_negative.ctf", 1, ["stream `x`", "index -1"]),
    (
        "dense_values_in_sparse_stream.ctf",
        1,
        ["stream `x` is sparse", "index:value", "`-0.117`"],
    ),
    ("leading_space_before_id.ctf", 3, ["found `1`", "sequence id"]),
    ("dense_too_many_values.ctf", 1, ["stream `y`", "6 values", "dimension is 5"]),
    ("marker_per_value.ctf", 1, ["stream `y`", "more than once"]),
    ("label_missing.ctf", 2, ["sequence id 1", "stream `y`"]),
]


@pytest.mark.parametrize(("name", "line", "fragments"), ERROR_CASES)
def test_case_raises_in_read_ctf(name, line, fragments):
    with pytest.raises(ValueError, match=at(name, line)) as error:
        read_ctf(case(name), STREAMS)
    for fragment in fragments:
        assert fragment in str(error.value)


@pytest.mark.parametrize(("name", "line", "fragments"), ERROR_CASES)
def test_case_raises_in_reader(name, line, fragments):
    with pytest.raises(ValueError, match=at(name, line)) as error:
        read_all_minibatches(case(name))
    for fragment in fragments:
        assert fragment in str(error.value)


def test_leading_space_line_not_read_into_sequence():
    # Lenient mode skips sequence 0, which contains the bad line 3, and never returns
    # line 3's values as part of it. Sequence 1 has no label, so only x is declared.
    reader = CTFReader(
        case("leading_space_before_id.ctf"),
        {"features": STREAMS["features"]},
        randomize=False,
        max_sweeps=1,
        max_errors=1,
    )
    minibatch = reader.next_minibatch(100)
    assert minibatch.sequence_ids.tolist() == [1]
    assert minibatch.streams["features"].indices.tolist() == [8]
    assert reader.skipped_sequences == 1


def test_empty_file_never_loops():
    with pytest.raises(ValueError, match=at("empty_file.ctf", 1)):
        CTFReader(case("empty_file.ctf"), STREAMS, max_sweeps=None)
