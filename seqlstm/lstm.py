"""LSTM: a drop-in for torch.nn.LSTM that runs the fused seqlstm kernels.

Every layer and direction is one call of ``torch.ops.seqlstm.lstm_forward`` on the
packed layout (see seqlstm.packing), so no step computes padding.
"""

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from seqlstm import ops  # noqa: F401  (registers the operators' autograd)
from seqlstm.packing import check_lengths_tensor

# The operators' only overloads, called directly to skip the overload lookup per call.
_lstm_layer = torch.ops.seqlstm.lstm_layer.default
_gather_rows = torch.ops.seqlstm.gather_rows.default
_scatter_add_rows = torch.ops.seqlstm.scatter_add_rows.default
_padded_pack_order = torch.ops.seqlstm.padded_pack_order.default


class LSTM(nn.Module):
    """Multi-layer LSTM over padded or packed variable-length sequences.

    The constructor, parameter names (``weight_ih_l{k}``, ``weight_hh_l{k}``,
    ``bias_ih_l{k}``, ``bias_hh_l{k}``, ``weight_hr_l{k}``, with ``_reverse`` for the
    second direction), initialisation U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) and
    return values are torch.nn.LSTM's, so a torch.nn.LSTM state_dict loads as it is.
    Unlike torch.nn.LSTM, proj_size may equal hidden_size.

    Args:
        input_size: H_in, features per sample.
        hidden_size: H, the cell size.
        num_layers: stacked layers; layer k > 0 reads layer k - 1's output.
        bias: whether the layers have bias_ih and bias_hh.
        batch_first: padded input and output are (N, L, .) instead of (L, N, .).
        dropout: probability of dropout on the output of every layer but the last,
            in training mode.
        bidirectional: whether each layer also runs the sequences backwards.
        proj_size: P, the size of h after a projection W_hr; 0 for none.

    Attributes:
        algorithm: passed to the operator: 0 picks by shape, 1 the per-step path,
            2 the fused small-hidden path.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if not isinstance(hidden_size, int) or hidden_size <= 0:
            raise ValueError(
                f"hidden_size must be a positive integer, got {hidden_size!r}"
            )
        if not isinstance(input_size, int) or input_size <= 0:
            raise ValueError(
                f"input_size must be a positive integer, got {input_size!r}"
            )
        if not isinstance(num_layers, int) or num_layers <= 0:
            raise ValueError(
                f"num_layers must be a positive integer, got {num_layers!r}"
            )
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, got {value!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
            raise TypeError(f"dropout must be a number, got {type(dropout).__name__}")
        if not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        if not isinstance(proj_size, int) or proj_size < 0:
            raise ValueError(
                f"proj_size must be a non-negative integer, got {proj_size!r}"
            )
        if proj_size > hidden_size:
            raise ValueError(
                f"proj_size must be at most hidden_size ({hidden_size}), got {proj_size}"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout applies between layers only, so dropout > 0 has no effect with "
                f"num_layers = 1 (got dropout = {dropout})",
                stacklevel=2,
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.algorithm = 0

        factory = {"device": device, "dtype": dtype}
        num_directions = 2 if bidirectional else 1
        output_size = proj_size if proj_size > 0 else hidden_size
        self._flat_weights_names = []
        for layer in range(num_layers):
            for direction in range(num_directions):
                layer_input_size = (
                    input_size if layer == 0 else output_size * num_directions
                )
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes = {
                    "weight_ih": (4 * hidden_size, layer_input_size),
                    "weight_hh": (4 * hidden_size, output_size),
                }
                if bias:
                    shapes["bias_ih"] = (4 * hidden_size,)
                    shapes["bias_hh"] = (4 * hidden_size,)
                if proj_size > 0:
                    shapes["weight_hr"] = (proj_size, hidden_size)
                # Registered in torch.nn.LSTM's order, so that reset_parameters draws
                # the same values as torch.nn.LSTM from the same generator state.
                for name, shape in shapes.items():
                    self.register_parameter(
                        name + suffix, nn.Parameter(torch.empty(shape, **factory))
                    )
                    self._flat_weights_names.append(name + suffix)
        # Parameter names of each layer and direction, in the order _run_layers reads
        # them: weight_ih, weight_hh, bias_ih, bias_hh, weight_hr (None when absent).
        self._layer_names = [
            tuple(
                f"{name}_l{layer}{'_reverse' if direction else ''}" if present else None
                for name, present in [
                    ("weight_ih", True),
                    ("weight_hh", True),
                    ("bias_ih", bias),
                    ("bias_hh", bias),
                    ("weight_hr", proj_size > 0),
                ]
            )
            for layer in range(num_layers)
            for direction in range(num_directions)
        ]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every parameter from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def flatten_parameters(self) -> None:
        """Do nothing: the kernels read each parameter where it is. Present so that code
        written for torch.nn.LSTM, which calls it for cuDNN, runs unchanged."""

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters grouped per layer and direction, as torch.nn.LSTM lists them."""
        per_group = len(self._flat_weights_names) // (
            self.num_layers * (2 if self.bidirectional else 1)
        )
        names = self._flat_weights_names
        return [
            [getattr(self, name) for name in names[start : start + per_group]]
            for start in range(0, len(names), per_group)
        ]

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            text += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        if self.bias is not True:
            text += f", bias={self.bias}"
        if self.batch_first is not False:
            text += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            text += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            text += f", bidirectional={self.bidirectional}"
        return text

    def forward(self, input, hx=None, lengths=None):
        """Run the LSTM over a batch of sequences.

        Args:
            input: a PackedSequence; or a padded tensor (L, N, H_in), (N, L, H_in) with
                batch_first, or (L, H_in) for one unbatched sequence.
            hx: optional (h_0, c_0), with h_0 (D * num_layers, N, P) and c_0
                (D * num_layers, N, H) in the caller's sequence order, where D is 2 if
                bidirectional. Unbatched input takes them without the N axis. None
                means zeros.
            lengths: optional int64 CPU (N,) lengths of the sequences of a padded
                input, each in [1, L]; None means every sequence has length L.

        Returns:
            (output, (h_n, c_n)) as torch.nn.LSTM returns them: output is a
            PackedSequence for PackedSequence input, else padded like the input with
            D * P features and zeros past each sequence's length. h_n and c_n hold
            each sequence's state after its own last step, in the caller's order.

        Raises:
            ValueError, TypeError: a shape, dtype or length does not fit.
        """
        packed_input = isinstance(input, PackedSequence)
        unbatched = False
        if packed_input:
            if lengths is not None:
                raise ValueError("lengths must be None for PackedSequence input")
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if batch_sizes.numel() == 0:
                raise ValueError(
                    "batch_sizes of the PackedSequence must have at least one step, got "
                    "an empty tensor"
                )
            batch_size = (
                sorted_indices.shape[0]
                if sorted_indices is not None
                else int(batch_sizes[0])
            )
        else:
            if input.dim() not in (2, 3):
                raise ValueError(
                    "input must have 3 dimensions (2 for one unbatched sequence), got "
                    f"shape {tuple(input.shape)}"
                )
            unbatched = input.dim() == 2
            if unbatched:
                input = input.unsqueeze(0 if self.batch_first else 1)
            padded = input.transpose(0, 1) if self.batch_first else input
            num_steps, batch_size = padded.shape[0], padded.shape[1]
            if num_steps == 0 or batch_size == 0:
                raise ValueError(
                    f"input must have at least one step and one sequence, got shape "
                    f"{tuple(input.shape)}"
                )
            if lengths is None:
                # Equal lengths: the time-major tensor is already the packed layout.
                data = padded.reshape(num_steps * batch_size, padded.shape[2])
                batch_sizes = torch.full((num_steps,), batch_size, dtype=torch.int64)
                sorted_indices = unsorted_indices = None
            else:
                # NOTE: the lengths are read here, which torch.compile(fullgraph=True)
                # rejects as data-dependent; compiled code passes a PackedSequence built
                # outside (for example from seqlstm.packing.pack_order) instead.
                check_lengths_tensor(lengths)
                if lengths.shape[0] != batch_size:
                    raise ValueError(
                        f"lengths must have one entry per sequence ({batch_size}), got "
                        f"{lengths.shape[0]}"
                    )
                batch_sizes, sorted_indices, unsorted_indices, source_rows = (
                    _padded_pack_order(lengths, num_steps)
                )
                device = padded.device
                if device.type != "cpu":
                    source_rows = source_rows.to(device)
                    sorted_indices = sorted_indices.to(device)
                    unsorted_indices = unsorted_indices.to(device)
                flat = padded.reshape(num_steps * batch_size, padded.shape[2])
                data = _gather_rows(flat, source_rows)

        if data.dim() != 2 or data.shape[1] != self.input_size:
            raise ValueError(
                f"input must have input_size = {self.input_size} features, got "
                f"{data.shape[-1] if data.dim() else 'a scalar'}"
            )

        h_0, c_0 = self._initial_state(hx, batch_size, unbatched)
        output, h_n, c_n = self._run_layers(
            data, batch_sizes, sorted_indices, unsorted_indices, h_0, c_0
        )

        if packed_input:
            output = PackedSequence(
                output, batch_sizes, sorted_indices, unsorted_indices
            )
        elif sorted_indices is None:
            output = output.view(num_steps, batch_size, output.shape[1])
        else:
            padded_output = _scatter_add_rows(output, source_rows, num_steps * batch_size)
            output = padded_output.view(num_steps, batch_size, output.shape[1])
        if not packed_input:
            if self.batch_first:
                output = output.transpose(0, 1)
            if unbatched:
                output = output.squeeze(0 if self.batch_first else 1)
                h_n = h_n.squeeze(1)
                c_n = c_n.squeeze(1)
        return output, (h_n, c_n)

    def _initial_state(self, hx, batch_size, unbatched):
        """Check hx and return it in the caller's order with the N axis, or (None,
        None) for zero initial states."""
        if hx is None:
            return None, None
        num_directions = 2 if self.bidirectional else 1
        output_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        h_shape = (self.num_layers * num_directions, batch_size, output_size)
        c_shape = (self.num_layers * num_directions, batch_size, self.hidden_size)
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise TypeError(
                f"hx must be a pair (h_0, c_0) of tensors, got {type(hx).__name__}"
            )
        h_0, c_0 = hx
        if unbatched:
            h_0 = h_0.unsqueeze(1)
            c_0 = c_0.unsqueeze(1)
        if tuple(h_0.shape) != h_shape:
            raise ValueError(f"h_0 must have shape {h_shape}, got {tuple(h_0.shape)}")
        if tuple(c_0.shape) != c_shape:
            raise ValueError(f"c_0 must have shape {c_shape}, got {tuple(c_0.shape)}")
        return h_0, c_0

    def _run_layers(self, data, batch_sizes, sorted_indices, unsorted_indices, h_0, c_0):
        """Run every layer and direction on the packed rows `data`.

        Returns the last layer's output rows, and h_n and c_n in the caller's order.
        h_0 and c_0 are None for zero initial states.
        """
        num_directions = 2 if self.bidirectional else 1
        reverse_rows = None
        if self.bidirectional:
            reverse_rows = _reverse_rows(batch_sizes).to(data.device)
        h_n, c_n = [], []
        layer_input = data
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                state = layer * num_directions + direction
                names = self._layer_names[state]
                weight_ih, weight_hh, bias_ih, bias_hh, weight_hr = self._layer_weights(names)
                direction_input = (
                    layer_input if direction == 0 else _gather_rows(layer_input, reverse_rows)
                )
                output, h, c, _, _ = _lstm_layer(
                    direction_input,
                    batch_sizes,
                    sorted_indices,
                    unsorted_indices,
                    None if h_0 is None else h_0[state],
                    None if c_0 is None else c_0[state],
                    weight_ih,
                    weight_hh,
                    bias_ih,
                    bias_hh,
                    weight_hr,
                    self.algorithm,
                )
                outputs.append(
                    output if direction == 0 else _gather_rows(output, reverse_rows)
                )
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if num_directions == 1 else torch.cat(outputs, 1)
            if self.dropout > 0 and self.training and layer + 1 < self.num_layers:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        if len(h_n) == 1:
            return layer_input, h_n[0].unsqueeze(0), c_n[0].unsqueeze(0)
        return layer_input, torch.stack(h_n), torch.stack(c_n)

    def _layer_weights(self, names):
        """Return the parameters of one layer and direction named by `names`, None
        where a name is None."""
        weights = []
        for name in names:
            if name is None:
                weights.append(None)
            elif name in self._parameters:
                # The dictionary lookup skips nn.Module.__getattr__, about 2 us a name.
                weights.append(self._parameters[name])
            else:
                # A parametrization replaced the parameter with a property.
                weights.append(getattr(self, name))
        return weights


def _step_offsets(batch_sizes):
    return torch.cumsum(batch_sizes, 0) - batch_sizes


def _reverse_rows(batch_sizes):
    """Permutation of the packed rows that reverses every sequence in time.

    Row (step t, position n) maps to (step length_n - 1 - t, position n); the
    permutation is its own inverse.
    """
    total = int(batch_sizes.sum())
    offsets = _step_offsets(batch_sizes)
    step = torch.repeat_interleave(torch.arange(batch_sizes.shape[0]), batch_sizes)
    position = torch.arange(total) - offsets[step]
    # The length of the sequence at position n is the number of steps with
    # batch_sizes[t] > n.
    lengths = (
        batch_sizes.unsqueeze(0) > torch.arange(int(batch_sizes[0])).unsqueeze(1)
    ).sum(1)
    return offsets[lengths[position] - 1 - step] + position
