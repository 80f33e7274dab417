// The CPU packing and softmax cross-entropy kernels called directly, without Python.
#include <ATen/ATen.h>

#include <cmath>

#include "../../csrc/common/ops.h"
#include "harness.h"

TEST_CASE("pack_order sorts longest first and keeps ties in order") {
  const at::Tensor lengths = at::tensor({2, 3, 1, 3}, at::kLong);
  const auto [batch_sizes, sorted_indices, unsorted_indices, packed_rows] =
      seqlstm::pack_order_cpu(lengths);
  // Sorted: sequence 1 (3), sequence 3 (3), sequence 0 (2), sequence 2 (1).
  EXPECT_EQ(sorted_indices[0].item<int64_t>(), 1);
  EXPECT_EQ(sorted_indices[1].item<int64_t>(), 3);
  EXPECT_EQ(sorted_indices[3].item<int64_t>(), 2);
  EXPECT_EQ(unsorted_indices[2].item<int64_t>(), 3);
  EXPECT_EQ(batch_sizes.size(0), 3);
  EXPECT_EQ(batch_sizes[0].item<int64_t>(), 4);
  EXPECT_EQ(batch_sizes[1].item<int64_t>(), 3);
  EXPECT_EQ(batch_sizes[2].item<int64_t>(), 2);
  // Sample 1 of sequence 0 (sorted position 2) is in step 1, which starts at row 4.
  EXPECT_EQ(packed_rows[1].item<int64_t>(), 6);
  // The last sample of sequence 3 (sorted position 1) is in step 2, at row 7 + 1.
  EXPECT_EQ(packed_rows[8].item<int64_t>(), 8);
}

TEST_CASE("pack_order length zero names its position") {
  EXPECT_THROWS_WITH(seqlstm::pack_order_cpu(at::tensor({3, 0}, at::kLong)),
                     "lengths[1] must be at least 1, got 0");
}

TEST_CASE("gather_rows and scatter_add_rows move rows and add repeats") {
  const at::Tensor source = at::arange(8, at::kFloat).reshape({4, 2});
  const at::Tensor rows = at::tensor({2, 0, 2}, at::kLong);
  const at::Tensor gathered = seqlstm::gather_rows_cpu(source, rows);
  EXPECT_TRUE(at::equal(gathered, source.index_select(0, rows)));
  // Row 2 gets two source rows added, rows 1 and 3 none.
  const at::Tensor scattered = seqlstm::scatter_add_rows_cpu(gathered, rows, 4);
  const at::Tensor expected =
      at::tensor({0.0f, 1.0f, 0.0f, 0.0f, 8.0f, 10.0f, 0.0f, 0.0f}).reshape({4, 2});
  EXPECT_TRUE(at::equal(scattered, expected));
}

TEST_CASE("gather_rows and scatter_add_rows name a row out of range") {
  const at::Tensor source = at::zeros({3, 2});
  EXPECT_THROWS_WITH(seqlstm::gather_rows_cpu(source, at::tensor({0, 3}, at::kLong)),
                     "rows[1] = 3 must lie in [0, source.size(0)) = [0, 3)");
  EXPECT_THROWS_WITH(
      seqlstm::scatter_add_rows_cpu(at::zeros({2, 2}), at::tensor({-1, 0}, at::kLong), 5),
      "rows[0] = -1 must lie in [0, num_rows) = [0, 5)");
}

TEST_CASE("softmax cross-entropy sums rows and counts errors") {
  // Row 0: logits (0, 0), class 1, loss log 2, predicted class 0 (first of the tie).
  // Row 1: logits (2, 0), class 0, loss log(1 + e^-2), predicted class 0.
  const at::Tensor logits = at::tensor({0.0, 0.0, 2.0, 0.0}, at::kDouble).reshape({2, 2});
  const at::Tensor labels = at::tensor({0.0, 1.0, 1.0, 0.0}, at::kDouble).reshape({2, 2});
  const auto [loss, errors] = seqlstm::softmax_cross_entropy_cpu(logits, labels);
  EXPECT_NEAR(loss.item<double>(), std::log(2.0) + std::log1p(std::exp(-2.0)), 1e-12);
  EXPECT_EQ(errors.item<int64_t>(), 1);
}

TEST_CASE("linear softmax cross-entropy gradient of bias is softmax minus label") {
  const at::Tensor input = at::zeros({1, 3}, at::kDouble);
  const at::Tensor weight = at::ones({2, 3}, at::kDouble);
  const at::Tensor bias = at::tensor({0.0, 0.0}, at::kDouble);
  const at::Tensor labels = at::tensor({0.0, 1.0}, at::kDouble).reshape({1, 2});
  const auto [grad_input, grad_weight, grad_bias] =
      seqlstm::linear_softmax_cross_entropy_backward_cpu(at::ones({}, at::kDouble), input,
                                                         weight, bias, labels);
  EXPECT_NEAR(grad_bias[0].item<double>(), 0.5, 1e-12);
  EXPECT_NEAR(grad_bias[1].item<double>(), -0.5, 1e-12);
  // grad_input = (0.5, -0.5) @ weight = 0 in every column.
  EXPECT_NEAR(grad_input.abs().sum().item<double>(), 0.0, 1e-12);
  // grad_weight = (0.5, -0.5)^T @ input = 0, because input is 0.
  EXPECT_NEAR(grad_weight.abs().sum().item<double>(), 0.0, 0.0);
}
