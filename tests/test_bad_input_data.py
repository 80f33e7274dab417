"""Malformed metrics logs, schedules and stream declarations."""

import pytest

from seqlstm import cli
from seqlstm.ctf import StreamSpec, check_streams
from seqlstm.learner import Schedule
from seqlstm.metrics_log import read_metrics_log


def test_metrics_log_not_utf8(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(
        b'{"minibatch": 1, "samples": 2, "loss": 1, "metric": 0}\n\xff\xfe\n'
    )
    with pytest.raises(ValueError, match=r"log\.jsonl:2: not UTF-8"):
        read_metrics_log(path)


def test_metrics_log_string_loss(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"minibatch": 1, "samples": 2, "loss": "x", "metric": 0}\n')
    with pytest.raises(ValueError, match=r"log\.jsonl:1: loss must be a number"):
        read_metrics_log(path)


def test_plot_binary_log_one_line(tmp_path, capsys):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage\n")
    status = cli.main(["plot", str(path), "-o", str(tmp_path / "curve.png")])
    err = capsys.readouterr().err
    assert status == 1
    assert f"{path}:1: not UTF-8" in err


def test_schedule_negative_value():
    with pytest.raises(ValueError, match=r"'-1' is negative"):
        Schedule.parse("0.1:-1")


def test_train_negative_lr_one_line(capsys):
    status = cli.main(["train", "--lr", "-0.5"])
    err = capsys.readouterr().err
    assert status == 1
    assert "invalid schedule '-0.5'" in err


def test_stream_sparse_flag_not_bool():
    with pytest.raises(TypeError, match=r"streams\['x'\]\.sparse must be a bool"):
        check_streams({"x": StreamSpec("x", 5, "no")})
