import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from seqlstm import cli
from seqlstm.checkpoint import CHECKPOINT_NAME, load_model, save_atomic
from seqlstm.learner import Schedule
from seqlstm.model import SequenceClassifier
from seqlstm.progress import HEADER
from seqlstm.reader import CTFReader, StreamSpec
from seqlstm.reference import ReferenceClassifier
from seqlstm.trainer import Trainer, TrainingError, evaluate, make_batch

STREAMS = {"features": StreamSpec("x", 2000, True), "labels": StreamSpec("y", 5, False)}
SEED = 1


def run_cli(argv, capsys):
    # One thread: the model is small, and on a busy 2-core machine OpenMP threads
    # waiting for each other slow training down by an order of magnitude.
    argv = [str(a) for a in argv]
    if argv[0] in ("train", "eval"):
        argv += ["--threads", "1"]
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def error_lines(err):
    """Return the lines of stderr other than the `seqlstm: ` status lines, plus the
    error lines; a user error must leave exactly one."""
    return [
        line
        for line in err.splitlines()
        if line.startswith("seqlstm: error:") or not line.startswith("seqlstm: ")
    ]


def progress_lines(out):
    """Return the numeric rows of the progress table as lists of floats."""
    rows = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 5 and all(_is_number(f) for f in fields):
            rows.append([float(f) for f in fields])
    return rows


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def write_ctf(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_main_job_end_to_end(capsys):
    # No options: CNTK's tutorial settings on the shipped Train.ctf, seed 0.
    status, out, _ = run_cli(["train"], capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[:3] == HEADER.split("\n")
    assert lines[3] == "Learning rate per 1 samples: 0.0005"
    rows = progress_lines(out)
    assert len(rows) == 8  # after minibatches 1, 3, 7, ..., 255
    first, last = rows[0], rows[-1]
    # At initialisation the loss is about ln 5 = 1.609.
    assert abs(first[0] - math.log(5)) < 0.05
    assert last[1] < 1.30, last
    assert last[3] < 0.46, last
    # 255 minibatches of about 45 sequences each.
    assert 10_000 < last[4] < 12_500
    assert lines[-1].startswith(" error: ")
    assert len(lines) == 3 + 1 + 8 + 1


def test_main_job_learns_with_larger_lr(capsys):
    status, out, _ = run_cli(
        ["train", "--seed", SEED, "--lr", 0.005, "--minibatches", 2047], capsys
    )
    assert status == 0
    rows = progress_lines(out)
    assert len(rows) == 11  # up to minibatch 2047
    assert rows[-1][3] < 0.25, rows[-1]


def read_minibatches(count, seed=SEED):
    reader = CTFReader(cli.default_data_path(), STREAMS, randomize=True, seed=seed)
    return [reader.next_minibatch(200) for _ in range(count)]


def test_losses_match_reference_for_20_minibatches():
    minibatches = read_minibatches(20)
    torch.manual_seed(SEED)
    model = SequenceClassifier()
    reference = ReferenceClassifier()
    reference.copy_from(model)
    trainer = Trainer(model, reader=None, lr=Schedule.constant(0.0005))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.0005)
    for number, minibatch in enumerate(minibatches, start=1):
        loss_sum, _, sequences = trainer.train_minibatch(minibatch)
        batch = make_batch(minibatch, "cpu")
        logits = reference(batch.indices, batch.values, batch.offsets, batch.lengths)
        loss = F.cross_entropy(logits, batch.labels.argmax(dim=1), reduction="sum")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert sequences == batch.num_sequences
        assert abs(loss_sum / sequences - loss.item() / sequences) < 1e-5, number


def test_update_is_per_sample_sum():
    minibatch = read_minibatches(1)[0]
    torch.manual_seed(0)
    model = SequenceClassifier()
    before = model.dense.bias.detach().clone()
    batch = make_batch(minibatch, "cpu")
    logits = model(batch.indices, batch.values, batch.offsets, batch.lengths)
    summed = F.cross_entropy(logits, batch.labels.argmax(dim=1), reduction="sum")
    (grad,) = torch.autograd.grad(summed, model.dense.bias)
    Trainer(model, reader=None, lr=Schedule.constant(0.0005)).train_minibatch(minibatch)
    torch.testing.assert_close(model.dense.bias.detach(), before - 0.0005 * grad)


def test_label_argmax_ties_lowest_index(tmp_path):
    path = write_ctf(tmp_path / "tie.ctf", ["0 |x 1:1 |y 0 1 1 0 0"])
    reader = CTFReader(str(path), STREAMS, randomize=False, max_sweeps=1)
    batch = make_batch(reader.next_minibatch(200), "cpu")
    assert int(batch.labels.argmax(dim=1)[0]) == 1


def test_label_missing_names_sequence(tmp_path):
    path = write_ctf(
        tmp_path / "nolabel.ctf",
        ["0 |x 1:1 |y 1 0 0 0 0", "7 |x 2:1", "7 |x 3:1"],
    )
    reader = CTFReader(str(path), STREAMS, randomize=False, max_sweeps=1)
    # The reader itself rejects a sequence without a sample of a declared stream.
    with pytest.raises(ValueError, match=rf"{path}:2: sequence id 7 .*`y`"):
        make_batch(reader.next_minibatch(200), "cpu")


def test_label_twice_names_sequence(tmp_path):
    path = write_ctf(
        tmp_path / "twolabels.ctf",
        ["3 |x 1:1 |y 1 0 0 0 0", "3 |x 2:1 |y 0 1 0 0 0"],
    )
    reader = CTFReader(str(path), STREAMS, randomize=False, max_sweeps=1)
    with pytest.raises(ValueError, match=rf"{path}:1: sequence 3 has 2 label samples"):
        make_batch(reader.next_minibatch(200), "cpu")


def test_label_error_cli_one_line(tmp_path, capsys):
    path = write_ctf(
        tmp_path / "twolabels.ctf", ["5 |x 2:1 |y 1 0 0 0 0", "5 |x 3:1 |y 1 0 0 0 0"]
    )
    status, _, err = run_cli(["train", "--data", path, "--minibatches", 1], capsys)
    assert status == 1
    expected = (
        f"seqlstm: error: {path}:1: sequence 5 has 2 label samples, expected exactly 1 "
        "(one class per sequence)"
    )
    assert error_lines(err) == [expected]


def write_overflow_ctf(path):
    """Write a file whose second sequence sums 100 values of 3e38, so its embedding
    overflows float32 and the first minibatch's loss is NaN."""
    words = " ".join(["2:3e38"] * 100)
    return write_ctf(path, ["0 |x 1:1 |y 1 0 0 0 0", f"1 |x {words} |y 0 1 0 0 0"])


def test_nan_loss_stops_before_update(tmp_path, capsys):
    path = write_overflow_ctf(tmp_path / "overflow.ctf")
    checkpoints = tmp_path / "checkpoints"
    saved = tmp_path / "model.pt"
    status, out, err = run_cli(
        ["train", "--data", path, "--checkpoint-dir", checkpoints, "--save", saved],
        capsys,
    )
    assert status == 1
    expected = (
        "seqlstm: error: minibatch 1: the loss is nan. Training stopped before "
        "updating the weights. Lower the learning rate or check the input values"
    )
    assert error_lines(err) == [expected]
    assert not (checkpoints / CHECKPOINT_NAME).exists()
    assert not saved.exists()
    assert " error:" not in out


def test_nan_loss_after_huge_step(tmp_path, capsys):
    # A rate of 1e36 makes the weights overflow in the first update, so the loss of
    # minibatch 2 is not finite. The checkpoint stays the one after minibatch 1.
    checkpoints = tmp_path / "checkpoints"
    status, _, err = run_cli(
        [
            "train",
            "--lr",
            "1e36",
            "--checkpoint-dir",
            checkpoints,
            "--checkpoint-every",
            1,
        ],
        capsys,
    )
    assert status == 1
    assert "minibatch 2: the loss is " in err
    checkpoint = torch.load(checkpoints / CHECKPOINT_NAME, weights_only=False)
    assert checkpoint["train_state"]["minibatches"] == 1


def test_nan_loss_leaves_weights_unchanged(tmp_path):
    path = write_overflow_ctf(tmp_path / "overflow.ctf")
    reader = CTFReader(str(path), STREAMS, randomize=False, max_sweeps=1)
    torch.manual_seed(0)
    model = SequenceClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, reader, lr=Schedule.constant(0.0005))
    with pytest.raises(TrainingError, match="minibatch 1"):
        trainer.train(5)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def train_args(tmp_path, minibatches, extra=()):
    return [
        "train",
        "--seed",
        SEED,
        "--minibatches",
        minibatches,
        "--metrics-log",
        tmp_path / "metrics.jsonl",
        *extra,
    ]


