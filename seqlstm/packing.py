"""The packed layout of a batch of variable-length sequences, as PackedSequence has it.

Sequences are sorted by length, longest first (stable for equal lengths), and step t
holds the first ``batch_sizes[t]`` of them, so the rows of step t are
``[sum(batch_sizes[:t]), sum(batch_sizes[:t + 1]))`` of the packed data.
"""

from typing import NamedTuple

import torch

from seqlstm import ops  # noqa: F401  (loads the extension that defines the operators)

# The operators' only overloads, called directly to skip the overload lookup per call.
_pack_order = torch.ops.seqlstm.pack_order.default
_padded_pack_order = torch.ops.seqlstm.padded_pack_order.default


class PackOrder(NamedTuple):
    """Packed layout of a batch of sequences and the packed row of each sample.

    Attributes:
        batch_sizes: int64 CPU (L,), active sequences per step, PackedSequence's.
        sorted_indices: int64 (N,), the sequences by descending length (stable).
        unsorted_indices: int64 (N,), the inverse permutation of sorted_indices.
        packed_rows: int64 (total,), the packed row of each sample, with the samples
            sequence-major (all of sequence 0, then all of sequence 1, ...).
    """

    batch_sizes: torch.Tensor
    sorted_indices: torch.Tensor
    unsorted_indices: torch.Tensor
    packed_rows: torch.Tensor


def check_lengths_tensor(lengths) -> None:
    """Raise if `lengths` is not a 1-D int64 CPU tensor. The operators check its values.

    Raises:
        TypeError: lengths is not an int64 tensor.
        ValueError: lengths is not 1-D or not on the CPU.
    """
    if not isinstance(lengths, torch.Tensor) or lengths.dtype != torch.int64:
        got = lengths.dtype if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise TypeError(f"lengths must be an int64 tensor, got {got}")
    if lengths.dim() != 1:
        raise ValueError(f"lengths must have 1 dimension, got shape {tuple(lengths.shape)}")
    if lengths.device.type != "cpu":
        raise ValueError(f"lengths must be on the CPU, got {lengths.device}")


def pack_order(lengths: torch.Tensor) -> PackOrder:
    """Compute the packed layout of sequences with the given lengths.

    Args:
        lengths: int64 CPU (N,), the number of samples of each sequence, each >= 1.

    Returns:
        The PackOrder: batch_sizes, sorted_indices, unsorted_indices and packed_rows.

    Raises:
        TypeError, ValueError: lengths is not a 1-D int64 CPU tensor, is empty, or
            has a length below 1; the message names the batch position.
    """
    check_lengths_tensor(lengths)
    return PackOrder(*_pack_order(lengths))


def padded_pack_order(lengths: torch.Tensor, num_steps: int):
    """Compute the packed layout of a time-major padded (num_steps, N, .) batch.

    Args:
        lengths: int64 CPU (N,), each in [1, num_steps].
        num_steps: L, the padded length.

    Returns:
        (batch_sizes, sorted_indices, unsorted_indices, source_rows), int64 CPU
        tensors. source_rows[r] is the row of the padded input, viewed as (L * N, .),
        that packed row r comes from.

    Raises:
        TypeError, ValueError: as pack_order, or a length exceeds num_steps.
    """
    check_lengths_tensor(lengths)
    return _padded_pack_order(lengths, num_steps)


@torch.library.register_fake("seqlstm::pack_order")
def _pack_order_fake(lengths):
    # The number of steps and of samples depend on the values of lengths.
    ctx = torch.library.get_ctx()
    num_steps = ctx.new_dynamic_size()
    total = ctx.new_dynamic_size()
    num_sequences = lengths.shape[0]
    return (
        lengths.new_empty((num_steps,)),
        lengths.new_empty((num_sequences,)),
        lengths.new_empty((num_sequences,)),
        lengths.new_empty((total,)),
    )


@torch.library.register_fake("seqlstm::padded_pack_order")
def _padded_pack_order_fake(lengths, num_steps):
    ctx = torch.library.get_ctx()
    steps = ctx.new_dynamic_size()
    total = ctx.new_dynamic_size()
    num_sequences = lengths.shape[0]
    return (
        lengths.new_empty((steps,)),
        lengths.new_empty((num_sequences,)),
        lengths.new_empty((num_sequences,)),
        lengths.new_empty((total,)),
    )
