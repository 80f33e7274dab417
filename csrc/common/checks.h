// Argument checks shared by the CPU and CUDA entry points. Each check runs before
// any data pointer is taken and names the argument, what was expected and what came.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>

namespace seqlstm {

inline std::string shape_string(c10::IntArrayRef sizes) {
  std::string text = "(";
  for (size_t k = 0; k < sizes.size(); ++k) {
    text += (k ? ", " : "") + std::to_string(sizes[k]);
  }
  return text + (sizes.size() == 1 ? ",)" : ")");
}

inline void check_defined(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK_VALUE(tensor.defined(), name, " must be a tensor, got None");
}

inline void check_dim(const at::Tensor& tensor, const char* name, int64_t dim) {
  check_defined(tensor, name);
  TORCH_CHECK_VALUE(tensor.dim() == dim, name, " must have ", dim, " dimensions, got ",
                    tensor.dim(), " with shape ", shape_string(tensor.sizes()));
}

// Checks the full shape; a -1 entry accepts any size in that position.
inline void check_shape(const at::Tensor& tensor, const char* name,
                        std::initializer_list<int64_t> expected, const char* expected_text) {
  check_dim(tensor, name, static_cast<int64_t>(expected.size()));
  int64_t axis = 0;
  for (int64_t size : expected) {
    TORCH_CHECK_VALUE(size < 0 || tensor.size(axis) == size, name, " must have shape ",
                      expected_text, " = ", shape_string(expected), ", got ",
                      shape_string(tensor.sizes()));
    ++axis;
  }
}

inline void check_dtype(const at::Tensor& tensor, const char* name, at::ScalarType dtype) {
  TORCH_CHECK_TYPE(tensor.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ",
                   tensor.scalar_type());
}

inline void check_floating(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(tensor.scalar_type()), name,
                   " must have a floating-point dtype, got ", tensor.scalar_type());
}

inline void check_same_dtype(const at::Tensor& tensor, const char* name,
                             const at::Tensor& reference, const char* reference_name) {
  TORCH_CHECK_TYPE(tensor.scalar_type() == reference.scalar_type(), name,
                   " must have the same dtype as ", reference_name, " (",
                   reference.scalar_type(), "), got ", tensor.scalar_type());
}

inline void check_same_device(const at::Tensor& tensor, const char* name,
                              const at::Tensor& reference, const char* reference_name) {
  TORCH_CHECK_VALUE(tensor.device() == reference.device(), name,
                    " must be on the same device as ", reference_name, " (",
                    reference.device(), "), got ", tensor.device());
}

inline void check_device_type(const at::Tensor& tensor, const char* name,
                              c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(tensor.device().type() == device_type, name, " must be on ",
                    c10::DeviceTypeName(device_type, /*lower_case=*/true), ", got ",
                    tensor.device());
}

// NOTE: the CPU kernels run float32 and float64 only; other floating dtypes raise
// TypeError naming the argument.
inline void check_cpu_dtype(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK_TYPE(tensor.scalar_type() == at::kFloat || tensor.scalar_type() == at::kDouble,
                   name, " must have dtype float32 or float64 on CPU, got ",
                   tensor.scalar_type());
}

}  // namespace seqlstm