def test_resume_in_process_bit_identical(tmp_path, capsys):
    whole = tmp_path / "whole"
    whole.mkdir()
    status, whole_out, _ = run_cli(
        train_args(whole, 40, ["--save", whole / "model.pt"]), capsys
    )
    assert status == 0

    broken = tmp_path / "broken"
    broken.mkdir()
    checkpoints = broken / "checkpoints"
    common = ["--checkpoint-dir", checkpoints, "--checkpoint-every", 6]
    # Stop after 17 minibatches (last checkpoint at 12 before the final one at 17),
    # then resume twice more with different stopping points.
    for stop in (17, 29):
        status, _, _ = run_cli(train_args(broken, stop, common), capsys)
        assert status == 0
        common = common if "--resume" in common else common + ["--resume"]
    status, broken_out, _ = run_cli(
        train_args(broken, 40, common + ["--save", broken / "model.pt"]), capsys
    )
    assert status == 0

    ours = load_model(broken / "model.pt").state_dict()
    theirs = load_model(whole / "model.pt").state_dict()
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name
    # The resumed table continues the unbroken one: its last line is the same.
    assert progress_lines(broken_out)[-1] == progress_lines(whole_out)[-1]
    whole_log = [
        json.loads(l) for l in (whole / "metrics.jsonl").read_text().splitlines()
    ]
    broken_log = [
        json.loads(l) for l in (broken / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["minibatch"] for r in broken_log] == list(range(1, 41))
    assert [r["loss"] for r in broken_log] == [r["loss"] for r in whole_log]


def test_kill_and_resume_bit_identical(tmp_path, capsys):
    # The unbroken run goes in-process and the broken one in subprocesses, so the
    # comparison also covers a fresh interpreter; both use one thread.
    status, _, _ = run_cli(
        ["train", "--seed", SEED, "--save", tmp_path / "whole.pt"],
        capsys,
    )
    assert status == 0
    env = dict(os.environ, PYTHONPATH=str(Path(cli.__file__).parents[1]))
    base = [
        sys.executable,
        "-m",
        "seqlstm",
        "train",
        "--seed",
        str(SEED),
        "--threads",
        "1",
    ]

    checkpoints = tmp_path / "checkpoints"
    resumable = base + [
        "--checkpoint-dir",
        str(checkpoints),
        "--checkpoint-every",
        "5",
        "--save",
        str(tmp_path / "resumed.pt"),
    ]
    process = subprocess.Popen(
        resumable, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (checkpoints / CHECKPOINT_NAME).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    # Killed as soon as the first checkpoint exists, so mid-run, often mid-write.
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (checkpoints / CHECKPOINT_NAME).exists()
    stopped_at = torch.load(checkpoints / CHECKPOINT_NAME, weights_only=False)
    assert 5 <= stopped_at["train_state"]["minibatches"] < 255

    resumed = subprocess.run(
        resumable + ["--resume"], env=env, capture_output=True, check=False
    )
    assert resumed.returncode == 0, resumed.stderr
    ours = load_model(tmp_path / "resumed.pt").state_dict()
    theirs = load_model(tmp_path / "whole.pt").state_dict()
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name


def test_resume_without_checkpoint(tmp_path, capsys):
    status, _, err = run_cli(
        ["train", "--checkpoint-dir", tmp_path, "--resume"], capsys
    )
    assert status == 1
    assert f"{tmp_path / CHECKPOINT_NAME}: file not found" in err


def test_resume_different_model_rejected(tmp_path, capsys):
    common = ["train", "--minibatches", 2, "--checkpoint-dir", tmp_path]
    assert run_cli(common, capsys)[0] == 0
    status, _, err = run_cli(common + ["--resume", "--hidden-size", 30], capsys)
    assert status == 1
    assert "use the same model options" in err


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"version": "old"}, path)

    def failing_save(obj, file):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"version": "new"}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"version": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_eval_matches_direct_evaluation(tmp_path, capsys):
    saved = tmp_path / "model.pt"
    assert run_cli(["train", "--minibatches", 20, "--save", saved], capsys)[0] == 0
    status, out, _ = run_cli(["eval", "--model", saved], capsys)
    assert status == 0
    reader = CTFReader(cli.default_data_path(), STREAMS, randomize=False, max_sweeps=1)
    loss_sum, error_sum, sequences = evaluate(load_model(saved), reader)
    assert sequences == 1247
    assert out.strip() == (
        f"Evaluation: loss = {loss_sum / 1247:f}, error = {error_sum / 1247:f} "
        "over 1247 sequences"
    )


