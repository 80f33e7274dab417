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


@pytest.mark.parametrize("with_values,with_order", [(False, False), (True, True)])
def test_sparse_gradient_sums_to_dense_gradient(with_values, with_order):
    generator = torch.Generator().manual_seed(3)
    indices, offsets, values = make_csr(9, 6, 4, generator)
    values = values if with_values else None
    order = torch.randperm(9, generator=generator) if with_order else None
    weight = torch.randn(6, 5, dtype=torch.float64, generator=generator)
    grad = torch.randn(9, 5, dtype=torch.float64, generator=generator)
    gradients = []
    for sparse in (False, True):
        table = weight.clone().requires_grad_()
        torch.ops.seqlstm.embedding_bag_forward(
            table, indices, offsets, values, order, sparse
        ).backward(grad)
        gradients.append(table.grad)
    dense, sparse = gradients
    assert sparse.is_sparse and sparse.shape == (6, 5)
    # One row per non-zero, duplicates included, in the order of the indices.
    assert torch.equal(sparse._indices()[0], indices)
    assert sparse._values().shape == (indices.shape[0], 5)
    torch.testing.assert_close(sparse.to_dense(), dense, rtol=1e-12, atol=1e-12)


def test_sparse_gradient_keeps_per_sample_weight_gradient():
    weight = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    indices = torch.tensor([0, 4, 4, 2, 1])
    offsets = torch.tensor([0, 2, 2, 5])
    values = torch.tensor([0.5, 1.0, -2.0, 3.0, 1.5], dtype=torch.float64, requires_grad=True)
    order = torch.tensor([1, 2, 0])
    assert torch.autograd.gradcheck(
        lambda v: torch.ops.seqlstm.embedding_bag_forward(
            weight.detach(), indices, offsets, v, order, True
        ),
        (values,),
    )
    output = torch.ops.seqlstm.embedding_bag_forward(weight, indices, offsets, values, order, True)
    output.sum().backward()
    assert weight.grad.is_sparse
    # values[k] scales table row indices[k], so d sum / d values[k] = sum of that row.
    torch.testing.assert_close(values.grad, weight.detach()[indices].sum(1))


def test_sparse_embedding_module_trains_like_dense():
    generator = torch.Generator().manual_seed(5)
    indices, offsets, values = make_csr(12, 30, 3, generator)
    values = values.float()
    modules = [seqlstm.SparseEmbedding(30, 4, sparse=sparse) for sparse in (False, True)]
    modules[1].load_state_dict(modules[0].state_dict())
    for module in modules:
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        for _ in range(3):
            optimizer.zero_grad()
            module(indices, offsets, values).square().sum().backward()
            optimizer.step()
    assert "sparse=True" in repr(modules[1])
    torch.testing.assert_close(modules[1].weight, modules[0].weight, rtol=1e-6, atol=1e-6)


def test_sparse_gradient_keeps_its_indices():
    weight = torch.randn(8, 2, requires_grad=True)
    indices = torch.tensor([1, 2, 2])
    offsets = torch.tensor([0, 1, 3])
    torch.ops.seqlstm.embedding_bag_forward(weight, indices, offsets, None, None, True).sum().backward()
    # A loader that refills its index buffer after backward leaves the gradient alone.
    indices.copy_(torch.tensor([6, 7, 7]))
    assert weight.grad._indices()[0].tolist() == [1, 2, 2]


@pytest.mark.parametrize("sparse", [False, True])
def test_double_backward_raises(sparse):
    weight = torch.randn(8, 3, requires_grad=True)
    indices = torch.tensor([1, 2, 2, 5])
    offsets = torch.tensor([0, 2, 4])
    output = torch.ops.seqlstm.embedding_bag_forward(weight, indices, offsets, None, None, sparse)
    (grad,) = torch.autograd.grad(output.pow(3).sum(), weight, create_graph=True)
    grad = grad.to_dense() if sparse else grad
    with pytest.raises(RuntimeError, match="embedding_bag_backward"):
        grad.pow(2).sum().backward()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_weight_rejected_on_cpu(dtype):
    embedding = seqlstm.SparseEmbedding(5, 3, dtype=dtype)
    with pytest.raises(TypeError, match="weight must have dtype float32 or float64 on CPU"):
        embedding(torch.tensor([0, 4]), torch.tensor([0, 1, 2]))


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


