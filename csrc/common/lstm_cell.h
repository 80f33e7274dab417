// LSTM cell math shared by the CPU and CUDA kernels.
//
// Gate order is i, f, g, o (input, forget, cell, output), the weight layout of
// torch.nn.LSTM, so weights copy in from it unchanged:
//
//   z   = W_ih x_t + b + W_hh h_{t-1}         (4*H), gates in the order above
//   i   = sigmoid(z_i)   f = sigmoid(z_f)   g = tanh(z_g)   o = sigmoid(z_o)
//   c_t = f * c_{t-1} + i * g
//   r_t = o * tanh(c_t)                        (H), the raw hidden state
//   h_t = W_hr r_t  with a projection (P = proj_size), else h_t = r_t (P = H)
//
// Shape letters: L = sequence length, N = batch size, H_in = input_size,
// H = hidden_size, P = proj_size (or H without a projection).
//
// Every function here works on one element of one hidden unit and is usable
// from host and device code. Accumulation happens in `acc_t`, which is float
// for half-precision inputs, as ATen does.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace seqlstm {

// Position of each gate in the 4*H axis, in units of H.
enum Gate : int { kInputGate = 0, kForgetGate = 1, kCellGate = 2, kOutputGate = 3 };
constexpr int kNumGates = 4;

// The exp and tanh the cell math uses. A backend may pass its own policy with the same
// two static functions (the CPU kernels pass a vectorizable float version).
struct StdMath {
  template <typename acc_t>
  C10_HOST_DEVICE static acc_t exp(acc_t x) {
    return std::exp(x);
  }
  template <typename acc_t>
  C10_HOST_DEVICE static acc_t tanh(acc_t x) {
    return std::tanh(x);
  }
};

template <typename acc_t, typename Math = StdMath>
C10_HOST_DEVICE inline acc_t sigmoid(acc_t x) {
  return acc_t(1) / (acc_t(1) + Math::exp(-x));
}

// Activated gates of one hidden unit.
template <typename acc_t>
struct GateValues {
  acc_t i, f, g, o;
};

// Applies the gate activations to the pre-activations z of one hidden unit.
template <typename acc_t, typename Math = StdMath>
C10_HOST_DEVICE inline GateValues<acc_t> activate_gates(acc_t z_i, acc_t z_f, acc_t z_g,
                                                        acc_t z_o) {
  return {sigmoid<acc_t, Math>(z_i), sigmoid<acc_t, Math>(z_f), Math::tanh(z_g),
          sigmoid<acc_t, Math>(z_o)};
}

// Forward state update of one hidden unit. Returns c_t and writes r_t = o * tanh(c_t).
template <typename acc_t, typename Math = StdMath>
C10_HOST_DEVICE inline acc_t cell_forward(const GateValues<acc_t>& gate, acc_t c_prev,
                                          acc_t* r) {
  const acc_t c = gate.f * c_prev + gate.i * gate.g;
  *r = gate.o * Math::tanh(c);
  return c;
}

// Gradients of one hidden unit with respect to its gate pre-activations and c_{t-1}.
template <typename acc_t>
struct CellGrad {
  acc_t dz_i, dz_f, dz_g, dz_o;
  acc_t dc_prev;
};

// Backward step of one hidden unit.
//   gate: the activated gates saved by the forward pass
//   c, c_prev: c_t and c_{t-1}
//   dr: gradient with respect to r_t (after the projection's backward, if any)
//   dc: gradient with respect to c_t arriving from step t+1 (or grad_c_n)
template <typename acc_t, typename Math = StdMath>
C10_HOST_DEVICE inline CellGrad<acc_t> cell_backward(const GateValues<acc_t>& gate, acc_t c,
                                                     acc_t c_prev, acc_t dr, acc_t dc) {
  const acc_t tanh_c = Math::tanh(c);
  const acc_t dc_total = dc + dr * gate.o * (acc_t(1) - tanh_c * tanh_c);
  CellGrad<acc_t> grad;
  grad.dz_o = dr * tanh_c * gate.o * (acc_t(1) - gate.o);
  grad.dz_i = dc_total * gate.g * gate.i * (acc_t(1) - gate.i);
  grad.dz_f = dc_total * c_prev * gate.f * (acc_t(1) - gate.f);
  grad.dz_g = dc_total * gate.i * (acc_t(1) - gate.g * gate.g);
  grad.dc_prev = dc_total * gate.f;
  return grad;
}

}  // namespace seqlstm
