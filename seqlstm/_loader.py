"""Load the compiled extension, or explain how to rebuild it when it does not match torch."""

import importlib
import importlib.util
import json
from importlib import resources

import torch

REBUILD_COMMAND = "pip install --no-build-isolation --force-reinstall --no-deps -e ."


def _build_record() -> dict:
    """Return what setup.py recorded at build time, or {} when there is no record."""
    record = resources.files("seqlstm").joinpath("_build_info.json")
    if not record.is_file():
        return {}
    return json.loads(record.read_text())


def load_extension():
    """Import seqlstm._C.

    Raises:
        ImportError: the extension is missing, or was built against another torch (the
            message names both versions), with the command that rebuilds it.
    """
    if importlib.util.find_spec("seqlstm._C") is None:
        raise ImportError(
            "seqlstm._C is not built. Build it from the seqlstm source folder with: "
            f"{REBUILD_COMMAND}"
        )
    built_with = _build_record().get("torch_version")
    if built_with is not None and built_with != torch.__version__:
        raise ImportError(
            f"seqlstm._C was built against torch {built_with}, but torch "
            f"{torch.__version__} is installed. Rebuild it from the seqlstm source "
            f"folder with: {REBUILD_COMMAND}"
        )
    try:
        return importlib.import_module("seqlstm._C")
    except ImportError as error:
        raise ImportError(
            f"seqlstm._C could not be loaded ({error}). If torch changed since seqlstm "
            f"was built, rebuild it from the seqlstm source folder with: "
            f"{REBUILD_COMMAND}"
        ) from error
