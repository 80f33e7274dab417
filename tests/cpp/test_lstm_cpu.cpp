// The CPU LSTM kernels called directly, without Python, against a step-by-step reference
// built from ATen operators and differentiated by ATen's autograd.
#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "../../csrc/common/lstm_cell.h"
#include "../../csrc/common/ops.h"
#include "../../csrc/cpu/vector_math.h"
#include "harness.h"

namespace {

// A packed batch with lengths (4, 3, 3, 1) in sorted order, H_in = 3, H = 5 and, when
// projected, P = 2, in float64.
struct Problem {
  at::Tensor input, batch_sizes, h_0, c_0, weight_ih, weight_hh, bias, weight_hr;
  std::vector<int64_t> lengths{4, 3, 3, 1};
};

Problem make_problem(bool projected, uint64_t seed) {
  at::manual_seed(seed);
  const auto options = at::TensorOptions().dtype(at::kDouble);
  const int64_t hidden_size = 5;
  const int64_t output_size = projected ? 2 : hidden_size;
  Problem problem;
  problem.batch_sizes = at::tensor({4, 3, 3, 1}, at::kLong);
  problem.input = at::randn({11, 3}, options) * 0.7;
  problem.h_0 = at::randn({4, output_size}, options) * 0.5;
  problem.c_0 = at::randn({4, hidden_size}, options) * 0.5;
  problem.weight_ih = at::randn({4 * hidden_size, 3}, options) * 0.5;
  problem.weight_hh = at::randn({4 * hidden_size, output_size}, options) * 0.5;
  problem.bias = at::randn({4 * hidden_size}, options) * 0.5;
  if (projected) {
    problem.weight_hr = at::randn({output_size, hidden_size}, options) * 0.5;
  }
  return problem;
}

// Runs the LSTM step by step with ATen operators on the packed rows. Returns output,
// h_n and c_n, differentiable with respect to every argument that requires grad.
std::tuple<at::Tensor, at::Tensor, at::Tensor> reference_lstm(const Problem& problem) {
  const int64_t* batch_size = problem.batch_sizes.const_data_ptr<int64_t>();
  const int64_t num_steps = problem.batch_sizes.size(0);
  const int64_t num_sequences = batch_size[0];
  std::vector<at::Tensor> h(num_sequences), c(num_sequences), outputs;
  for (int64_t n = 0; n < num_sequences; ++n) {
    h[n] = problem.h_0[n];
    c[n] = problem.c_0[n];
  }
  int64_t row = 0;
  for (int64_t t = 0; t < num_steps; ++t) {
    for (int64_t n = 0; n < batch_size[t]; ++n, ++row) {
      const at::Tensor z = at::matmul(problem.weight_ih, problem.input[row]) +
                           at::matmul(problem.weight_hh, h[n]) + problem.bias;
      const std::vector<at::Tensor> gates = z.chunk(4);
      c[n] = at::sigmoid(gates[1]) * c[n] + at::sigmoid(gates[0]) * at::tanh(gates[2]);
      h[n] = at::sigmoid(gates[3]) * at::tanh(c[n]);
      if (problem.weight_hr.defined()) {
        h[n] = at::matmul(problem.weight_hr, h[n]);
      }
      outputs.push_back(h[n]);
    }
  }
  return {at::stack(outputs), at::stack(h), at::stack(c)};
}

double max_difference(const at::Tensor& actual, const at::Tensor& expected) {
  return (actual - expected).abs().max().item<double>();
}

std::optional<at::Tensor> optional_tensor(const at::Tensor& tensor) {
  return tensor.defined() ? std::optional<at::Tensor>(tensor) : std::nullopt;
}

void check_forward_matches_reference(bool projected, int64_t algorithm) {
  const Problem problem = make_problem(projected, 1);
  const auto [output, h_n, c_n, gates, cell] = seqlstm::lstm_forward_cpu(
      problem.input, problem.batch_sizes, problem.h_0, problem.c_0, problem.weight_ih,
      problem.weight_hh, problem.bias, optional_tensor(problem.weight_hr), algorithm);
  const auto [expected_output, expected_h_n, expected_c_n] = reference_lstm(problem);
  EXPECT_NEAR(max_difference(output, expected_output), 0.0, 1e-12);
  EXPECT_NEAR(max_difference(h_n, expected_h_n), 0.0, 1e-12);
  EXPECT_NEAR(max_difference(c_n, expected_c_n), 0.0, 1e-12);
  EXPECT_EQ(gates.size(1), 20);
  EXPECT_EQ(cell.size(0), 11);
}

void check_backward_matches_autograd(bool projected, int64_t algorithm) {
  Problem problem = make_problem(projected, 2);
  const auto [output, h_n, c_n, gates, cell] = seqlstm::lstm_forward_cpu(
      problem.input, problem.batch_sizes, problem.h_0, problem.c_0, problem.weight_ih,
      problem.weight_hh, problem.bias, optional_tensor(problem.weight_hr), algorithm);
  const at::Tensor grad_output = at::randn_like(output);
  const at::Tensor grad_h_n = at::randn_like(h_n);
  const at::Tensor grad_c_n = at::randn_like(c_n);
  const auto [grad_input, grad_h_0, grad_c_0, grad_weight_ih, grad_weight_hh, grad_bias,
              grad_weight_hr] =
      seqlstm::lstm_backward_cpu(grad_output, grad_h_n, grad_c_n, problem.input,
                                 problem.batch_sizes, problem.h_0, problem.c_0,
                                 problem.weight_ih, problem.weight_hh,
                                 optional_tensor(problem.weight_hr), output, gates, cell,
                                 algorithm);

  std::vector<at::Tensor*> parameters = {&problem.input,     &problem.h_0,
                                         &problem.c_0,       &problem.weight_ih,
                                         &problem.weight_hh, &problem.bias};
  if (projected) {
    parameters.push_back(&problem.weight_hr);
  }
  for (at::Tensor* parameter : parameters) {
    parameter->requires_grad_(true);
  }
  const auto [expected_output, expected_h_n, expected_c_n] = reference_lstm(problem);
  const at::Tensor loss = (expected_output * grad_output).sum() +
                          (expected_h_n * grad_h_n).sum() + (expected_c_n * grad_c_n).sum();
  loss.backward();

  EXPECT_NEAR(max_difference(grad_input, problem.input.grad()), 0.0, 1e-12);
  EXPECT_NEAR(max_difference(grad_h_0, problem.h_0.grad()), 0.0, 1e-12);
  EXPECT_NEAR(max_difference(grad_c_0, problem.c_0.grad()), 0.0, 1e-12);
  EXPECT_NEAR(max_difference(grad_weight_ih, problem.weight_ih.grad()), 0.0, 1e-12);
  EXPECT_NEAR(max_difference(grad_weight_hh, problem.weight_hh.grad()), 0.0, 1e-12);
  EXPECT_NEAR(max_difference(grad_bias, problem.bias.grad()), 0.0, 1e-12);
  if (projected) {
    EXPECT_NEAR(max_difference(grad_weight_hr, problem.weight_hr.grad()), 0.0, 1e-12);
  } else {
    EXPECT_EQ(grad_weight_hr.numel(), 0);
  }
}

template <typename Function>
void expect_throws_containing(Function function, const std::string& text) {
  try {
    function();
    seqlstm_test::report_failure(__FILE__, __LINE__, "expected an exception containing " + text);
  } catch (const c10::Error& error) {
    const std::string message = error.what_without_backtrace();
    if (message.find(text) == std::string::npos) {
      seqlstm_test::report_failure(__FILE__, __LINE__,
                                   "message \"" + message + "\" does not contain " + text);
    }
  }
}

}  // namespace

