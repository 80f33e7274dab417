"""The sequence classifier of CNTK's sequence-classification example, built from the
seqlstm operators.

    sparse words (CSR) -> SparseEmbedding -> LSTM -> h_n (last step) -> Linear -> logits

Shapes: N = sequences in the minibatch, S = their samples (words) in all, V = input_dim,
E = embedding_dim, H = hidden_size, P = proj_size (H when it is 0), C = num_classes.
"""

import math

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from seqlstm.embedding import SparseEmbedding
from seqlstm.lstm import LSTM
from seqlstm.packing import pack_order

INITS = ("cntk", "torch")


def glorot_uniform_(weight: torch.Tensor) -> None:
    """Fill a 2-D weight from U(-r, r) with r = sqrt(6 / (rows + columns)), CNTK's
    glorot_uniform. The LSTM's stacked gate weights count as one matrix, as CNTK stores
    them, so weight_ih of shape (4*H, E) gets r = sqrt(6 / (4*H + E))."""
    bound = math.sqrt(6.0 / (weight.shape[0] + weight.shape[1]))
    with torch.no_grad():
        weight.uniform_(-bound, bound)


class SequenceClassifier(nn.Module):
    """Embedding, one LSTM layer with an optional projection, and a dense layer on the
    last step of each sequence.

    CNTK's LSTM has one bias vector. The LSTM here keeps torch.nn.LSTM's two bias
    vectors, so bias_hh_l0 is held at zero and frozen (requires_grad False) and
    bias_ih_l0 is the one trained bias.

    Args:
        input_dim: V, the dimension of the sparse input (the vocabulary).
        num_classes: C.
        embedding_dim: E.
        hidden_size: H, the LSTM cell size.
        proj_size: P, the size of the learned projection of the LSTM output; 0 for
            none. It may equal hidden_size, as CNTK's LSTM(25, 25) has.
        init: "cntk" for glorot-uniform weights and zero biases, "torch" for the
            initialisation of torch.nn.Embedding, torch.nn.LSTM and torch.nn.Linear.
        sparse_embedding: give the embedding table a sparse gradient (see
            SparseEmbedding), which the trainer's optimizer applies to the rows used
            only. Optimizers without sparse support, such as torch.optim.Adam, need
            False.
    """

    def __init__(
        self,
        input_dim: int = 2000,
        num_classes: int = 5,
        embedding_dim: int = 50,
        hidden_size: int = 25,
        proj_size: int = 25,
        init: str = "cntk",
        sparse_embedding: bool = True,
        device=None,
    ):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be 'cntk' or 'torch', got {init!r}")
        self.config = {
            "input_dim": input_dim,
            "num_classes": num_classes,
            "embedding_dim": embedding_dim,
            "hidden_size": hidden_size,
            "proj_size": proj_size,
        }
        self.embedding = SparseEmbedding(
            input_dim, embedding_dim, sparse=sparse_embedding, device=device
        )
        self.lstm = LSTM(embedding_dim, hidden_size, proj_size=proj_size, device=device)
        output_size = proj_size if proj_size > 0 else hidden_size
        self.dense = nn.Linear(output_size, num_classes, device=device)
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "cntk") -> None:
        """Draw all weights again with `init` (see the class docstring)."""
        if init == "cntk":
            for param in self.parameters():
                if param.dim() == 2:
                    glorot_uniform_(param)
                else:
                    nn.init.zeros_(param)
        else:
            self.embedding.reset_parameters("normal")
            self.lstm.reset_parameters()
            self.dense.reset_parameters()
        with torch.no_grad():
            self.lstm.bias_hh_l0.zero_()
        self.lstm.bias_hh_l0.requires_grad_(False)

    def forward(
        self,
        indices: torch.Tensor,
        values: torch.Tensor,
        offsets: torch.Tensor,
        lengths: torch.Tensor,
    ) -> torch.Tensor:
        """Compute the logits of each sequence.

        Args:
            indices: (nnz,) int64 word ids of the non-zeros, samples in sequence order.
            values: (nnz,) float values of the non-zeros.
            offsets: (S + 1,) int64 CSR row pointers into `indices`.
            lengths: (N,) int64 CPU tensor, samples per sequence, each at least 1.

        Returns:
            (N, C) logits, in the order of `lengths`.
        """
        return self.dense(self.last_states(indices, values, offsets, lengths))

    def last_states(
        self,
        indices: torch.Tensor,
        values: torch.Tensor,
        offsets: torch.Tensor,
        lengths: torch.Tensor,
    ) -> torch.Tensor:
        """Compute the LSTM output after each sequence's last sample, the input of the
        dense layer. Arguments as in forward.

        Returns:
            (N, P) tensor, in the order of `lengths`.
        """
        order = pack_order(lengths.cpu())
        device = indices.device
        embedded = self.embedding(
            indices, offsets, values, output_order=order.packed_rows.to(device)
        )  # (S, E), in packed order
        packed = PackedSequence(
            embedded,
            order.batch_sizes,
            order.sorted_indices.to(device),
            order.unsorted_indices.to(device),
        )
        _, (h_n, _) = self.lstm(packed)  # h_n: (1, N, P)
        return h_n[-1]
