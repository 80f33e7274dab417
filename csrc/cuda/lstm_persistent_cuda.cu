// The persistent small-hidden LSTM path on CUDA (algorithm 2): one kernel launch runs
// every step of the forward pass, and one the backward pass.
//
// Rows of an LSTM batch never exchange data, so each block takes a contiguous slice of
// rows_per_block packed rows (sequences, sorted by length) for all steps and needs no
// synchronisation with other blocks. Thread (local_row, unit) of a block owns hidden
// unit `unit` of its row and keeps c (forward) or dc (backward) in a register. It
// computes the four gate pre-activations of its unit itself, so the cell math needs no
// data from other threads. The steps of a block synchronise with __syncthreads. The recurrent
// weights are copied into shared memory once per launch when they fit there (about 227
// KiB per block on an H100 or H200) and read through the L1 cache otherwise. Since
// sequences are sorted by length, a block whose first row has ended is done with the
// forward pass, and the backward pass skips the steps after its first row ends.
//
// The input projection and the weight gradients stay large cuBLAS GEMMs outside these
// kernels (see lstm_cuda.cu), so the kernels do only the O(H * P) work per row and step
// that the recurrence serialises.
//
// NOTE: these kernels have been compiled for sm_90 but not yet run on a GPU. A CPU
// transliteration of their index logic matched torch.nn.LSTM, and tests/test_cuda_lstm.py
// and bench/gpu_check.sh check the kernels themselves where a GPU is present.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "../common/checks.h"
#include "../common/lstm_cell.h"

namespace seqlstm {
namespace {

constexpr int kMaxThreads = 1024;

// Shared memory of one block: the per-row state in the accumulation type first, then
// the weights, so both start aligned to their types.
struct SharedLayout {
  size_t state_bytes = 0;
  size_t weight_bytes = 0;
  bool weights_in_shared = false;