TEST_CASE("lstm forward matches reference") {
  for (int64_t algorithm : {1, 2}) {
    check_forward_matches_reference(false, algorithm);
  }
}

TEST_CASE("lstm forward with projection matches reference") {
  for (int64_t algorithm : {1, 2}) {
    check_forward_matches_reference(true, algorithm);
  }
}

TEST_CASE("lstm backward matches autograd") {
  for (int64_t algorithm : {1, 2}) {
    check_backward_matches_autograd(false, algorithm);
  }
}

TEST_CASE("lstm backward with projection matches autograd") {
  for (int64_t algorithm : {1, 2}) {
    check_backward_matches_autograd(true, algorithm);
  }
}

TEST_CASE("lstm float forward close to float64") {
  // The float path runs VectorMath's exp and tanh; float64 runs the standard ones.
  const Problem problem = make_problem(false, 3);
  const auto result_double = seqlstm::lstm_forward_cpu(
      problem.input, problem.batch_sizes, problem.h_0, problem.c_0, problem.weight_ih,
      problem.weight_hh, problem.bias, std::nullopt, 2);
  const auto result_float = seqlstm::lstm_forward_cpu(
      problem.input.to(at::kFloat), problem.batch_sizes, problem.h_0.to(at::kFloat),
      problem.c_0.to(at::kFloat), problem.weight_ih.to(at::kFloat),
      problem.weight_hh.to(at::kFloat), problem.bias.to(at::kFloat), std::nullopt, 2);
  EXPECT_NEAR(max_difference(std::get<0>(result_float).to(at::kDouble),
                             std::get<0>(result_double)),
              0.0, 2e-6);
  EXPECT_NEAR(max_difference(std::get<2>(result_float).to(at::kDouble),
                             std::get<2>(result_double)),
              0.0, 2e-6);
}

