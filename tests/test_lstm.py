"""seqlstm.LSTM and the lstm operators against torch.nn.LSTM."""

import random

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import seqlstm

ALGORITHMS = [1, 2]


def make_pair(input_size, hidden_size, dtype=torch.float32, seed=0, **options):
    """Return a torch.nn.LSTM and a seqlstm.LSTM with the same parameters."""
    torch.manual_seed(seed)
    reference = torch.nn.LSTM(input_size, hidden_size, dtype=dtype, **options)
    ours = seqlstm.LSTM(input_size, hidden_size, dtype=dtype, **options)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def assert_close_scaled(actual, expected, rtol, name):
    """Assert |actual - expected| <= rtol * max(|expected|) elementwise.

    Two float32 LSTMs that sum in different orders differ by rounding that scales
    with the largest values of a tensor, so the bound is relative to that scale
    rather than to each element, which may be near zero after cancellation.
    """
    scale = max(expected.abs().max().item(), 1e-30)
    error = (actual - expected).abs().max().item()
    assert error <= rtol * scale, f"{name}: max error {error:.3g} > {rtol} * {scale:.3g}"


def packed_loss(output, h_n, c_n, weights):
    """A loss that gives every output a different gradient."""
    data = output.data if isinstance(output, PackedSequence) else output
    return (
        (data * weights[0][: data.numel()].view_as(data)).sum()
        + (h_n * weights[1][: h_n.numel()].view_as(h_n)).sum()
        + (c_n * weights[2][: c_n.numel()].view_as(c_n)).sum()
    )


def run_packed(module, packed, hx):
    output, (h_n, c_n) = module(packed, hx)
    return output, h_n, c_n