  size_t total_bytes() const { return state_bytes + (weights_in_shared ? weight_bytes : 0); }
};

struct LaunchPlan {
  int rows_per_block = 1;
  int threads = 1;
  unsigned int blocks = 1;
  SharedLayout shared;
};

// Chooses rows per block so that the batch spreads over all multiprocessors, each with
// at most kMaxThreads threads, and puts the weights in shared memory when they fit.
// state_per_row and weight_elements count elements of acc_t and scalar_t.
LaunchPlan plan_launch(const LstmSizes& sizes, size_t scalar_bytes, size_t acc_bytes,
                       int64_t state_per_row, int64_t weight_elements) {
  const cudaDeviceProp* properties = at::cuda::getCurrentDeviceProperties();
  const int64_t H = sizes.hidden_size;
  const int64_t max_rows = std::max<int64_t>(1, kMaxThreads / H);
  const int64_t spread_rows =
      (sizes.batch_size + properties->multiProcessorCount - 1) / properties->multiProcessorCount;

  LaunchPlan plan;
  plan.rows_per_block = static_cast<int>(std::clamp<int64_t>(spread_rows, 1, max_rows));
  plan.threads = static_cast<int>(plan.rows_per_block * H);
  plan.blocks = static_cast<unsigned int>((sizes.batch_size + plan.rows_per_block - 1) /
                                          plan.rows_per_block);
  plan.shared.state_bytes = plan.rows_per_block * state_per_row * acc_bytes;
  plan.shared.weight_bytes = weight_elements * scalar_bytes;
  const size_t limit = properties->sharedMemPerBlockOptin;
  plan.shared.weights_in_shared = plan.shared.state_bytes + plan.shared.weight_bytes <= limit;
  TORCH_CHECK(plan.shared.total_bytes() <= limit, "the small-hidden LSTM path needs ",
              plan.shared.total_bytes(), " bytes of shared memory per block for hidden_size = ",
              H, " and proj_size = ", sizes.proj_size, ", but the device has ", limit,
              "; use algorithm 1");
  return plan;
}

// Kernels that use more than 48 KiB of dynamic shared memory must opt in first.
template <typename Kernel>
void allow_shared_bytes(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  }
}

// Copies `count` elements from global into shared memory with all threads of the block,
// or returns the global pointer when the weights stay there.
template <typename scalar_t>
__device__ const scalar_t* stage_weights(const scalar_t* __restrict__ source, int64_t count,
                                         scalar_t* shared, bool in_shared) {
  if (!in_shared) {
    return source;
  }
  for (int64_t e = threadIdx.x; e < count; e += blockDim.x) {
    shared[e] = source[e];
  }
  return shared;
}

// Forward recurrence. Shared memory: h_state[2][rows][P] (double-buffered h_{t-1} and
// h_t), with a projection raw[rows][H] (r_t), then W_hh^T (P, 4*H) and, with a
// projection, W_hr^T (H, P). The transposed layouts let the lanes of a warp, which hold
// consecutive units, read consecutive weights.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxThreads) lstm_persistent_forward_kernel(
    const int64_t* __restrict__ batch_sizes,   // (L,)
    int64_t num_steps,
    const scalar_t* __restrict__ h_0,          // (N, P)
    const scalar_t* __restrict__ c_0,          // (N, H)
    const scalar_t* __restrict__ weight_hh_t,  // (P, 4*H)
    const scalar_t* __restrict__ weight_hr_t,  // (H, P), or nullptr
    scalar_t* __restrict__ gates,              // (total, 4*H): x W_ih^T + bias in, gates out
    scalar_t* __restrict__ cell,               // (total, H)
    scalar_t* __restrict__ output,             // (total, P)
    scalar_t* __restrict__ h_n,                // (N, P)
    scalar_t* __restrict__ c_n,                // (N, H)
    int hidden_size, int proj_size, int rows_per_block, bool weights_in_shared) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const int H = hidden_size;
  const int P = proj_size;
  const int G = kNumGates * H;
  const bool projection = weight_hr_t != nullptr;

  acc_t* h_state = reinterpret_cast<acc_t*>(shared_bytes);  // [2][rows][P]
  acc_t* raw = h_state + 2 * rows_per_block * P;              // [rows][H] with projection
  scalar_t* shared_weights =
      reinterpret_cast<scalar_t*>(raw + (projection ? rows_per_block * H : 0));
  const scalar_t* w_hh = stage_weights(weight_hh_t, int64_t(P) * G, shared_weights,
                                       weights_in_shared);
  const scalar_t* w_hr =
      projection ? stage_weights(weight_hr_t, int64_t(H) * P, shared_weights + int64_t(P) * G,
                                 weights_in_shared)
                 : nullptr;

  const int local_row = threadIdx.x / H;
  const int unit = threadIdx.x % H;
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t row = first_row + local_row;
  const int64_t batch_size = batch_sizes[0];

  acc_t c = row < batch_size ? acc_t(c_0[row * H + unit]) : acc_t(0);
  for (int p = unit; p < P; p += H) {
    h_state[local_row * P + p] = row < batch_size ? acc_t(h_0[row * P + p]) : acc_t(0);
  }
  __syncthreads();

  int64_t offset = 0;  // first packed row of step t
  int buffer = 0;
  for (int64_t t = 0; t < num_steps; ++t) {
    const int64_t batch = batch_sizes[t];
    // The same for every thread of the block, so no thread skips a __syncthreads.
    if (batch <= first_row) {
      break;
    }
    const int64_t next_batch = t + 1 < num_steps ? batch_sizes[t + 1] : 0;
    const bool active = row < batch;
    const bool last_step = row >= next_batch;
    const acc_t* h_prev = h_state + (buffer * rows_per_block + local_row) * P;
    acc_t* h_next = h_state + ((buffer ^ 1) * rows_per_block + local_row) * P;
    const int64_t packed_row = offset + row;

    if (active) {
      // The sums start from zero and the input projection joins them after the loop, so
      // its global loads overlap the loop instead of delaying its first multiply-add.
      scalar_t* z = gates + packed_row * G + unit;
      const scalar_t x_i = z[kInputGate * H];
      const scalar_t x_f = z[kForgetGate * H];
      const scalar_t x_g = z[kCellGate * H];
      const scalar_t x_o = z[kOutputGate * H];
      acc_t sum_i = 0;
      acc_t sum_f = 0;
      acc_t sum_g = 0;
      acc_t sum_o = 0;
#pragma unroll 4
      for (int k = 0; k < P; ++k) {
        const acc_t h = h_prev[k];
        const scalar_t* w = w_hh + k * G + unit;
        sum_i += acc_t(w[kInputGate * H]) * h;
        sum_f += acc_t(w[kForgetGate * H]) * h;
        sum_g += acc_t(w[kCellGate * H]) * h;
        sum_o += acc_t(w[kOutputGate * H]) * h;
      }
      const GateValues<acc_t> gate = activate_gates(acc_t(x_i) + sum_i, acc_t(x_f) + sum_f,
                                                    acc_t(x_g) + sum_g, acc_t(x_o) + sum_o);
      acc_t r;
      c = cell_forward(gate, c, &r);

      z[kInputGate * H] = scalar_t(gate.i);
      z[kForgetGate * H] = scalar_t(gate.f);
      z[kCellGate * H] = scalar_t(gate.g);
      z[kOutputGate * H] = scalar_t(gate.o);
      cell[packed_row * H + unit] = scalar_t(c);
      if (last_step) {
        c_n[row * H + unit] = scalar_t(c);
      }
      if (projection) {
        raw[local_row * H + unit] = r;
      } else {
        h_next[unit] = r;
        output[packed_row * P + unit] = scalar_t(r);
        if (last_step) {
          h_n[row * P + unit] = scalar_t(r);
        }
      }
    }

    if (projection) {
      __syncthreads();  // raw of the whole row is written.
      if (active) {
        for (int p = unit; p < P; p += H) {
          acc_t h = 0;
          for (int k = 0; k < H; ++k) {
            h += acc_t(w_hr[k * P + p]) * raw[local_row * H + k];
          }
          h_next[p] = h;
          output[packed_row * P + p] = scalar_t(h);
          if (last_step) {
            h_n[row * P + p] = scalar_t(h);
          }
        }
      }
    }
    __syncthreads();  // h_t of the whole row is written before step t+1 reads it.
    buffer ^= 1;
    offset += batch;
  }
}