def test_train_eval_data_prints_evaluation(tmp_path, capsys):
    status, out, _ = run_cli(
        ["train", "--minibatches", 3, "--eval-data", cli.default_data_path()], capsys
    )
    assert status == 0
    assert out.splitlines()[-1].startswith("Evaluation: loss = ")
    assert out.splitlines()[-1].endswith("over 1247 sequences")


def test_eval_missing_model(tmp_path, capsys):
    status, _, err = run_cli(["eval", "--model", tmp_path / "absent.pt"], capsys)
    assert status == 1
    assert "absent.pt: file not found" in err


def test_eval_not_a_model(tmp_path, capsys):
    path = tmp_path / "other.pt"
    torch.save({"weights": 1}, path)
    status, _, err = run_cli(["eval", "--model", path], capsys)
    assert status == 1
    assert f"{path}: not a seqlstm-model file" in err


def test_sweeps_stop_after_one_sweep(capsys):
    status, out, _ = run_cli(["train", "--sweeps", 1, "--progress-freq", 1000], capsys)
    assert status == 0
    summary = [l for l in out.splitlines() if l.startswith("Finished Epoch")]
    assert len(summary) == 1
    assert summary[0].startswith("Finished Epoch[1 of 1]: [Training] loss = ")
    assert "* 1247," in summary[0]


