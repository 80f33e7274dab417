"""CTFReader: sweeps, randomization, packing by sample count, sharding and resume,
checked on the shipped Train.ctf against a plain-Python reading of the same file."""

import logging
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

import seqlstm
from seqlstm import CTFReader, StreamSpec, read_ctf
from seqlstm.reader import Minibatch

TRAIN = Path(seqlstm.__file__).parent / "data" / "Train.ctf"
STREAMS = {"features": StreamSpec("x", 2000, True), "labels": StreamSpec("y", 5, False)}


def plain_python_sequences(path: Path) -> list[dict]:
    """Group Train.ctf's lines by id and collect the x indices and y rows, in Python."""
    sequences = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        sequence_id, *fields = line.split("|")
        if not sequences or sequences[-1]["id"] != int(sequence_id):
            sequences.append({"id": int(sequence_id), "line": number, "x": [], "y": []})
        for field in fields:
            name, *values = field.split()
            if name == "x":
                sequences[-1]["x"] += [int(v.split(":")[0]) for v in values]
            elif name == "y":
                sequences[-1]["y"].append([float(v) for v in values])
    return sequences


@pytest.fixture(scope="module")
def train_sequences():
    return plain_python_sequences(TRAIN)


def read_sweeps(reader: CTFReader, num_samples: int) -> list[Minibatch]:
    minibatches = []
    while (minibatch := reader.next_minibatch(num_samples)) is not None:
        minibatches.append(minibatch)
    return minibatches


def minibatch_lines(minibatches) -> list[int]:
    return [line for m in minibatches for line in m.lines.tolist()]


# Train.ctf statistics -----------------------------------------------------------------


def test_train_statistics_match_plain_python(train_sequences):
    assert len(train_sequences) == 1247
    reader = CTFReader(TRAIN, STREAMS)
    assert reader.sweep_num_sequences == len(train_sequences)
    assert reader.sweep_num_samples == 5433
    assert reader.sweep_num_samples == sum(len(s["x"]) for s in train_sequences)


def test_read_ctf_matches_plain_python(train_sequences):
    sequences = read_ctf(TRAIN, STREAMS)
    assert [s.id for s in sequences] == [s["id"] for s in train_sequences]
    assert [s.line for s in sequences] == [s["line"] for s in train_sequences]
    for got, expected in zip(sequences, train_sequences):
        assert got.streams["features"].col_indices().tolist() == expected["x"]
        assert got.streams["labels"].tolist() == expected["y"]


def test_sweep_in_file_order_matches_plain_python(train_sequences):
    reader = CTFReader(TRAIN, STREAMS, randomize=False, max_sweeps=1)
    minibatches = read_sweeps(reader, 200)
    ids = [i for m in minibatches for i in m.sequence_ids.tolist()]
    assert ids == [s["id"] for s in train_sequences]
    indices = torch.cat([m.streams["features"].indices for m in minibatches])
    assert indices.tolist() == [i for s in train_sequences for i in s["x"]]
    labels = torch.cat([m.streams["labels"].values for m in minibatches])
    assert labels.tolist() == [row for s in train_sequences for row in s["y"]]
    assert sum(m.num_samples for m in minibatches) == 5433


def test_file_order_minibatches_as_cntk():
    # CNTK's packing of 200-sample minibatches over Train.ctf in file order: the first
    # holds 44 sequences and 199 samples, and 251 of them hold 11,421 sequences and
    # 49,737 samples.
    reader = CTFReader(TRAIN, STREAMS, randomize=False)
    minibatches = [reader.next_minibatch(200) for _ in range(251)]
    assert (minibatches[0].num_sequences, minibatches[0].num_samples) == (44, 199)
    assert sum(m.num_sequences for m in minibatches) == 11421
    assert sum(m.num_samples for m in minibatches) == 49737
    assert sum(m.end_of_sweep for m in minibatches) == 9


# Sweeps -------------------------------------------------------------------------------


