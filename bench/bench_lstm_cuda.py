"""Time seqlstm.LSTM against cuDNN's torch.nn.LSTM on a GPU, forward and forward+backward.

For each shape (N, L, H_in, H) the sequence lengths are drawn uniformly from 1..L with
a fixed seed, the longest set to L. The variants are

  cudnn padded    torch.nn.LSTM over the padded (L, N, H_in) tensor, lengths ignored,
                  which lets cuDNN use its persistent algorithm for small H
  cudnn packed    torch.nn.LSTM over a PackedSequence (cuDNN's per-step algorithm)
  seqlstm         seqlstm.LSTM over the same PackedSequence, with --algorithm
  seqlstm alg1    the same, forcing the per-step path
  seqlstm alg2    the same, forcing the persistent small-hidden path

Packing happens once, outside the timed region. Times are GPU milliseconds per call
from CUDA events around a loop of calls, after a warm-up call; float32 with TF32 off
for matmuls and cuDNN. The ratios are the faster cuDNN time over the seqlstm time.

Before timing a shape, seqlstm's CUDA results (outputs and every gradient) are checked
against seqlstm's CPU operators in float64 on the first 30 steps, and against cuDNN on
the full shape. A failed check is printed, recorded in the JSON and makes the exit
status 1; the shape is then not timed.

Usage: python bench/bench_lstm_cuda.py [--algorithm A] [--seconds S] [--shapes N,L,H_in,H ...]
       [--json PATH]. bench/bench_lstm.py --device cuda calls run() with its own arguments.
"""

import argparse
import json
import os
import sys
import time

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import seqlstm  # noqa: E402

SEED_SHAPES = [(batch, steps, 50, 25) for batch in (1, 4, 16, 44, 64) for steps in (10, 20, 30)]
HIDDEN_SWEEP_SHAPES = [
    (batch, steps, hidden, hidden)
    for batch in (8, 64)
    for steps in (100, 1000)
    for hidden in (32, 64, 128, 256)
]
LARGE_SHAPE = (64, 100, 512, 512)
DEFAULT_SHAPES = SEED_SHAPES + HIDDEN_SWEEP_SHAPES + [LARGE_SHAPE]

# Goals: the faster cuDNN time over the seqlstm forward+backward time.
SEED_GOAL = 3.0
LARGE_GOAL = 1.0

DEVICE = "cuda"
CHECK_STEPS = 30  # steps of the float64 CPU check; the CPU path is slow on long shapes
CHECK_CPU_RTOL = 1e-4  # float32 against float64, relative to the largest value
CHECK_CUDNN_RTOL = 1e-3  # float32 against float32 over up to 1000 steps


def parse_shape(text):
    parts = tuple(int(part) for part in text.split(","))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"a shape is N,L,H_in,H, got {text!r}")
    return parts


def add_arguments(parser):
    parser.add_argument("--algorithm", type=int, default=0, choices=[0, 1, 2],
                        help="seqlstm.LSTM.algorithm of the 'seqlstm' variant")
    parser.add_argument("--seconds", type=float, default=0.2,
                        help="minimum GPU seconds spent timing each variant of each shape")
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=None,
                        metavar="N,L,H_in,H", help="default: the seed, sweep and large shapes")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")


def time_cuda(function, min_seconds):
    """Return the GPU milliseconds of one call, from CUDA events around a loop of calls."""
    function()  # warm-up: cuDNN plans, cuBLAS handles, the caching allocator
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    function()
    end.record()
    end.synchronize()
    once = max(start.elapsed_time(end), 1e-3)
    calls = int(min(max(3, min_seconds * 1e3 / once), 1000))
    start.record()
    for _ in range(calls):
        function()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


