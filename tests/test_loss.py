"""The fused softmax cross-entropy operators against torch's loss and argmax."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import seqlstm  # noqa: F401  (registers the operators' fake kernels)

softmax_cross_entropy = torch.ops.seqlstm.softmax_cross_entropy


def random_case(rows, classes, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, dtype=dtype, generator=generator) * 3
    classes_of_rows = torch.randint(0, classes, (rows,), generator=generator)
    labels = F.one_hot(classes_of_rows, classes).to(dtype)
    return logits, labels, classes_of_rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows, classes", [(1, 1), (1, 5), (44, 5), (7, 13)])
def test_loss_and_errors_match_torch(dtype, rows, classes):
    logits, labels, targets = random_case(rows, classes, dtype, seed=rows * classes)
    loss, errors = softmax_cross_entropy(logits, labels)
    expected = F.cross_entropy(logits, targets, reduction="sum")
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(loss, expected, rtol=tolerance, atol=tolerance)
    assert loss.dtype == dtype
    assert errors.dtype == torch.int64
    assert int(errors) == int((logits.argmax(dim=1) != targets).sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_matches_torch(dtype):
    logits, labels, targets = random_case(30, 5, dtype, seed=3)
    ours = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    loss, _ = softmax_cross_entropy(ours, labels)
    (2.5 * loss).backward()
    (2.5 * F.cross_entropy(theirs, targets, reduction="sum")).backward()
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=tolerance, atol=tolerance)


def test_gradcheck():
    logits, labels, _ = random_case(6, 4, torch.float64, seed=4)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: softmax_cross_entropy(z, labels)[0], (logits,)
    )


def test_ties_take_the_first_class():
    logits = torch.tensor([[1.0, 2.0, 2.0], [0.5, 0.5, 0.0]])
    # Row 0 predicts class 1 (first of the tied maxima) and has label class 2.
    # Row 1 has the label row (0.5, 0.5, 0), whose argmax is class 0, as predicted.
    labels = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    _, errors = softmax_cross_entropy(logits, labels)
    assert int(errors) == 1


def test_label_row_not_one_hot():
    logits = torch.tensor([[0.2, -1.0, 3.0]])
    loss, _ = softmax_cross_entropy(logits, torch.tensor([[0.1, 0.0, 0.7]]))
    expected = F.cross_entropy(logits, torch.tensor([2]), reduction="sum")
    torch.testing.assert_close(loss, expected)


def test_empty_batch_gives_zero():
    loss, errors = softmax_cross_entropy(torch.zeros(0, 5), torch.zeros(0, 5))
    assert float(loss) == 0.0
    assert int(errors) == 0


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    logits, labels, _ = random_case(9, 5, torch.float32, seed=9)
    logits.requires_grad_(requires_grad)
    torch.library.opcheck(softmax_cross_entropy, (logits, labels))


def test_logits_not_2d():
    with pytest.raises(ValueError, match="logits must have 2 dimensions"):
        softmax_cross_entropy(torch.zeros(5), torch.zeros(5))


def test_logits_integer_dtype():
    with pytest.raises(TypeError, match="logits must have a floating-point dtype"):
        softmax_cross_entropy(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3))


def test_logits_without_classes():
    with pytest.raises(ValueError, match="logits must have at least one class"):
        softmax_cross_entropy(torch.zeros(2, 0), torch.zeros(2, 0))


def test_labels_shape_differs():
    with pytest.raises(ValueError, match=r"labels must have the shape of logits .* got \(2, 4\)"):
        softmax_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 4))


def test_labels_dtype_differs():
    with pytest.raises(TypeError, match="labels must have the same dtype as logits"):
        softmax_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64))


def test_backward_grad_loss_not_0d():
    with pytest.raises(ValueError, match="grad_loss must have 0 dimensions"):
        torch.ops.seqlstm.softmax_cross_entropy_backward(
            torch.ones(1), torch.zeros(2, 3), torch.zeros(2, 3)
        )


linear_softmax_cross_entropy = torch.ops.seqlstm.linear_softmax_cross_entropy


def random_linear_case(rows, in_features, classes, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    input = torch.randn(rows, in_features, dtype=dtype, generator=generator)
    weight = torch.randn(classes, in_features, dtype=dtype, generator=generator)
    bias = torch.randn(classes, dtype=dtype, generator=generator)
    targets = torch.randint(0, classes, (rows,), generator=generator)
    labels = F.one_hot(targets, classes).to(dtype)
    return input, weight, bias, labels, targets


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_loss_matches_torch(dtype, with_bias):
    input, weight, bias, labels, targets = random_linear_case(44, 25, 5, dtype, seed=5)
    bias = bias if with_bias else None
    tensors = [t.clone().requires_grad_() for t in (input, weight)]
    ours_bias = bias.clone().requires_grad_() if with_bias else None
    loss, errors = linear_softmax_cross_entropy(*tensors, ours_bias, labels)
    loss.backward()

    reference = [t.clone().requires_grad_() for t in (input, weight)]
    reference_bias = bias.clone().requires_grad_() if with_bias else None
    logits = F.linear(*reference, reference_bias)
    expected = F.cross_entropy(logits, targets, reduction="sum")
    expected.backward()

    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(loss, expected, rtol=tolerance, atol=tolerance)
    assert int(errors) == int((logits.argmax(dim=1) != targets).sum())
    for ours, theirs in zip(tensors, reference):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=tolerance, atol=tolerance)
    if with_bias:
        torch.testing.assert_close(
            ours_bias.grad, reference_bias.grad, rtol=tolerance, atol=tolerance
        )


def test_linear_gradcheck():
    input, weight, bias, labels, _ = random_linear_case(5, 3, 4, torch.float64, seed=6)
    tensors = tuple(t.requires_grad_() for t in (input, weight, bias))
    assert torch.autograd.gradcheck(
        lambda x, w, b: linear_softmax_cross_entropy(x, w, b, labels)[0], tensors
    )


@pytest.mark.parametrize("requires_grad", [False, True])
def test_linear_opcheck(requires_grad):
    input, weight, bias, labels, _ = random_linear_case(9, 6, 5, torch.float32, seed=7)
    for tensor in (input, weight, bias):
        tensor.requires_grad_(requires_grad)
    torch.library.opcheck(linear_softmax_cross_entropy, (input, weight, bias, labels))


def test_linear_weight_shape_differs():
    with pytest.raises(ValueError, match=r"weight must have shape .* got \(5, 4\)"):
        linear_softmax_cross_entropy(
            torch.zeros(2, 3), torch.zeros(5, 4), None, torch.zeros(2, 5)
        )


def test_linear_bias_shape_differs():
    with pytest.raises(ValueError, match="bias must have shape"):
        linear_softmax_cross_entropy(
            torch.zeros(2, 3), torch.zeros(5, 3), torch.zeros(4), torch.zeros(2, 5)
        )


def test_linear_labels_shape_differs():
    with pytest.raises(ValueError, match=r"labels must have shape .* got \(2, 4\)"):
        linear_softmax_cross_entropy(
            torch.zeros(2, 3), torch.zeros(5, 3), None, torch.zeros(2, 4)
        )


def test_linear_input_integer_dtype():
    with pytest.raises(TypeError, match="input must have a floating-point dtype"):
        linear_softmax_cross_entropy(
            torch.zeros(2, 3, dtype=torch.int64), torch.zeros(5, 3), None, torch.zeros(2, 5)
        )


def test_fake_kernels_registered_by_package_import():
    # Without seqlstm.trainer, as a user calling the operators under torch.compile would.
    script = (
        "import sys, torch, seqlstm\n"
        "from torch._subclasses.fake_tensor import FakeTensorMode\n"
        "assert 'seqlstm.trainer' not in sys.modules\n"
        "with FakeTensorMode():\n"
        "    loss, errors = torch.ops.seqlstm.linear_softmax_cross_entropy(\n"
        "        torch.randn(4, 3), torch.randn(5, 3), None, torch.eye(5)[:4])\n"
        "print(tuple(loss.shape), errors.dtype)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "() torch.int64"


def test_meta_labels_raise():
    # A meta tensor among CPU tensors sends the call to the fake kernel.
    message = r"labels must be on the same device as logits \(cpu\), got meta"
    with pytest.raises(ValueError, match=message):
        softmax_cross_entropy(torch.randn(2, 3), torch.eye(3)[:2].to("meta"))


def test_linear_meta_weight_raises():
    message = r"weight must be on the same device as input \(cpu\), got meta"
    with pytest.raises(ValueError, match=message):
        torch.ops.seqlstm.linear_softmax_cross_entropy(
            torch.randn(2, 3), torch.randn(4, 3, device="meta"), None, torch.eye(4)[:2]
        )
