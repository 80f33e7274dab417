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


_gather_rows = torch.ops.seqlstm.gather_rows.default
_scatter_add_rows = torch.ops.seqlstm.scatter_add_rows.default

# Row 1 repeats, a scatter into 6 rows leaves rows 2 and 4 without a source row, and
# row 5 is the last.
_ROWS = torch.tensor([3, 1, 1, 5, 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gather_rows_matches_index_select(dtype):
    source = torch.randn(6, 3).to(dtype)
    assert torch.equal(_gather_rows(source, _ROWS), source.index_select(0, _ROWS))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_scatter_add_rows_matches_index_add(dtype):
    source = torch.randn(5, 3).to(dtype)
    expected = torch.zeros(6, 3, dtype=dtype).index_add_(0, _ROWS, source)
    actual = _scatter_add_rows(source, _ROWS, 6)
    assert torch.equal(actual[[2, 4]], torch.zeros(2, 3, dtype=dtype))
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize("source", [
    torch.randn(3, 6).t(),  # columns not adjacent
    torch.randn(12, 3)[::2],  # rows two apart
    torch.randn(1, 3).expand(6, 3),  # one row repeated, as an expanded gradient
    torch.randn(6, 1).expand(6, 3),  # columns of stride 0
])
def test_gather_rows_strided_source(source):
    assert torch.equal(_gather_rows(source, _ROWS), source[_ROWS])


def test_rows_operators_gradcheck():
    source = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: _gather_rows(s, _ROWS), (source,))
    assert torch.autograd.gradgradcheck(lambda s: _gather_rows(s, _ROWS), (source,))
    rows_source = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: _scatter_add_rows(s, _ROWS, 7), (rows_source,))
    assert torch.autograd.gradgradcheck(lambda s: _scatter_add_rows(s, _ROWS, 7), (rows_source,))


def test_rows_operators_opcheck():
    torch.library.opcheck(_gather_rows, (torch.randn(6, 3, requires_grad=True), _ROWS))
    torch.library.opcheck(_scatter_add_rows, (torch.randn(5, 3, requires_grad=True), _ROWS, 6))
    empty_rows = torch.zeros(0, dtype=torch.int64)
    torch.library.opcheck(_gather_rows, (torch.randn(6, 3), empty_rows))
    torch.library.opcheck(_scatter_add_rows, (torch.randn(0, 3), empty_rows, 4))


def test_rows_operators_compile():
    def move(source):
        packed = _gather_rows(source, _ROWS)
        return _scatter_add_rows(packed * 2, _ROWS, 6)

    source = torch.randn(6, 3)
    compiled = torch.compile(move, fullgraph=True, backend="eager")
    assert torch.equal(compiled(source), move(source))


@pytest.mark.parametrize("row", [6, -1])
def test_gather_rows_row_out_of_range(row):
    rows = torch.tensor([0, row])
    with pytest.raises(IndexError, match=rf"rows\[1\] = {row} must lie in \[0, source.size\(0\)\) = \[0, 6\)"):
        _gather_rows(torch.randn(6, 3), rows)


@pytest.mark.parametrize("row", [4, -1])
def test_scatter_rows_row_out_of_range(row):
    rows = torch.tensor([0, row])
    with pytest.raises(IndexError, match=rf"rows\[1\] = {row} must lie in \[0, num_rows\) = \[0, 4\)"):
        _scatter_add_rows(torch.randn(2, 3), rows, 4)


def test_scatter_rows_negative_num_rows():
    with pytest.raises(ValueError, match="num_rows must not be negative, got -1"):
        _scatter_add_rows(torch.randn(2, 3), torch.tensor([0, 1]), -1)


def test_scatter_rows_row_count_mismatch():
    with pytest.raises(ValueError, match=r"source must have one row per entry of rows \(2\), got shape \(3, 3\)"):
        _scatter_add_rows(torch.randn(3, 3), torch.tensor([0, 1]), 4)