// Backward recurrence, steps in reverse. Shared memory: carried[rows][P] (dz_{t+1} W_hh,
// the gradient with respect to h_t from step t+1), grad_z[rows][4*H], with a projection
// grad_h[rows][P] (the gradient with respect to h_t), then W_hh (4*H, P) and, with a
// projection, W_hr (P, H), both as stored. The kernel writes every row of grad_gates,
// h_prev_stacked and, with a projection, hidden_stacked and grad_hidden_stacked, for the
// weight-gradient GEMMs that follow it.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxThreads) lstm_persistent_backward_kernel(
    const int64_t* __restrict__ batch_sizes,  // (L,)
    int64_t num_steps, int64_t total,
    const scalar_t* __restrict__ grad_output,  // (total, P)
    const scalar_t* __restrict__ grad_h_n,     // (N, P)
    const scalar_t* __restrict__ grad_c_n,     // (N, H)
    const scalar_t* __restrict__ h_0,          // (N, P)
    const scalar_t* __restrict__ c_0,          // (N, H)
    const scalar_t* __restrict__ weight_hh,    // (4*H, P)
    const scalar_t* __restrict__ weight_hr,    // (P, H), or nullptr
    const scalar_t* __restrict__ output,       // (total, P)
    const scalar_t* __restrict__ gates,        // (total, 4*H)
    const scalar_t* __restrict__ cell,         // (total, H)
    scalar_t* __restrict__ grad_gates,           // (total, 4*H)
    scalar_t* __restrict__ h_prev_stacked,       // (total, P)
    scalar_t* __restrict__ hidden_stacked,       // (total, H), or nullptr
    scalar_t* __restrict__ grad_hidden_stacked,  // (total, P), or nullptr
    scalar_t* __restrict__ grad_h_0,             // (N, P)
    scalar_t* __restrict__ grad_c_0,             // (N, H)
    int hidden_size, int proj_size, int rows_per_block, bool weights_in_shared) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const int H = hidden_size;
  const int P = proj_size;
  const int G = kNumGates * H;
  const bool projection = weight_hr != nullptr;

  acc_t* carried = reinterpret_cast<acc_t*>(shared_bytes);  // [rows][P]
  acc_t* grad_z = carried + rows_per_block * P;               // [rows][4*H]
  acc_t* grad_h = grad_z + rows_per_block * G;                // [rows][P] with projection
  scalar_t* shared_weights =
      reinterpret_cast<scalar_t*>(grad_h + (projection ? rows_per_block * P : 0));
  const scalar_t* w_hh = stage_weights(weight_hh, int64_t(G) * P, shared_weights,
                                       weights_in_shared);
  const scalar_t* w_hr =
      projection ? stage_weights(weight_hr, int64_t(P) * H, shared_weights + int64_t(G) * P,
                                 weights_in_shared)
                 : nullptr;
  __syncthreads();

  const int local_row = threadIdx.x / H;
  const int unit = threadIdx.x % H;
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t row = first_row + local_row;
  acc_t* carried_row = carried + local_row * P;
  acc_t* grad_z_row = grad_z + local_row * G;
  acc_t* grad_h_row = grad_h + local_row * P;

  acc_t dc = 0;        // gradient with respect to c_t, then c_{t-1}
  int64_t offset = total;  // first packed row of step t
  for (int64_t t = num_steps - 1; t >= 0; --t) {
    const int64_t batch = batch_sizes[t];
    offset -= batch;
    // The same for every thread of the block, so no thread skips a __syncthreads.
    if (batch <= first_row) {
      continue;
    }
    const int64_t next_batch = t + 1 < num_steps ? batch_sizes[t + 1] : 0;
    const int64_t prev_offset = t > 0 ? offset - batch_sizes[t - 1] : 0;
    const bool active = row < batch;
    // A row's gradients start at its last step, from grad_h_n and grad_c_n.
    const bool last_step = row >= next_batch;
    const int64_t packed_row = offset + row;

    // The gradient with respect to h_t, then with respect to r_t.
    acc_t dr = 0;
    if (projection) {
      if (active) {
        for (int p = unit; p < P; p += H) {
          const acc_t from_later =
              last_step ? acc_t(grad_h_n[row * P + p]) : carried_row[p];
          const acc_t dh = acc_t(grad_output[packed_row * P + p]) + from_later;
          grad_h_row[p] = dh;
          grad_hidden_stacked[packed_row * P + p] = scalar_t(dh);
        }
      }
      __syncthreads();  // grad_h of the whole row is written.
      if (active) {
        for (int p = 0; p < P; ++p) {
          dr += acc_t(w_hr[p * H + unit]) * grad_h_row[p];
        }
      }
    } else if (active) {
      const acc_t from_later = last_step ? acc_t(grad_h_n[row * P + unit]) : carried_row[unit];
      dr = acc_t(grad_output[packed_row * P + unit]) + from_later;
    }

    if (active) {
      if (last_step) {
        dc = acc_t(grad_c_n[row * H + unit]);
      }
      const scalar_t* gate_row = gates + packed_row * G + unit;
      const GateValues<acc_t> gate{acc_t(gate_row[kInputGate * H]),
                                   acc_t(gate_row[kForgetGate * H]),
                                   acc_t(gate_row[kCellGate * H]),
                                   acc_t(gate_row[kOutputGate * H])};
      const acc_t c = cell[packed_row * H + unit];
      const acc_t c_prev =
          t > 0 ? acc_t(cell[(prev_offset + row) * H + unit]) : acc_t(c_0[row * H + unit]);
      const CellGrad<acc_t> grad = cell_backward(gate, c, c_prev, dr, dc);
      dc = grad.dc_prev;

      scalar_t* grad_gate_row = grad_gates + packed_row * G + unit;
      grad_gate_row[kInputGate * H] = scalar_t(grad.dz_i);
      grad_gate_row[kForgetGate * H] = scalar_t(grad.dz_f);
      grad_gate_row[kCellGate * H] = scalar_t(grad.dz_g);
      grad_gate_row[kOutputGate * H] = scalar_t(grad.dz_o);
      grad_z_row[kInputGate * H + unit] = grad.dz_i;
      grad_z_row[kForgetGate * H + unit] = grad.dz_f;
      grad_z_row[kCellGate * H + unit] = grad.dz_g;
      grad_z_row[kOutputGate * H + unit] = grad.dz_o;
      for (int p = unit; p < P; p += H) {
        h_prev_stacked[packed_row * P + p] =
            t > 0 ? output[(prev_offset + row) * P + p] : h_0[row * P + p];
      }
      if (projection) {
        hidden_stacked[packed_row * H + unit] = scalar_t(gate.o * std::tanh(c));
      }
    }
    __syncthreads();  // grad_z of the whole row is written.

    // carried = grad_z W_hh, the gradient with respect to h_{t-1}.
    if (active) {
      for (int p = unit; p < P; p += H) {
        acc_t sum = 0;
#pragma unroll 4
        for (int m = 0; m < G; ++m) {
          sum += acc_t(w_hh[m * P + p]) * grad_z_row[m];
        }
        carried_row[p] = sum;
      }
    }
    __syncthreads();  // carried is complete before step t-1 reads it.
  }

  // Step 0 has every row active, so carried and dc now hold the gradients of h_0, c_0.
  if (row < batch_sizes[0]) {
    grad_c_0[row * H + unit] = scalar_t(dc);
    for (int p = unit; p < P; p += H) {
      grad_h_0[row * P + p] = scalar_t(carried_row[p]);
    }
  }
}

