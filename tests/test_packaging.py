"""The build record, the version check on import, and the README's commands."""

import json
import re
from pathlib import Path

import pytest
import torch

import seqlstm
from seqlstm import _loader

ROOT = Path(__file__).resolve().parent.parent


def test_build_info_reports_torch_version():
    info = seqlstm.build_info()
    assert info["torch_version"] == torch.__version__
    assert set(info) == {"cuda", "cuda_version", "openmp", "torch_version"}
    assert isinstance(info["cuda"], bool)
    assert (info["cuda_version"] is None) == (not info["cuda"])


def test_build_info_matches_build_record():
    record = json.loads((ROOT / "seqlstm" / "_build_info.json").read_text())
    assert record["cuda"] == seqlstm.build_info()["cuda"]


def test_version_mismatch_names_both_versions(monkeypatch):
    monkeypatch.setattr(_loader, "_build_record", lambda: {"torch_version": "2.0.0"})
    with pytest.raises(ImportError) as error:
        _loader.load_extension()
    message = str(error.value)
    assert "2.0.0" in message
    assert torch.__version__ in message
    assert "pip install --no-build-isolation" in message


def readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```\n(.+?)\n```", text)[:2]


def test_ci_runs_readme_test_command():
    _, test_command = readme_commands()
    python_part = test_command.split("&&")[-1].strip()
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert python_part in ci_script


def test_readme_install_command_runs_main_job():
    install_command, _ = readme_commands()
    assert "pip install --no-build-isolation" in install_command
    assert install_command.endswith("python -m seqlstm train")


def test_shipped_training_data_present():
    data = ROOT / "seqlstm" / "data" / "Train.ctf"
    assert data.stat().st_size == 80962