@pytest.mark.parametrize("randomize", [False, True])
@pytest.mark.parametrize(
    ("chunk_size", "randomization_window"),
    [(1, 1), (1, 7), (300, 1), (300, 4), (5000, 3), (32 * 2**20, 128)],
)
def test_sweep_visits_each_sequence_once(randomize, chunk_size, randomization_window):
    reader = CTFReader(
        TRAIN,
        STREAMS,
        randomize=randomize,
        max_sweeps=2,
        chunk_size=chunk_size,
        randomization_window=randomization_window,
    )
    minibatches = read_sweeps(reader, 64)
    lines = minibatch_lines(minibatches)
    counts = Counter(lines)
    assert len(counts) == 1247
    assert set(counts.values()) == {2}
    boundary = [k for k, m in enumerate(minibatches) if m.end_of_sweep]
    assert len(boundary) == 2
    assert boundary[-1] == len(minibatches) - 1
    first_sweep = minibatch_lines(minibatches[: boundary[0]])
    assert len(set(first_sweep)) == len(first_sweep)
    assert sum(m.global_num_samples for m in minibatches) == 2 * 5433


def test_chunk_smaller_than_sequence_gives_one_sequence_per_chunk():
    reader = CTFReader(TRAIN, STREAMS, chunk_size=1)
    assert reader.num_chunks == 1247


def test_randomized_order_depends_on_seed_and_sweep():
    def order(seed):
        reader = CTFReader(TRAIN, STREAMS, seed=seed, max_sweeps=2, chunk_size=4000)
        lines = minibatch_lines(read_sweeps(reader, 200))
        return lines[:1247], lines[1247:]

    first, second = order(seed=0)
    again_first, again_second = order(seed=0)
    other_first, _ = order(seed=1)
    file_order = [s.line for s in read_ctf(TRAIN, STREAMS)]
    assert first == again_first
    assert second == again_second
    assert first != second
    assert first != other_first
    assert first != file_order
    assert sorted(first) == file_order


def test_minibatch_crosses_sweep_boundary():
    reader = CTFReader(TRAIN, STREAMS, randomize=False)
    minibatches = [reader.next_minibatch(200) for _ in range(30)]
    k = next(k for k, m in enumerate(minibatches) if m.end_of_sweep)
    crossing = minibatches[k]
    lines = crossing.lines.tolist()
    assert crossing.sweep == 0
    assert lines[-1] < lines[0]  # the next sweep starts again at line 1
    assert 1 in lines
    after = minibatches[k + 1]
    assert after.sweep == 1
    assert not after.end_of_sweep


def test_unlimited_sweeps_keep_going():
    reader = CTFReader(TRAIN, STREAMS, max_sweeps=None, chunk_size=10_000)
    minibatches = [reader.next_minibatch(2000) for _ in range(12)]
    assert all(m is not None for m in minibatches)
    assert minibatches[-1].sweep >= 3


def test_after_max_sweeps_returns_none():
    reader = CTFReader(TRAIN, STREAMS, max_sweeps=1)
    read_sweeps(reader, 10_000)
    assert reader.next_minibatch(10) is None
    assert reader.next_minibatch(10) is None


# Packing ------------------------------------------------------------------------------


@pytest.mark.parametrize("num_samples", [1, 3, 10, 200])
def test_packing_stops_before_overflow(num_samples):
    reader = CTFReader(TRAIN, STREAMS, max_sweeps=1, chunk_size=3000)
    minibatches = read_sweeps(reader, num_samples)
    lengths = [m.streams["features"].lengths.tolist() for m in minibatches]
    for k, minibatch in enumerate(minibatches):
        assert minibatch.num_samples == sum(lengths[k])
        assert minibatch.num_samples <= num_samples or minibatch.num_sequences == 1
        if k + 1 < len(minibatches):
            assert minibatch.num_samples + lengths[k + 1][0] > num_samples