def sweep_cases():
    """Shapes of the parity sweep: edge cases first, then seeded random draws."""
    cases = [
        # (N, L, H_in, H, num_layers, bidirectional, proj_size)
        (1, 1, 1, 1, 1, False, 0),
        (1, 7, 3, 1, 1, False, 0),
        (5, 1, 4, 6, 1, False, 0),
        (44, 12, 50, 25, 1, False, 0),
        (4, 9, 5, 8, 2, False, 0),
        (3, 6, 4, 5, 1, True, 0),
        (6, 5, 3, 7, 1, False, 3),
        (5, 8, 6, 9, 2, True, 4),
        (2, 4, 3, 3, 1, False, 1),
        # Batches of at most 8 take the small per-step products on float: 32-, 8- and
        # 1-column blocks (4*H = 100, P = 12, H = 25) and a single long sequence.
        (8, 10, 20, 25, 1, False, 12),
        (1, 30, 64, 64, 1, False, 0),
    ]
    generator = random.Random(1234)
    for _ in range(12):
        hidden_size = generator.choice([1, 2, 5, 16, 25, 33])
        proj_size = generator.choice([0, 0, max(1, hidden_size // 2)])
        if proj_size >= hidden_size:
            proj_size = 0
        cases.append((
            generator.randint(1, 20),
            generator.randint(1, 15),
            generator.randint(1, 40),
            hidden_size,
            generator.choice([1, 2]),
            generator.choice([False, True]),
            proj_size,
        ))
    return cases


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", sweep_cases(), ids=lambda case: "-".join(map(str, case)))
def test_parity_sweep_float32(case, algorithm):
    batch, steps, input_size, hidden_size, num_layers, bidirectional, proj_size = case
    reference, ours = make_pair(
        input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
        proj_size=proj_size, seed=batch * 100 + steps,
    )
    ours.algorithm = algorithm
    generator = torch.Generator().manual_seed(batch + steps)
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    lengths[batch // 2] = steps
    padded = torch.randn(steps, batch, input_size, generator=generator)
    num_states = num_layers * (2 if bidirectional else 1)
    output_size = proj_size or hidden_size
    h_0 = torch.randn(num_states, batch, output_size, generator=generator)
    c_0 = torch.randn(num_states, batch, hidden_size, generator=generator)
    weights = [torch.randn(batch * steps * 2 * output_size + 1, generator=generator)
               for _ in range(3)]

    results = []
    for module in (reference, ours):
        x = padded.clone().requires_grad_()
        h = h_0.clone().requires_grad_()
        c = c_0.clone().requires_grad_()
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        output, h_n, c_n = run_packed(module, packed, (h, c))
        packed_loss(output, h_n, c_n, weights).backward()
        grads = {name: p.grad for name, p in module.named_parameters()}
        results.append((output.data, h_n, c_n, x.grad, h.grad, c.grad, grads))

    expected, actual = results
    for name, index in [("output", 0), ("h_n", 1), ("c_n", 2), ("grad_input", 3),
                        ("grad_h_0", 4), ("grad_c_0", 5)]:
        assert_close_scaled(actual[index], expected[index], 1e-5, name)
    for name, grad in expected[6].items():
        assert_close_scaled(actual[6][name], grad, 1e-5, f"grad of {name}")


def reference_lstm_layer(x, lengths, h_0, c_0, weight_ih, weight_hh, bias, weight_hr):
    """One LSTM layer step by step in float64 on padded (L, N, H_in) input."""
    h, c = h_0.clone(), c_0.clone()
    outputs = []
    for t in range(x.shape[0]):
        z = x[t] @ weight_ih.T + h @ weight_hh.T + bias
        i, f, g, o = z.chunk(4, 1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = (torch.sigmoid(o) * torch.tanh(c_new)) @ weight_hr.T
        active = (lengths > t).unsqueeze(1)
        c = torch.where(active, c_new, c)
        h = torch.where(active, h_new, h)
        outputs.append(torch.where(active, h_new, torch.zeros_like(h_new)))
    return torch.stack(outputs), h, c


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_proj_size_equal_to_hidden_size(algorithm):
    torch.manual_seed(3)
    module = seqlstm.LSTM(4, 6, proj_size=6, dtype=torch.float64)
    module.algorithm = algorithm
    lengths = torch.tensor([2, 5, 3])
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    h_0 = torch.randn(1, 3, 6, dtype=torch.float64)
    c_0 = torch.randn(1, 3, 6, dtype=torch.float64)
    output, (h_n, c_n) = module(x, (h_0, c_0), lengths=lengths)
    expected, h_ref, c_ref = reference_lstm_layer(
        x, lengths, h_0[0], c_0[0], module.weight_ih_l0, module.weight_hh_l0,
        module.bias_ih_l0 + module.bias_hh_l0, module.weight_hr_l0,
    )
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n[0], h_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c_n[0], c_ref, rtol=1e-12, atol=1e-12)
    assert module.weight_hr_l0.shape == (6, 6)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_padded_input_with_lengths(batch_first, algorithm):
    reference, ours = make_pair(5, 8, dtype=torch.float64, num_layers=2,
                                batch_first=batch_first)
    ours.algorithm = algorithm
    lengths = torch.tensor([4, 7, 1, 7, 2])
    x = torch.randn((5, 7, 5) if batch_first else (7, 5, 5), dtype=torch.float64)
    output, (h_n, c_n) = ours(x, lengths=lengths)
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    expected, (h_ref, c_ref) = reference(packed)
    expected, _ = pad_packed_sequence(expected, batch_first=batch_first, total_length=7)
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, h_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c_n, c_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padded_input_without_lengths(batch_first, bidirectional):
    reference, ours = make_pair(3, 4, dtype=torch.float64, batch_first=batch_first,
                                bidirectional=bidirectional)
    x = torch.randn(6, 5, 3, dtype=torch.float64)
    expected, (h_ref, c_ref) = reference(x)
    output, (h_n, c_n) = ours(x)
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, h_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c_n, c_ref, rtol=1e-12, atol=1e-12)


def test_unbatched_input():
    reference, ours = make_pair(3, 4, dtype=torch.float64, proj_size=2)
    x = torch.randn(6, 3, dtype=torch.float64)
    hx = (torch.randn(1, 2, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64))
    expected, (h_ref, c_ref) = reference(x, hx)
    output, (h_n, c_n) = ours(x, hx)
    assert output.shape == (6, 2)
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, h_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c_n, c_ref, rtol=1e-12, atol=1e-12)


def test_non_contiguous_input():
    reference, ours = make_pair(4, 5, dtype=torch.float64)
    x = torch.randn(3, 6, 8, dtype=torch.float64)[:, :, ::2].transpose(0, 1)
    assert not x.is_contiguous()
    expected, _ = reference(x)
    output, _ = ours(x)
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)


def test_packed_output_is_packed_sequence():
    reference, ours = make_pair(3, 4, dtype=torch.float64)
    packed = pack_padded_sequence(torch.randn(5, 3, 3, dtype=torch.float64),
                                  torch.tensor([2, 5, 4]), enforce_sorted=False)
    output, _ = ours(packed)
    expected, _ = reference(packed)
    assert isinstance(output, PackedSequence)
    assert torch.equal(output.batch_sizes, packed.batch_sizes)
    assert torch.equal(output.sorted_indices, packed.sorted_indices)
    torch.testing.assert_close(output.data, expected.data, rtol=1e-12, atol=1e-12)


def test_initialisation_matches_torch():
    torch.manual_seed(11)
    reference = torch.nn.LSTM(7, 5, num_layers=2, bidirectional=True, proj_size=3)
    torch.manual_seed(11)
    ours = seqlstm.LSTM(7, 5, num_layers=2, bidirectional=True, proj_size=3)
    expected = dict(reference.named_parameters())
    actual = dict(ours.named_parameters())
    assert list(actual) == list(expected)
    for name, parameter in expected.items():
        assert torch.equal(actual[name], parameter), name


def test_loads_torch_state_dict():
    reference = torch.nn.LSTM(6, 4, num_layers=2, bias=False)
    ours = seqlstm.LSTM(6, 4, num_layers=2, bias=False)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(5, 2, 6)
    expected, _ = reference(x)
    output, _ = ours(x)
    assert_close_scaled(output, expected, 1e-5, "output")


class _Double(torch.nn.Module):
    def forward(self, weight):
        return 2 * weight


def test_parametrized_weight_is_used():
    # A parametrization turns the parameter into a property that computes the weight.
    reference, ours = make_pair(6, 4, dtype=torch.float64)
    torch.nn.utils.parametrize.register_parametrization(ours, "weight_hh_l0", _Double())
    with torch.no_grad():
        reference.weight_hh_l0.mul_(2)
    x = torch.randn(5, 2, 6, dtype=torch.float64)
    expected, _ = reference(x)
    output, _ = ours(x)
    torch.testing.assert_close(output, expected)


def test_functional_call_uses_given_weights():
    reference, ours = make_pair(6, 4, dtype=torch.float64)
    weights = {name: 3 * value for name, value in reference.state_dict().items()}
    x = torch.randn(5, 2, 6, dtype=torch.float64)
    expected, _ = torch.func.functional_call(reference, weights, (x,))
    output, _ = torch.func.functional_call(ours, weights, (x,))
    torch.testing.assert_close(output, expected)


def test_dropout_one_zeroes_layer_input():
    # With p = 1 dropout is deterministic, so torch.nn.LSTM must agree exactly.
    reference, ours = make_pair(3, 4, dtype=torch.float64, num_layers=2, dropout=1.0)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    expected, _ = reference.train()(x)
    output, _ = ours.train()(x)
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)


