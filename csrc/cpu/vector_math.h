// exp and tanh for float in plain arithmetic, so that compilers vectorize the CPU cell
// loops: glibc's expf and tanhf are scalar calls, and they cost more than the rest of a
// step at small hidden sizes.
//
// The range reduction and the polynomial coefficients follow Cephes' expf and tanhf
// (Stephen L. Moshier's Cephes Math Library). Against double-precision std::exp and
// std::tanh, sampled over every float input in [-87, 88] away from zero, the maximum
// relative errors measured 8.3e-8 for exp, 1.5e-7 for sigmoid and 1.5e-7 for tanh,
// about one float ulp. tests/cpp/test_lstm_cpu.cpp checks these bounds on a grid.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

#include "../common/lstm_cell.h"

namespace seqlstm {

struct VectorMath {
  // exp(x) for float; inputs outside [-87, 88] are clamped, which keeps the result a
  // normal float (exp(-87) = 1.6e-38, exp(88) = 1.7e38).
  static inline float exp(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    // x = n ln2 + r with |r| <= ln2 / 2; adding and subtracting 1.5 * 2^23 rounds to
    // the nearest integer in float arithmetic.
    constexpr float kRound = 12582912.0f;
    const float n = (x * 1.44269504088896341f + kRound) - kRound;
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
    return p * scale;
  }

  // tanh(x) for float: a polynomial below |x| = 0.625, where 1 - 2 / (exp(2|x|) + 1)
  // would lose digits to cancellation, and that formula above.
  static inline float tanh(float x) {
    const float a = std::fabs(x);
    const float z = x * x;
    float s = -5.70498872745e-3f;
    s = s * z + 2.06390887954e-2f;
    s = s * z - 5.37397155531e-2f;
    s = s * z + 1.33314422036e-1f;
    s = s * z - 3.33332819422e-1f;
    const float small = s * z * a + a;
    const float large = 1.0f - 2.0f / (exp(2.0f * a) + 1.0f);
    const float magnitude = a < 0.625f ? small : large;
    return x < 0.0f ? -magnitude : magnitude;
  }

  // Other types (double) use the standard functions.
  template <typename acc_t>
  static inline acc_t exp(acc_t x) {
    return std::exp(x);
  }
  template <typename acc_t>
  static inline acc_t tanh(acc_t x) {
    return std::tanh(x);
  }
};

}  // namespace seqlstm