def test_minibatch_tensors_have_documented_layout():
    reader = CTFReader(TRAIN, STREAMS, seed=3)
    minibatch = reader.next_minibatch(200)
    n = minibatch.num_sequences
    features = minibatch.streams["features"]
    labels = minibatch.streams["labels"]
    assert minibatch.sequence_ids.dtype == torch.int64
    assert minibatch.sequence_ids.shape == (n,)
    assert minibatch.lines.shape == (n,)
    assert minibatch.path == str(TRAIN)
    assert features.sparse
    assert features.lengths.dtype == torch.int64
    assert features.indices.dtype == torch.int64
    assert features.values.dtype == torch.float32
    assert features.offsets.shape == (minibatch.num_samples + 1,)
    assert features.offsets[0] == 0
    assert features.offsets[-1] == features.indices.shape[0]
    assert not labels.sparse
    assert labels.values.shape == (n, 5)
    assert labels.values.dtype == torch.float32
    assert labels.lengths.tolist() == [1] * n


def test_minibatch_data_match_read_ctf():
    by_line = {s.line: s for s in read_ctf(TRAIN, STREAMS)}
    reader = CTFReader(TRAIN, STREAMS, seed=5, chunk_size=2000, randomization_window=2)
    minibatch = reader.next_minibatch(300)
    features = minibatch.streams["features"]
    sample = 0
    for k, line in enumerate(minibatch.lines.tolist()):
        expected = by_line[line]
        length = int(features.lengths[k])
        begin = int(features.offsets[sample])
        end = int(features.offsets[sample + length])
        assert features.indices[begin:end].tolist() == (
            expected.streams["features"].col_indices().tolist()
        )
        assert minibatch.streams["labels"].values[k].tolist() == (
            expected.streams["labels"][0].tolist()
        )
        assert int(minibatch.sequence_ids[k]) == expected.id
        sample += length


def test_minibatch_to_moves_every_tensor():
    minibatch = CTFReader(TRAIN, STREAMS).next_minibatch(50)
    moved = minibatch.to("meta")
    assert moved.sequence_ids.device.type == "meta"
    assert moved.lines.device.type == "meta"
    for stream in moved.streams.values():
        for tensor in (stream.lengths, stream.values, stream.indices, stream.offsets):
            assert tensor is None or tensor.device.type == "meta"
    assert moved.num_samples == minibatch.num_samples
    assert minibatch.sequence_ids.device.type == "cpu"


def test_reader_lists_at_most_two_windows():
    reader = CTFReader(TRAIN, STREAMS, chunk_size=500, randomization_window=2)
    for _ in range(40):
        reader.next_minibatch(200)
        assert len(reader._windows) <= 2


# Sharding -----------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [2, 3])
def test_workers_share_global_minibatches(num_workers):
    def reader(rank):
        return CTFReader(
            TRAIN,
            STREAMS,
            max_sweeps=1,
            seed=7,
            chunk_size=2500,
            worker_rank=rank,
            num_workers=num_workers,
        )

    whole = CTFReader(TRAIN, STREAMS, max_sweeps=1, seed=7, chunk_size=2500)
    single = read_sweeps(whole, 100)
    shards = [read_sweeps(reader(rank), 100) for rank in range(num_workers)]
    for rank, shard in enumerate(shards):
        assert len(shard) == len(single)
        for local, whole in zip(shard, single):
            assert local.lines.tolist() == whole.lines.tolist()[rank::num_workers]
            assert local.global_num_sequences == whole.num_sequences
            assert local.global_num_samples == whole.num_samples
            assert local.num_samples == int(local.streams["features"].lengths.sum())
    all_lines = [line for shard in shards for line in minibatch_lines(shard)]
    assert sorted(all_lines) == sorted(minibatch_lines(single))
    assert len(set(all_lines)) == 1247


