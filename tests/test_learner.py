import pytest
import torch

from seqlstm.learner import CNTKSGD, Schedule, describe_value


def make_parameter(values):
    param = torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))
    return param


def test_sgd_per_sample_uses_summed_gradient():
    param = make_parameter([1.0, 2.0])
    optimizer = CNTKSGD([param], lr_unit="sample")
    param.grad = torch.tensor(
        [10.0, -4.0], dtype=torch.float64
    )  # a sum over 45 sequences
    optimizer.step(num_samples=45, lr=0.0005)
    assert torch.equal(
        param.detach(), torch.tensor([1.0 - 0.005, 2.0 + 0.002], dtype=torch.float64)
    )


def test_sgd_per_minibatch_uses_mean_gradient():
    param = make_parameter([1.0])
    optimizer = CNTKSGD([param], lr_unit="minibatch")
    param.grad = torch.tensor([8.0], dtype=torch.float64)
    optimizer.step(num_samples=4, lr=0.5)
    assert param.item() == pytest.approx(1.0 - 0.5 * 8.0 / 4)


def test_sgd_matches_torch_sgd_on_sum():
    torch.manual_seed(0)
    ours = make_parameter(torch.randn(6).tolist())
    theirs = make_parameter(ours.tolist())
    optimizer = CNTKSGD([ours])
    reference = torch.optim.SGD([theirs], lr=0.0005)
    for _ in range(3):
        grad = torch.randn(6, dtype=torch.float64)
        ours.grad = grad.clone()
        theirs.grad = grad.clone()
        optimizer.step(num_samples=40, lr=0.0005)
        reference.step()
    assert torch.equal(ours.detach(), theirs.detach())


def test_momentum_unit_gain():
    param = make_parameter([0.0])
    optimizer = CNTKSGD([param], unit_gain=True)
    for _ in range(2):
        param.grad = torch.tensor([1.0], dtype=torch.float64)
        optimizer.step(num_samples=1, lr=0.1, momentum=0.9)
    # v1 = 0.1 * 0.1 = 0.01; v2 = 0.9 * 0.01 + 0.01 = 0.019; W = -(v1 + v2)
    assert param.item() == pytest.approx(-0.029)


def test_momentum_without_unit_gain():
    param = make_parameter([0.0])
    optimizer = CNTKSGD([param], unit_gain=False)
    for _ in range(2):
        param.grad = torch.tensor([1.0], dtype=torch.float64)
        optimizer.step(num_samples=1, lr=0.1, momentum=0.9)
    # v1 = 0.1; v2 = 0.9 * 0.1 + 0.1 = 0.19
    assert param.item() == pytest.approx(-0.29)


def test_momentum_per_sample_is_power_of_count():
    param = make_parameter([0.0])
    optimizer = CNTKSGD([param], momentum_unit="sample", unit_gain=False)
    for _ in range(2):
        param.grad = torch.tensor([1.0], dtype=torch.float64)
        optimizer.step(num_samples=3, lr=1.0, momentum=0.5)
    # per-minibatch momentum 0.5**3 = 0.125: v1 = 1, v2 = 1.125
    assert param.item() == pytest.approx(-2.125)


def test_momentum_state_in_state_dict():
    param = make_parameter([0.0])
    optimizer = CNTKSGD([param])
    param.grad = torch.tensor([1.0], dtype=torch.float64)
    optimizer.step(num_samples=1, lr=0.1, momentum=0.9)
    state = optimizer.state_dict()["state"][0]
    assert state["smoothed_gradient"].item() == pytest.approx(0.01)


def test_sgd_skips_parameters_without_gradient():
    param = make_parameter([3.0])
    CNTKSGD([param]).step(num_samples=5, lr=1.0)
    assert param.item() == 3.0


def test_sgd_rejects_unknown_lr_unit():
    with pytest.raises(ValueError, match="lr_unit"):
        CNTKSGD([make_parameter([0.0])], lr_unit="epoch")


def test_sgd_rejects_unknown_momentum_unit():
    with pytest.raises(ValueError, match="momentum_unit"):
        CNTKSGD([make_parameter([0.0])], momentum_unit="epoch")


def test_schedule_constant():
    schedule = Schedule.constant(0.0005)
    assert schedule.value_at(0, 0) == 0.0005
    assert schedule.value_at(10**9, 50) == 0.0005


def test_schedule_parse_counts_per_sweep():
    schedule = Schedule.parse("0.01*2:0.005")
    assert [schedule.value_at(0, sweep) for sweep in range(4)] == [
        0.01,
        0.01,
        0.005,
        0.005,
    ]


def test_schedule_parse_counts_per_epoch_size():
    schedule = Schedule.parse("1:2*2:3", epoch_size=100)
    seen = [0, 99, 100, 250, 299, 300, 10**6]
    assert [schedule.value_at(s, 0) for s in seen] == [
        1.0,
        1.0,
        2.0,
        2.0,
        2.0,
        3.0,
        3.0,
    ]


def test_schedule_parse_rejects_bad_value():
    with pytest.raises(ValueError, match="'fast'"):
        Schedule.parse("0.1:fast")


def test_schedule_parse_rejects_bad_count():
    with pytest.raises(ValueError, match="'0.1\\*x'"):
        Schedule.parse("0.1*x")


def test_schedule_parse_rejects_zero_count():
    with pytest.raises(ValueError, match="counts must be at least 1"):
        Schedule.parse("0.1*0")


def test_schedule_parse_rejects_nan():
    with pytest.raises(ValueError, match="not finite"):
        Schedule.parse("nan")


def test_schedule_rejects_zero_epoch_size():
    with pytest.raises(ValueError, match="epoch_size"):
        Schedule.parse("0.1", epoch_size=0)


def test_describe_value_per_sample():
    assert describe_value("Learning rate", "sample", 0.0005) == (
        "Learning rate per 1 samples: 0.0005"
    )


def test_describe_value_per_minibatch():
    assert describe_value("Learning rate", "minibatch", 0.1) == (
        "Learning rate per minibatch: 0.1"
    )