def test_progress_freq_lines(capsys):
    status, out, _ = run_cli(
        ["train", "--minibatches", 25, "--progress-freq", 10], capsys
    )
    assert status == 0
    lines = [l for l in out.splitlines() if l.startswith(" Minibatch[")]
    assert [l[:22] for l in lines] == [
        " Minibatch[   1-  10]:",
        " Minibatch[  11-  20]:",
    ]
    assert "average" not in out


def test_metrics_log_records(tmp_path, capsys):
    log = tmp_path / "metrics.jsonl"
    status, out, _ = run_cli(
        ["train", "--minibatches", 7, "--metrics-log", log], capsys
    )
    assert status == 0
    records = [json.loads(l) for l in log.read_text().splitlines()]
    assert [r["minibatch"] for r in records] == list(range(1, 8))
    assert set(records[0]) == {"minibatch", "samples", "loss", "metric", "seconds"}
    # samples counts sequences, the table's "examples".
    assert records[-1]["samples"] == int(progress_lines(out)[-1][4])
    assert all(a["seconds"] <= b["seconds"] for a, b in itertools.pairwise(records))


def test_plot_writes_png(tmp_path, capsys):
    log = tmp_path / "metrics.jsonl"
    assert run_cli(["train", "--minibatches", 5, "--metrics-log", log], capsys)[0] == 0
    image = tmp_path / "curve.png"
    status, _, _ = run_cli(["plot", log, "-o", image], capsys)
    assert status == 0
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_bad_log_names_line(tmp_path, capsys):
    log = write_ctf(tmp_path / "bad.jsonl", ['{"minibatch": 1}'])
    status, _, err = run_cli(["plot", log], capsys)
    assert status == 1
    assert f"{log}:1: a metrics record needs" in err


class RecordingSummaryWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter, which needs the tensorboard
    package, and records the calls that TensorBoardLog makes."""

    instances = []

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.scalars = []
        self.closed = False
        RecordingSummaryWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


def test_tensorboard_scalars(tmp_path, monkeypatch, capsys):
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = RecordingSummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    RecordingSummaryWriter.instances.clear()
    log = tmp_path / "metrics.jsonl"
    logdir = tmp_path / "tb"
    status, _, _ = run_cli(
        ["train", "--minibatches", 4, "--tensorboard", logdir, "--metrics-log", log],
        capsys,
    )
    assert status == 0
    (writer,) = RecordingSummaryWriter.instances
    assert writer.log_dir == str(logdir)
    assert writer.closed
    records = [json.loads(line) for line in log.read_text().splitlines()]
    expected = []
    for record in records:
        expected.append(("loss", record["loss"], record["samples"]))
        expected.append(("metric", record["metric"], record["samples"]))
    assert writer.scalars == expected
    assert abs(writer.scalars[0][1] - math.log(5)) < 0.1


def test_lr_schedule_reports_each_change(capsys):
    status, out, _ = run_cli(
        [
            "train",
            "--minibatches",
            30,
            "--lr",
            "0.001*1:0.0005",
            "--schedule-unit",
            500,
        ],
        capsys,
    )
    assert status == 0
    reports = [l for l in out.splitlines() if l.startswith("Learning rate")]
    assert reports == [
        "Learning rate per 1 samples: 0.001",
        "Learning rate per 1 samples: 0.0005",
    ]


def test_lr_per_minibatch_report(capsys):
    status, out, _ = run_cli(
        ["train", "--minibatches", 2, "--lr", 0.02, "--lr-unit", "minibatch"], capsys
    )
    assert status == 0
    assert "Learning rate per minibatch: 0.02" in out.splitlines()


def test_momentum_reported_and_trains(capsys):
    status, out, _ = run_cli(["train", "--minibatches", 15, "--momentum", 0.9], capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[3:5] == [
        "Learning rate per 1 samples: 0.0005",
        "Momentum per minibatch: 0.9",
    ]
    assert len(progress_lines(out)) == 4


def test_progress_bar_only_on_terminal(monkeypatch, capsys):
    from seqlstm import trainer

    assert trainer._progress_bar(10, 0) is None  # stderr is captured, not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = trainer._progress_bar(10, 3)
    assert bar is not None
    assert bar.n == 3
    assert bar.total == 10
    bar.close()


def test_eval_data_missing_before_training(tmp_path, capsys):
    missing = tmp_path / "absent.ctf"
    status, out, err = run_cli(["train", "--eval-data", missing], capsys)
    assert status == 1
    assert error_lines(err) == [f"seqlstm: error: {missing}: file not found"]
    assert out == ""


def test_input_dim_too_small_names_line(capsys):
    status, _, err = run_cli(["train", "--input-dim", 10, "--minibatches", 1], capsys)
    assert status == 1
    assert len(error_lines(err)) == 1
    assert f"{cli.default_data_path()}:" in err
    assert "10" in err


def test_label_dim_mismatch_names_line(capsys):
    status, _, err = run_cli(["train", "--label-dim", 3, "--minibatches", 1], capsys)
    assert status == 1
    assert len(error_lines(err)) == 1
    assert f"{cli.default_data_path()}:" in err
    assert "stream `y` has 5 values, but its dimension is 3" in err


def test_unknown_label_stream_names_alias(capsys):
    status, _, err = run_cli(
        ["train", "--label-stream", "z", "--minibatches", 1], capsys
    )
    assert status == 1
    assert len(error_lines(err)) == 1
    assert "`z`" in err


def test_tensorboard_missing_package(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    status, _, err = run_cli(
        ["train", "--minibatches", 1, "--tensorboard", tmp_path / "tb"], capsys
    )
    assert status == 1
    expected = (
        "seqlstm: error: --tensorboard needs the tensorboard package; install it with "
        "`pip install tensorboard`"
    )
    assert error_lines(err) == [expected]


def test_plot_missing_matplotlib(tmp_path, monkeypatch, capsys):
    log = write_ctf(
        tmp_path / "metrics.jsonl",
        ['{"minibatch": 1, "samples": 40, "loss": 1.6, "metric": 0.8, "seconds": 0.1}'],
    )
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status, _, err = run_cli(["plot", log, "-o", tmp_path / "c.png"], capsys)
    assert status == 1
    assert "plot needs matplotlib" in err
    assert not (tmp_path / "c.png").exists()


def test_plot_invalid_json_names_line(tmp_path, capsys):
    log = write_ctf(
        tmp_path / "metrics.jsonl",
        ['{"minibatch": 1, "samples": 40, "loss": 1.6, "metric": 0.8}', "{not json"],
    )
    status, _, err = run_cli(["plot", log], capsys)
    assert status == 1
    assert f"{log}:2: invalid JSON" in err


def test_plot_empty_log(tmp_path, capsys):
    log = write_ctf(tmp_path / "metrics.jsonl", [])
    status, _, err = run_cli(["plot", log], capsys)
    assert status == 1
    assert "has no records to plot" in err


def test_eval_input_dim_mismatch(tmp_path, capsys):
    saved = tmp_path / "model.pt"
    assert run_cli(["train", "--minibatches", 1, "--save", saved], capsys)[0] == 0
    status, _, err = run_cli(["eval", "--model", saved, "--input-dim", 3000], capsys)
    assert status == 1
    assert "was trained with --input-dim 2000" in err


def test_resume_corrupt_checkpoint(tmp_path, capsys):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    status, _, err = run_cli(
        ["train", "--checkpoint-dir", tmp_path, "--resume"], capsys
    )
    assert status == 1
    assert len(error_lines(err)) == 1
    assert (
        f"{tmp_path / CHECKPOINT_NAME}: not a readable seqlstm-checkpoint file" in err
    )
