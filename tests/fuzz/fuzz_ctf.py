"""Fuzz the CTF parser with atheris. From the repository root, after an in-place build:

    PYTHONPATH=. python tests/fuzz/fuzz_ctf.py -max_total_time=60

Each input is read with read_ctf and with CTFReader. Reading may succeed or raise
ValueError with a `path:line:` message; any other exception, or a crash of the
extension, is a finding. atheris instruments the Python code only, because the
extension is not built with -fsanitize=fuzzer, so the search is guided by the Python
paths and by the seed corpus of tests/data/ctf_cases.
"""

import logging
import os
import re
import sys
import tempfile

import atheris

logging.disable(logging.WARNING)  # zero-fill warnings would flood the output

with atheris.instrument_imports(include=["seqlstm"]):
    from seqlstm import CTFReader, StreamSpec, read_ctf

STREAMS = {"features": StreamSpec("x", 2000, True), "labels": StreamSpec("y", 5, False)}
PATH = os.path.join(tempfile.mkdtemp(prefix="seqlstm-fuzz-"), "input.ctf")


def test_one_input(data: bytes) -> None:
    with open(PATH, "wb") as file:
        file.write(data)
    try:
        read_ctf(PATH, STREAMS)
        reader = CTFReader(PATH, STREAMS, max_sweeps=1, max_errors=1, chunk_size=64)
        while reader.next_minibatch(16) is not None:
            pass
    except ValueError as error:
        if not re.match(re.escape(PATH) + r":\d+: ", str(error)):
            raise AssertionError(f"error without path:line: {error}") from error


if __name__ == "__main__":
    # libFuzzer writes new inputs into the first corpus folder, so that is a temporary
    # one, and the case files only seed it.
    seeds = os.path.join(os.path.dirname(__file__), "..", "data", "ctf_cases")
    found = tempfile.mkdtemp(prefix="seqlstm-fuzz-corpus-")
    atheris.Setup(sys.argv + [found, seeds], test_one_input)
    atheris.Fuzz()