def test_worker_with_empty_share():
    path = Path(__file__).parent / "data" / "ctf_cases" / "minibatch_packing.ctf"
    reader = CTFReader(
        path, STREAMS, randomize=False, max_sweeps=1, worker_rank=1, num_workers=2
    )
    minibatch = reader.next_minibatch(4)
    assert minibatch.num_sequences == 0
    assert minibatch.num_samples == 0
    assert minibatch.global_num_sequences == 1
    assert minibatch.global_num_samples == 4
    assert minibatch.sequence_ids.shape == (0,)
    assert minibatch.streams["features"].offsets.tolist() == [0]
    assert minibatch.streams["features"].indices.shape == (0,)
    assert minibatch.streams["labels"].values.shape == (0, 5)
    assert reader.next_minibatch(4).sequence_ids.tolist() == [102]


# Resume -------------------------------------------------------------------------------


def assert_same_minibatch(got: Minibatch, expected: Minibatch):
    assert got.sequence_ids.tolist() == expected.sequence_ids.tolist()
    assert got.lines.tolist() == expected.lines.tolist()
    assert (got.sweep, got.end_of_sweep) == (expected.sweep, expected.end_of_sweep)
    assert got.global_num_samples == expected.global_num_samples
    for name in ("features", "labels"):
        assert torch.equal(got.streams[name].values, expected.streams[name].values)
        assert torch.equal(got.streams[name].lengths, expected.streams[name].lengths)


@pytest.mark.parametrize(
    ("randomize", "chunk_size", "skip"),
    [(False, 32 * 2**20, 3), (True, 32 * 2**20, 30), (True, 700, 17), (True, 1, 40)],
)
def test_resume_continues_same_minibatches(randomize, chunk_size, skip):
    settings = {
        "randomize": randomize,
        "chunk_size": chunk_size,
        "seed": 11,
        "max_sweeps": 4,
    }
    reader = CTFReader(TRAIN, STREAMS, **settings)
    for _ in range(skip):
        reader.next_minibatch(150)
    state = reader.state_dict()
    expected = [reader.next_minibatch(150) for _ in range(60)]

    resumed = CTFReader(TRAIN, STREAMS, **settings)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    for want in expected:
        if want is None:
            assert resumed.next_minibatch(150) is None
        else:
            assert_same_minibatch(resumed.next_minibatch(150), want)


def test_resume_with_other_worker_count():
    whole = CTFReader(TRAIN, STREAMS, seed=2, chunk_size=3000)
    for _ in range(5):
        whole.next_minibatch(100)
    state = whole.state_dict()
    expected = whole.next_minibatch(100)
    shard = CTFReader(
        TRAIN, STREAMS, seed=2, chunk_size=3000, worker_rank=1, num_workers=2
    )
    shard.load_state_dict(state)
    assert shard.next_minibatch(100).lines.tolist() == expected.lines.tolist()[1::2]


def test_load_state_other_seed_raises():
    state = CTFReader(TRAIN, STREAMS, seed=1).state_dict()
    with pytest.raises(
        ValueError, match=r"state\['seed'\] is 1, but this reader has 2"
    ):
        CTFReader(TRAIN, STREAMS, seed=2).load_state_dict(state)


def test_load_state_other_chunk_size_raises():
    state = CTFReader(TRAIN, STREAMS, chunk_size=1000).state_dict()
    with pytest.raises(ValueError, match=r"state\['chunk_size'\]"):
        CTFReader(TRAIN, STREAMS).load_state_dict(state)


def test_load_state_missing_key_raises():
    state = CTFReader(TRAIN, STREAMS).state_dict()
    del state["position"]
    with pytest.raises(ValueError, match=r"state is missing the keys \['position'\]"):
        CTFReader(TRAIN, STREAMS).load_state_dict(state)


def test_load_state_position_past_sweep_raises():
    state = CTFReader(TRAIN, STREAMS).state_dict()
    state["position"] = 1247
    with pytest.raises(ValueError, match=r"state\['position'\] must be below the 1247"):
        CTFReader(TRAIN, STREAMS).load_state_dict(state)


