// embedding_bag_backward_values written with ATen operators, for backends without a
// kernel of their own (the CUDA backend registers it), and the row mapping that the
// autograd of embedding_bag_forward shares with it.
//
// NOTE: the CUDA registration has not run on a GPU yet; the C++ tests run this code on
// CPU tensors against the CPU kernel.
#include <ATen/ops/arange.h>
#include <ATen/ops/diff.h>
#include <ATen/ops/repeat_interleave.h>

#include "checks.h"
#include "ops.h"

namespace seqlstm {

at::Tensor embedding_bag_output_rows(const at::Tensor& offsets, const at::Tensor& output_order,
                                     int64_t nnz) {
  const int64_t num_samples = offsets.size(0) - 1;
  const at::Tensor samples = at::arange(num_samples, offsets.options());
  const at::Tensor sample_of_nonzero =
      at::repeat_interleave(samples, at::diff(offsets), 0, nnz);
  return output_order.defined() ? output_order.index_select(0, sample_of_nonzero)
                                : sample_of_nonzero;
}

at::Tensor embedding_bag_backward_values_aten(
    const at::Tensor& grad_output_arg, const at::Tensor& indices_arg,
    const at::Tensor& offsets_arg, const std::optional<at::Tensor>& per_sample_weights_arg,
    const std::optional<at::Tensor>& output_order_arg, int64_t num_embeddings) {
  const EmbeddingBagInputs inputs = prepare_embedding_bag_inputs(
      grad_output_arg, "grad_output", indices_arg, offsets_arg, per_sample_weights_arg,
      output_order_arg, grad_output_arg.device().type());
  check_embedding_bag_grad_output(grad_output_arg, offsets_arg, num_embeddings);
  const int64_t nnz = inputs.indices.size(0);
  const at::Tensor rows = embedding_bag_output_rows(inputs.offsets, inputs.output_order, nnz);
  at::Tensor values = inputs.table.index_select(0, rows);
  if (inputs.per_sample_weights.defined()) {
    values.mul_(inputs.per_sample_weights.unsqueeze(1));
  }
  return values;
}

}  // namespace seqlstm
