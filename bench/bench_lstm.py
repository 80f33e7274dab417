"""Time seqlstm.LSTM against torch.nn.LSTM, forward and backward, in one process.

For each shape (N, L, H_in, H) the sequence lengths are drawn uniformly from 1..L
with a fixed seed. Every variant starts from the same padded (L, N, H_in) input and
ends with the gradients of all parameters and of the input:

  torch packed    pack_padded_sequence, then torch.nn.LSTM
  torch padded    torch.nn.LSTM over the padded tensor, lengths ignored
  seqlstm packed  pack_padded_sequence, then seqlstm.LSTM
  seqlstm lengths seqlstm.LSTM(input, lengths=lengths), which packs internally
  seqlstm prepacked  seqlstm.LSTM on a PackedSequence packed before timing, as when
                  SparseEmbedding writes its output in packed order; gradients end at
                  the packed data, so this one skips the packing cost the others pay

The ratio is the faster torch time over the faster of seqlstm packed and lengths. Before timing, the
seqlstm results are checked against torch packed.

The GEMM floor is a lower bound on any implementation's time: the six matrix products
that forward and backward cannot avoid (input projection, recurrent product, and the
gradients of input, hidden state, weight_ih and weight_hh) over the packed rows only,
each timed as one large torch.mm in the same run. The recurrent products really come
in one small product per step, so the floor is optimistic. "bound" is the faster torch
time over the floor: no kernel doing these products at this rate can exceed it. At the
smallest shapes the floor also counts torch.mm's own cost per call, a few microseconds,
so there the bound is an estimate.

"kernels" is the time of seqlstm's forward and backward kernels alone
(torch.ops.seqlstm.lstm_forward and lstm_backward called directly on the packed rows,
without autograd). A seqlstm column minus it gives what the module, autograd and the
packing cost around the kernels.

Usage: python bench/bench_lstm.py [--device cpu|cuda] [--threads K] [--clock wall|cpu]
       [--algorithm 0|1|2] [--shapes N,L,H_in,H ...]
"""

import argparse
import os
import statistics
import sys
import time

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import seqlstm  # noqa: E402

DEFAULT_SHAPES = [
    (44, 12, 50, 25),
    (44, 30, 50, 25),
    (4, 20, 50, 25),
    (256, 20, 32, 32),
    (1, 1000, 64, 64),
    (64, 50, 128, 128),
    (64, 100, 256, 256),
]


def parse_shape(text):
    parts = tuple(int(part) for part in text.split(","))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"a shape is N,L,H_in,H, got {text!r}")
    return parts


def time_call(function, min_seconds, clock):
    """Return the median seconds of one call, over repeats that fill min_seconds."""
    function()
    start = clock()
    function()
    once = max(clock() - start, 1e-6)
    calls_per_repeat = max(1, int(0.05 / once))
    repeats = max(5, int(min_seconds / (once * calls_per_repeat)))
    samples = []
    for _ in range(repeats):
        start = clock()
        for _ in range(calls_per_repeat):
            function()
        samples.append((clock() - start) / calls_per_repeat)
    return statistics.median(samples)


def make_variants(shape, algorithm):
    batch, steps, input_size, hidden_size = shape
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    padded = torch.randn(steps, batch, input_size, generator=generator).requires_grad_()
    torch.manual_seed(0)
    reference = torch.nn.LSTM(input_size, hidden_size)
    ours = seqlstm.LSTM(input_size, hidden_size)
    ours.load_state_dict(reference.state_dict())
    ours.algorithm = algorithm

    def clear():
        padded.grad = None
        for module in (reference, ours):
            for parameter in module.parameters():
                parameter.grad = None

    def torch_packed():
        clear()
        packed = pack_padded_sequence(padded, lengths, enforce_sorted=False)
        output, (h_n, c_n) = reference(packed)
        (output.data.sum() + h_n.sum()).backward()
        return output.data, h_n

    def torch_padded():
        clear()
        output, (h_n, c_n) = reference(padded)
        (output.sum() + h_n.sum()).backward()

    def seqlstm_packed():
        clear()
        packed = pack_padded_sequence(padded, lengths, enforce_sorted=False)
        output, (h_n, c_n) = ours(packed)
        (output.data.sum() + h_n.sum()).backward()
        return output.data, h_n

    def seqlstm_lengths():
        clear()
        output, (h_n, c_n) = ours(padded, lengths=lengths)
        (output.sum() + h_n.sum()).backward()

    prepacked = pack_padded_sequence(padded.detach(), lengths, enforce_sorted=False)
    prepacked_data = prepacked.data.clone().requires_grad_()
    prepacked = PackedSequence(prepacked_data, prepacked.batch_sizes, prepacked.sorted_indices,
                               prepacked.unsorted_indices)

    def seqlstm_prepacked():
        clear()
        prepacked_data.grad = None
        output, (h_n, c_n) = ours(prepacked)
        (output.data.sum() + h_n.sum()).backward()

    def check():
        expected_output, expected_h_n = torch_packed()
        expected_grads = [p.grad.clone() for p in reference.parameters()]
        output, h_n = seqlstm_packed()
        grads = [p.grad for p in ours.parameters()]
        pairs = [(output, expected_output), (h_n, expected_h_n)] + list(zip(grads, expected_grads))
        for actual, expected in pairs:
            scale = expected.abs().max().item()
            error = (actual - expected).abs().max().item()
            if error > 1e-4 * max(scale, 1.0):
                raise SystemExit(f"seqlstm differs from torch.nn.LSTM at {shape}: {error:.3g}")

    return check, {
        "torch packed": torch_packed,
        "torch padded": torch_padded,
        "seqlstm packed": seqlstm_packed,
        "seqlstm lengths": seqlstm_lengths,
        "seqlstm prepacked": seqlstm_prepacked,
    }