def test_load_state_other_version_raises():
    state = CTFReader(TRAIN, STREAMS).state_dict()
    state["version"] = 99
    with pytest.raises(ValueError, match=r"state\['version'\] must be 1, got 99"):
        CTFReader(TRAIN, STREAMS).load_state_dict(state)


# Lenient mode -------------------------------------------------------------------------

BAD_SEQUENCES = (
    "0 |x 1:1 |y 1 0 0 0 0\n"
    "1 |x 2000:1 |y 1 0 0 0 0\n"
    "2 |x 3:1 |y 1 0 0 0 0\n"
    "3 |x 4:1 |y 1 0 0\n"
    "4 |x 5:1 |y 1 0 0 0 0 0\n"
    "5 |x 6:1 |y 0 1 0 0 0\n"
)


def test_lenient_mode_skips_and_logs(tmp_path, caplog):
    path = tmp_path / "bad.ctf"
    path.write_text(BAD_SEQUENCES)
    reader = CTFReader(path, STREAMS, randomize=False, max_sweeps=1, max_errors=2)
    with caplog.at_level(logging.WARNING):
        minibatch = reader.next_minibatch(100)
    assert minibatch.sequence_ids.tolist() == [0, 2, 3, 5]
    assert minibatch.num_samples == 4
    assert minibatch.global_num_sequences == 6
    assert reader.skipped_sequences == 2
    assert reader.state_dict()["skipped_sequences"] == 2
    assert re.search(re.escape(f"{path}:2:") + ".*sequence skipped", caplog.text)
    assert re.search(re.escape(f"{path}:5:") + ".*sequence skipped", caplog.text)
    assert "skipped 2 malformed sequences" in caplog.text


def test_lenient_mode_past_maximum_raises(tmp_path):
    path = tmp_path / "bad.ctf"
    path.write_text(BAD_SEQUENCES)
    reader = CTFReader(path, STREAMS, randomize=False, max_errors=1)
    with pytest.raises(ValueError, match=re.escape(f"{path}:5:") + ".*max_errors is 1"):
        reader.next_minibatch(100)


def test_lenient_budget_spans_minibatches(tmp_path):
    path = tmp_path / "bad.ctf"
    path.write_text(BAD_SEQUENCES)
    reader = CTFReader(path, STREAMS, randomize=False, max_errors=1)
    assert reader.next_minibatch(3).sequence_ids.tolist() == [0, 2]
    with pytest.raises(ValueError, match=re.escape(f"{path}:5:")):
        reader.next_minibatch(3)


# Arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("chunk_size", 0, "chunk_size must be at least 1, got 0"),
        ("randomization_window", 0, "randomization_window must be at least 1, got 0"),
        ("max_errors", -1, "max_errors must be at least 0, got -1"),
        ("seed", -1, "seed must be at least 0, got -1"),
        ("num_workers", 0, "num_workers must be at least 1, got 0"),
        ("worker_rank", -1, "worker_rank must be at least 0, got -1"),
        ("max_sweeps", 0, "max_sweeps must be at least 1, got 0"),
    ],
)
def test_argument_below_minimum_raises(argument, value, message):
    with pytest.raises(ValueError, match=message):
        CTFReader(TRAIN, STREAMS, **{argument: value})


def test_worker_rank_not_below_num_workers_raises():
    with pytest.raises(
        ValueError, match=r"worker_rank must be below num_workers \(2\), got 2"
    ):
        CTFReader(TRAIN, STREAMS, worker_rank=2, num_workers=2)


def test_chunk_size_not_int_raises():
    with pytest.raises(TypeError, match="chunk_size must be an int, got float"):
        CTFReader(TRAIN, STREAMS, chunk_size=1e6)


def test_num_samples_zero_raises():
    with pytest.raises(ValueError, match="num_samples must be at least 1, got 0"):
        CTFReader(TRAIN, STREAMS).next_minibatch(0)


def test_num_samples_bool_raises():
    with pytest.raises(TypeError, match="num_samples must be an int, got bool"):
        CTFReader(TRAIN, STREAMS).next_minibatch(True)
