// Autograd of seqlstm::lstm_forward for every backend: the backward calls
// seqlstm::lstm_backward through the dispatcher, so the CPU and CUDA kernels share it.
// Also seqlstm::lstm_layer, which seqlstm.LSTM calls once per layer and direction. It
// adds to lstm_forward the initial states, the sum of the two biases and the reorder of
// the states between the packed order and the caller's, all in one autograd node.
//
// It lives in C++ rather than in torch.library.register_autograd because the Python
// route added about 0.1 ms to each forward and backward at N = 44, L = 12, H_in = 50,
// H = 25 (torch 2.14, one thread, 2-core AMD EPYC), a third of the CPU kernels' time.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/add.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

#include "common/checks.h"

namespace seqlstm {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using LstmForwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, int64_t);

using LstmBackwardSignature =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, int64_t);

const c10::TypedOperatorHandle<LstmForwardSignature>& lstm_forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("seqlstm::lstm_forward", "")
                             .typed<LstmForwardSignature>();
  return op;
}

const c10::TypedOperatorHandle<LstmBackwardSignature>& lstm_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("seqlstm::lstm_backward", "")
                             .typed<LstmBackwardSignature>();
  return op;
}

std::optional<at::Tensor> optional_if_defined(const at::Tensor& tensor) {
  return tensor.defined() ? std::optional<at::Tensor>(tensor) : std::nullopt;
}