def test_per_sample_weights_gradient_matches_embedding_bag():
    generator = torch.Generator().manual_seed(5)
    indices, offsets, values = make_csr(9, 6, 3, generator)
    weight = torch.randn(6, 4, dtype=torch.float64, generator=generator)
    values_ours = values.clone().requires_grad_()
    values_ref = values.clone().requires_grad_()
    out = torch.ops.seqlstm.embedding_bag_forward(weight, indices, offsets, values_ours, None)
    ref = F.embedding_bag(indices, weight, offsets[:-1], mode="sum",
                          per_sample_weights=values_ref)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(values_ours.grad, values_ref.grad, rtol=1e-12, atol=1e-12)


def test_gradcheck_per_sample_weights_with_order():
    weight = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    values = torch.tensor([0.5, 2.0, -1.0, 1.5], dtype=torch.float64, requires_grad=True)
    indices = torch.tensor([1, 2, 1, 4])
    offsets = torch.tensor([0, 1, 1, 4])
    order = torch.tensor([2, 0, 1])
    assert torch.autograd.gradcheck(
        lambda w, v: torch.ops.seqlstm.embedding_bag_forward(w, indices, offsets, v, order),
        (weight, values),
    )


def test_opcheck_with_per_sample_weights():
    weight = torch.randn(9, 4, requires_grad=True)
    values = torch.rand(4, requires_grad=True)
    torch.library.opcheck(
        torch.ops.seqlstm.embedding_bag_forward,
        (weight, torch.tensor([0, 8, 3, 3]), torch.tensor([0, 1, 1, 4]), values, None),
    )


def test_opcheck_backward():
    torch.library.opcheck(
        torch.ops.seqlstm.embedding_bag_forward,
        (torch.randn(9, 4, requires_grad=True), torch.tensor([0, 8, 3, 3]),
         torch.tensor([0, 1, 1, 4]), torch.rand(4), None, True),
    )
    torch.library.opcheck(
        torch.ops.seqlstm.embedding_bag_backward,
        (torch.randn(3, 4), torch.tensor([0, 8, 3, 3]), torch.tensor([0, 1, 1, 4]),
         torch.rand(4), torch.tensor([2, 0, 1]), 9, False),
    )
    torch.library.opcheck(
        torch.ops.seqlstm.embedding_bag_backward_values,
        (torch.randn(3, 4), torch.tensor([0, 8, 3, 3]), torch.tensor([0, 1, 1, 4]),
         torch.rand(4), torch.tensor([2, 0, 1]), 9),
    )


def test_compile_fullgraph_matches_eager():
    embedding = seqlstm.SparseEmbedding(20, 5)
    indices = torch.tensor([3, 19, 0, 7, 7])
    offsets = torch.tensor([0, 2, 2, 5])
    values = torch.tensor([1.0, 0.5, 2.0, -1.0, 3.0])
    order = torch.tensor([1, 2, 0])

    def loss(indices, offsets, values, order):
        return embedding(indices, offsets, values, order).square().sum()

    expected = loss(indices, offsets, values, order)
    expected.backward()
    expected_grad = embedding.weight.grad.clone()
    embedding.weight.grad = None
    compiled = torch.compile(loss, fullgraph=True)
    actual = compiled(indices, offsets, values, order)
    actual.backward()
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(embedding.weight.grad, expected_grad)


def call_forward(**replace):
    arguments = {
        "weight": torch.randn(6, 4),
        "indices": torch.tensor([1, 2, 5]),
        "offsets": torch.tensor([0, 1, 3]),
        "per_sample_weights": None,
        "output_order": None,
    }
    arguments.update(replace)
    return torch.ops.seqlstm.embedding_bag_forward(**arguments)


