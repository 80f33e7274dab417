// Sparse-embedding gather and its backward on CUDA.
//
// The forward pass gives each sample one warp whose lanes stride over embedding_dim, so
// every output row is written once and needs no atomics. The backward pass scatters with
// atomics by default, which is fast, but the summation order of duplicate indices varies
// between runs. With `deterministic`, it sorts the indices stably instead, and one thread
// sums each (row, column) of the table in index order.
//
// NOTE: these kernels have been compiled for sm_90 but not yet run on a GPU;
// tests/test_cuda_embedding.py checks them where a GPU is present.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/ops.h"

namespace seqlstm {
namespace {

// Launch shape of the gather kernels: the 32 lanes of a warp stride over embedding_dim
// and the warps of a block take consecutive samples (or sorted non-zeros).
constexpr int kLanes = 32;
constexpr int kWarpsPerBlock = 8;

dim3 gather_grid(int64_t num_items) {
  return dim3(static_cast<unsigned int>((num_items + kWarpsPerBlock - 1) / kWarpsPerBlock));
}

// Checks what only the data can show, with the same messages as the CPU backend. Offsets
// must start at 0, never decrease and end at nnz. Every index must lie in
// [0, num_embeddings), and output_order must be a permutation. The statistics are reduced
// on the device and copied to the host in one transfer, so a bad index becomes a Python
// exception before any kernel reads through it, not a device-side assert. Only the error
// path pays further transfers, to build the message.
void check_embedding_bag_values_cuda(const at::Tensor& indices, const at::Tensor& offsets,
                                     const at::Tensor& output_order, int64_t num_embeddings) {
  const int64_t nnz = indices.size(0);
  const int64_t num_samples = offsets.size(0) - 1;
  const at::TensorOptions long_options = offsets.options();

  // stats: offsets[0], offsets[-1], the smallest step between offsets, the smallest and
  // the largest index, and the number of positions where sorted output_order differs
  // from 0..num_samples-1. Absent quantities get neutral values.
  std::vector<at::Tensor> stats;
  stats.push_back(offsets.narrow(0, 0, 1));
  stats.push_back(offsets.narrow(0, num_samples, 1));
  if (num_samples > 0) {
    stats.push_back(
        (offsets.narrow(0, 1, num_samples) - offsets.narrow(0, 0, num_samples)).min().reshape(1));
  } else {
    stats.push_back(at::zeros({1}, long_options));
  }
  if (nnz > 0) {
    auto [smallest, largest] = at::aminmax(indices);
    stats.push_back(smallest.reshape(1));
    stats.push_back(largest.reshape(1));
  } else {
    stats.push_back(at::zeros({1}, long_options));
    stats.push_back(at::zeros({1}, long_options));
  }
  if (output_order.defined() && num_samples > 0) {
    const at::Tensor sorted_order = std::get<0>(at::sort(output_order));
    stats.push_back(sorted_order.ne(at::arange(num_samples, long_options)).sum().reshape(1));
  } else {
    stats.push_back(at::zeros({1}, long_options));
  }
  const at::Tensor host_stats = at::cat(stats).to(at::kCPU);
  const int64_t* stat = host_stats.const_data_ptr<int64_t>();

  TORCH_CHECK_VALUE(stat[0] == 0, "offsets[0] must be 0, got ", stat[0]);
  if (stat[2] < 0) {
    const at::Tensor steps = offsets.narrow(0, 1, num_samples) - offsets.narrow(0, 0, num_samples);
    const int64_t s = steps.lt(0).nonzero().select(1, 0)[0].item<int64_t>();
    TORCH_CHECK_VALUE(false, "offsets must be non-decreasing, got offsets[", s,
                      "] = ", offsets[s].item<int64_t>(), " > offsets[", s + 1,
                      "] = ", offsets[s + 1].item<int64_t>());
  }
  TORCH_CHECK_VALUE(stat[1] == nnz, "offsets[-1] must equal the number of indices (", nnz,
                    "), got ", stat[1]);
  if (nnz > 0 && (stat[3] < 0 || stat[4] >= num_embeddings)) {
    const at::Tensor outside = indices.lt(0).logical_or(indices.ge(num_embeddings));
    const int64_t k = outside.nonzero().select(1, 0)[0].item<int64_t>();
    TORCH_CHECK_INDEX(false, "indices[", k, "] = ", indices[k].item<int64_t>(),
                      " is out of range for an embedding with num_embeddings = ", num_embeddings,
                      "; valid indices are 0 to ", num_embeddings - 1);
  }
  if (stat[5] != 0) {
    // Report the first entry that repeats an earlier one or lies out of range, as the CPU
    // backend does.
    const at::Tensor order = output_order.to(at::kCPU);
    const int64_t* value = order.const_data_ptr<int64_t>();
    std::vector<bool> seen(num_samples, false);
    for (int64_t s = 0; s < num_samples; ++s) {
      TORCH_CHECK_VALUE(value[s] >= 0 && value[s] < num_samples && !seen[value[s]],
                        "output_order must be a permutation of 0 to ", num_samples - 1,
                        ", got output_order[", s, "] = ", value[s]);
      seen[value[s]] = true;
    }
  }
}

// output[output_order[s]] = sum over k in sample s of per_sample_weights[k] * weight[indices[k]].
template <typename scalar_t>
__global__ void embedding_bag_forward_kernel(const scalar_t* __restrict__ weight,  // (E, D)
                                             const int64_t* __restrict__ indices,   // (nnz,)
                                             const int64_t* __restrict__ offsets,   // (S + 1,)
                                             const scalar_t* __restrict__ per_sample_weights,
                                             const int64_t* __restrict__ output_order,
                                             int64_t num_samples, int64_t embedding_dim,
                                             scalar_t* __restrict__ output) {  // (S, D)
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t s = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (s >= num_samples) {
    return;
  }
  const int64_t begin = offsets[s];
  const int64_t end = offsets[s + 1];
  scalar_t* row = output + (output_order ? output_order[s] : s) * embedding_dim;
  for (int64_t d = threadIdx.x; d < embedding_dim; d += kLanes) {
    acc_t sum = 0;
    for (int64_t k = begin; k < end; ++k) {
      const acc_t scale = per_sample_weights ? acc_t(per_sample_weights[k]) : acc_t(1);
      sum += scale * acc_t(weight[indices[k] * embedding_dim + d]);
    }
    row[d] = scalar_t(sum);
  }
}

// grad_weight[indices[k]] += per_sample_weights[k] * grad_output[output_order[s]] for every
// non-zero k of sample s, with atomics in the accumulation type.
template <typename scalar_t, typename acc_t>
__global__ void embedding_bag_backward_atomic_kernel(
    const scalar_t* __restrict__ grad_output,  // (S, D)
    const int64_t* __restrict__ indices,       // (nnz,)
    const int64_t* __restrict__ offsets,       // (S + 1,)
    const scalar_t* __restrict__ per_sample_weights, const int64_t* __restrict__ output_order,
    int64_t num_samples, int64_t embedding_dim,
    acc_t* __restrict__ grad_weight) {  // (E, D)
  const int64_t s = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (s >= num_samples) {
    return;
  }
  const scalar_t* source = grad_output + (output_order ? output_order[s] : s) * embedding_dim;
  for (int64_t k = offsets[s]; k < offsets[s + 1]; ++k) {
    const acc_t scale = per_sample_weights ? acc_t(per_sample_weights[k]) : acc_t(1);
    acc_t* row = grad_weight + indices[k] * embedding_dim;
    for (int64_t d = threadIdx.x; d < embedding_dim; d += kLanes) {
      atomicAdd(row + d, scale * acc_t(source[d]));
    }
  }
}

// Deterministic backward over the indices sorted stably. The warp at the first entry of a
// run of equal indices sums the whole run in sorted order and writes the table row once,
// and the other warps exit. Rows that no index selects keep their zeros.
// NOTE: one warp sums a whole run serially, so an index repeated very often in one batch
// (a stop word, say) makes that warp the slowest of the launch.
template <typename scalar_t>
__global__ void embedding_bag_backward_sorted_kernel(
    const scalar_t* __restrict__ grad_output,     // (S, D)
    const int64_t* __restrict__ sorted_indices,   // (nnz,) ascending
    const int64_t* __restrict__ sorted_positions,  // (nnz,) k of each sorted entry
    const int64_t* __restrict__ sorted_samples,   // (nnz,) sample s of each sorted entry
    const scalar_t* __restrict__ per_sample_weights, const int64_t* __restrict__ output_order,
    int64_t nnz, int64_t embedding_dim,
    scalar_t* __restrict__ grad_weight) {  // (E, D)
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (first >= nnz || (first > 0 && sorted_indices[first] == sorted_indices[first - 1])) {
    return;
  }
  const int64_t index = sorted_indices[first];
  for (int64_t d = threadIdx.x; d < embedding_dim; d += kLanes) {
    acc_t sum = 0;
    for (int64_t m = first; m < nnz && sorted_indices[m] == index; ++m) {
      const int64_t s = sorted_samples[m];
      const acc_t scale =
          per_sample_weights ? acc_t(per_sample_weights[sorted_positions[m]]) : acc_t(1);
      sum += scale * acc_t(grad_output[(output_order ? output_order[s] : s) * embedding_dim + d]);
    }
    grad_weight[index * embedding_dim + d] = scalar_t(sum);
  }
}

template <typename scalar_t>
const scalar_t* optional_data(const at::Tensor& tensor) {
  return tensor.defined() ? tensor.const_data_ptr<scalar_t>() : nullptr;
}

}  // namespace

at::Tensor embedding_bag_forward_cuda(const at::Tensor& weight_arg, const at::Tensor& indices_arg,
                                      const at::Tensor& offsets_arg,
                                      const std::optional<at::Tensor>& per_sample_weights_arg,
                                      const std::optional<at::Tensor>& output_order_arg,
                                      bool sparse) {
  (void)sparse;  // Only the autograd kernel reads it.
  const EmbeddingBagInputs inputs =
      prepare_embedding_bag_inputs(weight_arg, "weight", indices_arg, offsets_arg,
                                   per_sample_weights_arg, output_order_arg, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard device_guard(weight_arg.device());
  const at::Tensor& weight = inputs.table;
  const at::Tensor& indices = inputs.indices;
  const at::Tensor& offsets = inputs.offsets;
  const at::Tensor& per_sample_weights = inputs.per_sample_weights;
  const at::Tensor& output_order = inputs.output_order;
  check_embedding_bag_values_cuda(indices, offsets, output_order, weight.size(0));

  const int64_t num_samples = offsets.size(0) - 1;
  const int64_t embedding_dim = weight.size(1);
  // Every row is written: output_order is a permutation, checked above.
  at::Tensor output = at::empty({num_samples, embedding_dim}, weight.options());
  if (num_samples == 0 || embedding_dim == 0) {
    return output;
  }

  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, weight.scalar_type(), "embedding_bag_forward_cuda", [&] {
        embedding_bag_forward_kernel<scalar_t>
            <<<gather_grid(num_samples), dim3(kLanes, kWarpsPerBlock), 0, stream>>>(
                weight.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(),
                offsets.const_data_ptr<int64_t>(), optional_data<scalar_t>(per_sample_weights),
                optional_data<int64_t>(output_order), num_samples, embedding_dim,
                output.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

at::Tensor embedding_bag_backward_cuda(const at::Tensor& grad_output_arg,
                                       const at::Tensor& indices_arg,
                                       const at::Tensor& offsets_arg,
                                       const std::optional<at::Tensor>& per_sample_weights_arg,
                                       const std::optional<at::Tensor>& output_order_arg,
                                       int64_t num_embeddings, bool deterministic) {
  const EmbeddingBagInputs inputs = prepare_embedding_bag_inputs(
      grad_output_arg, "grad_output", indices_arg, offsets_arg, per_sample_weights_arg,
      output_order_arg, c10::DeviceType::CUDA);
  check_embedding_bag_grad_output(grad_output_arg, offsets_arg, num_embeddings);
  const c10::cuda::CUDAGuard device_guard(grad_output_arg.device());
  const at::Tensor& grad_output = inputs.table;
  const at::Tensor& indices = inputs.indices;
  const at::Tensor& offsets = inputs.offsets;
  const at::Tensor& per_sample_weights = inputs.per_sample_weights;
  const at::Tensor& output_order = inputs.output_order;
  check_embedding_bag_values_cuda(indices, offsets, output_order, num_embeddings);

  const int64_t num_samples = offsets.size(0) - 1;
  const int64_t nnz = indices.size(0);
  const int64_t embedding_dim = grad_output.size(1);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  if (deterministic) {
    at::Tensor grad_weight = at::zeros({num_embeddings, embedding_dim}, grad_output.options());
    if (nnz == 0 || embedding_dim == 0) {
      return grad_weight;
    }
    auto [sorted_indices, sorted_positions] =
        at::sort(indices, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    // The sample of non-zero k is the last s with offsets[s] <= k; empty samples share
    // their offset with the next one, and right=true skips past them.
    const at::Tensor sorted_samples =
        at::searchsorted(offsets, sorted_positions, /*out_int32=*/false, /*right=*/true) - 1;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad_output.scalar_type(), "embedding_bag_backward_cuda", [&] {
          embedding_bag_backward_sorted_kernel<scalar_t>
              <<<gather_grid(nnz), dim3(kLanes, kWarpsPerBlock), 0, stream>>>(
                  grad_output.const_data_ptr<scalar_t>(), sorted_indices.const_data_ptr<int64_t>(),
                  sorted_positions.const_data_ptr<int64_t>(),
                  sorted_samples.const_data_ptr<int64_t>(),
                  optional_data<scalar_t>(per_sample_weights),
                  optional_data<int64_t>(output_order), nnz, embedding_dim,
                  grad_weight.data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
    return grad_weight;
  }

  // Half-precision gradients are accumulated in float32 and rounded once at the end.
  const at::ScalarType acc_type = at::toOpMathType(grad_output.scalar_type());
  at::Tensor grad_weight =
      at::zeros({num_embeddings, embedding_dim}, grad_output.options().dtype(acc_type));
  if (num_samples > 0 && nnz > 0 && embedding_dim > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad_output.scalar_type(), "embedding_bag_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          embedding_bag_backward_atomic_kernel<scalar_t, acc_t>
              <<<gather_grid(num_samples), dim3(kLanes, kWarpsPerBlock), 0, stream>>>(
                  grad_output.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(),
                  offsets.const_data_ptr<int64_t>(), optional_data<scalar_t>(per_sample_weights),
                  optional_data<int64_t>(output_order), num_samples, embedding_dim,
                  grad_weight.data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  return grad_weight.to(grad_output.scalar_type());
}

}  // namespace seqlstm

TORCH_LIBRARY_IMPL(seqlstm, CUDA, m) {
  m.impl("embedding_bag_forward", &seqlstm::embedding_bag_forward_cuda);
  m.impl("embedding_bag_backward", &seqlstm::embedding_bag_backward_cuda);
  m.impl("embedding_bag_backward_values", &seqlstm::embedding_bag_backward_values_aten);
}
