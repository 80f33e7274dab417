// LSTM forward and backward over a packed batch on CUDA: the host entry points, the
// per-step path (algorithm 1) and the GEMMs both paths share. The contract is in ops.h,
// the cell math in lstm_cell.h, and the persistent small-hidden path (algorithm 2) in
// lstm_persistent_cuda.cu.
//
// Both paths start the forward pass with one GEMM that projects the input of every step
// into the gates buffer (total, 4*H), bias included. The per-step path then runs, for
// each step t, one cuBLAS GEMM that adds h_{t-1} W_hh^T to the active rows (the first
// batch_sizes[t]) and one fused kernel for the gate activations and the state update.
// Its backward pass runs one fused kernel and one GEMM per step in reverse, collecting
// the gate gradients of all steps, and ends with a few large GEMMs for the input and
// weight gradients. float16 and bfloat16 tensors are computed with float32 arithmetic
// (ATen's opmath type) and rounded when stored.
//
// NOTE: these kernels have been compiled for sm_90 but not yet run on a GPU;
// tests/test_cuda_lstm.py and bench/gpu_check.sh check them where a GPU is present.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "../common/checks.h"
#include "../common/lstm_calls.h"
#include "../common/lstm_cell.h"
#include "../common/ops.h"

namespace seqlstm {

// The persistent small-hidden path, defined in lstm_persistent_cuda.cu. Each function
// runs the whole recurrence in one kernel launch. On entry to the forward pass, `gates`
// contains x W_ih^T + bias. The backward pass fills the same stacks as the per-step path.
void lstm_forward_persistent_cuda(const LstmSizes& sizes, const at::Tensor& batch_sizes_device,
                                  const at::Tensor& h_0, const at::Tensor& c_0,
                                  const at::Tensor& weight_hh, const at::Tensor& weight_hr,
                                  at::Tensor& output, at::Tensor& h_n, at::Tensor& c_n,
                                  at::Tensor& gates, at::Tensor& cell);
void lstm_backward_persistent_cuda(
    const LstmSizes& sizes, const at::Tensor& batch_sizes_device, const at::Tensor& grad_output,
    const at::Tensor& grad_h_n, const at::Tensor& grad_c_n, const at::Tensor& h_0,
    const at::Tensor& c_0, const at::Tensor& weight_hh, const at::Tensor& weight_hr,
    const at::Tensor& output, const at::Tensor& gates, const at::Tensor& cell,
    at::Tensor& grad_gates, at::Tensor& h_prev_stacked, at::Tensor& hidden_stacked,
    at::Tensor& grad_hidden_stacked, at::Tensor& grad_h_0, at::Tensor& grad_c_0);

namespace {

// The persistent kernels give each hidden unit of a row its own thread in one block.
constexpr int64_t kPersistentMaxHidden = 1024;
// NOTE: this crossover is an estimate, not a measurement. At H = 128, float16 recurrent
// weights fit in the 227 KiB of shared memory of an H100 or H200 block, but float32
// ones without a projection (256 KiB) do not and are read through the L1 cache.
constexpr int64_t kPersistentDefaultMaxHidden = 128;

constexpr int kPointwiseThreads = 256;

unsigned int pointwise_blocks(int64_t elements) {
  return static_cast<unsigned int>((elements + kPointwiseThreads - 1) / kPointwiseThreads);
}

// Forward gate math of one step, one thread per (row, hidden unit).
template <typename scalar_t>
__global__ void lstm_step_forward_kernel(
    scalar_t* __restrict__ gates,         // (batch, 4*H): pre-activations in, gates out
    const scalar_t* __restrict__ c_prev,  // (batch, H): c_0 or the previous step's cell
    scalar_t* __restrict__ cell,          // (batch, H): c_t
    scalar_t* __restrict__ hidden,        // (batch, H): r_t, the output rows without projection
    scalar_t* __restrict__ h_n,           // (N, H), or nullptr with a projection
    scalar_t* __restrict__ c_n,           // (N, H)
    int64_t batch, int64_t next_batch, int64_t hidden_size) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= batch * hidden_size) {
    return;
  }
  const int64_t row = index / hidden_size;
  const int64_t unit = index % hidden_size;
  scalar_t* z = gates + row * kNumGates * hidden_size + unit;

