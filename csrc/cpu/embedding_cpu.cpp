// Sparse-embedding gather and its backward on CPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/checks.h"
#include "../common/ops.h"

namespace seqlstm {
namespace {

// Checks what only the data can show. Offsets must start at 0, never decrease and end at
// nnz. Every index must lie in [0, num_embeddings), and output_order must be a permutation.
void check_embedding_bag_values(const at::Tensor& indices, const at::Tensor& offsets,
                                const at::Tensor& output_order, int64_t num_embeddings) {
  const int64_t nnz = indices.size(0);
  const int64_t num_samples = offsets.size(0) - 1;
  const int64_t* offset = offsets.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(offset[0] == 0, "offsets[0] must be 0, got ", offset[0]);
  for (int64_t s = 0; s < num_samples; ++s) {
    TORCH_CHECK_VALUE(offset[s + 1] >= offset[s], "offsets must be non-decreasing, got offsets[",
                      s, "] = ", offset[s], " > offsets[", s + 1, "] = ", offset[s + 1]);
  }
  TORCH_CHECK_VALUE(offset[num_samples] == nnz, "offsets[-1] must equal the number of indices (",
                    nnz, "), got ", offset[num_samples]);

  const int64_t* index = indices.data_ptr<int64_t>();
  for (int64_t k = 0; k < nnz; ++k) {
    TORCH_CHECK_INDEX(index[k] >= 0 && index[k] < num_embeddings, "indices[", k, "] = ",
                      index[k], " is out of range for an embedding with num_embeddings = ",
                      num_embeddings, "; valid indices are 0 to ", num_embeddings - 1);
  }

  if (output_order.defined()) {
    const int64_t* order = output_order.data_ptr<int64_t>();
    std::vector<bool> seen(num_samples, false);
    for (int64_t s = 0; s < num_samples; ++s) {
      TORCH_CHECK_VALUE(order[s] >= 0 && order[s] < num_samples && !seen[order[s]],
                        "output_order must be a permutation of 0 to ", num_samples - 1,
                        ", got output_order[", s, "] = ", order[s]);
      seen[order[s]] = true;
    }
  }
}

}  // namespace

at::Tensor embedding_bag_forward_cpu(const at::Tensor& weight_arg, const at::Tensor& indices_arg,
                                     const at::Tensor& offsets_arg,
                                     const std::optional<at::Tensor>& per_sample_weights_arg,
                                     const std::optional<at::Tensor>& output_order_arg,
                                     bool sparse) {
  (void)sparse;  // Only the autograd kernel reads it.
  const EmbeddingBagInputs inputs =
      prepare_embedding_bag_inputs(weight_arg, "weight", indices_arg, offsets_arg,
                                   per_sample_weights_arg, output_order_arg, c10::DeviceType::CPU);
  check_cpu_dtype(weight_arg, "weight");
  const at::Tensor& weight = inputs.table;
  const at::Tensor& indices = inputs.indices;
  const at::Tensor& offsets = inputs.offsets;
  const at::Tensor& per_sample_weights = inputs.per_sample_weights;
  const at::Tensor& output_order = inputs.output_order;
  check_embedding_bag_values(indices, offsets, output_order, weight.size(0));

  const int64_t num_samples = offsets.size(0) - 1;
  const int64_t embedding_dim = weight.size(1);
  // Every row is written below (output_order is a permutation), so no zero fill.
  at::Tensor output = at::empty({num_samples, embedding_dim}, weight.options());

  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "embedding_bag_forward_cpu", [&] {
    const scalar_t* table = weight.const_data_ptr<scalar_t>();
    const int64_t* index = indices.const_data_ptr<int64_t>();
    const int64_t* offset = offsets.const_data_ptr<int64_t>();
    const scalar_t* scale =
        per_sample_weights.defined() ? per_sample_weights.const_data_ptr<scalar_t>() : nullptr;
    const int64_t* order =
        output_order.defined() ? output_order.const_data_ptr<int64_t>() : nullptr;
    scalar_t* out = output.data_ptr<scalar_t>();

    // Samples write disjoint output rows, so they split across threads freely.
    at::parallel_for(0, num_samples, 256, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        scalar_t* row = out + (order ? order[s] : s) * embedding_dim;
        std::fill(row, row + embedding_dim, scalar_t(0));
        for (int64_t k = offset[s]; k < offset[s + 1]; ++k) {
          const scalar_t w = scale ? scale[k] : scalar_t(1);
          const scalar_t* source = table + index[k] * embedding_dim;
          for (int64_t d = 0; d < embedding_dim; ++d) {
            row[d] += w * source[d];
          }
        }
      }
    });
  });
  return output;
}

