// Operator schemas of the `seqlstm` torch.library namespace and the pybind11 module
// `seqlstm._C`. This is the only file that includes Python or pybind11 headers; the
// backends register their kernels next to their code with TORCH_LIBRARY_IMPL.
#include <pybind11/numpy.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <string>

#include "reader/ctf_parser.h"

#ifdef SEQLSTM_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#ifndef SEQLSTM_TORCH_VERSION
#define SEQLSTM_TORCH_VERSION "unknown"
#endif

TORCH_LIBRARY(seqlstm, m) {
  m.def(
      "embedding_bag_forward(Tensor weight, Tensor indices, Tensor offsets, "
      "Tensor? per_sample_weights, Tensor? output_order, bool sparse=False) -> Tensor");
  m.def(
      "embedding_bag_backward(Tensor grad_output, Tensor indices, Tensor offsets, "
      "Tensor? per_sample_weights, Tensor? output_order, SymInt num_embeddings, "
      "bool deterministic) -> Tensor");
  m.def(
      "embedding_bag_backward_values(Tensor grad_output, Tensor indices, Tensor offsets, "
      "Tensor? per_sample_weights, Tensor? output_order, SymInt num_embeddings) -> Tensor");
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
  m.def(
      "lstm_layer(Tensor input, Tensor batch_sizes, Tensor? sorted_indices, "
      "Tensor? unsorted_indices, Tensor? h_0, Tensor? c_0, Tensor weight_ih, "
      "Tensor weight_hh, Tensor? bias_ih, Tensor? bias_hh, Tensor? weight_hr, "
      "int algorithm=0) -> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, "
      "Tensor cell)");
  m.def(
      "pack_order(Tensor lengths) -> (Tensor batch_sizes, Tensor sorted_indices, "
      "Tensor unsorted_indices, Tensor packed_rows)");
  m.def(
      "padded_pack_order(Tensor lengths, int num_steps) -> (Tensor batch_sizes, "
      "Tensor sorted_indices, Tensor unsorted_indices, Tensor source_rows)");
  m.def("gather_rows(Tensor source, Tensor rows) -> Tensor");
  m.def("scatter_add_rows(Tensor source, Tensor rows, SymInt num_rows) -> Tensor");
  m.def("softmax_cross_entropy(Tensor logits, Tensor labels) -> (Tensor loss, Tensor errors)");
  m.def(
      "softmax_cross_entropy_backward(Tensor grad_loss, Tensor logits, Tensor labels) -> "
      "Tensor");
  m.def(
      "linear_softmax_cross_entropy(Tensor input, Tensor weight, Tensor? bias, Tensor labels) "
      "-> (Tensor loss, Tensor errors)");
  m.def(
      "linear_softmax_cross_entropy_backward(Tensor grad_loss, Tensor input, Tensor weight, "
      "Tensor? bias, Tensor labels) -> (Tensor grad_input, Tensor grad_weight, "
      "Tensor grad_bias)");
}

