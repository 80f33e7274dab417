"""The CUDA kernels of the lstm operators against torch.nn.LSTM.

Every test but the registration check needs a GPU and skips with the reason otherwise.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import seqlstm
from cuda_support import requires_cuda, tf32_disabled

ALGORITHMS = [1, 2]

# (batch, steps, input_size, hidden_size, proj_size)
PARITY_CASES = [
    (1, 1, 3, 4, 0),  # B = 1, T = 1
    (1, 7, 3, 5, 0),  # B = 1
    (5, 1, 4, 6, 0),  # T = 1
    (44, 12, 50, 25, 25),  # the CNTK example: 25-unit cell with a 25-unit projection
    (6, 9, 5, 33, 0),  # a hidden size that is not a multiple of a warp
    (4, 6, 5, 9, 4),  # a projection smaller than the cell
    (7, 5, 8, 128, 0),  # the largest hidden size algorithm 0 runs persistently
    (3, 4, 6, 130, 0),  # above it
    (300, 3, 4, 8, 0),  # more rows than multiprocessors on most GPUs
]


def case_id(case):
    return "N{}-L{}-I{}-H{}-P{}".format(*case)


def make_pair(case, dtype, device, algorithm, seed):
    """Return a torch.nn.LSTM on the CPU and a seqlstm.LSTM on `device` with equal weights."""
    _, _, input_size, hidden_size, proj_size = case
    torch.manual_seed(seed)
    reference = torch.nn.LSTM(input_size, hidden_size, proj_size=proj_size, dtype=dtype)
    ours = seqlstm.LSTM(input_size, hidden_size, proj_size=proj_size, dtype=dtype)
    ours.load_state_dict(reference.state_dict())
    ours.algorithm = algorithm
    return reference, ours.to(device)


def make_batch(case, dtype, seed):
    """Return padded input, unequal lengths (the longest equal to steps), h_0 and c_0."""
    batch, steps, input_size, hidden_size, proj_size = case
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    lengths[seed % batch] = steps
    padded = torch.randn(steps, batch, input_size, generator=generator, dtype=dtype)
    h_0 = torch.randn(1, batch, proj_size or hidden_size, generator=generator, dtype=dtype)
    c_0 = torch.randn(1, batch, hidden_size, generator=generator, dtype=dtype)
    return padded, lengths, h_0, c_0


def run_with_grads(module, padded, lengths, h_0, c_0, device, seed):
    """Run `module` on packed input on `device`, back-propagate a loss that gives every
    output element its own weight, and return the results and all gradients on the CPU."""
    x = padded.to(device).requires_grad_()
    h = h_0.to(device).requires_grad_()
    c = c_0.to(device).requires_grad_()
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    output, (h_n, c_n) = module(packed, (h, c))
    generator = torch.Generator().manual_seed(seed + 1)
    loss = 0
    for tensor in (output.data, h_n, c_n):
        weights = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
        loss = loss + (tensor * weights.to(device, tensor.dtype)).sum()
    loss.backward()
    results = {"output": output.data, "h_n": h_n, "c_n": c_n, "grad_input": x.grad,
               "grad_h_0": h.grad, "grad_c_0": c.grad}
    for name, parameter in module.named_parameters():
        results[f"grad of {name}"] = parameter.grad
    return {name: value.detach().cpu() for name, value in results.items()}


def assert_close_scaled(actual, expected, rtol, name):
    """Assert |actual - expected| <= rtol * max(|expected|) elementwise.

    Sums in a different order differ by rounding that scales with the largest values
    of a tensor, so the bound is relative to that scale rather than to each element.
    """
    actual = actual.to(torch.float64)
    expected = expected.to(torch.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(expected.abs().max().item(), 1e-30)
    error = (actual - expected).abs().max().item()
    assert error <= rtol * scale, f"{name}: max error {error:.3g} > {rtol} * {scale:.3g}"


def compare_all(actual, expected, rtol):
    assert actual.keys() == expected.keys()
    for name in expected:
        assert_close_scaled(actual[name], expected[name], rtol, name)


def test_kernels_registered_for_cuda():
    if not seqlstm.build_info()["cuda"]:
        pytest.skip("seqlstm was built without CUDA; rebuild with SEQLSTM_CUDA=1")
    for op in ("lstm_forward", "lstm_backward", "embedding_bag_forward",
               "embedding_bag_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"seqlstm::{op}", "CUDA"), op
    # lstm_layer has one kernel for every backend, which calls lstm_forward.
    assert torch._C._dispatch_has_computed_kernel_for_dispatch_key(
        "seqlstm::lstm_layer", "CUDA"
    )


@requires_cuda
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", PARITY_CASES, ids=case_id)
def test_parity_float64_against_cpu(case, algorithm):
    seed = sum(case)
    reference, ours = make_pair(case, torch.float64, "cuda", algorithm, seed)
    padded, lengths, h_0, c_0 = make_batch(case, torch.float64, seed)
    expected = run_with_grads(reference, padded, lengths, h_0, c_0, "cpu", seed)
    actual = run_with_grads(ours, padded, lengths, h_0, c_0, "cuda", seed)
    # float64 rounding of sums over at most a few hundred terms.
    compare_all(actual, expected, 1e-10)


@requires_cuda
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", PARITY_CASES, ids=case_id)
def test_parity_float32_against_cudnn(case, algorithm):
    seed = sum(case) + 7
    reference, ours = make_pair(case, torch.float32, "cuda", algorithm, seed)
    reference = reference.cuda()
    padded, lengths, h_0, c_0 = make_batch(case, torch.float32, seed)
    with tf32_disabled():
        expected = run_with_grads(reference, padded, lengths, h_0, c_0, "cuda", seed)
        actual = run_with_grads(ours, padded, lengths, h_0, c_0, "cuda", seed)
    # float32 sums in another order, and the kernels use __expf (--use_fast_math, a few
    # ulp), so results drift by some 1e-6 of the largest value over these lengths.
    compare_all(actual, expected, 5e-5)


@requires_cuda
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype,rtol", [(torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_half_precision_close_to_float64(dtype, rtol, algorithm):
    case = (16, 10, 50, 25, 25)
    seed = 11
    reference, ours = make_pair(case, torch.float64, "cuda", algorithm, seed)
    ours = ours.to(dtype)
    padded, lengths, h_0, c_0 = make_batch(case, torch.float64, seed)
    expected = run_with_grads(reference, padded, lengths, h_0, c_0, "cpu", seed)
    actual = run_with_grads(ours, padded.to(dtype), lengths, h_0.to(dtype), c_0.to(dtype),
                            "cuda", seed)
    # Inputs, weights and stored results round to 8 (bfloat16) or 11 (float16)
    # significant bits, while the arithmetic runs in float32.
    compare_all(actual, expected, rtol)


@requires_cuda
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_batch_first_non_contiguous_with_lengths(algorithm):
    torch.manual_seed(2)
    reference = torch.nn.LSTM(5, 7, batch_first=True, dtype=torch.float64)
    ours = seqlstm.LSTM(5, 7, batch_first=True, dtype=torch.float64)
    ours.load_state_dict(reference.state_dict())
    ours.algorithm = algorithm
    ours = ours.cuda()
    lengths = torch.tensor([3, 6, 1, 6])
    # (N, L, H_in) as a transposed view, so the input is not contiguous.
    x_cuda = torch.randn(6, 4, 5, dtype=torch.float64, device="cuda").transpose(0, 1)
    x = x_cuda.cpu()
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    expected, (expected_h_n, expected_c_n) = reference(packed)
    expected_padded = torch.nn.utils.rnn.pad_packed_sequence(expected, batch_first=True)[0]

    assert not x_cuda.is_contiguous()
    output, (h_n, c_n) = ours(x_cuda, lengths=lengths)
    assert_close_scaled(output.cpu(), expected_padded, 1e-10, "output")
    assert_close_scaled(h_n.cpu(), expected_h_n, 1e-10, "h_n")
    assert_close_scaled(c_n.cpu(), expected_c_n, 1e-10, "c_n")


@requires_cuda
def test_algorithms_agree_on_long_sequences():
    case = (8, 200, 16, 40, 0)
    padded, lengths, h_0, c_0 = make_batch(case, torch.float64, 5)
    results = []
    for algorithm in ALGORITHMS:
        _, ours = make_pair(case, torch.float64, "cuda", algorithm, 5)
        results.append(run_with_grads(ours, padded, lengths, h_0, c_0, "cuda", 5))
    compare_all(results[1], results[0], 1e-10)


def operator_args(case, algorithm, requires_grad, with_bias=True):
    """Arguments of lstm_forward on CUDA for `case`, with every sequence of full length
    except the last, which is one step shorter."""
    batch, steps, input_size, hidden_size, proj_size = case
    projected = proj_size or hidden_size
    batch_sizes = torch.full((steps,), batch, dtype=torch.int64)
    if steps > 1 and batch > 1:
        batch_sizes[-1] = batch - 1
    total = int(batch_sizes.sum())

    def tensor(*shape):
        return torch.randn(*shape, device="cuda", requires_grad=requires_grad)

    return (
        tensor(total, input_size),
        batch_sizes,
        tensor(batch, projected),
        tensor(batch, hidden_size),
        tensor(4 * hidden_size, input_size),
        tensor(4 * hidden_size, projected),
        tensor(4 * hidden_size) if with_bias else None,
        tensor(proj_size, hidden_size) if proj_size else None,
        algorithm,
    )


@requires_cuda
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", [(3, 4, 5, 6, 0), (3, 4, 5, 6, 2)], ids=case_id)
def test_opcheck_cuda(case, algorithm, requires_grad):
    torch.manual_seed(0)
    args = operator_args(case, algorithm, requires_grad)
    with tf32_disabled():
        torch.library.opcheck(torch.ops.seqlstm.lstm_forward, args)


@requires_cuda
def test_batch_sizes_on_cuda_rejected():
    args = list(operator_args((2, 3, 4, 5, 0), 1, False))
    args[1] = args[1].cuda()
    with pytest.raises(ValueError, match="batch_sizes must be on cpu"):
        torch.ops.seqlstm.lstm_forward(*args)


@requires_cuda
def test_weight_on_other_device_rejected():
    args = list(operator_args((2, 3, 4, 5, 0), 1, False))
    args[5] = args[5].cpu()
    with pytest.raises(ValueError, match="weight_hh must be on the same device as input"):
        torch.ops.seqlstm.lstm_forward(*args)


@requires_cuda
def test_small_hidden_path_hidden_size_limit():
    args = list(operator_args((2, 2, 3, 1025, 0), 2, False))
    with pytest.raises(ValueError, match=r"algorithm 2 .* hidden_size up to 1024"):
        torch.ops.seqlstm.lstm_forward(*args)


@requires_cuda
def test_invalid_algorithm_rejected():
    args = list(operator_args((2, 3, 4, 5, 0), 3, False))
    with pytest.raises(ValueError, match="algorithm must be 0"):
        torch.ops.seqlstm.lstm_forward(*args)