def gemm_floor(shape, min_seconds, clock):
    """Return the seconds of the forward and backward matrix products of an LSTM at
    `shape`, each done as one torch.mm over the packed rows (see the module doc)."""
    batch, steps, input_size, hidden_size = shape
    generator = torch.Generator().manual_seed(0)
    total = int(torch.randint(1, steps + 1, (batch,), generator=generator).sum())
    gates = 4 * hidden_size
    x = torch.randn(total, input_size)
    h = torch.randn(total, hidden_size)
    dz = torch.randn(total, gates)
    w_ih = torch.randn(gates, input_size)
    w_hh = torch.randn(gates, hidden_size)
    products = [
        (x, w_ih.t()),  # input projection
        (h, w_hh.t()),  # recurrent product, all steps at once
        (dz, w_ih),  # gradient of the input
        (dz, w_hh),  # gradient of the hidden state
        (dz.t(), x),  # gradient of weight_ih
        (dz.t(), h),  # gradient of weight_hh
    ]
    return sum(
        time_call(lambda a=a, b=b: torch.mm(a, b), min_seconds / 6, clock)
        for a, b in products
    )


def kernel_time(shape, algorithm, min_seconds, clock):
    """Return the seconds of seqlstm's forward and backward kernels at `shape`, called
    directly on the packed rows, without autograd, the module or any reordering."""
    batch, steps, input_size, hidden_size = shape
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    padded = torch.randn(steps, batch, input_size, generator=generator)
    packed = pack_padded_sequence(padded, lengths, enforce_sorted=False)
    data, batch_sizes = packed.data, packed.batch_sizes
    torch.manual_seed(0)
    module = torch.nn.LSTM(input_size, hidden_size)
    weight_ih = module.weight_ih_l0.detach()
    weight_hh = module.weight_hh_l0.detach()
    bias = (module.bias_ih_l0 + module.bias_hh_l0).detach()
    h_0 = torch.zeros(batch, hidden_size)
    c_0 = torch.zeros(batch, hidden_size)
    forward = torch.ops.seqlstm.lstm_forward.default
    backward = torch.ops.seqlstm.lstm_backward.default

    def forward_and_backward():
        output, h_n, c_n, gates, cell = forward(
            data, batch_sizes, h_0, c_0, weight_ih, weight_hh, bias, None, algorithm
        )
        backward(torch.ones_like(output), torch.ones_like(h_n), torch.zeros_like(c_n), data,
                 batch_sizes, h_0, c_0, weight_ih, weight_hh, None, output, gates, cell,
                 algorithm)

    return time_call(forward_and_backward, min_seconds, clock)


def run_cpu(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
          f"forward+backward, median {args.clock} ms per call; algorithm={args.algorithm}")
    header = ["N", "L", "H_in", "H", "torch packed", "torch padded", "seqlstm packed",
              "seqlstm lengths", "seqlstm prepacked", "ratio", "GEMM floor", "bound",
              "kernels"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for shape in args.shapes:
        check, variants = make_variants(shape, args.algorithm)
        check()
        times = {
            name: time_call(function, args.seconds, clock) for name, function in variants.items()
        }
        fastest_torch = min(times["torch packed"], times["torch padded"])
        ratio = fastest_torch / min(times["seqlstm packed"], times["seqlstm lengths"])
        cells = [str(size) for size in shape]
        cells += [f"{times[name] * 1e3:.3f}" for name in variants]
        cells.append(f"{ratio:.2f}x")
        floor = gemm_floor(shape, args.seconds, clock)
        cells += [f"{floor * 1e3:.3f}", f"{fastest_torch / floor:.2f}x"]
        kernels = kernel_time(shape, args.algorithm, args.seconds, clock)
        cells.append(f"{kernels * 1e3:.3f}")
        print("| " + " | ".join(cells) + " |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: torch's own choice)")
    parser.add_argument("--algorithm", type=int, default=0, choices=[0, 1, 2],
                        help="seqlstm.LSTM.algorithm: 0 by shape, 1 per-step, 2 small-hidden")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: elapsed time; cpu: the process's CPU time, steadier "
                        "on a machine shared with other work")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="minimum time spent timing each variant of each shape")
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=DEFAULT_SHAPES,
                        metavar="N,L,H_in,H")
    args = parser.parse_args()
    if args.device == "cuda":
        try:
            from bench_lstm_cuda import run
        except ImportError as error:
            raise SystemExit(
                f"--device cuda needs bench/bench_lstm_cuda.py, which failed to import: {error}"
            ) from error
        run(args)
    else:
        run_cpu(args)


if __name__ == "__main__":
    main()