class LstmFunction : public torch::autograd::Function<LstmFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& batch_sizes, const at::Tensor& h_0,
                               const at::Tensor& c_0, const at::Tensor& weight_ih,
                               const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias,
                               const std::optional<at::Tensor>& weight_hr, int64_t algorithm) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, h_n, c_n, gates, cell] =
        lstm_forward_op().call(input, batch_sizes, h_0, c_0, weight_ih, weight_hh, bias,
                               weight_hr, algorithm);

    const bool has_bias = bias.has_value() && bias->defined();
    const bool has_projection = weight_hr.has_value() && weight_hr->defined();
    ctx->saved_data["has_bias"] = has_bias;
    ctx->saved_data["algorithm"] = algorithm;
    ctx->save_for_backward({input, batch_sizes, h_0, c_0, weight_ih, weight_hh,
                            has_projection ? *weight_hr : at::Tensor(), output, gates, cell});
    ctx->mark_non_differentiable({gates, cell});
    // Missing gradients stay undefined, so that gates and cell, which take none, cost
    // no zero-filled tensors; backward fills in those the kernel needs.
    ctx->set_materialize_grads(false);
    return {output, h_n, c_n, gates, cell};
  }

  // grads: of output, h_n, c_n, gates and cell, undefined where none flows. Returns one
  // gradient per forward argument.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight_hr = saved[6];
    const at::Tensor& output = saved[7];
    const at::Tensor grad_output = grads[0].defined() ? grads[0] : at::zeros_like(output);
    const at::Tensor grad_h_n = grads[1].defined() ? grads[1] : at::zeros_like(saved[2]);
    const at::Tensor grad_c_n = grads[2].defined() ? grads[2] : at::zeros_like(saved[3]);
    auto [grad_input, grad_h_0, grad_c_0, grad_weight_ih, grad_weight_hh, grad_bias,
          grad_weight_hr] =
        lstm_backward_op().call(grad_output, grad_h_n, grad_c_n, input, saved[1], saved[2],
                                saved[3], saved[4], saved[5], optional_if_defined(weight_hr),
                                saved[7], saved[8], saved[9],
                                ctx->saved_data["algorithm"].toInt());
    return {grad_input,
            at::Tensor(),
            grad_h_0,
            grad_c_0,
            grad_weight_ih,
            grad_weight_hh,
            ctx->saved_data["has_bias"].toBool() ? grad_bias : at::Tensor(),
            weight_hr.defined() ? grad_weight_hr : at::Tensor(),
            at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_autograd(
    const at::Tensor& input, const at::Tensor& batch_sizes, const at::Tensor& h_0,
    const at::Tensor& c_0, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& weight_hr,
    int64_t algorithm) {
  const variable_list outputs = LstmFunction::apply(input, batch_sizes, h_0, c_0, weight_ih,
                                                    weight_hh, bias, weight_hr, algorithm);
  return {outputs[0], outputs[1], outputs[2], outputs[3], outputs[4]};
}

// ---------------------------------------------------------------------------------------
// lstm_layer: lstm_forward in the caller's sequence order.
//   sorted_indices, unsorted_indices: (N,) int64, both or neither, as a PackedSequence
//     has them. Sequence k of the packed batch is the caller's sequence
//     sorted_indices[k], and unsorted_indices is the inverse permutation. The backward
//     reorders gradients with one where the forward used the other, so it relies on
//     this. CPU indices are checked. CUDA ones are not, because reading them would wait
//     for the GPU.
//   h_0 (N, P), c_0 (N, H): in the caller's order; undefined means zeros.
//   bias_ih, bias_hh: (4*H,) each, or undefined; the kernel takes their sum.
// Returns output, gates and cell as lstm_forward does (packed rows), and h_n (N, P) and
// c_n (N, H) in the caller's order.

using LstmLayerResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

void check_order_indices(const at::Tensor& indices, const char* name, const at::Tensor& input,
                         int64_t batch_size) {
  check_dtype(indices, name, at::kLong);
  check_same_device(indices, name, input, "input");
  TORCH_CHECK_VALUE(indices.dim() == 1 && indices.size(0) == batch_size, name,
                    " must have shape (batch_sizes[0],) = (", batch_size, ",), got ",
                    shape_string(indices.sizes()));
}

// Checks that `unsorted` is the inverse permutation of `sorted`, both CPU tensors of
// batch_size entries.
void check_inverse_permutation(const at::Tensor& sorted_arg, const at::Tensor& unsorted_arg,
                               int64_t batch_size) {
  const at::Tensor sorted = sorted_arg.contiguous();
  const at::Tensor unsorted = unsorted_arg.contiguous();
  const int64_t* forward = sorted.const_data_ptr<int64_t>();
  const int64_t* inverse = unsorted.const_data_ptr<int64_t>();
  for (int64_t k = 0; k < batch_size; ++k) {
    const int64_t caller = forward[k];
    TORCH_CHECK_VALUE(caller >= 0 && caller < batch_size && inverse[caller] == k,
                      "unsorted_indices must be the inverse permutation of sorted_indices, "
                      "but sorted_indices[", k, "] = ", caller,
                      caller >= 0 && caller < batch_size
                          ? " and unsorted_indices[" + std::to_string(caller) +
                                "] = " + std::to_string(inverse[caller])
                          : std::string(" is outside [0, batch_sizes[0])"));
  }
}

void check_layer_bias(const at::Tensor& bias, const char* name, const at::Tensor& input,
                      const at::Tensor& weight_hh) {
  check_shape(bias, name, {weight_hh.size(0)}, "(4*hidden_size,)");
  check_same_dtype(bias, name, input, "input");
  check_same_device(bias, name, input, "input");
}

// Returns `state`, given in the caller's order, in the packed order.
at::Tensor packed_state(const at::Tensor& state, const at::Tensor& sorted_indices) {
  return sorted_indices.defined() ? state.index_select(0, sorted_indices) : state;
}

// Runs lstm_layer on any backend: checks what lstm_forward does not, then calls it.
LstmLayerResult lstm_layer_kernel(
    const at::Tensor& input, const at::Tensor& batch_sizes,
    const std::optional<at::Tensor>& sorted_indices_arg,
    const std::optional<at::Tensor>& unsorted_indices_arg,
    const std::optional<at::Tensor>& h_0_arg, const std::optional<at::Tensor>& c_0_arg,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& bias_ih_arg, const std::optional<at::Tensor>& bias_hh_arg,
    const std::optional<at::Tensor>& weight_hr, int64_t algorithm) {
  const at::Tensor sorted_indices = sorted_indices_arg.value_or(at::Tensor());
  const at::Tensor unsorted_indices = unsorted_indices_arg.value_or(at::Tensor());
  // Check the batch and weights as lstm_forward does, so that they get its messages and
  // are valid before anything is allocated. Then check what lstm_forward never gets: the
  // order indices, the caller's states and the two biases (it gets only their sum).
  const LstmSizes sizes = check_lstm_batch(input, batch_sizes);
  const int64_t batch_size = sizes.batch_size;
  const int64_t hidden_size = check_weight_hh_rows(weight_hh);
  const int64_t proj_size = check_weight_hr(weight_hr.value_or(at::Tensor()), hidden_size);
  check_defined(weight_ih, "weight_ih");
  check_same_dtype(weight_ih, "weight_ih", input, "input");
  check_same_dtype(weight_hh, "weight_hh", input, "input");

  TORCH_CHECK_VALUE(sorted_indices.defined() == unsorted_indices.defined(),
                    "sorted_indices and unsorted_indices must be given together, got ",
                    sorted_indices.defined() ? "sorted_indices" : "unsorted_indices", " only");
  if (sorted_indices.defined()) {
    check_order_indices(sorted_indices, "sorted_indices", input, batch_size);
    check_order_indices(unsorted_indices, "unsorted_indices", input, batch_size);
    if (sorted_indices.is_cpu()) {
      check_inverse_permutation(sorted_indices, unsorted_indices, batch_size);
    }
  }

  const at::Tensor h_0 = h_0_arg.value_or(at::Tensor());
  const at::Tensor c_0 = c_0_arg.value_or(at::Tensor());
  for (const auto& [state, name] : {std::pair{&h_0, "h_0"}, std::pair{&c_0, "c_0"}}) {
    if (state->defined()) {
      check_dim(*state, name, 2);
      // Before index_select reads it with indices on input's device.
      check_same_device(*state, name, input, "input");
      TORCH_CHECK_VALUE(state->size(0) == batch_size, name,
                        " must have one row per sequence (batch_sizes[0] = ", batch_size,
                        "), got shape ", shape_string(state->sizes()));
    }
  }

  const at::Tensor bias_ih = bias_ih_arg.value_or(at::Tensor());
  const at::Tensor bias_hh = bias_hh_arg.value_or(at::Tensor());
  at::Tensor bias;
  if (bias_ih.defined()) {
    check_layer_bias(bias_ih, "bias_ih", input, weight_hh);
    bias = bias_ih;
  }
  if (bias_hh.defined()) {
    check_layer_bias(bias_hh, "bias_hh", input, weight_hh);
    bias = bias.defined() ? at::add(bias, bias_hh) : bias_hh;
  }

  const at::Tensor packed_h_0 = h_0.defined() ? packed_state(h_0, sorted_indices)
                                              : at::zeros({batch_size, proj_size}, input.options());
  const at::Tensor packed_c_0 = c_0.defined()
                                    ? packed_state(c_0, sorted_indices)
                                    : at::zeros({batch_size, hidden_size}, input.options());
  auto [output, h_n, c_n, gates, cell] =
      lstm_forward_op().call(input, batch_sizes, packed_h_0, packed_c_0, weight_ih, weight_hh,
                             optional_if_defined(bias), weight_hr, algorithm);
  if (unsorted_indices.defined()) {
    h_n = h_n.index_select(0, unsorted_indices);
    c_n = c_n.index_select(0, unsorted_indices);
  }
  return {output, h_n, c_n, gates, cell};
}

// Autograd of lstm_layer. The forward calls lstm_layer below autograd, so that under
// torch.compile its fake kernel gives the shapes. The backward reorders the final
// states' gradients into the packed order and calls lstm_backward.
class LstmLayerFunction : public torch::autograd::Function<LstmLayerFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& batch_sizes,
                               const std::optional<at::Tensor>& sorted_indices,
                               const std::optional<at::Tensor>& unsorted_indices,
                               const std::optional<at::Tensor>& h_0,
                               const std::optional<at::Tensor>& c_0,
                               const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                               const std::optional<at::Tensor>& bias_ih,
                               const std::optional<at::Tensor>& bias_hh,
                               const std::optional<at::Tensor>& weight_hr, int64_t algorithm) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("seqlstm::lstm_layer", "")
                               .typed<LstmLayerResult(
                                   const at::Tensor&, const at::Tensor&,
                                   const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&, const at::Tensor&,
                                   const at::Tensor&, const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&, int64_t)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, h_n, c_n, gates, cell] =
        op.call(input, batch_sizes, sorted_indices, unsorted_indices, h_0, c_0, weight_ih,
                weight_hh, bias_ih, bias_hh, weight_hr, algorithm);

    ctx->saved_data["has_bias_ih"] = bias_ih.has_value() && bias_ih->defined();
    ctx->saved_data["has_bias_hh"] = bias_hh.has_value() && bias_hh->defined();
    ctx->saved_data["algorithm"] = algorithm;
    // The number of sequences, for zero states in backward. h_n and c_n themselves are
    // not saved, so that the caller may change them in place.
    ctx->saved_data["batch_size"] = h_n.sym_size(0);
    ctx->save_for_backward({input, batch_sizes, h_0.value_or(at::Tensor()),
                            c_0.value_or(at::Tensor()), weight_ih, weight_hh,
                            weight_hr.value_or(at::Tensor()), output, gates, cell,
                            sorted_indices.value_or(at::Tensor()),
                            unsorted_indices.value_or(at::Tensor())});
    ctx->mark_non_differentiable({gates, cell});
    // Missing gradients stay undefined, so that the final states and gates, which
    // often take none, cost no zero-filled tensors. backward fills in those it needs.
    ctx->set_materialize_grads(false);
    return {output, h_n, c_n, gates, cell};
  }

  // grads: of output, h_n, c_n, gates and cell, undefined where none flows. Returns one
  // gradient per forward argument.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& h_0 = saved[2];
    const at::Tensor& c_0 = saved[3];
    const at::Tensor& weight_hr = saved[6];
    const at::Tensor& output = saved[7];
    const at::Tensor& cell = saved[9];
    const at::Tensor& sorted = saved[10];
    const at::Tensor& unsorted = saved[11];
    const c10::SymInt batch_size = ctx->saved_data["batch_size"].toSymInt();
    // Zeros with the shape of h (N, P) or c (N, H).
    const at::Tensor zero_h = at::zeros_symint({batch_size, output.sym_size(1)}, output.options());
    const at::Tensor zero_c = at::zeros_symint({batch_size, cell.sym_size(1)}, cell.options());

    // A final state's gradient in the packed order, zeros where none flows.
    auto packed_grad = [&](const at::Tensor& grad, const at::Tensor& zeros) {
      if (!grad.defined()) {
        return zeros;
      }
      return sorted.defined() ? grad.index_select(0, sorted) : grad;
    };

    // An initial state in the packed order, zeros when the caller gave none.
    auto packed_initial = [&](const at::Tensor& state, const at::Tensor& zeros) {
      return state.defined() ? packed_state(state, sorted) : zeros;
    };

    // An initial state's gradient in the caller's order, if the caller gave the state.
    auto caller_grad = [&](const at::Tensor& grad, const at::Tensor& state) {
      if (!state.defined()) {
        return at::Tensor();
      }
      return unsorted.defined() ? grad.index_select(0, unsorted) : grad;
    };

    const at::Tensor grad_output = grads[0].defined() ? grads[0] : at::zeros_like(output);
    auto [grad_input, grad_h_0, grad_c_0, grad_weight_ih, grad_weight_hh, grad_bias,
          grad_weight_hr] =
        lstm_backward_op().call(grad_output, packed_grad(grads[1], zero_h),
                                packed_grad(grads[2], zero_c), saved[0], saved[1],
                                packed_initial(h_0, zero_h), packed_initial(c_0, zero_c),
                                saved[4], saved[5], optional_if_defined(weight_hr), output,
                                saved[8], cell, ctx->saved_data["algorithm"].toInt());
    return {grad_input,
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            caller_grad(grad_h_0, h_0),
            caller_grad(grad_c_0, c_0),
            grad_weight_ih,
            grad_weight_hh,
            ctx->saved_data["has_bias_ih"].toBool() ? grad_bias : at::Tensor(),
            ctx->saved_data["has_bias_hh"].toBool() ? grad_bias : at::Tensor(),
            weight_hr.defined() ? grad_weight_hr : at::Tensor(),
            at::Tensor()};
  }
};

