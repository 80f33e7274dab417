"""Load the compiled extension, or explain how to rebuild it when it does not match torch."""

import json
from importlib import resources

import torch


def _build_record() -> dict:
    try:
        text = resources.files("seqlstm").joinpath("_build_info.json").read_text()
    except FileNotFoundError:
        return {}
    return json.loads(text)


REBUILD_COMMAND = "pip install --no-build-isolation --force-reinstall --no-deps ."


def load_extension():
    """Import seqlstm._C, raising ImportError that names both torch versions on a mismatch."""
    built_with = _build_record().get("torch_version")
    if built_with is not None and built_with != torch.__version__:
        raise ImportError(
            f"seqlstm._C was built against torch {built_with}, but torch "
            f"{torch.__version__} is installed. Rebuild it from the seqlstm source "
            f"folder with: {REBUILD_COMMAND}"
        )
    try:
        from seqlstm import _C
    except ImportError as error:
        raise ImportError(
            f"seqlstm._C could not be loaded ({error}). If torch was upgraded since "
            f"seqlstm was built, rebuild it from the seqlstm source folder with: "
            f"{REBUILD_COMMAND}"
        ) from error
    return _C
