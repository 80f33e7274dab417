"""Atomic checkpoint and model files.

A file is first written in full to a temporary file in the same folder, flushed and
fsynced, then renamed over the old one, and the folder is fsynced. A crash at any point
leaves either the old file or the new one, never a partial file.
"""

import os
import pickle
import tempfile
from pathlib import Path

import torch

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "seqlstm-checkpoint"
MODEL_FORMAT = "seqlstm-model"
FORMAT_VERSION = 1
# The keys that Trainer.save_checkpoint writes and Trainer.resume reads.
CHECKPOINT_KEYS = (
    "config",
    "model",
    "optimizer",
    "reader",
    "rng",
    "progress",
    "train_state",
)


def save_atomic(obj, path) -> Path:
    """Write `obj` with torch.save to `path` atomically and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder entry is on disk.
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _load(path: Path, expected_format: str, keys: tuple[str, ...]) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        # weights_only=True: the files hold only tensors and plain Python values, and
        # it keeps a crafted file from running code through pickle.
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as error:
        raise ValueError(
            f"{path}: not a readable {expected_format} file ({error})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != expected_format:
        raise ValueError(f"{path}: not a {expected_format} file")
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: {expected_format} version {data.get('version')} is not supported, "
            f"expected {FORMAT_VERSION}"
        )
    missing = [key for key in keys if key not in data]
    if missing:
        raise ValueError(
            f"{path}: the {expected_format} file is missing the keys {missing}"
        )
    return data


def save_checkpoint(folder, state: dict) -> Path:
    """Write the training state to folder/checkpoint.pt atomically."""
    data = {"format": CHECKPOINT_FORMAT, "version": FORMAT_VERSION, **state}
    return save_atomic(data, Path(folder) / CHECKPOINT_NAME)


def load_checkpoint(folder) -> dict:
    """Read folder/checkpoint.pt.

    Raises:
        FileNotFoundError: there is no checkpoint in `folder`.
        ValueError: the file is not a seqlstm checkpoint of this version, or it misses
            one of CHECKPOINT_KEYS.
    """
    path = Path(folder) / CHECKPOINT_NAME
    data = _load(path, CHECKPOINT_FORMAT, CHECKPOINT_KEYS)
    for key in ("config", "train_state"):
        if not isinstance(data[key], dict):
            raise ValueError(
                f"{path}: {key} must be a dict, got {type(data[key]).__name__}"
            )
    return data


def save_model(model, path) -> Path:
    """Write a trained SequenceClassifier (its configuration and weights) atomically."""
    data = {
        "format": MODEL_FORMAT,
        "version": FORMAT_VERSION,
        "config": dict(model.config),
        "state_dict": model.state_dict(),
    }
    return save_atomic(data, path)


def load_model(path, device="cpu"):
    """Read a model written by save_model and return it as a SequenceClassifier.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file is not a seqlstm model of this version, or its
            configuration or weights do not form a SequenceClassifier.
    """
    from seqlstm.model import SequenceClassifier

    data = _load(Path(path), MODEL_FORMAT, ("config", "state_dict"))
    config = data["config"]
    if not isinstance(config, dict):
        raise ValueError(f"{path}: config must be a dict, got {type(config).__name__}")
    try:
        model = SequenceClassifier(**config, device=device)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: invalid model config {config}: {error}") from None
    try:
        model.load_state_dict(data["state_dict"])
    except (TypeError, RuntimeError) as error:
        # load_state_dict lists every mismatch on its own lines; keep the first one.
        details = str(error).splitlines()
        reason = details[1].strip() if len(details) > 1 else str(error)
        raise ValueError(
            f"{path}: the weights do not fit the model config {config}: {reason}"
        ) from None
    return model