LstmLayerResult lstm_layer_autograd(
    const at::Tensor& input, const at::Tensor& batch_sizes,
    const std::optional<at::Tensor>& sorted_indices,
    const std::optional<at::Tensor>& unsorted_indices, const std::optional<at::Tensor>& h_0,
    const std::optional<at::Tensor>& c_0, const at::Tensor& weight_ih,
    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
    const std::optional<at::Tensor>& bias_hh, const std::optional<at::Tensor>& weight_hr,
    int64_t algorithm) {
  const variable_list outputs =
      LstmLayerFunction::apply(input, batch_sizes, sorted_indices, unsorted_indices, h_0, c_0,
                               weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, algorithm);
  return {outputs[0], outputs[1], outputs[2], outputs[3], outputs[4]};
}

}  // namespace
}  // namespace seqlstm

TORCH_LIBRARY_IMPL(seqlstm, Autograd, m) {
  m.impl("lstm_forward", &seqlstm::lstm_forward_autograd);
  m.impl("lstm_layer", &seqlstm::lstm_layer_autograd);
  // lstm_backward has no derivative. This kernel makes a second backward through it
  // raise an error naming the operator instead of returning wrong gradients.
  m.impl("lstm_backward", torch::autograd::autogradNotImplementedFallback());
}

TORCH_LIBRARY_IMPL(seqlstm, CompositeExplicitAutograd, m) {
  m.impl("lstm_layer", &seqlstm::lstm_layer_kernel);
}
