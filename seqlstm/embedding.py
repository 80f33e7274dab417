"""SparseEmbedding: an embedding table applied to sparse rows given in CSR form."""

import math

import torch
from torch import nn

from seqlstm import ops  # noqa: F401  (registers the operators' autograd)


class SparseEmbedding(nn.Module):
    """Embedding of sparse input rows: each output row is the weighted sum of the table
    rows its non-zeros select, as `x @ weight` for a sparse `x` would give.

    Args:
        num_embeddings: size of the sparse input dimension (the vocabulary).
        embedding_dim: size of each output row.
        init: "glorot_uniform" (CNTK's default, U(-r, r) with r = sqrt(6 / (fan_in +
            fan_out))) or "normal" (torch.nn.Embedding's N(0, 1)).
        sparse: if True, the gradient of weight is a sparse COO tensor with one row per
            non-zero of the input, as torch.nn.Embedding(sparse=True) gives, so that an
            optimizer that accepts sparse gradients updates only the rows used.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        init: str = "normal",
        sparse: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        for name, value in (
            ("num_embeddings", num_embeddings),
            ("embedding_dim", embedding_dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, got {value!r}")
        if num_embeddings <= 0 or embedding_dim <= 0:
            raise ValueError(
                "num_embeddings and embedding_dim must be positive, got "
                f"{num_embeddings} and {embedding_dim}"
            )
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.sparse = bool(sparse)
        self.weight = nn.Parameter(
            torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype)
        )
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "normal") -> None:
        """Draw the table again with `init` (see the class docstring)."""
        with torch.no_grad():
            if init == "glorot_uniform":
                bound = math.sqrt(6.0 / (self.num_embeddings + self.embedding_dim))
                self.weight.uniform_(-bound, bound)
            elif init == "normal":
                self.weight.normal_()
            else:
                raise ValueError(
                    f"init must be 'glorot_uniform' or 'normal', got {init!r}"
                )

    def forward(self, indices, offsets, per_sample_weights=None, output_order=None):
        """Gather and sum table rows per sample.

        Args:
            indices: (nnz,) int64, the column of each non-zero.
            offsets: (num_samples + 1,) int64, CSR row pointers into `indices`.
            per_sample_weights: (nnz,) values of the non-zeros, or None for all ones.
            output_order: (num_samples,) int64 permutation; sample s is written to
                output row output_order[s]. None keeps the input order.

        Returns:
            (num_samples, embedding_dim) tensor.

        Raises:
            IndexError: an index is outside [0, num_embeddings).
            ValueError: offsets or output_order are malformed.
        """
        return _embedding_bag_forward(
            self.weight, indices, offsets, per_sample_weights, output_order, self.sparse
        )

    def extra_repr(self) -> str:
        text = f"{self.num_embeddings}, {self.embedding_dim}"
        return text + (", sparse=True" if self.sparse else "")


# The operator's only overload, called directly to skip the overload lookup per call.
_embedding_bag_forward = torch.ops.seqlstm.embedding_bag_forward.default