def test_dropout_only_in_training():
    reference, ours = make_pair(3, 4, dtype=torch.float64, num_layers=2, dropout=0.5)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    expected, _ = reference.eval()(x)
    evaluated, _ = ours.eval()(x)
    torch.testing.assert_close(evaluated, expected, rtol=1e-12, atol=1e-12)
    trained, _ = ours.train()(x)
    assert not torch.allclose(trained, evaluated)


def op_arguments(dtype, proj_size=0, bias=True, requires_grad=True, seed=0):
    """Arguments of lstm_forward for lengths (4, 3, 3, 1) and H_in = 3, H = 4."""
    generator = torch.Generator().manual_seed(seed)
    hidden_size = 4
    output_size = proj_size or hidden_size
    batch_sizes = torch.tensor([4, 3, 3, 1])

    def draw(*shape):
        tensor = torch.randn(*shape, dtype=dtype, generator=generator) * 0.5
        return tensor.requires_grad_(requires_grad)

    return (
        draw(11, 3),
        batch_sizes,
        draw(4, output_size),
        draw(4, hidden_size),
        draw(4 * hidden_size, 3),
        draw(4 * hidden_size, output_size),
        draw(4 * hidden_size) if bias else None,
        draw(proj_size, hidden_size) if proj_size else None,
    )


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("proj_size", [0, 2, 4])
def test_gradcheck_float64(algorithm, proj_size):
    arguments = op_arguments(torch.float64, proj_size=proj_size)

    def forward(*tensors):
        output, h_n, c_n, _, _ = torch.ops.seqlstm.lstm_forward(*tensors, algorithm)
        return output, h_n, c_n

    assert torch.autograd.gradcheck(forward, arguments)


