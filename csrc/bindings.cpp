// Operator schemas of the `seqlstm` torch.library namespace and the pybind11 module
// `seqlstm._C`. This is the only file that includes Python or pybind11 headers; the
// backends register their kernels next to their code with TORCH_LIBRARY_IMPL.
#include <torch/extension.h>
#include <torch/library.h>

#include <string>

#ifdef SEQLSTM_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#ifndef SEQLSTM_TORCH_VERSION
#define SEQLSTM_TORCH_VERSION "unknown"
#endif

TORCH_LIBRARY(seqlstm, m) {
  m.def(
      "embedding_bag_forward(Tensor weight, Tensor indices, Tensor offsets, "
      "Tensor? per_sample_weights, Tensor? output_order) -> Tensor");
  m.def(
      "embedding_bag_backward(Tensor grad_output, Tensor indices, Tensor offsets, "
      "Tensor? per_sample_weights, Tensor? output_order, SymInt num_embeddings, "
      "bool deterministic) -> Tensor");
  m.def(
      "lstm_forward(Tensor input, Tensor batch_sizes, Tensor h_0, Tensor c_0, "
      "Tensor weight_ih, Tensor weight_hh, Tensor? bias, Tensor? weight_hr, "
      "int algorithm=0) -> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, "
      "Tensor cell)");
  m.def(
      "lstm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, "
      "Tensor batch_sizes, Tensor h_0, Tensor c_0, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? weight_hr, Tensor output, Tensor gates, Tensor cell, int algorithm=0) -> "
      "(Tensor grad_input, Tensor grad_h_0, Tensor grad_c_0, Tensor grad_weight_ih, "
      "Tensor grad_weight_hh, Tensor grad_bias, Tensor grad_weight_hr)");
}

namespace {

// What this build of the extension contains, for seqlstm.build_info().
pybind11::dict build_info() {
  pybind11::dict info;
#ifdef SEQLSTM_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." +
                         std::to_string(CUDART_VERSION % 1000 / 10);
#else
  info["cuda"] = false;
  info["cuda_version"] = pybind11::none();
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["torch_version"] = SEQLSTM_TORCH_VERSION;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, module) {
  module.doc() = "Compiled kernels of seqlstm; use the seqlstm package, not this module.";
  module.def("build_info", &build_info, "Return what this build of the extension contains.");
}
