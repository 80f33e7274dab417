"""Every argument check of the lstm operators and of seqlstm.LSTM, one test each."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import seqlstm


def forward_arguments(**replace):
    """Valid lstm_forward arguments for lengths (3, 2, 2), H_in = 5, H = 4, P = 2,
    with the named ones replaced."""
    arguments = {
        "input": torch.randn(7, 5),
        "batch_sizes": torch.tensor([3, 3, 1]),
        "h_0": torch.zeros(3, 2),
        "c_0": torch.zeros(3, 4),
        "weight_ih": torch.randn(16, 5),
        "weight_hh": torch.randn(16, 2),
        "bias": torch.randn(16),
        "weight_hr": torch.randn(2, 4),
        "algorithm": 0,
    }
    arguments.update(replace)
    return arguments


def call_forward(**replace):
    return torch.ops.seqlstm.lstm_forward(**forward_arguments(**replace))


def test_valid_arguments_pass():
    output, h_n, c_n, gates, cell = call_forward()
    assert output.shape == (7, 2)
    assert gates.shape == (7, 16)


def test_input_not_2d():
    with pytest.raises(ValueError, match=r"input must have 2 dimensions, got 3"):
        call_forward(input=torch.randn(7, 5, 1))


def test_input_integer_dtype():
    with pytest.raises(TypeError, match="input must have a floating-point dtype, got Long"):
        call_forward(input=torch.zeros(7, 5, dtype=torch.int64))


def test_input_half_dtype_on_cpu():
    arguments = {
        name: value.half() if isinstance(value, torch.Tensor) and value.is_floating_point()
        else value
        for name, value in forward_arguments().items()
    }
    with pytest.raises(TypeError, match="input must have dtype float32 or float64 on CPU, got Half"):
        torch.ops.seqlstm.lstm_forward(**arguments)


def test_batch_sizes_not_1d():
    with pytest.raises(ValueError, match="batch_sizes must have 1 dimensions"):
        call_forward(batch_sizes=torch.tensor([[3, 3, 1]]))


def test_batch_sizes_wrong_dtype():
    with pytest.raises(TypeError, match="batch_sizes must have dtype Long, got Int"):
        call_forward(batch_sizes=torch.tensor([3, 3, 1], dtype=torch.int32))


def test_batch_sizes_empty():
    with pytest.raises(ValueError, match="batch_sizes must have at least one step"):
        call_forward(batch_sizes=torch.zeros(0, dtype=torch.int64), input=torch.randn(0, 5))


def test_batch_sizes_zero_entry():
    with pytest.raises(ValueError, match=r"batch_sizes\[2\] must be positive, got 0"):
        call_forward(batch_sizes=torch.tensor([3, 3, 0]))


def test_batch_sizes_negative_entry():
    with pytest.raises(ValueError, match=r"batch_sizes\[1\] must be positive, got -1"):
        call_forward(batch_sizes=torch.tensor([3, -1, 5]))


def test_batch_sizes_increasing():
    with pytest.raises(
        ValueError,
        match=r"batch_sizes must be non-increasing, got batch_sizes\[0\] = 2 < batch_sizes\[1\] = 3",
    ):
        call_forward(batch_sizes=torch.tensor([2, 3, 2]))


def test_input_rows_disagree_with_batch_sizes():
    with pytest.raises(ValueError, match=r"input must have sum\(batch_sizes\) = 7 rows"):
        call_forward(input=torch.randn(8, 5))


def test_weight_hh_rows_not_multiple_of_four():
    with pytest.raises(ValueError, match=r"weight_hh must have shape \(4\*hidden_size"):
        call_forward(weight_hh=torch.randn(15, 2))


def test_weight_hh_wrong_columns():
    with pytest.raises(ValueError, match=r"weight_hh must have shape .* = \(16, 2\), got \(16, 4\)"):
        call_forward(weight_hh=torch.randn(16, 4))


def test_weight_hr_wrong_shape():
    with pytest.raises(ValueError, match=r"weight_hr must have shape \(proj_size, hidden_size\)"):
        call_forward(weight_hr=torch.randn(2, 3))


def test_weight_ih_wrong_shape():
    with pytest.raises(ValueError, match=r"weight_ih must have shape .* = \(16, 5\), got \(16, 6\)"):
        call_forward(weight_ih=torch.randn(16, 6))


def test_h_0_wrong_shape():
    with pytest.raises(ValueError, match=r"h_0 must have shape .* = \(3, 2\), got \(2, 2\)"):
        call_forward(h_0=torch.zeros(2, 2))


def test_c_0_wrong_shape():
    with pytest.raises(ValueError, match=r"c_0 must have shape .* = \(3, 4\), got \(3, 2\)"):
        call_forward(c_0=torch.zeros(3, 2))


def test_bias_wrong_shape():
    with pytest.raises(ValueError, match=r"bias must have shape \(4\*hidden_size,\) = \(16,\)"):
        call_forward(bias=torch.zeros(8))


def test_weight_dtype_differs_from_input():
    with pytest.raises(TypeError, match=r"weight_ih must have the same dtype as input \(Float\)"):
        call_forward(weight_ih=torch.randn(16, 5, dtype=torch.float64))


def test_h_0_dtype_differs_from_input():
    with pytest.raises(TypeError, match=r"h_0 must have the same dtype as input \(Float\)"):
        call_forward(h_0=torch.zeros(3, 2, dtype=torch.float64))


def test_algorithm_out_of_range():
    with pytest.raises(ValueError, match="algorithm must be 0 .* got 3"):
        call_forward(algorithm=3)


def backward_arguments(**replace):
    forward = forward_arguments()
    output, h_n, c_n, gates, cell = torch.ops.seqlstm.lstm_forward(**forward)
    arguments = {
        "grad_output": torch.ones_like(output),
        "grad_h_n": torch.ones_like(h_n),
        "grad_c_n": torch.ones_like(c_n),
        "input": forward["input"],
        "batch_sizes": forward["batch_sizes"],
        "h_0": forward["h_0"],
        "c_0": forward["c_0"],
        "weight_ih": forward["weight_ih"],
        "weight_hh": forward["weight_hh"],
        "weight_hr": forward["weight_hr"],
        "output": output,
        "gates": gates,
        "cell": cell,
        "algorithm": 0,
    }
    arguments.update(replace)
    return arguments


def test_backward_grad_output_wrong_shape():
    with pytest.raises(ValueError, match=r"grad_output must have shape .* = \(7, 2\), got \(7, 4\)"):
        torch.ops.seqlstm.lstm_backward(**backward_arguments(grad_output=torch.ones(7, 4)))


def test_backward_grad_h_n_wrong_shape():
    with pytest.raises(ValueError, match=r"grad_h_n must have shape .* = \(3, 2\)"):
        torch.ops.seqlstm.lstm_backward(**backward_arguments(grad_h_n=torch.ones(2, 2)))


def test_backward_grad_c_n_wrong_dtype():
    with pytest.raises(TypeError, match=r"grad_c_n must have the same dtype as input"):
        torch.ops.seqlstm.lstm_backward(
            **backward_arguments(grad_c_n=torch.ones(3, 4, dtype=torch.float64))
        )


def test_backward_gates_wrong_shape():
    with pytest.raises(ValueError, match=r"gates must have shape .* = \(7, 16\)"):
        torch.ops.seqlstm.lstm_backward(**backward_arguments(gates=torch.ones(7, 4)))


def test_backward_cell_wrong_shape():
    with pytest.raises(ValueError, match=r"cell must have shape .* = \(7, 4\)"):
        torch.ops.seqlstm.lstm_backward(**backward_arguments(cell=torch.ones(6, 4)))


def test_backward_output_wrong_shape():
    with pytest.raises(ValueError, match=r"output must have shape .* = \(7, 2\)"):
        torch.ops.seqlstm.lstm_backward(**backward_arguments(output=torch.ones(7, 3)))


# seqlstm.LSTM


def call_layer(**replace):
    """Call lstm_layer on forward_arguments' batch, in the caller's order (2, 0, 1), with
    the named arguments replaced."""
    forward = forward_arguments()
    arguments = {
        "input": forward["input"],
        "batch_sizes": forward["batch_sizes"],
        "sorted_indices": torch.tensor([1, 2, 0]),
        "unsorted_indices": torch.tensor([2, 0, 1]),
        "h_0": None,
        "c_0": None,
        "weight_ih": forward["weight_ih"],
        "weight_hh": forward["weight_hh"],
        "bias_ih": torch.randn(16),
        "bias_hh": torch.randn(16),
        "weight_hr": forward["weight_hr"],
        "algorithm": 0,
    }
    arguments.update(replace)
    return torch.ops.seqlstm.lstm_layer(**arguments)


def test_layer_valid_arguments_pass():
    output, h_n, c_n, gates, cell = call_layer(h_0=torch.zeros(3, 2), c_0=torch.zeros(3, 4))
    assert output.shape == (7, 2)
    assert h_n.shape == (3, 2)
    assert c_n.shape == (3, 4)


def test_layer_sorted_indices_without_unsorted():
    with pytest.raises(ValueError, match="must be given together, got sorted_indices only"):
        call_layer(unsorted_indices=None)


def test_layer_unsorted_indices_without_sorted():
    with pytest.raises(ValueError, match="must be given together, got unsorted_indices only"):
        call_layer(sorted_indices=None)


def test_layer_sorted_indices_wrong_length():
    message = r"sorted_indices must have shape \(batch_sizes\[0\],\) = \(3,\), got \(2,\)"
    with pytest.raises(ValueError, match=message):
        call_layer(sorted_indices=torch.tensor([0, 1]))


def test_layer_unsorted_indices_wrong_dtype():
    with pytest.raises(TypeError, match="unsorted_indices must have dtype Long, got Int"):
        call_layer(unsorted_indices=torch.tensor([2, 0, 1], dtype=torch.int32))


def test_layer_unsorted_indices_not_inverse_of_sorted():
    message = (
        r"unsorted_indices must be the inverse permutation of sorted_indices, but "
        r"sorted_indices\[0\] = 1 and unsorted_indices\[1\] = 2"
    )
    with pytest.raises(ValueError, match=message):
        call_layer(unsorted_indices=torch.tensor([0, 2, 1]))


def test_layer_sorted_index_out_of_range():
    message = r"sorted_indices\[2\] = 3 is outside \[0, batch_sizes\[0\]\)"
    with pytest.raises(ValueError, match=message):
        call_layer(sorted_indices=torch.tensor([1, 2, 3]))


def test_layer_h_0_wrong_rows():
    message = r"h_0 must have one row per sequence \(batch_sizes\[0\] = 3\), got shape \(2, 2\)"
    with pytest.raises(ValueError, match=message):
        call_layer(h_0=torch.zeros(2, 2))


def test_layer_c_0_not_2d():
    with pytest.raises(ValueError, match="c_0 must have 2 dimensions, got 1"):
        call_layer(c_0=torch.zeros(4))


def test_layer_bias_hh_wrong_shape():
    # A plain sum would broadcast a (1,) bias, so the operator rejects it.
    message = r"bias_hh must have shape \(4\*hidden_size,\) = \(16,\), got \(1,\)"
    with pytest.raises(ValueError, match=message):
        call_layer(bias_hh=torch.randn(1))


def test_layer_bias_ih_wrong_dtype():
    message = r"bias_ih must have the same dtype as input \(Float\), got Double"
    with pytest.raises(TypeError, match=message):
        call_layer(bias_ih=torch.randn(16, dtype=torch.float64))


def test_layer_empty_batch_sizes():
    with pytest.raises(ValueError, match="batch_sizes must have at least one step"):
        call_layer(batch_sizes=torch.zeros(0, dtype=torch.int64), sorted_indices=None,
                   unsorted_indices=None)


def test_layer_zero_batch_size_names_batch_sizes():
    with pytest.raises(ValueError, match=r"batch_sizes\[0\] must be positive, got 0"):
        call_layer(input=torch.randn(0, 5), batch_sizes=torch.tensor([0]), sorted_indices=None,
                   unsorted_indices=None)


def test_layer_weight_hr_0_dim():
    with pytest.raises(ValueError, match=r"weight_hr must have 2 dimensions, got 0"):
        call_layer(weight_hr=torch.tensor(1.0))


def test_layer_weight_hh_rows_not_multiple_of_4():
    # Checked before the biases, whose expected shape comes from weight_hh.
    message = (
        r"weight_hh must have shape \(4\*hidden_size, .*\) with hidden_size >= 1, "
        r"got \(7, 2\)"
    )
    with pytest.raises(ValueError, match=message):
        call_layer(weight_hh=torch.randn(7, 2))


def test_layer_batch_sizes_increasing():
    # Checked before the order indices, whose expected length is batch_sizes[0].
    message = (
        r"batch_sizes must be non-increasing, got batch_sizes\[0\] = 1 < "
        r"batch_sizes\[1\] = 3"
    )
    with pytest.raises(ValueError, match=message):
        call_layer(batch_sizes=torch.tensor([1, 3, 3]))


def test_layer_integer_input():
    with pytest.raises(TypeError, match="input must have a floating-point dtype, got Long"):
        call_layer(input=torch.zeros(7, 5, dtype=torch.int64))


def test_layer_huge_batch_size_checked_before_allocation():
    # The zero initial states would take 2**40 rows if they were allocated first.
    message = r"input must have sum\(batch_sizes\) = 1099511627777 rows, got shape \(7, 5\)"
    with pytest.raises(ValueError, match=message):
        call_layer(batch_sizes=torch.tensor([2**40, 1]), sorted_indices=None,
                   unsorted_indices=None)


def test_layer_meta_index_raises():
    # A meta tensor among CPU ones dispatches to the fake kernel, which checks devices.
    message = r"sorted_indices must be on the same device as input \(cpu\), got meta"
    with pytest.raises(ValueError, match=message):
        call_layer(sorted_indices=torch.tensor([1, 2, 0], device="meta"))


def test_layer_h_0_on_another_device():
    # The meta tensor sends the call to the fake kernel, which checks devices as the
    # kernels do. CPU input with CUDA h_0 needs a GPU to test.
    message = r"h_0 must be on the same device as input \(cpu\), got meta"
    with pytest.raises(ValueError, match=message):
        call_layer(h_0=torch.zeros(3, 2, device="meta"))


def test_forward_meta_bias_raises():
    message = r"bias must be on the same device as input \(cpu\), got meta"
    with pytest.raises(ValueError, match=message):
        call_forward(bias=torch.randn(16, device="meta"))


def test_module_length_zero_names_position():
    module = seqlstm.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"lengths\[2\] must be at least 1, got 0"):
        module(torch.randn(5, 3, 3), lengths=torch.tensor([5, 2, 0]))


def test_module_length_negative_names_position():
    module = seqlstm.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"lengths\[0\] must be at least 1, got -2"):
        module(torch.randn(5, 3, 3), lengths=torch.tensor([-2, 2, 1]))


def test_module_length_longer_than_input():
    module = seqlstm.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"lengths\[1\] = 6 exceeds the input's sequence length 5"):
        module(torch.randn(5, 3, 3), lengths=torch.tensor([5, 6, 1]))


def test_module_lengths_count_differs_from_batch():
    module = seqlstm.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"lengths must have one entry per sequence \(3\), got 2"):
        module(torch.randn(5, 3, 3), lengths=torch.tensor([5, 2]))


def test_module_lengths_wrong_dtype():
    module = seqlstm.LSTM(3, 4)
    with pytest.raises(TypeError, match="lengths must be an int64 tensor, got torch.float32"):
        module(torch.randn(5, 3, 3), lengths=torch.tensor([5.0, 2.0, 1.0]))


def test_module_lengths_not_1d():
    module = seqlstm.LSTM(3, 4)
    with pytest.raises(ValueError, match="lengths must have 1 dimension"):
        module(torch.randn(5, 3, 3), lengths=torch.tensor([[5, 2, 1]]))


def test_module_lengths_with_packed_input():
    module = seqlstm.LSTM(3, 4)
    packed = pack_padded_sequence(torch.randn(5, 2, 3), torch.tensor([5, 2]))
    with pytest.raises(ValueError, match="lengths must be None for PackedSequence input"):
        module(packed, lengths=torch.tensor([5, 2]))


def test_module_empty_batch():
    module = seqlstm.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"input must have at least one step and one sequence, got shape \(5, 0, 3\)"):
        module(torch.randn(5, 0, 3))


def test_module_zero_steps():
    module = seqlstm.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"input must have at least one step and one sequence, got shape \(0, 2, 3\)"):
        module(torch.randn(0, 2, 3))


def test_module_input_wrong_dimensions():
    module = seqlstm.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"input must have 3 dimensions .* got shape \(2, 5, 2, 3\)"):
        module(torch.randn(2, 5, 2, 3))


def test_module_input_wrong_feature_size():
    module = seqlstm.LSTM(3, 4)
    with pytest.raises(ValueError, match="input must have input_size = 3 features, got 7"):
        module(torch.randn(5, 2, 7))


def test_module_h_0_wrong_shape():
    module = seqlstm.LSTM(3, 4, num_layers=2)
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 2, 4\), got \(1, 2, 4\)"):
        module(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)))


def test_module_c_0_wrong_shape():
    module = seqlstm.LSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match=r"c_0 must have shape \(1, 2, 4\), got \(1, 2, 2\)"):
        module(torch.randn(5, 2, 3), (torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)))


def test_module_input_dtype_differs_from_parameters():
    module = seqlstm.LSTM(3, 4)
    with pytest.raises(TypeError, match=r"weight_ih must have the same dtype as input \(Double\)"):
        module(torch.randn(5, 2, 3, dtype=torch.float64))


@pytest.mark.parametrize("options,message", [
    ({"hidden_size": 0}, "hidden_size must be a positive integer, got 0"),
    ({"input_size": -1}, "input_size must be a positive integer, got -1"),
    ({"num_layers": 0}, "num_layers must be a positive integer, got 0"),
    ({"dropout": 1.5}, r"dropout must be a number in \[0, 1\], got 1.5"),
    ({"proj_size": -1}, "proj_size must be a non-negative integer, got -1"),
    ({"proj_size": 5}, r"proj_size must be at most hidden_size \(4\), got 5"),
])
def test_module_constructor_rejects(options, message):
    arguments = {"input_size": 3, "hidden_size": 4}
    arguments.update(options)
    with pytest.raises(ValueError, match=message):
        seqlstm.LSTM(**arguments)