class Case:
    """Modules, inputs and upstream gradients of one shape on one device."""

    def __init__(self, shape, device, dtype=torch.float32, steps=None):
        batch, full_steps, input_size, hidden_size = shape
        generator = torch.Generator().manual_seed(0)
        lengths = torch.randint(1, full_steps + 1, (batch,), generator=generator)
        lengths[0] = full_steps
        padded = torch.randn(full_steps, batch, input_size, generator=generator)
        if steps is not None and steps < full_steps:
            lengths = lengths.clamp(max=steps)
            padded = padded[:steps]
        torch.manual_seed(0)
        self.reference = torch.nn.LSTM(input_size, hidden_size).to(device, dtype)
        self.ours = seqlstm.LSTM(input_size, hidden_size).to(device, dtype)
        self.ours.load_state_dict(self.reference.state_dict())

        # detach() gives leaves of their own even where to() returns its input unchanged.
        self.padded = padded.detach().to(device, dtype).requires_grad_()
        packed = pack_padded_sequence(padded, lengths, enforce_sorted=False)
        self.packed_data = packed.data.detach().to(device, dtype).requires_grad_()
        self.packed = PackedSequence(self.packed_data, packed.batch_sizes,
                                     packed.sorted_indices.to(device),
                                     packed.unsorted_indices.to(device))
        self.grad_packed = torch.randn(packed.data.shape[0], hidden_size,
                                       generator=generator).to(device, dtype)
        self.grad_padded = torch.randn(padded.shape[0], batch, hidden_size,
                                       generator=generator).to(device, dtype)
        self.grad_h_n = torch.randn(1, batch, hidden_size, generator=generator).to(device, dtype)

    def clear(self):
        for tensor in [self.padded, self.packed_data, *self.reference.parameters(),
                       *self.ours.parameters()]:
            tensor.grad = None

    def cudnn_padded(self, backward):
        if not backward:
            with torch.no_grad():
                return self.reference(self.padded)
        self.clear()
        output, (h_n, _) = self.reference(self.padded)
        torch.autograd.backward([output, h_n], [self.grad_padded, self.grad_h_n])

    def run_packed(self, module, backward):
        if not backward:
            with torch.no_grad():
                return module(self.packed)
        self.clear()
        output, (h_n, c_n) = module(self.packed)
        torch.autograd.backward([output.data, h_n], [self.grad_packed, self.grad_h_n])
        grads = [self.packed_data.grad] + [p.grad for p in module.parameters()]
        return [output.data, h_n, c_n] + grads


def compare(actual, expected, rtol):
    """Return the worst error relative to each tensor's largest value."""
    worst = 0.0
    for got, want in zip(actual, expected):
        got = got.detach().double().cpu()
        want = want.detach().double().cpu()
        scale = max(want.abs().max().item(), 1e-30)
        worst = max(worst, (got - want).abs().max().item() / scale)
    return worst


def check_shape(shape, algorithms):
    """Return None when every algorithm matches the CPU path and cuDNN, else a message."""
    cpu = Case(shape, "cpu", torch.float64, steps=CHECK_STEPS)
    expected_cpu = cpu.run_packed(cpu.ours, backward=True)
    for algorithm in algorithms:
        short = Case(shape, DEVICE, steps=CHECK_STEPS)
        short.ours.algorithm = algorithm
        error = compare(short.run_packed(short.ours, backward=True), expected_cpu, CHECK_CPU_RTOL)
        if error > CHECK_CPU_RTOL:
            return (f"algorithm {algorithm} differs from the CPU path by {error:.3g} "
                    f"(> {CHECK_CPU_RTOL}) of the largest value")
        full = Case(shape, DEVICE)
        full.ours.algorithm = algorithm
        expected = full.run_packed(full.reference, backward=True)
        error = compare(full.run_packed(full.ours, backward=True), expected, CHECK_CUDNN_RTOL)
        if error > CHECK_CUDNN_RTOL:
            return (f"algorithm {algorithm} differs from cuDNN by {error:.3g} "
                    f"(> {CHECK_CUDNN_RTOL}) of the largest value")
    return None


def time_shape(shape, algorithm, seconds):
    case = Case(shape, DEVICE)
    variants = {
        "cudnn padded": lambda backward: case.cudnn_padded(backward),
        "cudnn packed": lambda backward: case.run_packed(case.reference, backward),
        "seqlstm": lambda backward: case.run_packed(case.ours, backward),
    }

    def forced(forced_algorithm):
        def run(backward):
            saved = case.ours.algorithm
            case.ours.algorithm = forced_algorithm
            try:
                return case.run_packed(case.ours, backward)
            finally:
                case.ours.algorithm = saved
        return run

    variants["seqlstm alg1"] = forced(1)
    variants["seqlstm alg2"] = forced(2)
    case.ours.algorithm = algorithm
    times = {}
    for mode, backward in (("forward", False), ("forward+backward", True)):
        times[mode] = {name: time_cuda(lambda: run(backward), seconds)
                       for name, run in variants.items()}
    return times


def configure_precision():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False


