"""Command-line values that must fail in one line on stderr with status 1, before any
training starts."""

import os

import pytest

from seqlstm import cli

GOOD_CTF = "0\t|x 3:1\t|y 1 0 0 0 0\n0\t|x 4:1\n1\t|x 5:1\t|y 0 1 0 0 0\n"


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "good.ctf"
    path.write_text(GOOD_CTF)
    return path


def run_error(argv, capsys):
    """Run the CLI and return its stderr, checking status 1, one error line and that no
    progress table was printed."""
    status = cli.main(argv)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert status == 1
    assert len(errors) == 1, captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""
    return errors[0]


def test_threads_above_cpu_count(capsys):
    too_many = (os.cpu_count() or 1) * 1000
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--threads", str(too_many)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert "argument --threads: must be at most" in err


def test_seed_negative(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--seed", "-1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert "argument --seed: must be an integer from 0" in err


def test_seed_above_64_bits(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--seed", str(2**64)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert "argument --seed" in err


def test_save_into_file_parent(data, capsys):
    target = data / "model.pt"
    error = run_error(["train", "--data", str(data), "--save", str(target)], capsys)
    assert f"--save {target}: {data} is not a folder" in error


def test_save_to_folder(data, tmp_path, capsys):
    error = run_error(["train", "--data", str(data), "--save", str(tmp_path)], capsys)
    assert f"--save {tmp_path}: is a folder" in error


def test_checkpoint_dir_is_file(data, capsys):
    argv = ["train", "--data", str(data), "--checkpoint-dir", str(data)]
    error = run_error(argv, capsys)
    assert f"--checkpoint-dir {data}: exists and is not a folder" in error


def test_metrics_log_is_folder(data, tmp_path, capsys):
    argv = ["train", "--data", str(data), "--metrics-log", str(tmp_path)]
    error = run_error(argv, capsys)
    assert f"--metrics-log {tmp_path}: is a folder" in error


def test_save_in_missing_folder_allowed(data, tmp_path, capsys):
    target = tmp_path / "new" / "sub" / "model.pt"
    argv = ["train", "--data", str(data), "--minibatches", "1", "--save", str(target)]
    status = cli.main(argv)
    capsys.readouterr()
    assert status == 0
    assert target.is_file()


def test_model_too_large_for_memory(data, capsys):
    argv = ["train", "--data", str(data), "--input-dim", str(2**62)]
    error = run_error(argv, capsys)
    assert "cannot build the model" in error
    assert "lower --input-dim" in error
