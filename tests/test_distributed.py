"""Data-parallel training with 2 gloo workers on loopback (127.0.0.1), against a single
process that reads the same global minibatches.

The workers start either through torch.multiprocessing (to record what each one read)
or through torchrun running the CLI, as a user would start them. Every launch has a
deadline, and the whole process tree is killed when it passes.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from seqlstm import cli, distributed
from seqlstm.checkpoint import CHECKPOINT_NAME, load_model
from seqlstm.learner import Schedule
from seqlstm.model import SequenceClassifier
from seqlstm.progress import HEADER
from seqlstm.reader import CTFReader, StreamSpec
from seqlstm.trainer import Trainer

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the launch helpers read /proc"
)

WORLD_SIZE = 2
LAUNCH_TIMEOUT = 240  # seconds per launch; one takes 10 to 30 on a shared 2-core machine

# A small file: 23 sequences of 1 to 4 lines, and one of 12 lines, longer than a
# minibatch of 10 samples, so it forms a global minibatch alone and leaves rank 1 with
# an empty share.
NUM_SEQUENCES = 24
LONG_SEQUENCE = 9
LONG_LENGTH = 12
INPUT_DIM = 30
NUM_CLASSES = 3
MINIBATCH_SIZE = 10
STREAMS = {
    "features": StreamSpec("x", INPUT_DIM, True),
    "labels": StreamSpec("y", NUM_CLASSES, False),
}
MODEL = dict(
    input_dim=INPUT_DIM, num_classes=NUM_CLASSES, embedding_dim=8, hidden_size=6, proj_size=4
)
LR = 0.05
READER_SEED = 3
MODEL_SEED = 100  # rank r seeds MODEL_SEED + r, so only DDP's broadcast can align them
SWEEPS = 2


def write_ctf(path, bad_sequence=None):
    """Write the small CTF file and return the 1-based first line of each sequence.
    Sequence `bad_sequence` gets a word id beyond INPUT_DIM."""
    lines = []
    first_lines = []
    for sequence in range(NUM_SEQUENCES):
        first_lines.append(len(lines) + 1)
        length = LONG_LENGTH if sequence == LONG_SEQUENCE else 1 + sequence % 4
        label = " ".join("1" if c == sequence % NUM_CLASSES else "0" for c in range(NUM_CLASSES))
        for step in range(length):
            word = (sequence * 7 + step * 3) % INPUT_DIM
            if sequence == bad_sequence:
                word = INPUT_DIM + 5
            line = f"{sequence}\t|x {word}:1"
            if step == 0:
                line += f"\t|y {label}"
            lines.append(line)
    path.write_text("".join(line + "\n" for line in lines))
    return first_lines


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


class RecordingReader:
    """A CTFReader that records the sequence ids of every share it returns."""

    def __init__(self, reader):
        self.reader = reader
        self.shares = []  # per minibatch: (sequence ids, global number of sequences)

    def next_minibatch(self, num_samples):
        minibatch = self.reader.next_minibatch(num_samples)
        if minibatch is not None:
            self.shares.append(
                (minibatch.sequence_ids.tolist(), minibatch.global_num_sequences)
            )
        return minibatch

    def state_dict(self):
        return self.reader.state_dict()


def train_recorded(data, rank, world_size):
    """Train MODEL for SWEEPS sweeps of `data` as worker `rank` of `world_size` and
    return the trainer, its reader and the initial weights."""
    torch.manual_seed(MODEL_SEED + rank)
    model = SequenceClassifier(**MODEL)
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    reader = RecordingReader(
        CTFReader(
            data,
            STREAMS,
            seed=READER_SEED,
            max_sweeps=SWEEPS,
            worker_rank=rank,
            num_workers=world_size,
        )
    )
    trainer = Trainer(model, reader, lr=Schedule.constant(LR), minibatch_size=MINIBATCH_SIZE)
    trainer.train()
    return trainer, reader, initial


def spawned_worker(rank, world_size, port, data, output):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        TORCHELASTIC_USE_AGENT_STORE="True",
    )
    torch.set_num_threads(1)
    distributed.init_from_environment("cpu", timedelta(seconds=LAUNCH_TIMEOUT))
    try:
        save_recorded_training(data, rank, world_size, Path(output) / f"rank{rank}.pt")
    finally:
        distributed.shut_down()


def save_recorded_training(data, rank, world_size, path):
    # A function of its own, so that the trainer is gone before shut_down.
    trainer, reader, _ = train_recorded(data, rank, world_size)
    torch.save(
        {
            "shares": reader.shares,
            "state_dict": trainer.model.state_dict(),
            "samples_seen": trainer.state.samples_seen,
            "minibatches": trainer.state.minibatches,
        },
        path,
    )


@pytest.fixture(scope="module")
def spawned_run(tmp_path_factory):
    """Train with 2 spawned workers and, in this process, alone on the same file."""
    folder = tmp_path_factory.mktemp("spawned")
    data = folder / "small.ctf"
    write_ctf(data)
    # This process serves the workers' key-value store, as torchrun's agent does, so
    # that no worker loses it at exit while another one is still shutting down.
    store = torch.distributed.TCPStore(
        "127.0.0.1", 0, is_master=True, wait_for_workers=False
    )
    context = mp.start_processes(
        spawned_worker,
        args=(WORLD_SIZE, store.port, str(data), str(folder)),
        nprocs=WORLD_SIZE,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"the spawned workers did not finish in {LAUNCH_TIMEOUT} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()
    workers = [torch.load(folder / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    single, single_reader, initial = train_recorded(data, rank=0, world_size=1)
    return {
        "workers": workers,
        "single": single,
        "single_shares": single_reader.shares,
        "initial": initial,
    }


def global_order(workers, minibatch):
    """Rebuild the sequence order of a global minibatch from the shares: worker r has
    the positions k with k % WORLD_SIZE == r, in order."""
    shares = [worker["shares"][minibatch][0] for worker in workers]
    total = sum(len(share) for share in shares)
    return [shares[k % WORLD_SIZE][k // WORLD_SIZE] for k in range(total)]


def test_shards_form_single_process_minibatches(spawned_run):
    workers = spawned_run["workers"]
    single_shares = spawned_run["single_shares"]
    for worker in workers:
        assert len(worker["shares"]) == len(single_shares)
    for number, (ids, global_count) in enumerate(single_shares):
        assert global_order(workers, number) == ids, number
        for worker in workers:
            assert worker["shares"][number][1] == global_count, number


def test_shards_cover_each_sweep_once(spawned_run):
    workers = spawned_run["workers"]
    stream = []
    for number in range(len(workers[0]["shares"])):
        stream.extend(global_order(workers, number))
    assert len(stream) == SWEEPS * NUM_SEQUENCES
    for sweep in range(SWEEPS):
        seen = stream[sweep * NUM_SEQUENCES : (sweep + 1) * NUM_SEQUENCES]
        assert sorted(seen) == list(range(NUM_SEQUENCES)), sweep


def test_shards_disjoint_between_workers(spawned_run):
    first, second = spawned_run["workers"]
    for number, ((ids0, _), (ids1, _)) in enumerate(zip(first["shares"], second["shares"])):
        assert not set(ids0) & set(ids1), number


def test_empty_share_occurs(spawned_run):
    # The long sequence makes a one-sequence minibatch in each sweep, so rank 1 trains
    # on nothing there and must still join the gradient all-reduce.
    rank1 = spawned_run["workers"][1]
    empty = [number for number, (ids, _) in enumerate(rank1["shares"]) if not ids]
    assert len(empty) >= SWEEPS


def test_weights_match_single_process(spawned_run):
    single = spawned_run["single"].model.state_dict()
    for worker in spawned_run["workers"]:
        for name, value in single.items():
            difference = (worker["state_dict"][name] - value).abs().max().item()
            assert difference <= 1e-6, name


def test_training_moved_the_weights(spawned_run):
    # Guards the comparison above against a run that never updated anything.
    final = spawned_run["single"].model.state_dict()
    moved = max(
        (final[name] - value).abs().max().item()
        for name, value in spawned_run["initial"].items()
    )
    assert moved > 1e-2


def test_workers_end_with_equal_weights(spawned_run):
    first, second = spawned_run["workers"]
    for name, value in first["state_dict"].items():
        assert torch.equal(second["state_dict"][name], value), name


def test_counts_are_global(spawned_run):
    single = spawned_run["single"]
    for worker in spawned_run["workers"]:
        assert worker["samples_seen"] == single.state.samples_seen
        assert worker["minibatches"] == single.state.minibatches
    assert single.state.samples_seen == SWEEPS * NUM_SEQUENCES


# torchrun ---------------------------------------------------------------------------

TORCHRUN_MINIBATCHES = 120


def train_argv(data, folder, minibatches=TORCHRUN_MINIBATCHES):
    return [
        "train",
        "--data", str(data),
        "--input-dim", str(INPUT_DIM),
        "--label-dim", str(NUM_CLASSES),
        "--embedding-dim", str(MODEL["embedding_dim"]),
        "--hidden-size", str(MODEL["hidden_size"]),
        "--proj-size", str(MODEL["proj_size"]),
        "--minibatch-size", str(MINIBATCH_SIZE),
        "--lr", str(LR),
        "--seed", str(READER_SEED),
        "--minibatches", str(minibatches),
        "--threads", "1",
        "--save", str(folder / "model.pt"),
    ]  # fmt: skip


class Torchrun:
    """torchrun with 2 workers on loopback, started in the background. Its output goes
    to files, and every process of the launch carries a unique environment variable
    so that `finish` can kill the workers too, even after torchrun itself has exited."""

    def __init__(self, argv, folder, max_restarts=0):
        self.tag = f"{os.getpid()}-{time.monotonic_ns()}"
        self.out_path = folder / "torchrun.out"
        self.err_path = folder / "torchrun.err"
        command = [
            sys.executable, "-m", "torch.distributed.run",
            f"--nproc_per_node={WORLD_SIZE}",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            f"--max_restarts={max_restarts}",
            "--monitor_interval=0.1",
            "-m", "seqlstm", *argv,
        ]  # fmt: skip
        environment = dict(
            os.environ,
            PYTHONPATH=str(Path(cli.__file__).parents[1]),
            OMP_NUM_THREADS="1",
            SEQLSTM_TEST_LAUNCH=self.tag,
        )
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.process = subprocess.Popen(
                command, cwd=folder, env=environment, stdout=out, stderr=err
            )

    def processes(self):
        """Return {pid: environment} of the running processes of this launch."""
        marker = f"SEQLSTM_TEST_LAUNCH={self.tag}".encode()
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environment = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environment:
                found[int(entry.name)] = environment
        return found

    def find_worker(self, rank):
        """Return the pid of the worker with RANK=rank, or None."""
        for pid, environment in self.processes().items():
            if f"RANK={rank}".encode() in environment:
                return pid
        return None

    def finish(self):
        """Wait for torchrun and return (status, stdout, stderr). At the deadline, or
        when workers outlive torchrun, kill them."""
        try:
            status = self.process.wait(timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            status = None
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        err = self.err_path.read_text()
        if status is None:
            pytest.fail(f"torchrun did not finish in {LAUNCH_TIMEOUT} s:\n{err}")
        return status, self.out_path.read_text(), err


@pytest.fixture(scope="module")
def torchrun_whole(tmp_path_factory):
    """Train through torchrun without interruption, and alone through the CLI."""
    folder = tmp_path_factory.mktemp("torchrun")
    data = folder / "small.ctf"
    write_ctf(data)
    status, out, err = Torchrun(train_argv(data, folder), folder).finish()
    single = folder / "single"
    single.mkdir()
    single_status = cli.main(train_argv(data, single))
    return {
        "data": data,
        "status": status,
        "out": out,
        "err": err,
        "model": folder / "model.pt",
        "single_status": single_status,
        "single_model": single / "model.pt",
    }


def test_torchrun_matches_single_process(torchrun_whole):
    assert torchrun_whole["status"] == 0, torchrun_whole["err"]
    assert torchrun_whole["single_status"] == 0
    ours = load_model(torchrun_whole["model"]).state_dict()
    theirs = load_model(torchrun_whole["single_model"]).state_dict()
    for name, value in theirs.items():
        assert (ours[name] - value).abs().max().item() <= 1e-6, name


def test_torchrun_prints_table_once(torchrun_whole):
    out = torchrun_whole["out"]
    assert out.count(HEADER) == 1
    assert out.count("Learning rate per 1 samples") == 1
    assert out.count(" error: ") == 1


def test_torchrun_logs_status_from_rank_zero(torchrun_whole):
    err = torchrun_whole["err"]
    assert "seqlstm: rank 0: model written to" in err
    assert "seqlstm: rank 1:" not in err


def test_worker_error_names_rank(tmp_path):
    data = tmp_path / "bad.ctf"
    # Without randomization the first minibatch contains sequences 0 to 3, and rank 1
    # parses positions 1 and 3.
    first_lines = write_ctf(data, bad_sequence=3)
    argv = train_argv(data, tmp_path) + ["--no-randomize"]
    status, _, err = Torchrun(argv, tmp_path).finish()
    assert status != 0
    assert f"seqlstm: rank 1: error: {data}:{first_lines[3]}:" in err


def test_killed_worker_resumes_on_restart(torchrun_whole, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    argv = train_argv(torchrun_whole["data"], tmp_path) + [
        "--checkpoint-dir", str(checkpoints), "--checkpoint-every", "1",
    ]  # fmt: skip
    launch = Torchrun(argv, tmp_path, max_restarts=1)
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while not (checkpoints / CHECKPOINT_NAME).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    worker = launch.find_worker(rank=1)
    assert worker is not None
    os.kill(worker, signal.SIGKILL)
    status, _, err = launch.finish()

    assert status == 0, err
    assert "torchrun restart 1: resuming from the checkpoint" in err
    resumed_after = [
        int(line.rsplit(" ", 1)[1])
        for line in err.splitlines()
        if line.startswith("seqlstm: rank 0: resumed after minibatch")
    ]
    assert len(resumed_after) == 1
    assert 1 <= resumed_after[0] < TORCHRUN_MINIBATCHES
    ours = load_model(tmp_path / "model.pt").state_dict()
    theirs = load_model(torchrun_whole["model"]).state_dict()
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name