namespace seqlstm {

// Structural checks of the sparse-embedding gather's arguments; the index values
// themselves are checked by each backend, since reading them on a GPU costs a sync.
//   weight: (num_embeddings, embedding_dim)
//   indices: (nnz,) int64, offsets: (num_samples + 1,) int64
//   per_sample_weights: (nnz,) with weight's dtype, or undefined
//   output_order: (num_samples,) int64, or undefined
// `weight_name` names the table argument: "weight" forward, "grad_output" backward.
inline void check_embedding_bag_args(const at::Tensor& weight, const char* weight_name,
                                     const at::Tensor& indices, const at::Tensor& offsets,
                                     const at::Tensor& per_sample_weights,
                                     const at::Tensor& output_order) {
  check_dim(weight, weight_name, 2);
  check_floating(weight, weight_name);
  check_dim(indices, "indices", 1);
  check_dtype(indices, "indices", at::kLong);
  check_same_device(indices, "indices", weight, weight_name);
  check_dim(offsets, "offsets", 1);
  check_dtype(offsets, "offsets", at::kLong);
  check_same_device(offsets, "offsets", weight, weight_name);
  TORCH_CHECK_VALUE(offsets.size(0) >= 1,
                    "offsets must have num_samples + 1 entries, got an empty tensor");
  if (per_sample_weights.defined()) {
    check_same_dtype(per_sample_weights, "per_sample_weights", weight, weight_name);
    check_same_device(per_sample_weights, "per_sample_weights", weight, weight_name);
    TORCH_CHECK_VALUE(per_sample_weights.dim() == 1 &&
                          per_sample_weights.size(0) == indices.size(0),
                      "per_sample_weights must have shape (nnz,) = (", indices.size(0),
                      ",) like indices, got ", shape_string(per_sample_weights.sizes()));
  }
  if (output_order.defined()) {
    check_dtype(output_order, "output_order", at::kLong);
    check_same_device(output_order, "output_order", weight, weight_name);
    TORCH_CHECK_VALUE(output_order.dim() == 1 && output_order.size(0) == offsets.size(0) - 1,
                      "output_order must have shape (num_samples,) = (", offsets.size(0) - 1,
                      ",), got ", shape_string(output_order.sizes()));
  }
}

// The sparse-embedding gather's arguments after the checks above, made contiguous.
// per_sample_weights and output_order are undefined where the caller passed none.
struct EmbeddingBagInputs {
  at::Tensor table;  // weight forward, grad_output backward
  at::Tensor indices;
  at::Tensor offsets;
  at::Tensor per_sample_weights;
  at::Tensor output_order;
};

// Checks the gather's arguments for one backend and returns them contiguous. Backward
// passes grad_output as the table; check_embedding_bag_grad_output checks its rows.
inline EmbeddingBagInputs prepare_embedding_bag_inputs(
    const at::Tensor& table, const char* table_name, const at::Tensor& indices,
    const at::Tensor& offsets, const std::optional<at::Tensor>& per_sample_weights,
    const std::optional<at::Tensor>& output_order, c10::DeviceType device_type) {
  const at::Tensor scale = per_sample_weights.value_or(at::Tensor());
  const at::Tensor order = output_order.value_or(at::Tensor());
  check_embedding_bag_args(table, table_name, indices, offsets, scale, order);
  check_device_type(table, table_name, device_type);
  return {table.contiguous(), indices.contiguous(), offsets.contiguous(),
          scale.defined() ? scale.contiguous() : at::Tensor(),
          order.defined() ? order.contiguous() : at::Tensor()};
}

// Checks what only the backward has: a non-negative table size and one grad_output row
// per sample.
inline void check_embedding_bag_grad_output(const at::Tensor& grad_output,
                                            const at::Tensor& offsets, int64_t num_embeddings) {
  TORCH_CHECK_VALUE(num_embeddings >= 0, "num_embeddings must be non-negative, got ",
                    num_embeddings);
  TORCH_CHECK_VALUE(grad_output.size(0) == offsets.size(0) - 1,
                    "grad_output must have shape (num_samples, embedding_dim) with num_samples = ",
                    offsets.size(0) - 1, ", got ", shape_string(grad_output.sizes()));
}

}  // namespace seqlstm

