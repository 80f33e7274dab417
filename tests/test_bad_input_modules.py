"""Bad arguments to LSTM and SparseEmbedding whose messages do not yet name the
argument."""

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

from seqlstm import LSTM, SparseEmbedding


def test_lstm_hx_single_tensor():
    lstm = LSTM(4, 3)
    with pytest.raises(TypeError, match="hx"):
        lstm(torch.randn(5, 2, 4), torch.zeros(1, 2, 3))


def test_lstm_packed_empty_batch_sizes():
    lstm = LSTM(4, 3)
    packed = PackedSequence(torch.randn(0, 4), torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="batch_sizes"):
        lstm(packed)


def test_lstm_dropout_string():
    with pytest.raises(TypeError, match="dropout"):
        LSTM(4, 3, dropout="0.5")


def test_embedding_float_size():
    with pytest.raises(TypeError, match="num_embeddings"):
        SparseEmbedding(10.5, 3)
