"""seqlstm.packing against torch.nn.utils.rnn.pack_sequence."""

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pack_sequence

import seqlstm
from seqlstm.packing import pack_order, padded_pack_order


@pytest.mark.parametrize("lengths", [[1], [3, 1, 4, 1, 5, 9, 2, 6], [2, 2, 2], [1, 7]])
def test_pack_order_matches_pack_sequence(lengths):
    lengths = torch.tensor(lengths)
    samples = torch.arange(int(lengths.sum()), dtype=torch.float64).unsqueeze(1)
    sequences = list(samples.split(lengths.tolist()))
    expected = pack_sequence(sequences, enforce_sorted=False)

    order = pack_order(lengths)
    packed = torch.empty_like(samples)
    packed[order.packed_rows] = samples

    assert torch.equal(order.batch_sizes, expected.batch_sizes)
    assert torch.equal(order.sorted_indices, expected.sorted_indices)
    assert torch.equal(order.unsorted_indices, expected.unsorted_indices)
    assert torch.equal(packed, expected.data)


@pytest.mark.parametrize("lengths,num_steps", [([1], 1), ([3, 1, 4, 1, 5], 6), ([2, 2], 2)])
def test_padded_pack_order_matches_pack_padded_sequence(lengths, num_steps):
    lengths = torch.tensor(lengths)
    padded = torch.randn(num_steps, lengths.shape[0], 3, dtype=torch.float64)
    expected = pack_padded_sequence(padded, lengths, enforce_sorted=False)

    batch_sizes, sorted_indices, unsorted_indices, source_rows = padded_pack_order(
        lengths, num_steps
    )

    assert torch.equal(batch_sizes, expected.batch_sizes)
    assert torch.equal(sorted_indices, expected.sorted_indices)
    assert torch.equal(unsorted_indices, expected.unsorted_indices)
    assert torch.equal(padded.reshape(-1, 3)[source_rows], expected.data)


def test_padded_pack_order_length_too_long():
    with pytest.raises(ValueError, match=r"lengths\[1\] = 4 exceeds the input's sequence length 3"):
        padded_pack_order(torch.tensor([2, 4]), 3)


def test_padded_pack_order_num_steps_zero():
    with pytest.raises(ValueError, match="num_steps must be at least 1, got 0"):
        padded_pack_order(torch.tensor([1]), 0)


def test_pack_order_is_stable_for_equal_lengths():
    order = pack_order(torch.tensor([2, 3, 2, 3]))
    assert order.sorted_indices.tolist() == [1, 3, 0, 2]


def test_pack_order_feeds_embedding_and_lstm():
    # The embedding writes straight into the packed layout; the LSTM then matches a
    # padded run over the same sequences.
    torch.manual_seed(0)
    lengths = torch.tensor([2, 4, 1])
    embedding = seqlstm.SparseEmbedding(10, 3, dtype=torch.float64)
    lstm = seqlstm.LSTM(3, 5, dtype=torch.float64)
    indices = torch.randint(0, 10, (7,))
    offsets = torch.arange(8)
    order = pack_order(lengths)

    data = embedding(indices, offsets, output_order=order.packed_rows)
    packed = PackedSequence(data, order.batch_sizes, order.sorted_indices,
                            order.unsorted_indices)
    _, (h_n, c_n) = lstm(packed)

    samples = embedding(indices, offsets)
    padded = torch.zeros(4, 3, 3, dtype=torch.float64)
    for sequence, rows in enumerate(samples.split(lengths.tolist())):
        padded[: rows.shape[0], sequence] = rows
    _, (h_ref, c_ref) = lstm(padded, lengths=lengths)
    torch.testing.assert_close(h_n, h_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c_n, c_ref, rtol=1e-12, atol=1e-12)


def test_pack_order_length_zero_names_position():
    with pytest.raises(ValueError, match=r"lengths\[1\] must be at least 1, got 0"):
        pack_order(torch.tensor([3, 0, 2]))


def test_pack_order_negative_length_names_position():
    with pytest.raises(ValueError, match=r"lengths\[2\] must be at least 1, got -4"):
        pack_order(torch.tensor([3, 1, -4]))


def test_pack_order_empty_batch():
    with pytest.raises(ValueError, match="lengths must contain at least one sequence"):
        pack_order(torch.zeros(0, dtype=torch.int64))


def test_pack_order_wrong_dtype():
    with pytest.raises(TypeError, match="lengths must be an int64 tensor, got torch.int32"):
        pack_order(torch.tensor([1, 2], dtype=torch.int32))


def test_pack_order_not_a_tensor():
    with pytest.raises(TypeError, match="lengths must be an int64 tensor, got list"):
        pack_order([1, 2])


def test_pack_order_not_1d():
    with pytest.raises(ValueError, match=r"lengths must have 1 dimension, got shape \(1, 2\)"):
        pack_order(torch.tensor([[1, 2]]))


def test_pack_order_operator_opcheck():
    lengths = torch.tensor([3, 1, 4, 1, 5])
    torch.library.opcheck(
        torch.ops.seqlstm.pack_order, (lengths,), test_utils=("test_schema", "test_faketensor")
    )


def test_pack_order_operator_length_zero_names_position():
    with pytest.raises(ValueError, match=r"lengths\[2\] must be at least 1, got 0"):
        torch.ops.seqlstm.pack_order(torch.tensor([3, 1, 0]))


def test_pack_order_operator_wrong_dtype():
    with pytest.raises(TypeError, match="lengths must have dtype Long, got Int"):
        torch.ops.seqlstm.pack_order(torch.tensor([1, 2], dtype=torch.int32))


def test_pack_order_operator_not_1d():
    with pytest.raises(ValueError, match="lengths must have 1 dimensions, got 2"):
        torch.ops.seqlstm.pack_order(torch.tensor([[1, 2]]))