namespace seqlstm {

// Sizes of one LSTM layer and direction, as check_lstm_args derives them.
struct LstmSizes {
  int64_t total;        // rows of the packed input, sum(batch_sizes)
  int64_t num_steps;    // L
  int64_t batch_size;   // N = batch_sizes[0]
  int64_t input_size;   // H_in
  int64_t hidden_size;  // H
  int64_t proj_size;    // P: weight_hr's rows, or H without a projection
};

// Checks input (total, H_in) floating and batch_sizes (L,) int64 on CPU with L >= 1, every
// entry positive, non-increasing and summing to input's rows. Returns the sizes they give:
// total, num_steps, batch_size and input_size. Reads batch_sizes, which PackedSequence
// keeps on the CPU for every device.
inline LstmSizes check_lstm_batch(const at::Tensor& input, const at::Tensor& batch_sizes) {
  check_dim(input, "input", 2);
  check_floating(input, "input");
  check_dim(batch_sizes, "batch_sizes", 1);
  check_dtype(batch_sizes, "batch_sizes", at::kLong);
  check_device_type(batch_sizes, "batch_sizes", c10::DeviceType::CPU);
  TORCH_CHECK_VALUE(batch_sizes.size(0) >= 1,
                    "batch_sizes must have at least one step, got an empty tensor "
                    "(an empty batch or sequences of length 0)");

  LstmSizes sizes{};
  sizes.num_steps = batch_sizes.size(0);
  const at::Tensor batch_sizes_dense = batch_sizes.contiguous();
  const int64_t* batch_size = batch_sizes_dense.const_data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t t = 0; t < sizes.num_steps; ++t) {
    TORCH_CHECK_VALUE(batch_size[t] >= 1, "batch_sizes[", t, "] must be positive, got ",
                      batch_size[t]);
    TORCH_CHECK_VALUE(t == 0 || batch_size[t] <= batch_size[t - 1],
                      "batch_sizes must be non-increasing, got batch_sizes[", t - 1, "] = ",
                      batch_size[t - 1], " < batch_sizes[", t, "] = ", batch_size[t]);
    total += batch_size[t];
  }
  sizes.batch_size = batch_size[0];
  TORCH_CHECK_VALUE(input.size(0) == total, "input must have sum(batch_sizes) = ", total,
                    " rows, got shape ", shape_string(input.sizes()));
  sizes.total = total;
  sizes.input_size = input.size(1);
  return sizes;
}

// Checks that weight_hh is (4*H, .) with H >= 1 and returns H.
inline int64_t check_weight_hh_rows(const at::Tensor& weight_hh) {
  check_dim(weight_hh, "weight_hh", 2);
  TORCH_CHECK_VALUE(weight_hh.size(0) > 0 && weight_hh.size(0) % 4 == 0,
                    "weight_hh must have shape (4*hidden_size, proj_size or hidden_size) with "
                    "hidden_size >= 1, got ",
                    shape_string(weight_hh.sizes()));
  return weight_hh.size(0) / 4;
}

// Checks that weight_hr, when defined, is (P, H) with P >= 1, and returns P (H without it).
inline int64_t check_weight_hr(const at::Tensor& weight_hr, int64_t hidden_size) {
  if (!weight_hr.defined()) {
    return hidden_size;
  }
  check_dim(weight_hr, "weight_hr", 2);
  TORCH_CHECK_VALUE(weight_hr.size(0) >= 1 && weight_hr.size(1) == hidden_size,
                    "weight_hr must have shape (proj_size, hidden_size) = (P, ", hidden_size,
                    ") with P >= 1, got ", shape_string(weight_hr.sizes()));
  return weight_hr.size(0);
}

// Checks the arguments of lstm_forward (and the inputs lstm_backward shares with it):
//   input (total, H_in) floating, batch_sizes (L,) int64 on CPU with L >= 1, every
//   entry positive, non-increasing and summing to total; h_0 (N, P), c_0 (N, H),
//   weight_ih (4*H, H_in), weight_hh (4*H, P), bias (4*H,) or undefined, weight_hr
//   (P, H) or undefined. Every floating tensor has input's dtype and device.
inline LstmSizes check_lstm_args(const at::Tensor& input, const at::Tensor& batch_sizes,
                                 const at::Tensor& h_0, const at::Tensor& c_0,
                                 const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                 const at::Tensor& bias, const at::Tensor& weight_hr) {
  LstmSizes sizes = check_lstm_batch(input, batch_sizes);
  sizes.hidden_size = check_weight_hh_rows(weight_hh);
  const int64_t H = sizes.hidden_size;
  sizes.proj_size = check_weight_hr(weight_hr, H);
  const int64_t P = sizes.proj_size;
  const int64_t N = sizes.batch_size;
  check_shape(weight_hh, "weight_hh", {4 * H, P}, "(4*hidden_size, proj_size or hidden_size)");
  check_shape(weight_ih, "weight_ih", {4 * H, sizes.input_size},
              "(4*hidden_size, input_size)");
  check_shape(h_0, "h_0", {N, P}, "(batch_sizes[0], proj_size or hidden_size)");
  check_shape(c_0, "c_0", {N, H}, "(batch_sizes[0], hidden_size)");
  if (bias.defined()) {
    check_shape(bias, "bias", {4 * H}, "(4*hidden_size,)");
  }

  const std::initializer_list<std::pair<const at::Tensor*, const char*>> same_as_input = {
      {&h_0, "h_0"}, {&c_0, "c_0"}, {&weight_ih, "weight_ih"}, {&weight_hh, "weight_hh"},
      {&bias, "bias"}, {&weight_hr, "weight_hr"}};
  for (const auto& [tensor, name] : same_as_input) {
    if (tensor->defined()) {
      check_same_dtype(*tensor, name, input, "input");
      check_same_device(*tensor, name, input, "input");
    }
  }
  return sizes;
}

