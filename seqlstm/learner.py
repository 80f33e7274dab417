"""CNTK's SGD learner: per-sample and per-minibatch learning rates, momentum and their
schedules (CNTK 2.2+, cntk/learners/__init__.py and Learner.cpp).

The trainer's objective is the sum of the per-sequence losses, so the gradient is a sum
over the minibatch's sequences. A rate per sample applies to that sum as it is:
`W -= lr * sum of gradients`, a step that grows with the number of sequences. A rate per
minibatch applies to the mean gradient: `W -= lr * sum / N`. A sample here is one label,
that is one sequence, because CNTK counts the samples of the loss.
"""

import math
from dataclasses import dataclass

import torch

UNITS = ("sample", "minibatch")


@dataclass(frozen=True)
class Schedule:
    """A training parameter that changes with the number of samples seen.

    `values` is a list of (count, value) pairs: the first value holds for `count` units,
    then the next, and the last value holds for ever. A unit is `epoch_size` samples, or
    one sweep of the data when `epoch_size` is None, as in CNTK's
    learning_parameter_schedule.
    """

    values: tuple[tuple[int, float], ...]
    epoch_size: int | None = None

    def __post_init__(self):
        if not self.values:
            raise ValueError("a schedule needs at least one value")
        for count, _ in self.values:
            if count < 1:
                raise ValueError(f"schedule counts must be at least 1, got {count}")
        if self.epoch_size is not None and self.epoch_size < 1:
            raise ValueError(f"epoch_size must be at least 1, got {self.epoch_size}")

    @classmethod
    def constant(cls, value: float) -> "Schedule":
        """Return a schedule that always has `value`."""
        return cls(((1, float(value)),))

    @classmethod
    def parse(cls, text: str, epoch_size: int | None = None) -> "Schedule":
        """Parse BrainScript's schedule syntax: values separated by ':', each optionally
        followed by '*count', so "0.01*10:0.005" is 0.01 for 10 units, then 0.005.

        Raises:
            ValueError: the text is not of that form, naming the part that is not.
        """
        values = []
        for part in text.split(":"):
            value_text, _, count_text = part.partition("*")
            try:
                value = float(value_text)
                count = int(count_text) if count_text else 1
            except ValueError:
                raise ValueError(
                    f"invalid schedule {text!r}: {part!r} is not VALUE or VALUE*COUNT"
                ) from None
            if not math.isfinite(value):
                raise ValueError(f"invalid schedule {text!r}: {part!r} is not finite")
            if value < 0:
                raise ValueError(f"invalid schedule {text!r}: {part!r} is negative")
            values.append((count, value))
        return cls(tuple(values), epoch_size)

    def value_at(self, samples_seen: int, sweeps_seen: int) -> float:
        """Return the value for a minibatch that starts after `samples_seen` samples,
        in sweep number `sweeps_seen` (0-based)."""
        if self.epoch_size is None:
            unit = sweeps_seen
        else:
            unit = samples_seen // self.epoch_size
        end = 0
        for count, value in self.values:
            end += count
            if unit < end:
                return value
        return self.values[-1][1]


class CNTKSGD(torch.optim.Optimizer):
    """SGD with CNTK's meaning of the learning rate and of momentum.

    Each step needs the minibatch's sample count and the values in force, given by the
    caller: `step(num_samples, lr, momentum)`. The gradients must be sums over the
    minibatch's samples. Per step, with g the summed gradient:

        rate = lr                 (lr_unit "sample")
        rate = lr / num_samples   (lr_unit "minibatch")
        m    = momentum           (momentum_unit "minibatch")
        m    = momentum ** num_samples  (momentum_unit "sample")
        v    = m * v + (1 - m) * rate * g   (unit_gain, CNTK's default)
        v    = m * v + rate * g             (without unit gain)
        W   -= v

    With momentum 0 this is `W -= rate * g`, CNTK's plain `sgd` learner.
    """

    def __init__(
        self,
        params,
        lr_unit: str = "sample",
        momentum_unit: str = "minibatch",
        unit_gain: bool = True,
    ):
        for name, unit in (("lr_unit", lr_unit), ("momentum_unit", momentum_unit)):
            if unit not in UNITS:
                raise ValueError(
                    f"{name} must be 'sample' or 'minibatch', got {unit!r}"
                )
        defaults = {
            "lr_unit": lr_unit,
            "momentum_unit": momentum_unit,
            "unit_gain": unit_gain,
        }
        super().__init__(params, defaults)

    def step(self, num_samples: int, lr: float, momentum: float = 0.0):
        """Update every parameter that has a gradient, from the gradient summed over
        `num_samples` samples."""
        self.update(num_samples, lr, momentum)

    @torch.no_grad()
    def update(self, num_samples: int, lr: float, momentum: float = 0.0):
        """Do what step does, without torch.optim.Optimizer's step hooks and profiler
        record around it. Those cost about 40 us per call on a 2-core CPU, more than the
        update of the main job's 108,000 weights."""
        for group in self.param_groups:
            rate = lr
            if group["lr_unit"] == "minibatch":
                rate = lr / num_samples if num_samples else 0.0
            m = momentum
            if group["momentum_unit"] == "sample":
                m = momentum**num_samples
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if m == 0.0 and not any(p in self.state for p in params):
                # Plain SGD, one fused call over all parameters.
                grads = [p.grad for p in params]
                torch._foreach_add_(params, grads, alpha=-rate)
                continue
            for param in params:
                state = self.state[param]
                if "smoothed_gradient" not in state:
                    state["smoothed_gradient"] = torch.zeros_like(param)
                smoothed = state["smoothed_gradient"]
                gain = (1.0 - m) * rate if group["unit_gain"] else rate
                smoothed.mul_(m).add_(param.grad, alpha=gain)
                param.sub_(smoothed)


def describe_value(name: str, unit: str, value: float) -> str:
    """Return CNTK's report of a training parameter, such as
    "Learning rate per 1 samples: 0.0005" or "Momentum per minibatch: 0.9"."""
    per = "per 1 samples" if unit == "sample" else "per minibatch"
    return f"{name} {per}: {value}"
