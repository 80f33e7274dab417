"""A plain-Python CTF parser, the baseline that bench_reader.py compares the C++ parser
with. It reads ids, sparse `index:value` and dense streams and skips comments and
undeclared streams. It checks far less than the C++ parser does."""

import numpy as np


def parse_ctf_text(text: str, streams: dict) -> dict:
    """Parse CTF text into the C++ parser's layout.

    Args:
        text: the whole file, decoded.
        streams: stream name to (alias, dim, sparse).

    Returns:
        A dict with `id` (one per sequence) and, per stream name, `lengths`, `values`
        and, for sparse streams, `indices` and `offsets`.
    """
    by_alias = {spec[0]: name for name, spec in streams.items()}
    ids = []
    lengths = {name: [] for name in streams}
    values = {name: [] for name in streams}
    indices = {name: [] for name in streams if streams[name][2]}
    offsets = {name: [0] for name in streams if streams[name][2]}
    current = None
    for line in text.splitlines():
        head, *samples = line.split("|")
        head = head.strip()
        if head and head != current:
            current = head
            ids.append(int(head))
            for name in streams:
                lengths[name].append(0)
        for sample in samples:
            name, _, rest = sample.partition(" ")
            name = by_alias.get(name.strip())
            if name is None:
                continue
            alias, dim, sparse = streams[name]
            lengths[name][-1] += 1
            if sparse:
                for pair in rest.split():
                    index, _, value = pair.partition(":")
                    indices[name].append(int(index))
                    values[name].append(float(value))
                offsets[name].append(len(indices[name]))
            else:
                row = [float(v) for v in rest.split()]
                values[name].append(row + [0.0] * (dim - len(row)))
    result = {"id": np.array(ids, dtype=np.int64)}
    for name, (alias, dim, sparse) in streams.items():
        stream = {
            "lengths": np.array(lengths[name], dtype=np.int64),
            "values": np.array(values[name], dtype=np.float32),
        }
        if sparse:
            stream["indices"] = np.array(indices[name], dtype=np.int64)
            stream["offsets"] = np.array(offsets[name], dtype=np.int64)
        else:
            stream["values"] = stream["values"].reshape(-1, dim)
        result[name] = stream
    return result
