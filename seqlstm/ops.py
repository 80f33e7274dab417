"""Python side of the `seqlstm` torch operators: fake kernels and autograd formulas.

The kernels live in csrc/ and are registered by the extension; this module adds what
torch.compile and autograd need to treat them as ordinary operators.
"""

import torch

from seqlstm._loader import load_extension

_C = load_extension()


def _check_same_device(reference_name, reference, **tensors):
    """Raise the kernels' error when a tensor is not on the device of `reference`. A meta
    tensor among CPU tensors dispatches the call to the fake kernel, which would
    otherwise return uninitialised CPU tensors."""
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != reference.device:
            raise ValueError(
                f"{name} must be on the same device as {reference_name} "
                f"({reference.device}), got {tensor.device}"
            )


@torch.library.register_fake("seqlstm::embedding_bag_forward")
def _embedding_bag_forward_fake(
    weight, indices, offsets, per_sample_weights, output_order, sparse=False
):
    _check_same_device(
        "weight", weight, indices=indices, offsets=offsets,
        per_sample_weights=per_sample_weights, output_order=output_order,
    )
    num_samples = offsets.shape[0] - 1
    return weight.new_empty((num_samples, weight.shape[1]))


@torch.library.register_fake("seqlstm::embedding_bag_backward")
def _embedding_bag_backward_fake(
    grad_output, indices, offsets, per_sample_weights, output_order, num_embeddings,
    deterministic,
):
    _check_same_device(
        "grad_output", grad_output, indices=indices, offsets=offsets,
        per_sample_weights=per_sample_weights, output_order=output_order,
    )
    return grad_output.new_empty((num_embeddings, grad_output.shape[1]))


@torch.library.register_fake("seqlstm::embedding_bag_backward_values")
def _embedding_bag_backward_values_fake(
    grad_output, indices, offsets, per_sample_weights, output_order, num_embeddings
):
    _check_same_device(
        "grad_output", grad_output, indices=indices, offsets=offsets,
        per_sample_weights=per_sample_weights, output_order=output_order,
    )
    return grad_output.new_empty((indices.shape[0], grad_output.shape[1]))


# The autograd of seqlstm::embedding_bag_forward is registered in C++
# (csrc/embedding_autograd.cpp), where it costs less per call than a Python formula.


def _check_lstm_devices(input, batch_sizes, **tensors):
    """Raise the kernels' error when batch_sizes is not on the CPU or another tensor is
    not on input's device."""
    if batch_sizes.device.type != "cpu":
        raise ValueError(f"batch_sizes must be on cpu, got {batch_sizes.device}")
    _check_same_device("input", input, **tensors)


@torch.library.register_fake("seqlstm::lstm_forward")
def _lstm_forward_fake(
    input, batch_sizes, h_0, c_0, weight_ih, weight_hh, bias, weight_hr, algorithm=0
):
    _check_lstm_devices(
        input, batch_sizes, h_0=h_0, c_0=c_0, weight_ih=weight_ih, weight_hh=weight_hh,
        bias=bias, weight_hr=weight_hr,
    )
    total = input.shape[0]
    batch_size = h_0.shape[0]
    hidden_size = weight_hh.shape[0] // 4
    proj_size = h_0.shape[1]
    output = input.new_empty((total, proj_size))
    h_n = input.new_empty((batch_size, proj_size))
    c_n = input.new_empty((batch_size, hidden_size))
    gates = input.new_empty((total, 4 * hidden_size))
    cell = input.new_empty((total, hidden_size))
    return output, h_n, c_n, gates, cell


@torch.library.register_fake("seqlstm::lstm_backward")
def _lstm_backward_fake(
    grad_output, grad_h_n, grad_c_n, input, batch_sizes, h_0, c_0, weight_ih, weight_hh,
    weight_hr, output, gates, cell, algorithm=0,
):
    grad_weight_hr = (
        input.new_empty((0,)) if weight_hr is None else weight_hr.new_empty(weight_hr.shape)
    )
    return (
        input.new_empty(input.shape),
        h_0.new_empty(h_0.shape),
        c_0.new_empty(c_0.shape),
        weight_ih.new_empty(weight_ih.shape),
        weight_hh.new_empty(weight_hh.shape),
        weight_hh.new_empty((weight_hh.shape[0],)),
        grad_weight_hr,
    )


