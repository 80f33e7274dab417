"""Round trips through CTF text: random sequences written in the many spellings the
grammar allows must read back as the same ids, indices and float32 values."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqlstm import CTFReader, StreamSpec, read_ctf

SPARSE_DIM = 50
DENSE_DIM = 3
STREAMS = {
    "words": StreamSpec("w", SPARSE_DIM, True),
    "target": StreamSpec("t", DENSE_DIM, False),
}

float32s = st.floats(width=32, allow_nan=False, allow_infinity=False)
pairs = st.lists(st.tuples(st.integers(0, SPARSE_DIM - 1), float32s), max_size=4)


@st.composite
def sequences(draw, with_ids: bool):
    """Draw a sequence: sparse pairs on every line and a dense sample on one line."""
    num_lines = draw(st.integers(1, 4)) if with_ids else 1
    return {
        "lines": [draw(pairs) for _ in range(num_lines)],
        "target_line": draw(st.integers(0, num_lines - 1)),
        "target": draw(st.lists(float32s, min_size=DENSE_DIM, max_size=DENSE_DIM)),
    }


@st.composite
def spellings(draw):
    """Draw the free choices of the text form: separators, line ends and extras."""
    return {
        "blank": draw(st.sampled_from([" ", "\t", "  ", " \t"])),
        "newline": draw(st.sampled_from(["\n", "\r\n"])),
        "bom": draw(st.booleans()),
        "final_newline": draw(st.booleans()),
        "comment": draw(st.booleans()),
        "unknown_stream": draw(st.booleans()),
        "target_first": draw(st.booleans()),
        "continuation_without_id": draw(st.booleans()),
    }


def number_text(value: float) -> str:
    # repr gives the shortest text that reads back as the same double, which is the
    # float32 value itself, and it never writes `inf` or `nan` for finite values.
    return repr(float(value))


def write_ctf(path, drawn: list[dict], ids: list[int] | None, spelling: dict) -> None:
    blank = spelling["blank"]
    lines = []
    for k, sequence in enumerate(drawn):
        for number, words in enumerate(sequence["lines"]):
            samples = ["|w" + "".join(f"{blank}{i}:{number_text(v)}" for i, v in words)]
            if number == sequence["target_line"]:
                target = "|t" + "".join(
                    blank + number_text(v) for v in sequence["target"]
                )
                samples.insert(0 if spelling["target_first"] else 1, target)
            if spelling["comment"]:
                samples.append("|# a comment with 1:2")
            if spelling["unknown_stream"]:
                samples.insert(1, "|other 1 2 3")
            line = blank.join(samples)
            if ids is not None and (
                number == 0 or not spelling["continuation_without_id"]
            ):
                line = str(ids[k]) + blank + line
            elif ids is not None:
                line = blank + line  # a continuation line may start with blanks
            lines.append(line)
    text = spelling["newline"].join(lines)
    if spelling["final_newline"]:
        text += spelling["newline"]
    data = text.encode()
    if spelling["bom"]:
        data = b"\xef\xbb\xbf" + data
    path.write_bytes(data)


def check_sequence(got, expected: dict, expected_id: int):
    assert got.id == expected_id
    words = got.streams["words"]
    expected_pairs = [pair for line in expected["lines"] for pair in line]
    assert words.shape == (len(expected["lines"]), SPARSE_DIM)
    assert words.col_indices().tolist() == [i for i, _ in expected_pairs]
    expected_values = np.array([v for _, v in expected_pairs], dtype=np.float32)
    assert np.array_equal(words.values().numpy(), expected_values)
    counts = [len(line) for line in expected["lines"]]
    assert (
        words.crow_indices().tolist()
        == np.concatenate([[0], np.cumsum(counts)]).tolist()
    )
    target = got.streams["target"].numpy()
    assert target.shape == (1, DENSE_DIM)
    assert np.array_equal(target[0], np.array(expected["target"], dtype=np.float32))


@settings(max_examples=150, deadline=None)
@given(
    drawn=st.lists(sequences(with_ids=True), min_size=1, max_size=8),
    spelling=spellings(),
    data=st.data(),
)
def test_round_trip_with_ids(tmp_path_factory, drawn, spelling, data):
    # Neighbouring sequences need different ids, or CTF joins them into one.
    ids = data.draw(
        st.lists(st.integers(0, 2**63 - 1), min_size=len(drawn), max_size=len(drawn))
    )
    for k in range(1, len(ids)):
        if ids[k] == ids[k - 1]:
            ids[k] = (ids[k] + 1) % 2**63
    path = tmp_path_factory.mktemp("ctf") / "round_trip.ctf"
    write_ctf(path, drawn, ids, spelling)

    got = read_ctf(path, STREAMS)
    assert len(got) == len(drawn)
    for sequence, expected, expected_id in zip(got, drawn, ids):
        check_sequence(sequence, expected, expected_id)

    reader = CTFReader(path, STREAMS, randomize=False, max_sweeps=1, chunk_size=64)
    minibatch = reader.next_minibatch(10_000)
    assert minibatch.sequence_ids.tolist() == ids
    assert minibatch.num_samples == sum(len(s["lines"]) for s in drawn)
    assert reader.next_minibatch(10_000) is None


@settings(max_examples=60, deadline=None)
@given(
    drawn=st.lists(sequences(with_ids=False), min_size=1, max_size=8),
    spelling=spellings(),
)
def test_round_trip_without_ids(tmp_path_factory, drawn, spelling):
    path = tmp_path_factory.mktemp("ctf") / "round_trip.ctf"
    write_ctf(path, drawn, None, spelling)
    got = read_ctf(path, STREAMS)
    assert len(got) == len(drawn)
    for k, (sequence, expected) in enumerate(zip(got, drawn)):
        check_sequence(sequence, expected, expected_id=k)
        assert sequence.line == k + 1


@pytest.mark.parametrize("seed", range(3))
def test_round_trip_randomized_reader_sees_all(tmp_path, seed):
    rng = np.random.default_rng(seed)
    drawn = [
        {
            "lines": [
                [(int(rng.integers(SPARSE_DIM)), 1.0)]
                for _ in range(rng.integers(1, 6))
            ],
            "target_line": 0,
            "target": [0.0, 1.0, 0.0],
        }
        for _ in range(300)
    ]
    ids = list(range(300))
    spelling = {
        "blank": "\t",
        "newline": "\n",
        "bom": False,
        "final_newline": True,
        "comment": False,
        "unknown_stream": False,
        "target_first": False,
        "continuation_without_id": False,
    }
    path = tmp_path / "many.ctf"
    write_ctf(path, drawn, ids, spelling)
    reader = CTFReader(
        path, STREAMS, seed=seed, max_sweeps=1, chunk_size=500, randomization_window=3
    )
    seen = []
    while (minibatch := reader.next_minibatch(32)) is not None:
        words = minibatch.streams["words"]
        seen += minibatch.sequence_ids.tolist()
        for k, sequence_id in enumerate(minibatch.sequence_ids.tolist()):
            assert int(words.lengths[k]) == len(drawn[sequence_id]["lines"])
    assert sorted(seen) == ids
    assert seen != ids
