import math

import pytest
import torch

from seqlstm.model import SequenceClassifier, glorot_uniform_
from seqlstm.reference import ReferenceClassifier


def random_words(lengths, input_dim, seed):
    """Return one-hot CSR words for sequences of the given lengths."""
    generator = torch.Generator().manual_seed(seed)
    samples = int(sum(lengths))
    indices = torch.randint(0, input_dim, (samples,), generator=generator)
    values = torch.ones(samples)
    offsets = torch.arange(samples + 1)
    return indices, values, offsets, torch.tensor(lengths)


# (parameter, bound) at the tutorial's sizes: r = sqrt(6 / (rows + columns)).
TUTORIAL_BOUNDS = [
    ("embedding.weight", math.sqrt(6 / 2050)),  # 0.054
    ("lstm.weight_ih_l0", math.sqrt(6 / 150)),  # 0.2
    ("lstm.weight_hh_l0", math.sqrt(6 / 125)),  # 0.219
    ("lstm.weight_hr_l0", math.sqrt(6 / 50)),  # 0.346
    ("dense.weight", math.sqrt(6 / 30)),  # 0.447
]


@pytest.mark.parametrize("name,bound", TUTORIAL_BOUNDS)
def test_cntk_init_bounds(name, bound):
    torch.manual_seed(0)
    weight = dict(SequenceClassifier().named_parameters())[name].detach()
    assert weight.abs().max() <= bound
    # With thousands of draws the largest magnitude comes within 5% of the bound.
    assert weight.abs().max() > 0.95 * bound
    assert abs(weight.mean()) < 0.1 * bound


def test_cntk_init_bounds_rounded():
    assert [round(bound, 3) for _, bound in TUTORIAL_BOUNDS] == [
        0.054,
        0.2,
        0.219,
        0.346,
        0.447,
    ]


def test_cntk_init_biases_zero():
    model = SequenceClassifier()
    for name in ("lstm.bias_ih_l0", "lstm.bias_hh_l0", "dense.bias"):
        assert torch.count_nonzero(dict(model.named_parameters())[name]) == 0, name


def test_one_trained_lstm_bias():
    model = SequenceClassifier()
    assert model.lstm.bias_ih_l0.requires_grad
    assert not model.lstm.bias_hh_l0.requires_grad


def test_parameter_count_matches_cntk():
    # CNTK's LSTM(25, 25) model has 108,355 parameters: E 100,000, W 5,000,
    # H 2,500, b 100, P 625, Dense 130.
    model = SequenceClassifier()
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trained == 108_355


def test_torch_init_option():
    torch.manual_seed(0)
    model = SequenceClassifier(init="torch")
    bound = 1 / math.sqrt(25)
    assert model.lstm.weight_ih_l0.abs().max() <= bound
    assert model.embedding.weight.std() > 0.5  # N(0, 1) as torch.nn.Embedding
    assert torch.count_nonzero(model.lstm.bias_hh_l0) == 0


def test_init_rejects_unknown():
    with pytest.raises(ValueError, match="init"):
        SequenceClassifier(init="xavier")


def test_glorot_counts_rows_and_columns():
    weight = torch.empty(100, 50)
    torch.manual_seed(3)
    glorot_uniform_(weight)
    assert weight.abs().max() <= math.sqrt(6 / 150)


def test_forward_keeps_sequence_order():
    torch.manual_seed(0)
    model = SequenceClassifier()
    batch = random_words([3, 1, 4, 1, 5], 2000, seed=1)
    logits = model(*batch)
    assert logits.shape == (5, 5)
    # Each sequence's logits do not depend on the others in the minibatch, and come
    # back in the order of `lengths`: the third sequence is samples 4..7.
    indices, values, _, _ = batch
    third = model(indices[4:8], values[4:8], torch.arange(5), torch.tensor([4]))
    torch.testing.assert_close(third[0], logits[2], rtol=0, atol=1e-6)


@pytest.mark.parametrize("lengths", [[1], [2, 7, 1, 3, 3, 9, 4], [5, 5, 5]])
def test_matches_reference_forward_backward(lengths):
    torch.manual_seed(0)
    model = SequenceClassifier()
    reference = ReferenceClassifier()
    reference.copy_from(model)
    batch = random_words(lengths, 2000, seed=len(lengths))
    labels = torch.randint(0, 5, (len(lengths),))
    loss = torch.nn.functional.cross_entropy(model(*batch), labels, reduction="sum")
    expected = torch.nn.functional.cross_entropy(
        reference(*batch), labels, reduction="sum"
    )
    loss.backward()
    expected.backward()
    # float32 through up to 9 steps: differences of a few ulps of values near 1.
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    pairs = [
        (model.embedding.weight, reference.embedding.weight),
        (model.lstm.weight_ih_l0, reference.weight_ih),
        (model.lstm.weight_hh_l0, reference.weight_hh),
        (model.lstm.bias_ih_l0, reference.bias),
        (model.lstm.weight_hr_l0, reference.weight_hr),
        (model.dense.weight, reference.dense.weight),
    ]
    # The embedding's gradient is sparse, one row per word; summed it is the dense one.
    assert model.embedding.weight.grad.is_sparse
    for ours, theirs in pairs:
        grad = ours.grad.to_dense() if ours.grad.is_sparse else ours.grad
        torch.testing.assert_close(grad, theirs.grad, rtol=1e-4, atol=1e-6)