  const GateValues<acc_t> gate = activate_gates<acc_t>(
      acc_t(z[kInputGate * hidden_size]), acc_t(z[kForgetGate * hidden_size]),
      acc_t(z[kCellGate * hidden_size]), acc_t(z[kOutputGate * hidden_size]));
  acc_t r;
  const acc_t c = cell_forward(gate, acc_t(c_prev[index]), &r);

  z[kInputGate * hidden_size] = scalar_t(gate.i);
  z[kForgetGate * hidden_size] = scalar_t(gate.f);
  z[kCellGate * hidden_size] = scalar_t(gate.g);
  z[kOutputGate * hidden_size] = scalar_t(gate.o);
  cell[index] = scalar_t(c);
  hidden[index] = scalar_t(r);
  // Rows from next_batch on take their last step here.
  if (row >= next_batch) {
    c_n[index] = scalar_t(c);
    if (h_n != nullptr) {
      h_n[index] = scalar_t(r);
    }
  }
}

// Backward gate math of one step, one thread per (row, hidden unit). The gradient with
// respect to r_t is grad_output[row] (when given) plus carried[row] for rows below
// carry_rows and grad_h_n[row] for the others, whose last step this is. dc carries the
// gradient with respect to c_t in from step t+1 and leaves with that of c_{t-1}. The
// kernel also stacks h_{t-1} and r_t for the weight gradients computed after the loop.
template <typename scalar_t, typename acc_t>
__global__ void lstm_step_backward_kernel(
    const scalar_t* __restrict__ gates,        // (batch, 4*H) of this step
    const scalar_t* __restrict__ cell,         // (batch, H): c_t
    const scalar_t* __restrict__ c_prev,       // (batch, H): c_{t-1}
    const scalar_t* __restrict__ grad_output,  // (batch, H), or nullptr
    const scalar_t* __restrict__ carried,      // (>= carry_rows, H)
    const scalar_t* __restrict__ grad_h_n,     // (N, H), or nullptr when carry_rows = batch
    int64_t carry_rows,
    acc_t* __restrict__ dc,                    // (N, H)
    const scalar_t* __restrict__ grad_c_n,     // (N, H)
    int64_t next_batch,
    const scalar_t* __restrict__ h_prev,       // (batch, P): h_0 or the previous step's output
    scalar_t* __restrict__ h_prev_stacked,     // (batch, P): this step's rows of the stack
    scalar_t* __restrict__ hidden_stacked,     // (batch, H): r_t, or nullptr
    scalar_t* __restrict__ grad_gates,         // (batch, 4*H)
    int64_t batch, int64_t hidden_size, int64_t proj_size) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= batch * hidden_size) {
    return;
  }
  const int64_t row = index / hidden_size;
  const int64_t unit = index % hidden_size;
  const int64_t gate_index = row * kNumGates * hidden_size + unit;

  const GateValues<acc_t> gate{acc_t(gates[gate_index + kInputGate * hidden_size]),
                               acc_t(gates[gate_index + kForgetGate * hidden_size]),
                               acc_t(gates[gate_index + kCellGate * hidden_size]),
                               acc_t(gates[gate_index + kOutputGate * hidden_size])};
  const acc_t c = cell[index];
  acc_t dr = row < carry_rows ? acc_t(carried[index]) : acc_t(grad_h_n[index]);
  if (grad_output != nullptr) {
    dr += acc_t(grad_output[index]);
  }
  const acc_t dc_next = row < next_batch ? dc[index] : acc_t(grad_c_n[index]);

  const CellGrad<acc_t> grad = cell_backward(gate, c, acc_t(c_prev[index]), dr, dc_next);

  grad_gates[gate_index + kInputGate * hidden_size] = scalar_t(grad.dz_i);
  grad_gates[gate_index + kForgetGate * hidden_size] = scalar_t(grad.dz_f);
  grad_gates[gate_index + kCellGate * hidden_size] = scalar_t(grad.dz_g);
  grad_gates[gate_index + kOutputGate * hidden_size] = scalar_t(grad.dz_o);
  dc[index] = grad.dc_prev;
  for (int64_t p = unit; p < proj_size; p += hidden_size) {
    h_prev_stacked[row * proj_size + p] = h_prev[row * proj_size + p];
  }
  if (hidden_stacked != nullptr) {
    hidden_stacked[index] = scalar_t(gate.o * std::tanh(c));
  }
}