// Checks what lstm_backward takes beyond lstm_forward's arguments: the incoming
// gradients and the saved forward results, each with the shape lstm_forward returns
// and input's dtype and device.
inline void check_lstm_backward_args(const LstmSizes& sizes, const at::Tensor& input,
                                     const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                                     const at::Tensor& grad_c_n, const at::Tensor& output,
                                     const at::Tensor& gates, const at::Tensor& cell) {
  const int64_t total = sizes.total;
  const int64_t N = sizes.batch_size;
  const int64_t H = sizes.hidden_size;
  const int64_t P = sizes.proj_size;
  check_shape(grad_output, "grad_output", {total, P}, "(sum(batch_sizes), proj_size or hidden_size)");
  check_shape(grad_h_n, "grad_h_n", {N, P}, "(batch_sizes[0], proj_size or hidden_size)");
  check_shape(grad_c_n, "grad_c_n", {N, H}, "(batch_sizes[0], hidden_size)");
  check_shape(output, "output", {total, P}, "(sum(batch_sizes), proj_size or hidden_size)");
  check_shape(gates, "gates", {total, 4 * H}, "(sum(batch_sizes), 4*hidden_size)");
  check_shape(cell, "cell", {total, H}, "(sum(batch_sizes), hidden_size)");
  const std::initializer_list<std::pair<const at::Tensor*, const char*>> same_as_input = {
      {&grad_output, "grad_output"}, {&grad_h_n, "grad_h_n"}, {&grad_c_n, "grad_c_n"},
      {&output, "output"},           {&gates, "gates"},       {&cell, "cell"}};
  for (const auto& [tensor, name] : same_as_input) {
    check_same_dtype(*tensor, name, input, "input");
    check_same_device(*tensor, name, input, "input");
  }
}

// Checks that tensor is given and is neither nested nor of a sparse or other layout.
inline void check_dense(const at::Tensor& tensor, const char* name) {
  check_defined(tensor, name);
  TORCH_CHECK_VALUE(!tensor.is_nested(), name, " must be a dense tensor, got a nested tensor");
  TORCH_CHECK_VALUE(tensor.layout() == at::kStrided, name, " must be a dense tensor, got layout ",
                    tensor.layout());
}

// Checks the arguments of gather_rows and scatter_add_rows that every backend shares:
// source (., F) dense with dtype float16, bfloat16, float32 or float64, rows (K,) int64
// dense on source's device, and for scatter_add_rows (num_rows >= 0) one row of source
// per entry of rows. The values of rows are checked by the CPU kernels only, since
// reading them on a GPU costs a sync.
inline void check_rows_args(const at::Tensor& source, const at::Tensor& rows) {
  check_dense(source, "source");
  check_dense(rows, "rows");
  check_dim(source, "source", 2);
  const at::ScalarType dtype = source.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat ||
                       dtype == at::kDouble,
                   "source must have dtype float16, bfloat16, float32 or float64, got ", dtype);
  check_dim(rows, "rows", 1);
  check_dtype(rows, "rows", at::kLong);
  check_same_device(rows, "rows", source, "source");
}

inline void check_scatter_rows_args(const at::Tensor& source, const at::Tensor& rows,
                                    int64_t num_rows) {
  check_rows_args(source, rows);
  TORCH_CHECK_VALUE(source.size(0) == rows.size(0), "source must have one row per entry of "
                    "rows (", rows.size(0), "), got shape ", shape_string(source.sizes()));
  TORCH_CHECK_VALUE(num_rows >= 0, "num_rows must not be negative, got ", num_rows);
}

}  // namespace seqlstm
