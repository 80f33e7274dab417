import pytest
import torch
import torch.nn.functional as F

import seqlstm


def make_csr(num_samples, num_embeddings, max_nnz, generator):
    counts = torch.randint(0, max_nnz + 1, (num_samples,), generator=generator)
    offsets = torch.zeros(num_samples + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(counts, 0)
    nnz = int(offsets[-1])
    indices = torch.randint(0, num_embeddings, (nnz,), generator=generator)
    values = torch.rand(nnz, dtype=torch.float64, generator=generator)
    return indices, offsets, values


@pytest.mark.parametrize("num_samples,num_embeddings,dim,max_nnz", [
    (1, 1, 1, 1), (7, 5, 3, 4), (50, 2000, 50, 1), (33, 17, 8, 6),
])
def test_forward_backward_match_embedding_bag(num_samples, num_embeddings, dim, max_nnz):
    generator = torch.Generator().manual_seed(num_samples)
    indices, offsets, values = make_csr(num_samples, num_embeddings, max_nnz, generator)
    weight = torch.randn(num_embeddings, dim, dtype=torch.float64, generator=generator)
    weight_ours = weight.clone().requires_grad_()
    weight_ref = weight.clone().requires_grad_()

    out = torch.ops.seqlstm.embedding_bag_forward(weight_ours, indices, offsets, values, None)
    ref = F.embedding_bag(indices, weight_ref, offsets[:-1], mode="sum",
                          per_sample_weights=values, include_last_offset=False)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)

    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(weight_ours.grad, weight_ref.grad, rtol=1e-12, atol=1e-12)


def test_output_order_permutes_rows():
    weight = torch.randn(6, 4, dtype=torch.float64)
    indices = torch.tensor([0, 3, 5, 1])
    offsets = torch.tensor([0, 1, 3, 4])
    order = torch.tensor([2, 0, 1])
    plain = torch.ops.seqlstm.embedding_bag_forward(weight, indices, offsets, None, None)
    permuted = torch.ops.seqlstm.embedding_bag_forward(weight, indices, offsets, None, order)
    torch.testing.assert_close(permuted[order], plain, rtol=0, atol=0)


def test_gradcheck_float64():
    weight = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    indices = torch.tensor([0, 4, 4, 2, 1])
    offsets = torch.tensor([0, 2, 2, 5])
    values = torch.tensor([0.5, 1.0, -2.0, 3.0, 1.5], dtype=torch.float64)
    order = torch.tensor([1, 2, 0])
    assert torch.autograd.gradcheck(
        lambda w: torch.ops.seqlstm.embedding_bag_forward(w, indices, offsets, values, order),
        (weight,),
    )


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    weight = torch.randn(9, 4, requires_grad=requires_grad)
    indices = torch.tensor([0, 8, 3, 3])
    offsets = torch.tensor([0, 1, 1, 4])
    torch.library.opcheck(
        torch.ops.seqlstm.embedding_bag_forward,
        (weight, indices, offsets, None, torch.tensor([2, 1, 0])),
    )


def test_index_out_of_range_names_index_and_bound():
    embedding = seqlstm.SparseEmbedding(2000, 4)
    with pytest.raises(IndexError, match=r"indices\[1\] = 2000 .*num_embeddings = 2000"):
        embedding(torch.tensor([5, 2000]), torch.tensor([0, 2]))
    with pytest.raises(IndexError, match=r"indices\[0\] = -1"):
        embedding(torch.tensor([-1]), torch.tensor([0, 1]))


def test_malformed_offsets_rejected():
    embedding = seqlstm.SparseEmbedding(10, 4)
    indices = torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match=r"offsets\[0\] must be 0"):
        embedding(indices, torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="non-decreasing"):
        embedding(indices, torch.tensor([0, 2, 1, 3]))
    with pytest.raises(ValueError, match=r"offsets\[-1\] must equal the number of indices \(3\)"):
        embedding(indices, torch.tensor([0, 2]))
    with pytest.raises(TypeError, match="offsets must have dtype Long"):
        embedding(indices, torch.tensor([0, 3], dtype=torch.int32))


def test_bad_output_order_rejected():
    embedding = seqlstm.SparseEmbedding(10, 4)
    indices = torch.tensor([1, 2])
    offsets = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="permutation"):
        embedding(indices, offsets, output_order=torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"output_order must have shape \(num_samples,\) = \(2,\)"):
        embedding(indices, offsets, output_order=torch.tensor([0]))