@pytest.mark.parametrize("operator,args", [
    (_gather_rows, (torch.randn(6), _ROWS)),
    (_scatter_add_rows, (torch.randn(5), _ROWS, 6)),
])
def test_rows_operators_source_not_2d(operator, args):
    with pytest.raises(ValueError, match=r"source must have 2 dimensions, got 1 with shape \("):
        operator(*args)


@pytest.mark.parametrize("rows,error,message", [
    (torch.tensor([0.0, 1.0]), TypeError, "rows must have dtype Long, got Float"),
    (torch.tensor([[0, 1]]), ValueError, r"rows must have 1 dimensions, got 2 with shape \(1, 2\)"),
    (torch.tensor([0, 1], device="meta"), ValueError,
     r"rows must be on the same device as source \(cpu\), got meta"),
])
def test_rows_operators_bad_rows(rows, error, message):
    with pytest.raises(error, match=message):
        _gather_rows(torch.randn(6, 3), rows)
    with pytest.raises(error, match=message):
        _scatter_add_rows(torch.randn(2, 3), rows, 6)


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64, torch.float8_e5m2])
def test_rows_operators_source_dtype(device, dtype):
    # On meta tensors the fake kernels run, and they raise the kernels' errors.
    rows = _ROWS.to(device)
    message = "source must have dtype float16, bfloat16, float32 or float64, got"
    with pytest.raises(TypeError, match=message):
        _gather_rows(torch.zeros(6, 3, device=device).to(dtype), rows)
    with pytest.raises(TypeError, match=message):
        _scatter_add_rows(torch.zeros(5, 3, device=device).to(dtype), rows, 6)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_rows_operators_bad_shapes(device):
    rows = _ROWS.to(device)
    with pytest.raises(ValueError, match=r"rows must have 1 dimensions, got 0 with shape \(\)"):
        _gather_rows(torch.zeros(6, 3, device=device), rows[0])
    with pytest.raises(ValueError, match=r"source must have 2 dimensions, got 3"):
        _gather_rows(torch.zeros(6, 3, 1, device=device), rows)
    with pytest.raises(ValueError, match=r"source must have one row per entry of rows \(5\)"):
        _scatter_add_rows(torch.zeros(4, 3, device=device), rows, 6)
    with pytest.raises(ValueError, match="num_rows must not be negative, got -1"):
        _scatter_add_rows(torch.zeros(5, 3, device=device), rows, -1)


def test_rows_operators_none_argument():
    with pytest.raises(ValueError, match="rows must be a tensor, got None"):
        _gather_rows(torch.zeros(6, 3), None)
    with pytest.raises(ValueError, match="source must be a tensor, got None"):
        _scatter_add_rows(None, _ROWS, 6)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
def test_rows_operators_nested_source():
    nested = torch.nested.as_nested_tensor([torch.zeros(2, 3), torch.zeros(3, 3)])
    with pytest.raises(ValueError, match="source must be a dense tensor, got a nested tensor"):
        _gather_rows(nested, _ROWS)


def test_rows_operators_sparse_source():
    sparse = torch.zeros(6, 3).to_sparse()
    with pytest.raises(ValueError, match="source must be a dense tensor, got layout"):
        _gather_rows(sparse, _ROWS)
    with pytest.raises(ValueError, match="source must be a dense tensor, got layout"):
        _scatter_add_rows(torch.zeros(5, 3).to_sparse(), _ROWS, 6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_scatter_rows_half_sums_in_float32(dtype):
    # 4000 ones added one by one in bfloat16 stop growing at 256.
    rows = torch.zeros(4000, dtype=torch.int64)
    total = _scatter_add_rows(torch.ones(4000, 1, dtype=dtype), rows, 1)
    assert total.dtype == dtype
    assert total.item() == torch.tensor(4000.0).to(dtype).item()


def test_scatter_rows_zero_columns():
    output = _scatter_add_rows(torch.zeros(5, 0), _ROWS, 2**40)
    assert output.shape == (2**40, 0)
    with pytest.raises(IndexError, match=r"rows\[0\] = 3 must lie in \[0, num_rows\) = \[0, 2\)"):
        _scatter_add_rows(torch.zeros(5, 0), _ROWS, 2)
