"""Python side of the `seqlstm` torch operators: fake kernels and autograd formulas.

The kernels live in csrc/ and are registered by the extension; this module adds what
torch.compile and autograd need to treat them as ordinary operators.
"""

import torch

from seqlstm._loader import load_extension

_C = load_extension()


@torch.library.register_fake("seqlstm::embedding_bag_forward")
def _embedding_bag_forward_fake(weight, indices, offsets, per_sample_weights, output_order):
    num_samples = offsets.shape[0] - 1
    return weight.new_empty((num_samples, weight.shape[1]))


@torch.library.register_fake("seqlstm::embedding_bag_backward")
def _embedding_bag_backward_fake(
    grad_output, indices, offsets, per_sample_weights, output_order, num_embeddings,
    deterministic,
):
    return grad_output.new_empty((num_embeddings, grad_output.shape[1]))


def _embedding_bag_setup_context(ctx, inputs, output):
    weight, indices, offsets, per_sample_weights, output_order = inputs
    ctx.num_embeddings = weight.shape[0]
    ctx.save_for_backward(indices, offsets, per_sample_weights, output_order)


def _embedding_bag_backward(ctx, grad_output):
    indices, offsets, per_sample_weights, output_order = ctx.saved_tensors
    grad_weight = torch.ops.seqlstm.embedding_bag_backward(
        grad_output,
        indices,
        offsets,
        per_sample_weights,
        output_order,
        ctx.num_embeddings,
        torch.are_deterministic_algorithms_enabled(),
    )
    # NOTE: per_sample_weights gets no gradient; it is treated as data, as the values
    # of a sparse input are. Autograd raises if it requires grad.
    return grad_weight, None, None, None, None


torch.library.register_autograd(
    "seqlstm::embedding_bag_forward",
    _embedding_bag_backward,
    setup_context=_embedding_bag_setup_context,
)