// grad_hidden[row] = grad_output[row] + (carried[row] below next_batch, else grad_h_n[row]):
// the gradient with respect to the projected h_t of one step, all (batch, P).
template <typename scalar_t>
__global__ void combine_hidden_grad_kernel(const scalar_t* __restrict__ grad_output,
                                           const scalar_t* __restrict__ carried,
                                           const scalar_t* __restrict__ grad_h_n,
                                           scalar_t* __restrict__ grad_hidden, int64_t batch,
                                           int64_t next_batch, int64_t proj_size) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= batch * proj_size) {
    return;
  }
  const int64_t row = index / proj_size;
  const acc_t from_later = row < next_batch ? acc_t(carried[index]) : acc_t(grad_h_n[index]);
  grad_hidden[index] = scalar_t(acc_t(grad_output[index]) + from_later);
}

enum class Algorithm : int64_t { kByShape = 0, kPerStep = 1, kSmallHidden = 2 };

Algorithm resolve_algorithm(int64_t algorithm, const LstmSizes& sizes) {
  TORCH_CHECK_VALUE(algorithm >= 0 && algorithm <= 2,
                    "algorithm must be 0 (pick by shape), 1 (per-step path) or 2 (small-hidden "
                    "path), got ",
                    algorithm);
  if (algorithm == 2) {
    TORCH_CHECK_VALUE(sizes.hidden_size <= kPersistentMaxHidden,
                      "algorithm 2 (small-hidden path) supports hidden_size up to ",
                      kPersistentMaxHidden, " on CUDA, got ", sizes.hidden_size,
                      "; use algorithm 0 or 1");
  }
  if (algorithm != 0) {
    return static_cast<Algorithm>(algorithm);
  }
  return sizes.hidden_size <= kPersistentDefaultMaxHidden ? Algorithm::kSmallHidden
                                                          : Algorithm::kPerStep;
}

// Start row of each step in the packed layout: offsets[t] = sum(batch_sizes[:t]).
std::vector<int64_t> step_offsets(const int64_t* batch_size, int64_t num_steps) {
  std::vector<int64_t> offsets(num_steps + 1, 0);
  for (int64_t t = 0; t < num_steps; ++t) {
    offsets[t + 1] = offsets[t] + batch_size[t];
  }
  return offsets;
}

// Forward of the per-step path. On entry, `gates` contains x W_ih^T + bias.
// NOTE: each step's GEMMs go through ATen, which adds a few microseconds of dispatch per
// call. Calling cuBLAS directly would avoid it, but torch 2.14's libtorch_cuda does not
// export at::cuda::blas::gemm, and linking cuBLAS ourselves would tie the build to it.
template <typename scalar_t>
void lstm_forward_per_step(const LstmSizes& sizes, const int64_t* batch_size,
                           const at::Tensor& h_0, const at::Tensor& c_0,
                           const at::Tensor& weight_hh, const at::Tensor& weight_hr,
                           at::Tensor& output, at::Tensor& h_n, at::Tensor& c_n,
                           at::Tensor& gates, at::Tensor& cell) {
  const int64_t H = sizes.hidden_size;
  const int64_t num_steps = sizes.num_steps;
  const bool projection = weight_hr.defined();
  const std::vector<int64_t> offsets = step_offsets(batch_size, num_steps);
  const at::Tensor weight_hh_t = weight_hh.t();
  const at::Tensor weight_hr_t = projection ? weight_hr.t() : at::Tensor();
  // r_t before the projection; without one, r_t is the output itself.
  at::Tensor hidden = projection ? at::empty({sizes.batch_size, H}, output.options()) : output;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  for (int64_t t = 0; t < num_steps; ++t) {
    const int64_t batch = batch_size[t];
    const int64_t next_batch = t + 1 < num_steps ? batch_size[t + 1] : 0;
    const int64_t offset = offsets[t];
    at::Tensor z = gates.narrow(0, offset, batch);
    const at::Tensor h_prev = t == 0 ? h_0 : output.narrow(0, offsets[t - 1], batch);
    z.addmm_(h_prev, weight_hh_t);

    const scalar_t* c_prev = t == 0 ? c_0.const_data_ptr<scalar_t>()
                                    : cell.const_data_ptr<scalar_t>() + offsets[t - 1] * H;
    scalar_t* hidden_step = hidden.data_ptr<scalar_t>() + (projection ? 0 : offset * H);
    lstm_step_forward_kernel<scalar_t>
        <<<pointwise_blocks(batch * H), kPointwiseThreads, 0, stream>>>(
            z.data_ptr<scalar_t>(), c_prev, cell.data_ptr<scalar_t>() + offset * H, hidden_step,
            projection ? nullptr : h_n.data_ptr<scalar_t>(), c_n.data_ptr<scalar_t>(), batch,
            next_batch, H);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    if (projection) {
      at::Tensor output_step = output.narrow(0, offset, batch);
      at::mm_out(output_step, hidden.narrow(0, 0, batch), weight_hr_t);
      if (next_batch < batch) {
        h_n.narrow(0, next_batch, batch - next_batch)
            .copy_(output_step.narrow(0, next_batch, batch - next_batch));
      }
    }
  }
}

