"""The same classifier as seqlstm.model.SequenceClassifier, written in plain PyTorch
operations only: nn.EmbeddingBag, an LSTM step with projection in tensor operations, and
nn.Linear. Tests compare the seqlstm model against it, and bench/bench_train.py times both.

Parameter names and shapes follow torch.nn.LSTM, except that there is one bias
(`bias`, (4*H,)) in place of bias_ih_l0 and bias_hh_l0, as CNTK's LSTM has.
"""

import torch
from torch import nn


class ReferenceClassifier(nn.Module):
    """Embedding, LSTM with projection and dense layer in plain PyTorch.

    Args:
        input_dim, num_classes, embedding_dim, hidden_size, proj_size: as for
            SequenceClassifier; proj_size must be positive.
    """

    def __init__(
        self,
        input_dim: int = 2000,
        num_classes: int = 5,
        embedding_dim: int = 50,
        hidden_size: int = 25,
        proj_size: int = 25,
    ):
        super().__init__()
        if proj_size <= 0:
            raise ValueError(f"proj_size must be positive, got {proj_size}")
        self.hidden_size = hidden_size
        self.embedding = nn.EmbeddingBag(input_dim, embedding_dim, mode="sum")
        gates = 4 * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gates, embedding_dim))
        self.weight_hh = nn.Parameter(torch.empty(gates, proj_size))
        self.bias = nn.Parameter(torch.zeros(gates))
        self.weight_hr = nn.Parameter(torch.empty(proj_size, hidden_size))
        self.dense = nn.Linear(proj_size, num_classes)
        for weight in (self.weight_ih, self.weight_hh, self.weight_hr):
            nn.init.xavier_uniform_(weight)

    @torch.no_grad()
    def copy_from(self, model) -> None:
        """Copy the weights of a SequenceClassifier, summing its two LSTM biases."""
        lstm = model.lstm
        self.embedding.weight.copy_(model.embedding.weight)
        self.weight_ih.copy_(lstm.weight_ih_l0)
        self.weight_hh.copy_(lstm.weight_hh_l0)
        self.bias.copy_(lstm.bias_ih_l0 + lstm.bias_hh_l0)
        self.weight_hr.copy_(lstm.weight_hr_l0)
        self.dense.weight.copy_(model.dense.weight)
        self.dense.bias.copy_(model.dense.bias)

    def forward(self, indices, values, offsets, lengths) -> torch.Tensor:
        """Compute the logits of each sequence; arguments as SequenceClassifier.forward."""
        num_sequences = lengths.shape[0]
        embedded = self.embedding(
            indices, offsets[:-1], per_sample_weights=values
        )  # (S, E), sequence-major
        sequences = torch.split(embedded, lengths.tolist())
        padded = nn.utils.rnn.pad_sequence(sequences)  # (L, N, E)

        # Sequences sorted longest first, so the active ones at step t are a prefix.
        sorted_lengths, order = torch.sort(lengths, descending=True, stable=True)
        padded = padded[:, order]
        proj_size = self.weight_hr.shape[0]
        max_length = int(sorted_lengths[0]) if num_sequences else 0
        steps = torch.arange(max_length + 1).unsqueeze(1)
        batch_sizes = (sorted_lengths.unsqueeze(0) > steps).sum(1).tolist()
        h = padded.new_zeros(num_sequences, proj_size)
        c = padded.new_zeros(num_sequences, self.hidden_size)
        finished = []  # states of the sequences that end at each step
        for t in range(max_length):
            active = batch_sizes[t]
            h, c = h[:active], c[:active]
            gates = padded[t, :active] @ self.weight_ih.T + h @ self.weight_hh.T
            gates = gates + self.bias
            i, f, g, o = gates.chunk(4, dim=1)  # torch.nn.LSTM's gate order
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = (torch.sigmoid(o) * torch.tanh(c)) @ self.weight_hr.T
            finished.append(h[batch_sizes[t + 1] :])
        # Longer sequences end later and sit first in the sorted order.
        h_sorted = torch.cat(finished[::-1]) if finished else h
        h_n = torch.empty_like(h_sorted).index_copy(0, order, h_sorted)
        return self.dense(h_n)
