// The tensors of one lstm_forward or lstm_backward call on any backend: its arguments
// made contiguous and the results every backend returns, allocated. The CPU and CUDA
// entry points check the arguments (checks.h), set up their device, then build these.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <optional>

#include "checks.h"

namespace seqlstm {

// `tensor` made contiguous, or undefined where the caller passed none.
inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& tensor) {
  return tensor.has_value() && tensor->defined() ? tensor->contiguous() : at::Tensor();
}

// The arguments that lstm_forward and lstm_backward share, contiguous. weight_hr is
// undefined without a projection.
struct LstmArgs {
  at::Tensor input, batch_sizes, h_0, c_0, weight_ih, weight_hh, weight_hr;
};

inline LstmArgs make_lstm_args(const at::Tensor& input, const at::Tensor& batch_sizes,
                               const at::Tensor& h_0, const at::Tensor& c_0,
                               const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                               const std::optional<at::Tensor>& weight_hr) {
  return {input.contiguous(),     batch_sizes.contiguous(), h_0.contiguous(),
          c_0.contiguous(),       weight_ih.contiguous(),   weight_hh.contiguous(),
          contiguous_or_undefined(weight_hr)};
}

struct LstmForwardCall {
  LstmArgs args;
  at::Tensor bias;  // undefined without one
  // Results, uninitialised: output (total, P), h_n (N, P), c_n (N, H), gates
  // (total, 4*H), cell (total, H).
  at::Tensor output, h_n, c_n, gates, cell;
};

inline LstmForwardCall prepare_lstm_forward(
    const LstmSizes& sizes, const at::Tensor& input, const at::Tensor& batch_sizes,
    const at::Tensor& h_0, const at::Tensor& c_0, const at::Tensor& weight_ih,
    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& weight_hr) {
  LstmForwardCall call;
  call.args = make_lstm_args(input, batch_sizes, h_0, c_0, weight_ih, weight_hh, weight_hr);
  call.bias = contiguous_or_undefined(bias);
  const auto options = call.args.input.options();
  const int64_t H = sizes.hidden_size;
  call.output = at::empty({sizes.total, sizes.proj_size}, options);
  call.h_n = at::empty({sizes.batch_size, sizes.proj_size}, options);
  call.c_n = at::empty({sizes.batch_size, H}, options);
  call.gates = at::empty({sizes.total, 4 * H}, options);
  call.cell = at::empty({sizes.total, H}, options);
  return call;
}

struct LstmBackwardCall {
  LstmArgs args;
  // The incoming gradients and the saved forward results, contiguous.
  at::Tensor grad_output, grad_h_n, grad_c_n, output, gates, cell;
  // The initial states' gradients, uninitialised: grad_h_0 (N, P), grad_c_0 (N, H).
  // Each backend allocates the others in the layout its kernels fill.
  at::Tensor grad_h_0, grad_c_0;
};

inline LstmBackwardCall prepare_lstm_backward(
    const LstmSizes& sizes, const at::Tensor& grad_output, const at::Tensor& grad_h_n,
    const at::Tensor& grad_c_n, const at::Tensor& input, const at::Tensor& batch_sizes,
    const at::Tensor& h_0, const at::Tensor& c_0, const at::Tensor& weight_ih,
    const at::Tensor& weight_hh, const std::optional<at::Tensor>& weight_hr,
    const at::Tensor& output, const at::Tensor& gates, const at::Tensor& cell) {
  LstmBackwardCall call;
  call.args = make_lstm_args(input, batch_sizes, h_0, c_0, weight_ih, weight_hh, weight_hr);
  call.grad_output = grad_output.contiguous();
  call.grad_h_n = grad_h_n.contiguous();
  call.grad_c_n = grad_c_n.contiguous();
  call.output = output.contiguous();
  call.gates = gates.contiguous();
  call.cell = cell.contiguous();
  const auto options = call.args.input.options();
  call.grad_h_0 = at::empty({sizes.batch_size, sizes.proj_size}, options);
  call.grad_c_0 = at::empty({sizes.batch_size, sizes.hidden_size}, options);
  return call;
}

}  // namespace seqlstm