// Workspace that the backward loop of either path fills and the final GEMMs read.
struct BackwardStacks {
  at::Tensor grad_gates;   // (total, 4*H): gradient with respect to the pre-activations z
  at::Tensor h_prev;       // (total, P): h_{t-1} of every row, for grad_weight_hh
  at::Tensor hidden;       // (total, H): r_t, for grad_weight_hr; undefined without projection
  at::Tensor grad_hidden;  // (total, P): gradient of h_t, for grad_weight_hr; same
};

BackwardStacks make_backward_stacks(const LstmSizes& sizes, bool projection,
                                    const at::TensorOptions& options) {
  BackwardStacks stacks;
  stacks.grad_gates = at::empty({sizes.total, 4 * sizes.hidden_size}, options);
  stacks.h_prev = at::empty({sizes.total, sizes.proj_size}, options);
  if (projection) {
    stacks.hidden = at::empty({sizes.total, sizes.hidden_size}, options);
    stacks.grad_hidden = at::empty({sizes.total, sizes.proj_size}, options);
  }
  return stacks;
}

// Backward loop of the per-step path. Writes the stacks, grad_h_0 and grad_c_0.
template <typename scalar_t>
void lstm_backward_per_step(const LstmSizes& sizes, const int64_t* batch_size,
                            const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                            const at::Tensor& grad_c_n, const at::Tensor& h_0,
                            const at::Tensor& c_0, const at::Tensor& weight_hh,
                            const at::Tensor& weight_hr, const at::Tensor& output,
                            const at::Tensor& gates, const at::Tensor& cell,
                            BackwardStacks& stacks, at::Tensor& grad_h_0,
                            at::Tensor& grad_c_0) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = sizes.hidden_size;
  const int64_t P = sizes.proj_size;
  const int64_t num_steps = sizes.num_steps;
  const bool projection = weight_hr.defined();
  const std::vector<int64_t> offsets = step_offsets(batch_size, num_steps);
  const auto options = output.options();
  // dc: gradient with respect to c_t, then c_{t-1}, kept in the accumulation type.
  at::Tensor dc = at::empty({sizes.batch_size, H}, options.dtype(at::toOpMathType(
                                                        output.scalar_type())));
  // Gradient with respect to r_t of one step when a projection comes between r_t and h_t.
  at::Tensor grad_raw = projection ? at::empty({sizes.batch_size, H}, options) : at::Tensor();
  // grad_h_0 carries dz_t W_hh, the gradient with respect to h_{t-1}, from step to step;
  // after step 0 it is the result.
  scalar_t* carried = grad_h_0.data_ptr<scalar_t>();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  for (int64_t t = num_steps - 1; t >= 0; --t) {
    const int64_t batch = batch_size[t];
    const int64_t next_batch = t + 1 < num_steps ? batch_size[t + 1] : 0;
    const int64_t offset = offsets[t];

    const scalar_t* step_grad_output = grad_output.const_data_ptr<scalar_t>() + offset * P;
    const scalar_t* step_carried = carried;
    const scalar_t* step_grad_h_n = grad_h_n.const_data_ptr<scalar_t>();
    int64_t carry_rows = next_batch;
    if (projection) {
      // Fold grad_output and the carried gradient into the gradient of h_t, then pull
      // it back through the projection: grad_raw = grad_hidden W_hr.
      at::Tensor grad_hidden_step = stacks.grad_hidden.narrow(0, offset, batch);
      combine_hidden_grad_kernel<scalar_t>
          <<<pointwise_blocks(batch * P), kPointwiseThreads, 0, stream>>>(
              step_grad_output, carried, grad_h_n.const_data_ptr<scalar_t>(),
              grad_hidden_step.data_ptr<scalar_t>(), batch, next_batch, P);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      at::Tensor grad_raw_step = grad_raw.narrow(0, 0, batch);
      at::mm_out(grad_raw_step, grad_hidden_step, weight_hr);
      step_grad_output = nullptr;
      step_carried = grad_raw.const_data_ptr<scalar_t>();
      step_grad_h_n = nullptr;
      carry_rows = batch;
    }

    const scalar_t* c_prev = t == 0 ? c_0.const_data_ptr<scalar_t>()
                                    : cell.const_data_ptr<scalar_t>() + offsets[t - 1] * H;
    const scalar_t* h_prev = t == 0 ? h_0.const_data_ptr<scalar_t>()
                                    : output.const_data_ptr<scalar_t>() + offsets[t - 1] * P;
    lstm_step_backward_kernel<scalar_t, acc_t>
        <<<pointwise_blocks(batch * H), kPointwiseThreads, 0, stream>>>(
            gates.const_data_ptr<scalar_t>() + offset * 4 * H,
            cell.const_data_ptr<scalar_t>() + offset * H, c_prev, step_grad_output,
            step_carried, step_grad_h_n, carry_rows, dc.data_ptr<acc_t>(),
            grad_c_n.const_data_ptr<scalar_t>(), next_batch, h_prev,
            stacks.h_prev.data_ptr<scalar_t>() + offset * P,
            projection ? stacks.hidden.data_ptr<scalar_t>() + offset * H : nullptr,
            stacks.grad_gates.data_ptr<scalar_t>() + offset * 4 * H, batch, H, P);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    at::Tensor carried_step = grad_h_0.narrow(0, 0, batch);
    at::mm_out(carried_step, stacks.grad_gates.narrow(0, offset, batch), weight_hh);
  }
  grad_c_0.copy_(dc);
}

