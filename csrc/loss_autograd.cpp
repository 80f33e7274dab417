// Autograd of seqlstm::softmax_cross_entropy and seqlstm::linear_softmax_cross_entropy
// for every backend. Each backward calls the matching *_backward operator through the
// dispatcher. It is C++ rather than torch.library.register_autograd because the loss
// runs once per minibatch on a few dozen rows, where the Python route would cost more
// than the loss itself.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace seqlstm {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using LossSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&);
using LossBackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&);

class SoftmaxCrossEntropyFunction
    : public torch::autograd::Function<SoftmaxCrossEntropyFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits,
                               const at::Tensor& labels) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("seqlstm::softmax_cross_entropy", "")
                               .typed<LossSignature>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, errors] = op.call(logits, labels);
    ctx->save_for_backward({logits, labels});
    ctx->mark_non_differentiable({errors});
    return {loss, errors};
  }

  // grads: of loss and errors. Returns the gradients of logits and labels, and labels
  // are data, so theirs is undefined.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("seqlstm::softmax_cross_entropy_backward", "")
                               .typed<LossBackwardSignature>();
    const variable_list saved = ctx->get_saved_variables();
    return {op.call(grads[0], saved[0], saved[1]), at::Tensor()};
  }
};

using LinearLossSignature = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&);
using LinearLossBackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const at::Tensor&);

class LinearSoftmaxCrossEntropyFunction
    : public torch::autograd::Function<LinearSoftmaxCrossEntropyFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const at::Tensor& labels) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("seqlstm::linear_softmax_cross_entropy", "")
                               .typed<LinearLossSignature>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, errors] = op.call(input, weight, bias, labels);
    const bool has_bias = bias.has_value() && bias->defined();
    ctx->save_for_backward({input, weight, has_bias ? *bias : at::Tensor(), labels});
    ctx->mark_non_differentiable({errors});
    return {loss, errors};
  }

  // grads: of loss and errors. Returns the gradients of input, weight, bias and labels,
  // and labels are data, so theirs is undefined.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("seqlstm::linear_softmax_cross_entropy_backward", "")
            .typed<LinearLossBackwardSignature>();
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& bias = saved[2];
    const std::optional<at::Tensor> bias_arg =
        bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt;
    auto [grad_input, grad_weight, grad_bias] =
        op.call(grads[0], saved[0], saved[1], bias_arg, saved[3]);
    return {grad_input, grad_weight, bias.defined() ? grad_bias : at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> linear_softmax_cross_entropy_autograd(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& labels) {
  const variable_list outputs =
      LinearSoftmaxCrossEntropyFunction::apply(input, weight, bias, labels);
  return {outputs[0], outputs[1]};
}

std::tuple<at::Tensor, at::Tensor> softmax_cross_entropy_autograd(const at::Tensor& logits,
                                                                  const at::Tensor& labels) {
  const variable_list outputs = SoftmaxCrossEntropyFunction::apply(logits, labels);
  return {outputs[0], outputs[1]};
}

}  // namespace
}  // namespace seqlstm

TORCH_LIBRARY_IMPL(seqlstm, Autograd, m) {
  m.impl("softmax_cross_entropy", &seqlstm::softmax_cross_entropy_autograd);
  m.impl("linear_softmax_cross_entropy", &seqlstm::linear_softmax_cross_entropy_autograd);
}
