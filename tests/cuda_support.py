"""What the CUDA tests share: the reason they skip, and float32 without TF32."""

import contextlib

import pytest
import torch

import seqlstm


def cuda_skip_reason() -> str | None:
    """Return why the CUDA kernels cannot run here, or None when they can."""
    if not seqlstm.build_info()["cuda"]:
        return "seqlstm was built without CUDA; rebuild with SEQLSTM_CUDA=1 to test its kernels"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    return None


requires_cuda = pytest.mark.skipif(
    cuda_skip_reason() is not None, reason=cuda_skip_reason() or ""
)


@contextlib.contextmanager
def tf32_disabled():
    """Run float32 matmuls and cuDNN in full float32 precision, as the parity bounds assume."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