// The pinned host copy keeps the transfer asynchronous; the caching host allocator does
// not reuse the buffer before the copy has run.
at::Tensor batch_sizes_on_device(const at::Tensor& batch_sizes, const at::Device& device) {
  at::Tensor pinned = at::empty(batch_sizes.sizes(),
                                batch_sizes.options().pinned_memory(true));
  pinned.copy_(batch_sizes);
  return pinned.to(device, /*non_blocking=*/true);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_cuda(
    const at::Tensor& input_arg, const at::Tensor& batch_sizes_arg, const at::Tensor& h_0_arg,
    const at::Tensor& c_0_arg, const at::Tensor& weight_ih_arg, const at::Tensor& weight_hh_arg,
    const std::optional<at::Tensor>& bias_arg, const std::optional<at::Tensor>& weight_hr_arg,
    int64_t algorithm_arg) {
  const at::Tensor bias_given = bias_arg.value_or(at::Tensor());
  const at::Tensor weight_hr_given = weight_hr_arg.value_or(at::Tensor());
  const LstmSizes sizes = check_lstm_args(input_arg, batch_sizes_arg, h_0_arg, c_0_arg,
                                          weight_ih_arg, weight_hh_arg, bias_given,
                                          weight_hr_given);
  check_device_type(input_arg, "input", c10::DeviceType::CUDA);
  const Algorithm algorithm = resolve_algorithm(algorithm_arg, sizes);
  const c10::cuda::CUDAGuard device_guard(input_arg.device());
  LstmForwardCall call = prepare_lstm_forward(sizes, input_arg, batch_sizes_arg, h_0_arg,
                                              c_0_arg, weight_ih_arg, weight_hh_arg, bias_arg,
                                              weight_hr_arg);
  const LstmArgs& args = call.args;

  // The input projection of every step in one GEMM, bias included.
  if (call.bias.defined()) {
    at::addmm_out(call.gates, call.bias, args.input, args.weight_ih.t());
  } else {
    at::mm_out(call.gates, args.input, args.weight_ih.t());
  }

  const int64_t* batch_size = args.batch_sizes.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.input.scalar_type(),
                                  "lstm_forward_cuda", [&] {
    if (algorithm == Algorithm::kPerStep) {
      lstm_forward_per_step<scalar_t>(sizes, batch_size, args.h_0, args.c_0, args.weight_hh,
                                      args.weight_hr, call.output, call.h_n, call.c_n,
                                      call.gates, call.cell);
    }
  });
  if (algorithm == Algorithm::kSmallHidden) {
    lstm_forward_persistent_cuda(
        sizes, batch_sizes_on_device(args.batch_sizes, args.input.device()), args.h_0,
        args.c_0, args.weight_hh, args.weight_hr, call.output, call.h_n, call.c_n, call.gates,
        call.cell);
  }
  return {call.output, call.h_n, call.c_n, call.gates, call.cell};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_backward_cuda(const at::Tensor& grad_output_arg, const at::Tensor& grad_h_n_arg,
                   const at::Tensor& grad_c_n_arg, const at::Tensor& input_arg,
                   const at::Tensor& batch_sizes_arg, const at::Tensor& h_0_arg,
                   const at::Tensor& c_0_arg, const at::Tensor& weight_ih_arg,
                   const at::Tensor& weight_hh_arg,
                   const std::optional<at::Tensor>& weight_hr_arg, const at::Tensor& output_arg,
                   const at::Tensor& gates_arg, const at::Tensor& cell_arg,
                   int64_t algorithm_arg) {
  const at::Tensor weight_hr_given = weight_hr_arg.value_or(at::Tensor());
  const LstmSizes sizes = check_lstm_args(input_arg, batch_sizes_arg, h_0_arg, c_0_arg,
                                          weight_ih_arg, weight_hh_arg, at::Tensor(),
                                          weight_hr_given);
  check_lstm_backward_args(sizes, input_arg, grad_output_arg, grad_h_n_arg, grad_c_n_arg,
                           output_arg, gates_arg, cell_arg);
  check_device_type(input_arg, "input", c10::DeviceType::CUDA);
  const Algorithm algorithm = resolve_algorithm(algorithm_arg, sizes);
  const c10::cuda::CUDAGuard device_guard(input_arg.device());
  LstmBackwardCall call = prepare_lstm_backward(
      sizes, grad_output_arg, grad_h_n_arg, grad_c_n_arg, input_arg, batch_sizes_arg, h_0_arg,
      c_0_arg, weight_ih_arg, weight_hh_arg, weight_hr_arg, output_arg, gates_arg, cell_arg);
  const LstmArgs& args = call.args;

  const auto options = args.input.options();
  const bool projection = args.weight_hr.defined();
  BackwardStacks stacks = make_backward_stacks(sizes, projection, options);

  const int64_t* batch_size = args.batch_sizes.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.input.scalar_type(),
                                  "lstm_backward_cuda", [&] {
    if (algorithm == Algorithm::kPerStep) {
      lstm_backward_per_step<scalar_t>(sizes, batch_size, call.grad_output, call.grad_h_n,
                                       call.grad_c_n, args.h_0, args.c_0, args.weight_hh,
                                       args.weight_hr, call.output, call.gates, call.cell,
                                       stacks, call.grad_h_0, call.grad_c_0);
    }
  });
  if (algorithm == Algorithm::kSmallHidden) {
    lstm_backward_persistent_cuda(
        sizes, batch_sizes_on_device(args.batch_sizes, args.input.device()), call.grad_output,
        call.grad_h_n, call.grad_c_n, args.h_0, args.c_0, args.weight_hh, args.weight_hr,
        call.output, call.gates, call.cell, stacks.grad_gates, stacks.h_prev, stacks.hidden,
        stacks.grad_hidden, call.grad_h_0, call.grad_c_0);
  }

  // The input and weight gradients as large GEMMs over all steps at once.
  at::Tensor grad_input = stacks.grad_gates.mm(args.weight_ih);
  at::Tensor grad_weight_ih = stacks.grad_gates.t().mm(args.input);
  at::Tensor grad_weight_hh = stacks.grad_gates.t().mm(stacks.h_prev);
  at::Tensor grad_bias = stacks.grad_gates.sum(0);
  at::Tensor grad_weight_hr =
      projection ? stacks.grad_hidden.t().mm(stacks.hidden) : at::empty({0}, options);
  return {grad_input, call.grad_h_0, call.grad_c_0, grad_weight_ih, grad_weight_hh, grad_bias,
          grad_weight_hr};
}

}  // namespace seqlstm

TORCH_LIBRARY_IMPL(seqlstm, CUDA, m) {
  m.impl("lstm_forward", &seqlstm::lstm_forward_cuda);
  m.impl("lstm_backward", &seqlstm::lstm_backward_cuda);
}