@torch.library.register_fake("seqlstm::lstm_layer")
def _lstm_layer_fake(
    input, batch_sizes, sorted_indices, unsorted_indices, h_0, c_0, weight_ih, weight_hh,
    bias_ih, bias_hh, weight_hr, algorithm=0,
):
    _check_lstm_devices(
        input, batch_sizes, sorted_indices=sorted_indices, unsorted_indices=unsorted_indices,
        h_0=h_0, c_0=c_0, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih,
        bias_hh=bias_hh, weight_hr=weight_hr,
    )
    if h_0 is not None:
        batch_size = h_0.shape[0]
    elif sorted_indices is not None:
        batch_size = sorted_indices.shape[0]
    else:
        # batch_sizes[0], a value of the tensor, not a size.
        batch_size = torch.library.get_ctx().new_dynamic_size()
    hidden_size = weight_hh.shape[0] // 4
    proj_size = weight_hh.shape[1]
    total = input.shape[0]
    return (
        input.new_empty((total, proj_size)),
        input.new_empty((batch_size, proj_size)),
        input.new_empty((batch_size, hidden_size)),
        input.new_empty((total, 4 * hidden_size)),
        input.new_empty((total, hidden_size)),
    )


# The autograd of seqlstm::lstm_forward and seqlstm::lstm_layer is registered in C++
# (csrc/lstm_autograd.cpp) for every backend. Their backward calls seqlstm::lstm_backward,
# and a Python formula here added about 0.1 ms per forward and backward at N = 44, L = 12,
# H_in = 50, H = 25.


_ROWS_SOURCE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_rows_args(source, rows):
    """Raise the kernels' errors (check_rows_args in csrc/common/checks.h) for the
    arguments of gather_rows and scatter_add_rows."""
    for name, tensor in (("source", source), ("rows", rows)):
        if tensor.is_nested:
            raise ValueError(f"{name} must be a dense tensor, got a nested tensor")
        if tensor.layout != torch.strided:
            raise ValueError(f"{name} must be a dense tensor, got layout {tensor.layout}")
    if source.dim() != 2:
        raise ValueError(
            f"source must have 2 dimensions, got {source.dim()} with shape "
            f"{tuple(source.shape)}"
        )
    if source.dtype not in _ROWS_SOURCE_DTYPES:
        raise TypeError(
            f"source must have dtype float16, bfloat16, float32 or float64, got {source.dtype}"
        )
    if rows.dim() != 1:
        raise ValueError(
            f"rows must have 1 dimensions, got {rows.dim()} with shape {tuple(rows.shape)}"
        )
    if rows.dtype != torch.int64:
        raise TypeError(f"rows must have dtype Long, got {rows.dtype}")
    _check_same_device("source", source, rows=rows)


@torch.library.register_fake("seqlstm::gather_rows")
def _gather_rows_fake(source, rows):
    _check_rows_args(source, rows)
    return source.new_empty((rows.shape[0], source.shape[1]))


@torch.library.register_fake("seqlstm::scatter_add_rows")
def _scatter_add_rows_fake(source, rows, num_rows):
    _check_rows_args(source, rows)
    if source.shape[0] != rows.shape[0]:
        raise ValueError(
            f"source must have one row per entry of rows ({rows.shape[0]}), got shape "
            f"{tuple(source.shape)}"
        )
    if num_rows < 0:
        raise ValueError(f"num_rows must not be negative, got {num_rows}")
    return source.new_empty((num_rows, source.shape[1]))


@torch.library.register_fake("seqlstm::softmax_cross_entropy")
def _softmax_cross_entropy_fake(logits, labels):
    _check_same_device("logits", logits, labels=labels)
    return logits.new_empty(()), logits.new_empty((), dtype=torch.int64)


@torch.library.register_fake("seqlstm::softmax_cross_entropy_backward")
def _softmax_cross_entropy_backward_fake(grad_loss, logits, labels):
    _check_same_device("logits", logits, grad_loss=grad_loss, labels=labels)
    return logits.new_empty(logits.shape)


@torch.library.register_fake("seqlstm::linear_softmax_cross_entropy")
def _linear_softmax_cross_entropy_fake(input, weight, bias, labels):
    _check_same_device("input", input, weight=weight, bias=bias, labels=labels)
    return input.new_empty(()), input.new_empty((), dtype=torch.int64)


@torch.library.register_fake("seqlstm::linear_softmax_cross_entropy_backward")
def _linear_softmax_cross_entropy_backward_fake(grad_loss, input, weight, bias, labels):
    _check_same_device(
        "input", input, grad_loss=grad_loss, weight=weight, bias=bias, labels=labels
    )
    grad_bias = input.new_empty((0,)) if bias is None else bias.new_empty(bias.shape)
    return input.new_empty(input.shape), weight.new_empty(weight.shape), grad_bias


# The autograd of the two loss operators is registered in C++ (csrc/loss_autograd.cpp).
