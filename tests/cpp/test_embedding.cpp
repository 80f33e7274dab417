// The CPU sparse-embedding gather called directly, without Python.
#include <ATen/ATen.h>

#include "../../csrc/common/ops.h"
#include "harness.h"

TEST_CASE("embedding forward sums weighted rows") {
  const at::Tensor weight = at::arange(12, at::kDouble).reshape({4, 3});
  const at::Tensor indices = at::tensor({1, 3, 3}, at::kLong);
  const at::Tensor offsets = at::tensor({0, 2, 2, 3}, at::kLong);
  const at::Tensor values = at::tensor({2.0, 0.5, -1.0}, at::kDouble);
  const at::Tensor output =
      seqlstm::embedding_bag_forward_cpu(weight, indices, offsets, values, std::nullopt);
  EXPECT_EQ(output.size(0), 3);
  // Row 0 = 2 * weight[1] + 0.5 * weight[3] = 2 * (3, 4, 5) + 0.5 * (9, 10, 11).
  EXPECT_NEAR(output[0][0].item<double>(), 10.5, 1e-12);
  EXPECT_NEAR(output[0][2].item<double>(), 15.5, 1e-12);
  EXPECT_NEAR(output[1].abs().sum().item<double>(), 0.0, 0.0);
  EXPECT_NEAR(output[2][1].item<double>(), -10.0, 1e-12);
}

TEST_CASE("embedding backward accumulates duplicate indices") {
  const at::Tensor grad_output = at::ones({2, 2}, at::kDouble);
  const at::Tensor indices = at::tensor({0, 0, 2}, at::kLong);
  const at::Tensor offsets = at::tensor({0, 2, 3}, at::kLong);
  const at::Tensor grad_weight = seqlstm::embedding_bag_backward_cpu(
      grad_output, indices, offsets, std::nullopt, std::nullopt, 3, false);
  EXPECT_NEAR(grad_weight[0][0].item<double>(), 2.0, 0.0);
  EXPECT_NEAR(grad_weight[1][1].item<double>(), 0.0, 0.0);
  EXPECT_NEAR(grad_weight[2][1].item<double>(), 1.0, 0.0);
}

TEST_CASE("embedding sparse gradient values match between CPU kernel and ATen version") {
  at::manual_seed(7);
  const at::Tensor grad_output = at::randn({4, 3}, at::kDouble);
  const at::Tensor indices = at::tensor({2, 0, 2, 5, 1, 1}, at::kLong);
  const at::Tensor offsets = at::tensor({0, 2, 2, 5, 6}, at::kLong);
  const at::Tensor values = at::randn({6}, at::kDouble);
  const at::Tensor order = at::tensor({3, 1, 0, 2}, at::kLong);
  const at::Tensor kernel = seqlstm::embedding_bag_backward_values_cpu(
      grad_output, indices, offsets, values, order, 6);
  const at::Tensor aten = seqlstm::embedding_bag_backward_values_aten(
      grad_output, indices, offsets, values, order, 6);
  EXPECT_EQ(kernel.size(0), 6);
  EXPECT_NEAR((kernel - aten).abs().max().item<double>(), 0.0, 1e-15);
  // Non-zero 3 belongs to sample 2, written to output row order[2] = 0.
  EXPECT_NEAR((kernel[3] - values[3] * grad_output[0]).abs().max().item<double>(), 0.0, 1e-15);
  // Summed over duplicates, the rows give the dense gradient.
  const at::Tensor dense = seqlstm::embedding_bag_backward_cpu(grad_output, indices, offsets,
                                                               values, order, 6, false);
  const at::Tensor summed = at::zeros({6, 3}, at::kDouble).index_add_(0, indices, kernel);
  EXPECT_NEAR((summed - dense).abs().max().item<double>(), 0.0, 1e-12);
}

TEST_CASE("embedding index out of range names index and bound") {
  const at::Tensor weight = at::zeros({5, 2});
  const at::Tensor indices = at::tensor({4, 5}, at::kLong);
  const at::Tensor offsets = at::tensor({0, 2}, at::kLong);
  EXPECT_THROWS_WITH(
      seqlstm::embedding_bag_forward_cpu(weight, indices, offsets, std::nullopt, std::nullopt),
      "indices[1] = 5 is out of range for an embedding with num_embeddings = 5");
}