TEST_CASE("vector math exp tanh sigmoid accuracy") {
  const auto vector_sigmoid = [](float x) { return seqlstm::sigmoid<float, seqlstm::VectorMath>(x); };
  double max_exp = 0.0;
  double max_tanh = 0.0;
  double max_sigmoid = 0.0;
  for (int k = -870000; k <= 880000; ++k) {
    const float x = static_cast<float>(k) * 1e-4f;
    const double exact_exp = std::exp(static_cast<double>(x));
    max_exp = std::max(max_exp, std::fabs(seqlstm::VectorMath::exp(x) - exact_exp) / exact_exp);
    const double exact_tanh = std::tanh(static_cast<double>(x));
    if (exact_tanh != 0.0) {
      max_tanh = std::max(max_tanh, std::fabs(seqlstm::VectorMath::tanh(x) - exact_tanh) /
                                        std::fabs(exact_tanh));
    }
    const double exact_sigmoid = 1.0 / (1.0 + std::exp(-static_cast<double>(x)));
    const float sigmoid = vector_sigmoid(x);
    max_sigmoid = std::max(max_sigmoid, std::fabs(sigmoid - exact_sigmoid) / exact_sigmoid);
  }
  EXPECT_TRUE(max_exp < 1.0e-7);
  EXPECT_TRUE(max_tanh < 2.0e-7);
  EXPECT_TRUE(max_sigmoid < 2.0e-7);
  // Beyond the clamp the results saturate without overflow or NaN.
  EXPECT_EQ(seqlstm::VectorMath::tanh(100.0f), 1.0f);
  EXPECT_EQ(seqlstm::VectorMath::tanh(-100.0f), -1.0f);
  EXPECT_EQ(vector_sigmoid(200.0f), 1.0f);
  EXPECT_TRUE(vector_sigmoid(-200.0f) < 1e-37f);
}

TEST_CASE("lstm batch_sizes on another device rejected") {
  const Problem problem = make_problem(false, 4);
  expect_throws_containing(
      [&] {
        seqlstm::lstm_forward_cpu(problem.input, problem.batch_sizes.to(at::kMeta), problem.h_0,
                                  problem.c_0, problem.weight_ih, problem.weight_hh,
                                  problem.bias, std::nullopt, 0);
      },
      "batch_sizes must be on cpu, got meta");
}

TEST_CASE("lstm h_0 on another device rejected") {
  const Problem problem = make_problem(false, 5);
  expect_throws_containing(
      [&] {
        seqlstm::lstm_forward_cpu(problem.input, problem.batch_sizes, problem.h_0.to(at::kMeta),
                                  problem.c_0, problem.weight_ih, problem.weight_hh,
                                  problem.bias, std::nullopt, 0);
      },
      "h_0 must be on the same device as input (cpu), got meta");
}

TEST_CASE("lstm input on meta rejected by cpu kernel") {
  const Problem problem = make_problem(false, 6);
  const auto meta = [](const at::Tensor& tensor) { return tensor.to(at::kMeta); };
  expect_throws_containing(
      [&] {
        seqlstm::lstm_forward_cpu(meta(problem.input), problem.batch_sizes, meta(problem.h_0),
                                  meta(problem.c_0), meta(problem.weight_ih),
                                  meta(problem.weight_hh), meta(problem.bias), std::nullopt, 0);
      },
      "input must be on cpu, got meta");
}