template <typename scalar_t>
const scalar_t* optional_data(const at::Tensor& tensor) {
  return tensor.defined() ? tensor.const_data_ptr<scalar_t>() : nullptr;
}

template <typename scalar_t>
scalar_t* optional_mutable_data(at::Tensor& tensor) {
  return tensor.defined() ? tensor.data_ptr<scalar_t>() : nullptr;
}

}  // namespace

void lstm_forward_persistent_cuda(const LstmSizes& sizes, const at::Tensor& batch_sizes_device,
                                  const at::Tensor& h_0, const at::Tensor& c_0,
                                  const at::Tensor& weight_hh, const at::Tensor& weight_hr,
                                  at::Tensor& output, at::Tensor& h_n, at::Tensor& c_n,
                                  at::Tensor& gates, at::Tensor& cell) {
  TORCH_INTERNAL_ASSERT(sizes.hidden_size <= kMaxThreads);
  const int64_t H = sizes.hidden_size;
  const int64_t P = sizes.proj_size;
  const bool projection = weight_hr.defined();
  const at::Tensor weight_hh_t = weight_hh.t().contiguous();
  const at::Tensor weight_hr_t = projection ? weight_hr.t().contiguous() : at::Tensor();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(),
                                  "lstm_forward_persistent_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t state_per_row = 2 * P + (projection ? H : 0);
    const int64_t weight_elements = 4 * H * P + (projection ? H * P : 0);
    const LaunchPlan plan =
        plan_launch(sizes, sizeof(scalar_t), sizeof(acc_t), state_per_row, weight_elements);
    auto kernel = lstm_persistent_forward_kernel<scalar_t, acc_t>;
    allow_shared_bytes(kernel, plan.shared.total_bytes());
    kernel<<<plan.blocks, plan.threads, plan.shared.total_bytes(), stream>>>(
        batch_sizes_device.const_data_ptr<int64_t>(), sizes.num_steps,
        h_0.const_data_ptr<scalar_t>(), c_0.const_data_ptr<scalar_t>(),
        weight_hh_t.const_data_ptr<scalar_t>(), optional_data<scalar_t>(weight_hr_t),
        gates.data_ptr<scalar_t>(), cell.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(),
        h_n.data_ptr<scalar_t>(), c_n.data_ptr<scalar_t>(), static_cast<int>(H),
        static_cast<int>(P), plan.rows_per_block, plan.shared.weights_in_shared);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void lstm_backward_persistent_cuda(
    const LstmSizes& sizes, const at::Tensor& batch_sizes_device, const at::Tensor& grad_output,
    const at::Tensor& grad_h_n, const at::Tensor& grad_c_n, const at::Tensor& h_0,
    const at::Tensor& c_0, const at::Tensor& weight_hh, const at::Tensor& weight_hr,
    const at::Tensor& output, const at::Tensor& gates, const at::Tensor& cell,
    at::Tensor& grad_gates, at::Tensor& h_prev_stacked, at::Tensor& hidden_stacked,
    at::Tensor& grad_hidden_stacked, at::Tensor& grad_h_0, at::Tensor& grad_c_0) {
  TORCH_INTERNAL_ASSERT(sizes.hidden_size <= kMaxThreads);
  const int64_t H = sizes.hidden_size;
  const int64_t P = sizes.proj_size;
  const bool projection = weight_hr.defined();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(),
                                  "lstm_backward_persistent_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t state_per_row = P + 4 * H + (projection ? P : 0);
    const int64_t weight_elements = 4 * H * P + (projection ? H * P : 0);
    const LaunchPlan plan =
        plan_launch(sizes, sizeof(scalar_t), sizeof(acc_t), state_per_row, weight_elements);
    auto kernel = lstm_persistent_backward_kernel<scalar_t, acc_t>;
    allow_shared_bytes(kernel, plan.shared.total_bytes());
    kernel<<<plan.blocks, plan.threads, plan.shared.total_bytes(), stream>>>(
        batch_sizes_device.const_data_ptr<int64_t>(), sizes.num_steps, sizes.total,
        grad_output.const_data_ptr<scalar_t>(), grad_h_n.const_data_ptr<scalar_t>(),
        grad_c_n.const_data_ptr<scalar_t>(), h_0.const_data_ptr<scalar_t>(),
        c_0.const_data_ptr<scalar_t>(), weight_hh.const_data_ptr<scalar_t>(),
        optional_data<scalar_t>(weight_hr), output.const_data_ptr<scalar_t>(),
        gates.const_data_ptr<scalar_t>(), cell.const_data_ptr<scalar_t>(),
        grad_gates.data_ptr<scalar_t>(), h_prev_stacked.data_ptr<scalar_t>(),
        optional_mutable_data<scalar_t>(hidden_stacked),
        optional_mutable_data<scalar_t>(grad_hidden_stacked), grad_h_0.data_ptr<scalar_t>(),
        grad_c_0.data_ptr<scalar_t>(), static_cast<int>(H), static_cast<int>(P),
        plan.rows_per_block, plan.shared.weights_in_shared);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace seqlstm