def test_weight_not_2d_rejected():
    with pytest.raises(ValueError, match="weight must have 2 dimensions, got 1"):
        call_forward(weight=torch.randn(6))


def test_weight_integer_dtype_rejected():
    with pytest.raises(TypeError, match="weight must have a floating-point dtype, got Long"):
        call_forward(weight=torch.zeros(6, 4, dtype=torch.int64))


def test_indices_not_1d_rejected():
    with pytest.raises(ValueError, match="indices must have 1 dimensions, got 2"):
        call_forward(indices=torch.tensor([[1, 2, 5]]))


def test_indices_wrong_dtype_rejected():
    with pytest.raises(TypeError, match="indices must have dtype Long, got Int"):
        call_forward(indices=torch.tensor([1, 2, 5], dtype=torch.int32))


def test_offsets_not_1d_rejected():
    with pytest.raises(ValueError, match="offsets must have 1 dimensions, got 2"):
        call_forward(offsets=torch.tensor([[0, 1, 3]]))


def test_offsets_empty_rejected():
    with pytest.raises(ValueError, match="offsets must have num_samples \\+ 1 entries"):
        call_forward(offsets=torch.zeros(0, dtype=torch.int64))


def test_per_sample_weights_wrong_dtype_rejected():
    with pytest.raises(TypeError, match="per_sample_weights must have the same dtype as weight"):
        call_forward(per_sample_weights=torch.ones(3, dtype=torch.float64))


def test_per_sample_weights_wrong_shape_rejected():
    with pytest.raises(ValueError, match=r"per_sample_weights must have shape \(nnz,\) = \(3,\)"):
        call_forward(per_sample_weights=torch.ones(2))


def test_output_order_wrong_dtype_rejected():
    with pytest.raises(TypeError, match="output_order must have dtype Long, got Int"):
        call_forward(output_order=torch.tensor([1, 0], dtype=torch.int32))


def test_backward_negative_num_embeddings_rejected():
    with pytest.raises(ValueError, match="num_embeddings must be non-negative, got -1"):
        torch.ops.seqlstm.embedding_bag_backward(
            torch.ones(2, 4), torch.tensor([1, 2, 5]), torch.tensor([0, 1, 3]), None, None, -1,
            False,
        )


def test_backward_grad_output_rows_rejected():
    with pytest.raises(ValueError, match="grad_output must have shape .* num_samples = 2"):
        torch.ops.seqlstm.embedding_bag_backward(
            torch.ones(3, 4), torch.tensor([1, 2, 5]), torch.tensor([0, 1, 3]), None, None, 6,
            False,
        )


def test_backward_index_out_of_range_rejected():
    with pytest.raises(IndexError, match=r"indices\[2\] = 5 .*num_embeddings = 5"):
        torch.ops.seqlstm.embedding_bag_backward(
            torch.ones(2, 4), torch.tensor([1, 2, 5]), torch.tensor([0, 1, 3]), None, None, 5,
            False,
        )


@pytest.mark.parametrize("arguments,message", [
    ((0, 4), "num_embeddings and embedding_dim must be positive, got 0 and 4"),
    ((4, -1), "num_embeddings and embedding_dim must be positive, got 4 and -1"),
])
def test_sparse_embedding_bad_sizes_rejected(arguments, message):
    with pytest.raises(ValueError, match=message):
        seqlstm.SparseEmbedding(*arguments)


def test_sparse_embedding_unknown_init_rejected():
    with pytest.raises(ValueError, match="init must be 'glorot_uniform' or 'normal', got 'zeros'"):
        seqlstm.SparseEmbedding(4, 2, init="zeros")


def test_meta_indices_raise():
    # A meta tensor among CPU tensors sends the call to the fake kernel, which checks
    # devices as the kernels do instead of returning uninitialised memory.
    message = r"indices must be on the same device as weight \(cpu\), got meta"
    with pytest.raises(ValueError, match=message):
        torch.ops.seqlstm.embedding_bag_forward(
            torch.randn(10, 3), torch.tensor([1, 2], device="meta"), torch.tensor([0, 1, 2]),
            None, None,
        )
