// Autograd of seqlstm::embedding_bag_forward for every backend.
//
// The weight gradient is dense (num_embeddings, embedding_dim) from
// embedding_bag_backward, or, when the forward was called with sparse=True, a sparse
// COO tensor with one row per non-zero from embedding_bag_backward_values. A minibatch
// touches a few hundred rows of a table of thousands, so the sparse form saves zeroing
// the dense gradient and lets the optimizer update only those rows.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/Context.h>
#include <ATen/ops/_sparse_coo_tensor_unsafe.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "common/ops.h"

namespace seqlstm {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const std::optional<at::Tensor>&,
                                    const std::optional<at::Tensor>&, bool);
using BackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     const std::optional<at::Tensor>&,
                                     const std::optional<at::Tensor>&, c10::SymInt, bool);
using ValuesSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&, c10::SymInt);

std::optional<at::Tensor> optional_tensor(const at::Tensor& tensor) {
  return tensor.defined() ? std::optional<at::Tensor>(tensor) : std::nullopt;
}

class EmbeddingBagFunction : public torch::autograd::Function<EmbeddingBagFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight,
                            const at::Tensor& indices, const at::Tensor& offsets,
                            const std::optional<at::Tensor>& per_sample_weights,
                            const std::optional<at::Tensor>& output_order, bool sparse) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("seqlstm::embedding_bag_forward", "")
                               .typed<ForwardSignature>();
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor output =
        op.call(weight, indices, offsets, per_sample_weights, output_order, sparse);

    const at::Tensor scale = per_sample_weights.value_or(at::Tensor());
    // The table itself is needed only for the gradient of per_sample_weights.
    const bool scale_needs_grad = scale.defined() && scale.requires_grad();
    ctx->saved_data["num_embeddings"] = weight.sym_size(0);
    ctx->saved_data["sparse"] = sparse;
    ctx->save_for_backward({indices, offsets, scale, output_order.value_or(at::Tensor()),
                            scale_needs_grad ? weight : at::Tensor()});
    return output;
  }

  // grads: of the output. Returns one gradient per forward argument: weight's, undefined
  // for indices, offsets and output_order, and per_sample_weights' when it needs one.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad_output = grads[0];
    if (!grad_output.defined()) {
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
              at::Tensor()};
    }
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& indices = saved[0];
    const at::Tensor& offsets = saved[1];
    const at::Tensor& scale = saved[2];
    const at::Tensor& order = saved[3];
    const c10::SymInt num_embeddings = ctx->saved_data["num_embeddings"].toSymInt();

    at::Tensor grad_weight;
    if (ctx->needs_input_grad(0)) {
      if (ctx->saved_data["sparse"].toBool()) {
        static const auto values_op =
            c10::Dispatcher::singleton()
                .findSchemaOrThrow("seqlstm::embedding_bag_backward_values", "")
                .typed<ValuesSignature>();
        const at::Tensor values = values_op.call(grad_output, indices, offsets,
                                                 optional_tensor(scale), optional_tensor(order),
                                                 num_embeddings);
        const std::vector<c10::SymInt> size{num_embeddings, grad_output.sym_size(1)};
        // A copy of the indices, so that a caller who refills its index buffer after
        // backward does not change the gradient.
        grad_weight = at::_sparse_coo_tensor_unsafe_symint(
            indices.unsqueeze(0).clone(), values, size, values.options().layout(at::kSparse));
      } else {
        static const auto backward_op =
            c10::Dispatcher::singleton()
                .findSchemaOrThrow("seqlstm::embedding_bag_backward", "")
                .typed<BackwardSignature>();
        grad_weight = backward_op.call(grad_output, indices, offsets, optional_tensor(scale),
                                       optional_tensor(order), num_embeddings,
                                       at::globalContext().deterministicAlgorithms());
      }
    }

    at::Tensor grad_scale;
    if (scale.defined() && ctx->needs_input_grad(3)) {
      // d output[row(k)] / d per_sample_weights[k] = weight[indices[k]], so the gradient
      // is the dot product of that table row with the output gradient of k's row.
      const at::Tensor& weight = saved[4];
      const at::Tensor rows = embedding_bag_output_rows(offsets, order, indices.size(0));
      grad_scale =
          weight.index_select(0, indices).mul(grad_output.index_select(0, rows)).sum(1);
    }
    return {grad_weight, at::Tensor(), at::Tensor(), grad_scale, at::Tensor(), at::Tensor()};
  }
};

at::Tensor embedding_bag_forward_autograd(const at::Tensor& weight, const at::Tensor& indices,
                                          const at::Tensor& offsets,
                                          const std::optional<at::Tensor>& per_sample_weights,
                                          const std::optional<at::Tensor>& output_order,
                                          bool sparse) {
  return EmbeddingBagFunction::apply(weight, indices, offsets, per_sample_weights, output_order,
                                     sparse);
}

}  // namespace
}  // namespace seqlstm

TORCH_LIBRARY_IMPL(seqlstm, Autograd, m) {
  m.impl("embedding_bag_forward", &seqlstm::embedding_bag_forward_autograd);
  // The backward operators have no derivative. These kernels make a second backward
  // through them raise an error naming the operator instead of returning wrong gradients.
  m.impl("embedding_bag_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("embedding_bag_backward_values", torch::autograd::autogradNotImplementedFallback());
}
