"""A bounded random-mutation fuzz run of the CTF parser: mutated inputs must either read
with consistent arrays or raise ValueError with a `path:line:` message, and never crash.
tests/fuzz/fuzz_ctf.py runs the same check under atheris for longer runs."""

import random
import re
from pathlib import Path

import pytest

import seqlstm
from seqlstm import CTFReader, StreamSpec, read_ctf

CASES = Path(__file__).parent / "data" / "ctf_cases"
TRAIN = Path(seqlstm.__file__).parent / "data" / "Train.ctf"
STREAMS = {"features": StreamSpec("x", 2000, True), "labels": StreamSpec("y", 5, False)}
# Bytes that change the meaning of CTF text, besides random ones.
SPECIAL = b"|#: \t\r\n0123456789-+.eE\x00\xff\xef\xbb\xbf"


def seeds() -> list[bytes]:
    inputs = [path.read_bytes() for path in sorted(CASES.glob("*.ctf"))]
    inputs.append(TRAIN.read_bytes()[:3000])
    return [data for data in inputs if data]


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(len(data) + 1)
        operation = rng.randrange(6)
        if operation == 0 and data:
            data[min(position, len(data) - 1)] = rng.randrange(256)
        elif operation == 1:
            data[position:position] = bytes([rng.choice(SPECIAL)])
        elif operation == 2:
            del data[position : position + rng.randint(1, 8)]
        elif operation == 3:
            span = data[position : position + rng.randint(1, 40)]
            data[position:position] = span
        elif operation == 4:
            data = data[:position]
        else:
            data[position:position] = rng.choice([b"|x", b"|y", b"|#", b" 1:", b"\n0 "])
    return bytes(data)


def check_consistent(minibatch) -> None:
    features = minibatch.streams["features"]
    labels = minibatch.streams["labels"]
    offsets = features.offsets
    assert offsets[0] == 0
    assert bool((offsets[1:] >= offsets[:-1]).all())
    assert int(offsets[-1]) == features.indices.shape[0] == features.values.shape[0]
    assert bool(((features.indices >= 0) & (features.indices < 2000)).all())
    assert int(features.lengths.sum()) == offsets.shape[0] - 1
    assert labels.values.shape == (int(labels.lengths.sum()), 5)
    assert bool((features.lengths >= 0).all())
    if minibatch.num_sequences:
        assert minibatch.num_samples >= int(features.lengths.max())


@pytest.mark.parametrize("seed", range(4))
def test_mutated_inputs_never_crash(tmp_path, seed):
    rng = random.Random(seed)
    inputs = seeds()
    path = tmp_path / "mutant.ctf"
    outcomes = {"read": 0, "error": 0}
    for _ in range(400):
        path.write_bytes(mutate(rng.choice(inputs), rng))
        try:
            read_ctf(path, STREAMS)
            reader = CTFReader(path, STREAMS, max_sweeps=2, max_errors=2, chunk_size=64)
            while (minibatch := reader.next_minibatch(rng.randint(1, 30))) is not None:
                check_consistent(minibatch)
            outcomes["read"] += 1
        except ValueError as error:
            assert re.match(re.escape(str(path)) + r":\d+: ", str(error)), str(error)
            outcomes["error"] += 1
    # Both outcomes occur, so the run exercised the parser's success and error paths.
    assert outcomes["read"] > 0
    assert outcomes["error"] > 0
