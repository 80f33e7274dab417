import pytest
import torch
from torch import nn

from seqlstm.reference import ReferenceClassifier


def random_minibatch(lengths, input_dim, generator):
    """Return CSR words (two non-zeros per sample, random weights) for `lengths`."""
    samples = int(sum(lengths))
    indices = torch.randint(0, input_dim, (2 * samples,), generator=generator)
    values = torch.rand(2 * samples, generator=generator, dtype=torch.float64)
    offsets = torch.arange(0, 2 * samples + 1, 2)
    return indices, values, offsets, torch.tensor(lengths)


def torch_lstm_logits(model, indices, values, offsets, lengths):
    """Run the reference's weights through torch.nn.LSTM (proj_size < hidden_size)."""
    hidden_size = model.hidden_size
    proj_size = model.weight_hr.shape[0]
    lstm = nn.LSTM(model.weight_ih.shape[1], hidden_size, proj_size=proj_size)
    lstm = lstm.to(torch.float64)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(model.weight_ih)
        lstm.weight_hh_l0.copy_(model.weight_hh)
        lstm.bias_ih_l0.copy_(model.bias)
        lstm.bias_hh_l0.zero_()
        lstm.weight_hr_l0.copy_(model.weight_hr)
    embedded = model.embedding(indices, offsets[:-1], per_sample_weights=values)
    padded = nn.utils.rnn.pad_sequence(torch.split(embedded, lengths.tolist()))
    packed = nn.utils.rnn.pack_padded_sequence(padded, lengths, enforce_sorted=False)
    _, (h_n, _) = lstm(packed)
    return model.dense(h_n[-1]), lstm


@pytest.mark.parametrize("lengths", [[1], [3, 1, 4, 1, 5, 9, 2, 6], [2, 2, 2], [7, 1]])
def test_reference_matches_torch_lstm(lengths):
    generator = torch.Generator().manual_seed(len(lengths))
    torch.manual_seed(1)
    model = ReferenceClassifier(
        input_dim=30, num_classes=4, embedding_dim=6, hidden_size=5, proj_size=3
    ).to(torch.float64)
    with torch.no_grad():
        model.bias.uniform_(-0.5, 0.5)
    batch = random_minibatch(lengths, 30, generator)
    logits = model(*batch)
    expected, _ = torch_lstm_logits(model, *batch)
    assert logits.shape == (len(lengths), 4)
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)


def test_reference_gradients_match_torch_lstm():
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(2)
    model = ReferenceClassifier(
        input_dim=20, num_classes=3, embedding_dim=4, hidden_size=6, proj_size=2
    ).to(torch.float64)
    batch = random_minibatch([4, 2, 5, 1], 20, generator)
    model(*batch).square().sum().backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    logits, lstm = torch_lstm_logits(model, *batch)
    logits.square().sum().backward()
    pairs = [
        ("weight_ih", lstm.weight_ih_l0),
        ("weight_hh", lstm.weight_hh_l0),
        ("bias", lstm.bias_ih_l0),
        ("weight_hr", lstm.weight_hr_l0),
    ]
    for name, param in pairs:
        torch.testing.assert_close(ours[name], param.grad, rtol=1e-12, atol=1e-12)
    for name in ("embedding.weight", "dense.weight", "dense.bias"):
        theirs = dict(model.named_parameters())[name].grad
        torch.testing.assert_close(ours[name], theirs, rtol=1e-12, atol=1e-12)


def test_reference_rejects_zero_proj_size():
    with pytest.raises(ValueError, match="proj_size"):
        ReferenceClassifier(proj_size=0)
