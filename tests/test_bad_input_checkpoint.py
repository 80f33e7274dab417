"""Corrupt, incomplete and mismatched model and checkpoint files."""

import pytest
import torch

from seqlstm import cli
from seqlstm.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    MODEL_FORMAT,
    load_checkpoint,
    load_model,
    save_model,
)
from seqlstm.model import SequenceClassifier

SMALL = {
    "input_dim": 20,
    "num_classes": 3,
    "embedding_dim": 4,
    "hidden_size": 3,
    "proj_size": 0,
}


def write_model_file(path, **fields):
    torch.save({"format": MODEL_FORMAT, "version": FORMAT_VERSION, **fields}, path)


def test_load_model_without_config(tmp_path):
    path = tmp_path / "model.pt"
    write_model_file(path, state_dict={})
    with pytest.raises(ValueError, match=r"model\.pt: .*missing the keys \['config'\]"):
        load_model(path)


def test_load_model_unknown_config_key(tmp_path):
    path = tmp_path / "model.pt"
    write_model_file(path, config={**SMALL, "layers": 2}, state_dict={})
    with pytest.raises(ValueError, match=r"model\.pt: invalid model config .*layers"):
        load_model(path)


def test_load_model_config_not_dict(tmp_path):
    path = tmp_path / "model.pt"
    write_model_file(path, config=[1, 2], state_dict={})
    with pytest.raises(ValueError, match=r"model\.pt: config must be a dict, got list"):
        load_model(path)


def test_load_model_weights_of_other_shape(tmp_path):
    path = tmp_path / "model.pt"
    save_model(SequenceClassifier(**SMALL), path)
    data = torch.load(path, weights_only=True)
    data["config"] = {**SMALL, "embedding_dim": 5}
    torch.save(data, path)
    with pytest.raises(ValueError, match=r"model\.pt: the weights do not fit .*size"):
        load_model(path)


def test_load_checkpoint_without_keys(tmp_path):
    torch.save(
        {"format": CHECKPOINT_FORMAT, "version": FORMAT_VERSION, "config": {}},
        tmp_path / CHECKPOINT_NAME,
    )
    with pytest.raises(
        ValueError, match=r"checkpoint\.pt: .*missing the keys \['model'"
    ):
        load_checkpoint(tmp_path)


def test_load_checkpoint_config_not_dict(tmp_path):
    fields = dict.fromkeys(
        ("model", "optimizer", "reader", "rng", "progress", "train_state"), {}
    )
    torch.save(
        {"format": CHECKPOINT_FORMAT, "version": FORMAT_VERSION, "config": 3, **fields},
        tmp_path / CHECKPOINT_NAME,
    )
    with pytest.raises(ValueError, match=r"checkpoint\.pt: config must be a dict"):
        load_checkpoint(tmp_path)


def test_eval_incomplete_model_one_line(tmp_path, capsys):
    path = tmp_path / "model.pt"
    write_model_file(path, config=SMALL)
    status = cli.main(["eval", "--model", str(path), "--input-dim", "20"])
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1
    assert f"{path}: the {MODEL_FORMAT} file is missing the keys" in err


def test_resume_incomplete_checkpoint_one_line(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(
        {"format": CHECKPOINT_FORMAT, "version": FORMAT_VERSION},
        folder / CHECKPOINT_NAME,
    )
    status = cli.main(
        ["train", "--minibatches", "1", "--resume", "--checkpoint-dir", str(folder)]
    )
    err = capsys.readouterr().err
    assert status == 1
    assert "Traceback" not in err
    assert "checkpoint.pt: the seqlstm-checkpoint file is missing the keys" in err


def test_resume_unknown_train_state_key(tmp_path, capsys):
    data = tmp_path / "good.ctf"
    data.write_text("0\t|x 3:1\t|y 1 0 0 0 0\n1\t|x 5:1\t|y 0 1 0 0 0\n")
    folder = tmp_path / "run"
    argv = ["train", "--data", str(data), "--minibatches", "1"]
    assert cli.main([*argv, "--checkpoint-dir", str(folder)]) == 0
    checkpoint = torch.load(folder / CHECKPOINT_NAME, weights_only=True)
    checkpoint["train_state"]["epochs"] = 3
    torch.save(checkpoint, folder / CHECKPOINT_NAME)
    capsys.readouterr()
    argv = [*argv, "--minibatches", "2", "--resume", "--checkpoint-dir", str(folder)]
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == 1
    assert "checkpoint.pt" in err
