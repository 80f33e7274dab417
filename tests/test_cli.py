import subprocess
import sys

import pytest

from seqlstm import cli


def run_main(argv, capsys):
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status, err, fragment):
    assert status == 1
    # Status lines (`seqlstm: ` and no "error:") may precede the error.
    lines = [
        line
        for line in err.splitlines()
        if line.startswith("seqlstm: error:") or not line.startswith("seqlstm: ")
    ]
    assert len(lines) == 1, err
    assert fragment in lines[0]


TRAIN_FLAGS = [
    "--data",
    "--input-stream",
    "--input-dim",
    "--label-stream",
    "--label-dim",
    "--minibatch-size",
    "--max-errors",
    "--no-randomize",
    "--embedding-dim",
    "--hidden-size",
    "--proj-size",
    "--init",
    "--minibatches",
    "--sweeps",
    "--lr",
    "--lr-unit",
    "--schedule-unit",
    "--momentum",
    "--momentum-unit",
    "--no-unit-gain",
    "--seed",
    "--progress-freq",
    "--save",
    "--eval-data",
    "--checkpoint-dir",
    "--checkpoint-every",
    "--resume",
    "--metrics-log",
    "--tensorboard",
    "--device",
    "--threads",
    "--verbose",
]


def test_train_help_explains_every_flag():
    parser = cli.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    options = {
        option: action for action in train._actions for option in action.option_strings
    }
    for flag in TRAIN_FLAGS:
        assert flag in options, flag
        assert options[flag].help, flag


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    assert "--minibatch-size" in capsys.readouterr().out


def test_default_data_is_shipped_train_ctf():
    path = cli.default_data_path()
    assert path.endswith("Train.ctf")
    with open(path) as file:
        assert sum(1 for _ in file) == 5433


def test_unknown_option_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--learning-rate", "0.1"])
    assert exit_info.value.code == 1
    assert_one_line_error(1, capsys.readouterr().err, "--learning-rate")


def test_negative_minibatch_size_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--minibatch-size", "0"])
    assert exit_info.value.code == 1
    assert_one_line_error(1, capsys.readouterr().err, "--minibatch-size")


def test_minibatches_and_sweeps_exclusive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--minibatches", "3", "--sweeps", "1"])
    assert exit_info.value.code == 1
    assert_one_line_error(1, capsys.readouterr().err, "--sweeps")


def test_resume_without_checkpoint_dir(capsys):
    status, _, err = run_main(["train", "--resume"], capsys)
    assert_one_line_error(status, err, "--resume needs --checkpoint-dir")


def test_bad_lr_schedule(capsys):
    status, _, err = run_main(["train", "--lr", "0.1:fast"], capsys)
    assert_one_line_error(status, err, "'fast'")


def test_momentum_out_of_range(capsys):
    status, _, err = run_main(["train", "--momentum", "1.5"], capsys)
    assert_one_line_error(status, err, "--momentum")


def test_missing_data_file(tmp_path, capsys):
    missing = tmp_path / "absent.ctf"
    status, _, err = run_main(["train", "--data", str(missing)], capsys)
    assert_one_line_error(status, err, f"{missing}: file not found")


def test_cuda_unavailable(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status, _, err = run_main(["train", "--device", "cuda"], capsys)
    assert_one_line_error(status, err, "CUDA is not available")


def test_module_entry_point_bad_option():
    result = subprocess.run(
        [sys.executable, "-m", "seqlstm", "train", "--no-such-flag"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "seqlstm: error: unrecognized arguments: --no-such-flag"
    ]
    assert "Traceback" not in result.stderr


@pytest.fixture
def restore_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "argv, hidden_size, expected",
    [
        (["train"], 25, 1),
        (["train"], cli.SINGLE_THREAD_MAX_HIDDEN_SIZE, 1),
        (["train", "--threads", "2"], 25, 2),
    ],
)
def test_threads_default_by_hidden_size(restore_threads, argv, hidden_size, expected):
    import torch

    torch.set_num_threads(2)
    args = cli.build_parser().parse_args(argv)
    cli.setup_runtime(args, hidden_size)
    assert torch.get_num_threads() == expected


def test_threads_default_large_model(restore_threads):
    import torch

    torch.set_num_threads(2)
    args = cli.build_parser().parse_args(["train"])
    cli.setup_runtime(args, cli.SINGLE_THREAD_MAX_HIDDEN_SIZE + 1)
    assert torch.get_num_threads() == 2