namespace {

// Checks the arguments of the two backward kernels and returns them contiguous, with
// grad_output as the table.
EmbeddingBagInputs prepare_backward_inputs(
    const at::Tensor& grad_output, const at::Tensor& indices, const at::Tensor& offsets,
    const std::optional<at::Tensor>& per_sample_weights,
    const std::optional<at::Tensor>& output_order, int64_t num_embeddings) {
  EmbeddingBagInputs inputs =
      prepare_embedding_bag_inputs(grad_output, "grad_output", indices, offsets,
                                   per_sample_weights, output_order, c10::DeviceType::CPU);
  check_embedding_bag_grad_output(grad_output, offsets, num_embeddings);
  check_cpu_dtype(grad_output, "grad_output");
  check_embedding_bag_values(inputs.indices, inputs.offsets, inputs.output_order,
                             num_embeddings);
  return inputs;
}

// Calls body(k, w, source) for every non-zero k in index order, where w is its
// per_sample_weights value (1 without them) and source the grad_output row of its sample.
template <typename scalar_t, typename Body>
void for_each_nonzero(const EmbeddingBagInputs& inputs, const Body& body) {
  const int64_t num_samples = inputs.offsets.size(0) - 1;
  const int64_t embedding_dim = inputs.table.size(1);
  const scalar_t* grad_out = inputs.table.const_data_ptr<scalar_t>();
  const int64_t* offset = inputs.offsets.const_data_ptr<int64_t>();
  const scalar_t* scale = inputs.per_sample_weights.defined()
                              ? inputs.per_sample_weights.const_data_ptr<scalar_t>()
                              : nullptr;
  const int64_t* order =
      inputs.output_order.defined() ? inputs.output_order.const_data_ptr<int64_t>() : nullptr;
  for (int64_t s = 0; s < num_samples; ++s) {
    const scalar_t* source = grad_out + (order ? order[s] : s) * embedding_dim;
    for (int64_t k = offset[s]; k < offset[s + 1]; ++k) {
      body(k, scale ? scale[k] : scalar_t(1), source);
    }
  }
}

}  // namespace

at::Tensor embedding_bag_backward_cpu(const at::Tensor& grad_output,
                                      const at::Tensor& indices,
                                      const at::Tensor& offsets,
                                      const std::optional<at::Tensor>& per_sample_weights,
                                      const std::optional<at::Tensor>& output_order,
                                      int64_t num_embeddings, bool deterministic) {
  (void)deterministic;  // The CPU sum below always runs in index order.
  const EmbeddingBagInputs inputs = prepare_backward_inputs(
      grad_output, indices, offsets, per_sample_weights, output_order, num_embeddings);
  const int64_t embedding_dim = inputs.table.size(1);
  at::Tensor grad_weight = at::zeros({num_embeddings, embedding_dim}, inputs.table.options());

  AT_DISPATCH_FLOATING_TYPES(inputs.table.scalar_type(), "embedding_bag_backward_cpu", [&] {
    const int64_t* index = inputs.indices.const_data_ptr<int64_t>();
    scalar_t* grad = grad_weight.data_ptr<scalar_t>();
    // Duplicate indices write the same row, so the scatter stays on one thread. It costs a
    // few multiply-adds per non-zero, far less than the LSTM behind it.
    for_each_nonzero<scalar_t>(inputs, [&](int64_t k, scalar_t w, const scalar_t* source) {
      scalar_t* row = grad + index[k] * embedding_dim;
      for (int64_t d = 0; d < embedding_dim; ++d) {
        row[d] += w * source[d];
      }
    });
  });
  return grad_weight;
}

at::Tensor embedding_bag_backward_values_cpu(const at::Tensor& grad_output,
                                             const at::Tensor& indices,
                                             const at::Tensor& offsets,
                                             const std::optional<at::Tensor>& per_sample_weights,
                                             const std::optional<at::Tensor>& output_order,
                                             int64_t num_embeddings) {
  const EmbeddingBagInputs inputs = prepare_backward_inputs(
      grad_output, indices, offsets, per_sample_weights, output_order, num_embeddings);
  const int64_t embedding_dim = inputs.table.size(1);
  at::Tensor values = at::empty({inputs.indices.size(0), embedding_dim}, inputs.table.options());

  AT_DISPATCH_FLOATING_TYPES(inputs.table.scalar_type(), "embedding_bag_backward_values_cpu", [&] {
    scalar_t* value = values.data_ptr<scalar_t>();
    for_each_nonzero<scalar_t>(inputs, [&](int64_t k, scalar_t w, const scalar_t* source) {
      scalar_t* row = value + k * embedding_dim;
      for (int64_t d = 0; d < embedding_dim; ++d) {
        row[d] = w * source[d];
      }
    });
  });
  return values;
}

}  // namespace seqlstm

TORCH_LIBRARY_IMPL(seqlstm, CPU, m) {
  m.impl("embedding_bag_forward", &seqlstm::embedding_bag_forward_cpu);
  m.impl("embedding_bag_backward", &seqlstm::embedding_bag_backward_cpu);
  m.impl("embedding_bag_backward_values", &seqlstm::embedding_bag_backward_values_cpu);
}
