"""seqlstm: fused LSTM kernels for small variable-length sequence models."""

from seqlstm._loader import load_extension

_C = load_extension()

from seqlstm import ops  # noqa: E402  (registers fake kernels and autograd)
from seqlstm.embedding import SparseEmbedding  # noqa: E402
from seqlstm.reader import CTFReader, StreamSpec, read_ctf  # noqa: E402
from seqlstm.lstm import LSTM  # noqa: E402
from seqlstm import packing  # noqa: E402

__version__ = "0.1.0"


def build_info() -> dict:
    """Return what the compiled extension contains: cuda, cuda_version, openmp and
    torch_version (the torch it was built against)."""
    return dict(_C.build_info())


__all__ = [
    "CTFReader",
    "LSTM",
    "SparseEmbedding",
    "StreamSpec",
    "build_info",
    "packing",
    "read_ctf",
]