def chosen_shapes(args):
    shapes = getattr(args, "shapes", None)
    # bench/bench_lstm.py passes its CPU shape list when no --shapes were given; the GPU
    # benchmark then runs its own list.
    caller_defaults = getattr(sys.modules.get("__main__"), "DEFAULT_SHAPES", None)
    if shapes is None or (shapes is caller_defaults and caller_defaults is not DEFAULT_SHAPES):
        return DEFAULT_SHAPES
    return shapes


def run(args):
    """Check and time every shape, print a table, write JSON when args.json is set, and
    exit with status 1 when a check failed."""
    if not torch.cuda.is_available():
        raise SystemExit("bench_lstm_cuda: no CUDA device is available")
    if not seqlstm.build_info()["cuda"]:
        raise SystemExit("bench_lstm_cuda: seqlstm was built without CUDA; rebuild with "
                         "SEQLSTM_CUDA=1")
    configure_precision()
    algorithm = getattr(args, "algorithm", 0)
    seconds = getattr(args, "seconds", 0.2)
    json_path = getattr(args, "json", None)
    shapes = chosen_shapes(args)
    device_name = torch.cuda.get_device_name()
    header = (f"# {device_name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"cuDNN {torch.backends.cudnn.version()}, float32, TF32 off, GPU ms per call "
              f"(CUDA events); seqlstm algorithm={algorithm}")
    print(header)
    names = ["cudnn padded", "cudnn packed", "seqlstm", "seqlstm alg1", "seqlstm alg2"]
    columns = ["N", "L", "H_in", "H", "mode"] + names + ["ratio"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns), flush=True)

    records = []
    failed = False
    for shape in shapes:
        record = {"shape": list(shape)}
        started = time.perf_counter()
        try:
            problem = check_shape(shape, sorted({algorithm, 1, 2}))
        except Exception as error:  # a kernel error must show in the report, not end it
            problem = f"check raised {type(error).__name__}: {error}"
        record["check"] = problem or "ok"
        if problem:
            failed = True
            print(f"| {' | '.join(map(str, shape))} | CHECK FAILED: {problem} |", flush=True)
            records.append(record)
            if json_path:
                write_json(json_path, device_name, algorithm, records)
            continue
        times = time_shape(shape, algorithm, seconds)
        for mode, by_variant in times.items():
            fastest_cudnn = min(by_variant["cudnn padded"], by_variant["cudnn packed"])
            ratio = fastest_cudnn / by_variant["seqlstm"]
            record[mode] = {"ms": by_variant, "ratio": ratio}
            cells = [str(size) for size in shape] + [mode]
            cells += [f"{by_variant[name]:.3f}" for name in names] + [f"{ratio:.2f}x"]
            print("| " + " | ".join(cells) + " |", flush=True)
        record["seconds"] = time.perf_counter() - started
        records.append(record)

        if json_path:
            # Rewritten after every shape, so a run cut short by a time limit keeps its
            # finished shapes.
            write_json(json_path, device_name, algorithm, records)

    summary = summarize(records)
    for line in summary["lines"]:
        print(line)
    if json_path:
        write_json(json_path, device_name, algorithm, records, complete=True)
    if failed:
        raise SystemExit("bench_lstm_cuda: a result check failed; see the table above")


def write_json(path, device_name, algorithm, records, complete=False):
    result = {
        "device": device_name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "dtype": "float32",
        "tf32": False,
        "algorithm": algorithm,
        "command": sys.argv,
        "complete": complete,
        "results": records,
        "goals": summarize(records)["goals"],
    }
    with open(path, "w") as file:
        json.dump(result, file, indent=1)


def summarize(records):
    """Compare the forward+backward ratios with the goals: the minimum over the seed
    shapes against SEED_GOAL and the large shape against LARGE_GOAL."""
    def ratios(shapes):
        wanted = {tuple(shape) for shape in shapes}
        return [record["forward+backward"]["ratio"] for record in records
                if tuple(record["shape"]) in wanted and "forward+backward" in record]

    goals = {}
    lines = []
    for name, shapes, goal in (("seed shapes", SEED_SHAPES, SEED_GOAL),
                               ("(64, 100, 512, 512)", [LARGE_SHAPE], LARGE_GOAL)):
        measured = ratios(shapes)
        if not measured:
            continue
        worst = min(measured)
        goals[name] = {"min_ratio": worst, "goal": goal, "met": worst >= goal}
        verdict = "met" if worst >= goal else "NOT met"
        lines.append(f"# {name}: min forward+backward ratio {worst:.2f}x, goal {goal:.0f}x "
                     f"{verdict}")
    return {"goals": goals, "lines": lines}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
