// Argument checks shared by the CPU and CUDA entry points. Each check runs before
// any data pointer is taken and names the argument, what was expected and what came.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <initializer_list>
#include <string>

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

}  // namespace seqlstm