namespace {

// Returns what this build of the extension contains, for seqlstm.build_info().
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


// ---------------------------------------------------------------------------------------
// CTF reader: the parser of csrc/reader as the class `_C.CtfFile`, for seqlstm/reader.py.
// Results come back as numpy arrays that own the parser's vectors, so nothing is copied.
// CtfError becomes ValueError and FileOpenError becomes OSError (FileNotFoundError for a
// missing file).
namespace {

namespace py = pybind11;
namespace ctf = seqlstm::reader;

template <typename T>
py::array_t<T> vector_to_numpy(std::vector<T>&& vector, std::vector<py::ssize_t> shape = {}) {
  auto* owned = new std::vector<T>(std::move(vector));
  py::capsule owner(owned, [](void* pointer) { delete static_cast<std::vector<T>*>(pointer); });
  if (shape.empty()) {
    shape.push_back(static_cast<py::ssize_t>(owned->size()));
  }
  return py::array_t<T>(shape, owned->data(), owner);
}

// Takes a 1-D int64 array of `count` entries without copying it.
const int64_t* int64_data(const py::array_t<int64_t, py::array::c_style>& array,
                          const char* name, py::ssize_t count) {
  if (array.ndim() != 1 || array.shape(0) != count) {
    throw py::value_error(std::string(name) + " must be a 1-D int64 array of " +
                          std::to_string(count) + " entries");
  }
  return array.data();
}

std::vector<ctf::StreamSpec> stream_specs_from_python(const py::list& streams) {
  std::vector<ctf::StreamSpec> specs;
  for (const py::handle& item : streams) {
    const auto spec = item.cast<std::tuple<std::string, int64_t, bool>>();
    specs.push_back({std::get<0>(spec), std::get<1>(spec), std::get<2>(spec)});
  }
  return specs;
}

py::dict ctf_index(const ctf::MappedFile& file, int64_t chunk_size) {
  ctf::FileIndex index;
  {
    py::gil_scoped_release release;
    index = ctf::index_file(file, chunk_size);
  }
  std::vector<int64_t> begin, end, first_line, num_sequences, num_samples;
  for (const ctf::ChunkInfo& chunk : index.chunks) {
    begin.push_back(chunk.begin);
    end.push_back(chunk.end);
    first_line.push_back(chunk.first_line);
    num_sequences.push_back(chunk.num_sequences);
    num_samples.push_back(chunk.num_samples);
  }
  py::dict result;
  result["has_ids"] = index.has_ids;
  result["data_begin"] = index.data_begin;
  result["num_sequences"] = index.num_sequences;
  result["num_samples"] = index.num_samples;
  result["begin"] = vector_to_numpy(std::move(begin));
  result["end"] = vector_to_numpy(std::move(end));
  result["first_line"] = vector_to_numpy(std::move(first_line));
  result["num_sequences_per_chunk"] = vector_to_numpy(std::move(num_sequences));
  result["num_samples_per_chunk"] = vector_to_numpy(std::move(num_samples));
  return result;
}

py::dict ctf_scan_chunk(const ctf::MappedFile& file, bool has_ids, int64_t begin, int64_t end,
                        int64_t first_line) {
  ctf::SequenceTable table;
  {
    py::gil_scoped_release release;
    table = ctf::scan_chunk(file, has_ids, begin, end, first_line);
  }
  py::dict result;
  result["begin"] = vector_to_numpy(std::move(table.begin));
  result["end"] = vector_to_numpy(std::move(table.end));
  result["first_line"] = vector_to_numpy(std::move(table.first_line));
  result["num_lines"] = vector_to_numpy(std::move(table.num_lines));
  result["id"] = vector_to_numpy(std::move(table.id));
  return result;
}

py::dict ctf_parse(const ctf::MappedFile& file, bool has_ids, const py::list& streams,
                   const py::array_t<int64_t, py::array::c_style>& begins,
                   const py::array_t<int64_t, py::array::c_style>& ends,
                   const py::array_t<int64_t, py::array::c_style>& first_lines,
                   int64_t max_skipped) {
  const std::vector<ctf::StreamSpec> specs = stream_specs_from_python(streams);
  const py::ssize_t count = begins.ndim() == 1 ? begins.shape(0) : -1;
  const int64_t* begin = int64_data(begins, "begins", count);
  const int64_t* end = int64_data(ends, "ends", count);
  const int64_t* first_line = int64_data(first_lines, "first_lines", count);
  ctf::ParseResult parsed;
  {
    py::gil_scoped_release release;
    parsed = ctf::parse_sequences(file, has_ids, specs, begin, end, first_line, count,
                                  max_skipped);
  }

  py::list stream_results;
  for (size_t s = 0; s < specs.size(); ++s) {
    ctf::StreamData& data = parsed.streams[s];
    py::dict stream;
    stream["lengths"] = vector_to_numpy(std::move(data.lengths));
    if (specs[s].sparse) {
      stream["indices"] = vector_to_numpy(std::move(data.indices));
      stream["offsets"] = vector_to_numpy(std::move(data.offsets));
      stream["values"] = vector_to_numpy(std::move(data.values));
    } else {
      const auto dim = static_cast<py::ssize_t>(specs[s].dim);
      const auto samples = static_cast<py::ssize_t>(data.values.size()) / dim;
      stream["values"] = vector_to_numpy(std::move(data.values), {samples, dim});
    }
    stream_results.append(std::move(stream));
  }
  py::dict result;
  result["position"] = vector_to_numpy(std::move(parsed.position));
  result["id"] = vector_to_numpy(std::move(parsed.id));
  result["first_line"] = vector_to_numpy(std::move(parsed.first_line));
  result["num_lines"] = vector_to_numpy(std::move(parsed.num_lines));
  result["streams"] = std::move(stream_results);
  result["warnings"] = parsed.warnings;
  result["num_warnings"] = parsed.num_warnings;
  result["skipped"] = parsed.skipped;
  return result;
}

void define_ctf_reader(py::module_& module) {
  py::register_exception_translator([](std::exception_ptr error) {
    try {
      if (error) {
        std::rethrow_exception(error);
      }
    } catch (const ctf::FileOpenError& open_error) {
      PyErr_SetString(open_error.error_number == ENOENT ? PyExc_FileNotFoundError
                                                        : PyExc_OSError,
                      open_error.what());
    } catch (const ctf::CtfError& ctf_error) {
      PyErr_SetString(PyExc_ValueError, ctf_error.what());
    }
  });

  py::class_<ctf::MappedFile>(module, "CtfFile",
                              "A CTF file mapped into memory, read by the C++ parser.")
      .def(py::init<const std::string&>(), py::arg("path"))
      .def_property_readonly("path", &ctf::MappedFile::path)
      .def_property_readonly("size", &ctf::MappedFile::size)
      .def("index", &ctf_index, py::arg("chunk_size"),
           "Find the chunk boundaries; returns has_ids, data_begin, totals and per-chunk "
           "arrays.")
      .def("scan_chunk", &ctf_scan_chunk, py::arg("has_ids"), py::arg("begin"), py::arg("end"),
           py::arg("first_line"), "List the sequences of a chunk as arrays.")
      .def("parse", &ctf_parse, py::arg("has_ids"), py::arg("streams"), py::arg("begins"),
           py::arg("ends"), py::arg("first_lines"), py::arg("max_skipped"),
           "Parse the sequences with the given byte ranges; streams is a list of (alias, "
           "dim, sparse).")
      .def("release", &ctf::MappedFile::release, py::arg("begin"), py::arg("end"),
           "Drop the pages of bytes [begin, end) from the resident set.");
}

}  // namespace
// ---------------------------------------------------------------------------------------

PYBIND11_MODULE(_C, module) {
  module.doc() = "Compiled kernels of seqlstm; use the seqlstm package, not this module.";
  module.def("build_info", &build_info, "Return what this build of the extension contains.");
  define_ctf_reader(module);
}
