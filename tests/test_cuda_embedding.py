"""The CUDA kernels of the sparse-embedding gather against torch.nn.functional.embedding_bag.

Every test needs a GPU and skips with the reason otherwise.
"""

import pytest
import torch
import torch.nn.functional as F

import seqlstm
from cuda_support import requires_cuda

pytestmark = requires_cuda


def make_csr(num_samples, num_embeddings, max_nnz, generator):
    counts = torch.randint(0, max_nnz + 1, (num_samples,), generator=generator)
    offsets = torch.zeros(num_samples + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(counts, 0)
    nnz = int(offsets[-1])
    indices = torch.randint(0, num_embeddings, (nnz,), generator=generator)
    values = torch.rand(nnz, dtype=torch.float64, generator=generator)
    return indices, offsets, values


def reference_gather(weight, indices, offsets, values, order):
    """Return embedding_bag on the CPU, with row s moved to row order[s] when order is given."""
    result = F.embedding_bag(indices, weight, offsets[:-1], mode="sum",
                             per_sample_weights=values, include_last_offset=False)
    if order is None:
        return result
    permuted = torch.empty_like(result)
    permuted[order] = result
    return permuted


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("num_samples,num_embeddings,dim,max_nnz", [
    (1, 1, 1, 1), (7, 5, 3, 4), (50, 2000, 50, 1), (33, 17, 70, 6), (400, 3, 8, 9),
])
def test_matches_embedding_bag_float64(num_samples, num_embeddings, dim, max_nnz,
                                       deterministic):
    generator = torch.Generator().manual_seed(num_samples)
    indices, offsets, values = make_csr(num_samples, num_embeddings, max_nnz, generator)
    order = torch.randperm(num_samples, generator=generator)
    weight = torch.randn(num_embeddings, dim, dtype=torch.float64, generator=generator)
    grad = torch.randn(num_samples, dim, dtype=torch.float64, generator=generator)

    weight_ref = weight.clone().requires_grad_()
    expected = reference_gather(weight_ref, indices, offsets, values, order)
    expected.backward(grad)

    output = torch.ops.seqlstm.embedding_bag_forward(
        weight.cuda(), indices.cuda(), offsets.cuda(), values.cuda(), order.cuda())
    grad_weight = torch.ops.seqlstm.embedding_bag_backward(
        grad.cuda(), indices.cuda(), offsets.cuda(), values.cuda(), order.cuda(),
        num_embeddings, deterministic)
    torch.testing.assert_close(output.cpu(), expected.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_weight.cpu(), weight_ref.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,tolerance", [
    (torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2),
])
def test_reduced_precision_close_to_float64(dtype, tolerance):
    generator = torch.Generator().manual_seed(3)
    indices, offsets, values = make_csr(64, 100, 5, generator)
    weight = torch.randn(100, 16, dtype=torch.float64, generator=generator)
    weight = weight.to(dtype).to(torch.float64)  # the same values in both precisions
    values = values.to(dtype).to(torch.float64)
    expected = reference_gather(weight, indices, offsets, values, None)
    output = torch.ops.seqlstm.embedding_bag_forward(
        weight.to("cuda", dtype), indices.cuda(), offsets.cuda(), values.to("cuda", dtype), None)
    assert output.dtype == dtype
    # Sums of up to 5 terms run in float32 and round once to dtype.
    torch.testing.assert_close(output.cpu().to(torch.float64), expected, rtol=tolerance,
                               atol=tolerance)


def test_deterministic_backward_bit_identical():
    generator = torch.Generator().manual_seed(9)
    # Few rows and many samples, so each row sums thousands of float32 terms.
    indices, offsets, values = make_csr(5000, 4, 8, generator)
    grad = torch.randn(5000, 33, generator=generator).cuda()
    args = (grad, indices.cuda(), offsets.cuda(), values.float().cuda(), None, 4, True)
    first = torch.ops.seqlstm.embedding_bag_backward(*args)
    second = torch.ops.seqlstm.embedding_bag_backward(*args)
    assert torch.equal(first, second)
    expected = torch.ops.seqlstm.embedding_bag_backward(
        grad.double().cpu(), indices, offsets, values, None, 4, True)
    torch.testing.assert_close(first.cpu().double(), expected, rtol=1e-4, atol=1e-3)