def test_gradcheck_without_bias():
    arguments = op_arguments(torch.float64, bias=False)

    def forward(*tensors):
        return torch.ops.seqlstm.lstm_forward(*tensors, 0)[:3]

    assert torch.autograd.gradcheck(forward, arguments)


def test_double_backward_raises():
    lstm = seqlstm.LSTM(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    output, _ = lstm(x)
    (grad,) = torch.autograd.grad(output.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="lstm_backward"):
        grad.pow(2).sum().backward()


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("proj_size", [0, 2])
def test_opcheck_forward(requires_grad, proj_size):
    arguments = op_arguments(torch.float32, proj_size=proj_size, requires_grad=requires_grad)
    torch.library.opcheck(torch.ops.seqlstm.lstm_forward, arguments + (0,))


@pytest.mark.parametrize("proj_size", [0, 2])
def test_opcheck_backward(proj_size):
    arguments = op_arguments(torch.float32, proj_size=proj_size, requires_grad=False)
    input, batch_sizes, h_0, c_0, weight_ih, weight_hh, bias, weight_hr = arguments
    output, h_n, c_n, gates, cell = torch.ops.seqlstm.lstm_forward(*arguments, 0)
    torch.library.opcheck(
        torch.ops.seqlstm.lstm_backward,
        (torch.randn_like(output), torch.randn_like(h_n), torch.randn_like(c_n), input,
         batch_sizes, h_0, c_0, weight_ih, weight_hh, weight_hr, output, gates, cell, 0),
    )


def layer_arguments(dtype, proj_size=0, states=True, order=True, requires_grad=True):
    """Return arguments of lstm_layer for the batch of op_arguments.

    With `order`, packed positions 0 to 3 hold the caller's sequences 3, 0, 2 and 1.
    Without `states`, h_0 and c_0 are None.
    """
    input, batch_sizes, h_0, c_0, weight_ih, weight_hh, bias, weight_hr = op_arguments(
        dtype, proj_size=proj_size, requires_grad=requires_grad
    )
    bias_hh = (torch.randn_like(bias) * 0.5).requires_grad_(requires_grad)
    sorted_indices = torch.tensor([3, 0, 2, 1]) if order else None
    unsorted_indices = torch.tensor([1, 3, 2, 0]) if order else None
    return (
        input, batch_sizes, sorted_indices, unsorted_indices,
        h_0 if states else None, c_0 if states else None,
        weight_ih, weight_hh, bias, bias_hh, weight_hr,
    )


def layer_by_composition(input, batch_sizes, sorted_indices, unsorted_indices, h_0, c_0,
                         weight_ih, weight_hh, bias_ih, bias_hh, weight_hr):
    """Compute lstm_layer with torch operators around lstm_forward."""
    output_size = weight_hh.shape[1]
    batch_size = int(batch_sizes[0])
    if h_0 is None:
        h_0 = input.new_zeros(batch_size, output_size)
        c_0 = input.new_zeros(batch_size, weight_hh.shape[0] // 4)
    if sorted_indices is not None:
        h_0, c_0 = h_0[sorted_indices], c_0[sorted_indices]
    output, h_n, c_n, _, _ = torch.ops.seqlstm.lstm_forward(
        input, batch_sizes, h_0, c_0, weight_ih, weight_hh, bias_ih + bias_hh, weight_hr, 0
    )
    if unsorted_indices is not None:
        h_n, c_n = h_n[unsorted_indices], c_n[unsorted_indices]
    return output, h_n, c_n


@pytest.mark.parametrize("order", [False, True])
@pytest.mark.parametrize("states", [False, True])
def test_layer_matches_composition(order, states):
    arguments = layer_arguments(torch.float64, proj_size=2, states=states, order=order)
    expected = layer_by_composition(*arguments)
    actual = torch.ops.seqlstm.lstm_layer(*arguments, 0)
    weights = [torch.randn(tensor.shape, dtype=torch.float64) for tensor in expected]
    expected_grads = torch.autograd.grad(
        sum((t * w).sum() for t, w in zip(expected, weights)),
        [a for a in arguments if a is not None and a.requires_grad],
    )
    actual_grads = torch.autograd.grad(
        sum((t * w).sum() for t, w in zip(actual[:3], weights)),
        [a for a in arguments if a is not None and a.requires_grad],
    )
    for name, a, e in zip(["output", "h_n", "c_n"], actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=name)
    for a, e in zip(actual_grads, expected_grads):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    with torch.inference_mode():
        inferred = torch.ops.seqlstm.lstm_layer(*arguments, 0)
    for a, e in zip(inferred, expected):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("proj_size", [0, 2])
@pytest.mark.parametrize("states", [False, True])
def test_layer_gradcheck_float64(proj_size, states):
    arguments = layer_arguments(torch.float64, proj_size=proj_size, states=states)

    def forward(*tensors):
        return torch.ops.seqlstm.lstm_layer(*tensors, 0)[:3]

    assert torch.autograd.gradcheck(forward, arguments)


def test_layer_gradient_reaches_one_sequence():
    arguments = layer_arguments(torch.float64)
    output, h_n, c_n, _, _ = torch.ops.seqlstm.lstm_layer(*arguments, 0)
    # Only h_n of the caller's sequence 1 (packed position 3, length 1) takes a gradient.
    grads = torch.autograd.grad(h_n[1].sum(), [arguments[0], arguments[4], arguments[5]])
    grad_input, grad_h_0, grad_c_0 = grads
    assert grad_input[3].abs().sum() > 0  # its one row, in step 0
    assert grad_input[[0, 1, 2, 4, 5, 6, 7, 8, 9, 10]].abs().sum() == 0
    assert grad_h_0[1].abs().sum() > 0
    assert grad_h_0[[0, 2, 3]].abs().sum() == 0
    assert grad_c_0[1].abs().sum() > 0
    assert grad_c_0[[0, 2, 3]].abs().sum() == 0


def test_final_states_changed_in_place_keep_backward():
    # torch.nn.LSTM allows this, so seqlstm.LSTM must too.
    reference, ours = make_pair(3, 4)
    x = torch.randn(5, 2, 3)
    for module in (reference, ours):
        output, (h_n, c_n) = module(x)
        h_n.zero_()
        c_n.zero_()
        output.sum().backward()
    for name, parameter in ours.named_parameters():
        expected = getattr(reference, name).grad
        assert_close_scaled(parameter.grad, expected, 1e-5, name)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("states", [False, True])
@pytest.mark.parametrize("order", [False, True])
def test_opcheck_layer(requires_grad, states, order):
    arguments = layer_arguments(
        torch.float32, proj_size=2, states=states, order=order, requires_grad=requires_grad
    )
    torch.library.opcheck(torch.ops.seqlstm.lstm_layer, arguments + (0,))


def test_algorithms_agree():
    arguments = op_arguments(torch.float64, proj_size=3, requires_grad=False)
    results = [torch.ops.seqlstm.lstm_forward(*arguments, algorithm)
               for algorithm in (0, 1, 2)]
    for result in results[1:]:
        for actual, expected in zip(result, results[0]):
            torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_compile_fullgraph_matches_eager():
    _, ours = make_pair(5, 6, num_layers=2, proj_size=3)
    packed = pack_padded_sequence(torch.randn(4, 3, 5), torch.tensor([4, 2, 3]),
                                  enforce_sorted=False)

    def step(data, hx):
        output, (h_n, c_n) = ours(
            PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                           packed.unsorted_indices),
            hx,
        )
        return output.data.square().sum() + h_n.sum() + c_n.sum()

    hx = (torch.randn(2, 3, 3), torch.randn(2, 3, 6))
    compiled = torch.compile(step, fullgraph=True)
    data = packed.data.clone().requires_grad_()
    expected = step(data, hx)
    expected.backward()
    expected_grad = data.grad.clone()
    data.grad = None
    actual = compiled(data, hx)
    actual.backward()
    assert_close_scaled(actual.detach(), expected.detach(), 1e-6, "loss")
    assert_close_scaled(data.grad, expected_grad, 1e-6, "grad_input")


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="dropout > 0 has no effect with num_layers = 1"):
        seqlstm.LSTM(3, 4, dropout=0.5)


def test_flatten_parameters_keeps_results():
    reference, ours = make_pair(3, 4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    ours.flatten_parameters()
    expected, _ = reference(x)
    output, _ = ours(x)
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