def test_autograd_uses_deterministic_setting():
    weight = torch.randn(6, 4, device="cuda", requires_grad=True)
    indices = torch.tensor([0, 5, 5, 2], device="cuda")
    offsets = torch.tensor([0, 2, 4], device="cuda")
    embedding_grads = []
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic)
        try:
            weight.grad = None
            torch.ops.seqlstm.embedding_bag_forward(weight, indices, offsets, None, None).sum().backward()
            embedding_grads.append(weight.grad.clone())
        finally:
            torch.use_deterministic_algorithms(False)
    expected = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 2.0], device="cuda")
    torch.testing.assert_close(embedding_grads[0][:, 0], expected)
    torch.testing.assert_close(embedding_grads[1][:, 0], expected)


def test_index_out_of_range_raises_index_error():
    embedding = seqlstm.SparseEmbedding(2000, 4, device="cuda")
    with pytest.raises(IndexError, match=r"indices\[1\] = 2000 .*num_embeddings = 2000"):
        embedding(torch.tensor([5, 2000], device="cuda"), torch.tensor([0, 2], device="cuda"))
    # The check runs before any kernel reads through the index, so the CUDA context
    # stays usable.
    torch.cuda.synchronize()
    output = embedding(torch.tensor([5], device="cuda"), torch.tensor([0, 1], device="cuda"))
    assert output.shape == (1, 4)


def test_negative_index_raises_index_error():
    embedding = seqlstm.SparseEmbedding(10, 4, device="cuda")
    with pytest.raises(IndexError, match=r"indices\[0\] = -1"):
        embedding(torch.tensor([-1], device="cuda"), torch.tensor([0, 1], device="cuda"))


def test_backward_index_out_of_range_raises_index_error():
    grad = torch.randn(1, 4, device="cuda")
    with pytest.raises(IndexError, match=r"indices\[0\] = 10 .*num_embeddings = 10"):
        torch.ops.seqlstm.embedding_bag_backward(
            grad, torch.tensor([10], device="cuda"), torch.tensor([0, 1], device="cuda"),
            None, None, 10, True)


def test_offsets_not_starting_at_zero_rejected():
    embedding = seqlstm.SparseEmbedding(10, 4, device="cuda")
    indices = torch.tensor([1, 2, 3], device="cuda")
    with pytest.raises(ValueError, match=r"offsets\[0\] must be 0"):
        embedding(indices, torch.tensor([1, 3], device="cuda"))


def test_decreasing_offsets_rejected():
    embedding = seqlstm.SparseEmbedding(10, 4, device="cuda")
    indices = torch.tensor([1, 2, 3], device="cuda")
    with pytest.raises(ValueError, match=r"non-decreasing, got offsets\[1\] = 2 > offsets\[2\] = 1"):
        embedding(indices, torch.tensor([0, 2, 1, 3], device="cuda"))


def test_offsets_end_mismatch_rejected():
    embedding = seqlstm.SparseEmbedding(10, 4, device="cuda")
    indices = torch.tensor([1, 2, 3], device="cuda")
    with pytest.raises(ValueError, match=r"offsets\[-1\] must equal the number of indices \(3\)"):
        embedding(indices, torch.tensor([0, 2], device="cuda"))


def test_output_order_not_permutation_rejected():
    embedding = seqlstm.SparseEmbedding(10, 4, device="cuda")
    indices = torch.tensor([1, 2], device="cuda")
    offsets = torch.tensor([0, 1, 2], device="cuda")
    with pytest.raises(ValueError, match=r"permutation of 0 to 1, got output_order\[1\] = 0"):
        embedding(indices, offsets, output_order=torch.tensor([0, 0], device="cuda"))


def test_offsets_on_cpu_rejected():
    embedding = seqlstm.SparseEmbedding(10, 4, device="cuda")
    with pytest.raises(ValueError, match="offsets must be on the same device as weight"):
        embedding(torch.tensor([1], device="cuda"), torch.tensor([0, 1]))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_cuda(requires_grad):
    weight = torch.randn(9, 4, device="cuda", requires_grad=requires_grad)
    indices = torch.tensor([0, 8, 3, 3], device="cuda")
    offsets = torch.tensor([0, 1, 1, 4], device="cuda")
    values = torch.rand(4, device="cuda")
    order = torch.tensor([2, 1, 0], device="cuda")
    torch.library.opcheck(torch.ops.seqlstm.embedding_bag_forward,
                          (weight, indices, offsets, values, order))
