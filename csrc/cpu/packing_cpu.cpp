// The packed layout of a batch of variable-length sequences (PackedSequence's), computed
// once per minibatch on the host, and the row moves between it and a padded layout.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "../common/checks.h"
#include "../common/ops.h"

namespace seqlstm {

namespace {

// The part of the packed layout that depends on the lengths only.
struct SortedLengths {
  at::Tensor batch_sizes;       // (L,)
  at::Tensor sorted_indices;    // (N,)
  at::Tensor unsorted_indices;  // (N,)
  int64_t total;                // sum of the lengths
};

// Checks that every length is at least 1 and, when max_length is not negative, at most
// max_length. Then sorts the lengths.
SortedLengths sort_lengths(const at::Tensor& lengths_arg, int64_t max_length) {
  check_dim(lengths_arg, "lengths", 1);
  check_dtype(lengths_arg, "lengths", at::kLong);
  check_device_type(lengths_arg, "lengths", c10::DeviceType::CPU);
  const int64_t num_sequences = lengths_arg.size(0);
  TORCH_CHECK_VALUE(num_sequences > 0,
                    "lengths must contain at least one sequence, got an empty batch");
  const at::Tensor lengths = lengths_arg.contiguous();
  const int64_t* length = lengths.const_data_ptr<int64_t>();
  int64_t longest = 0;
  int64_t total = 0;
  for (int64_t n = 0; n < num_sequences; ++n) {
    TORCH_CHECK_VALUE(length[n] >= 1, "lengths[", n, "] must be at least 1, got ", length[n]);
    TORCH_CHECK_VALUE(max_length < 0 || length[n] <= max_length, "lengths[", n, "] = ",
                      length[n], " exceeds the input's sequence length ", max_length);
    longest = std::max(longest, length[n]);
    total += length[n];
  }

  const auto options = lengths.options();
  SortedLengths sorted_lengths{at::empty({longest}, options), at::empty({num_sequences}, options),
                               at::empty({num_sequences}, options), total};
  int64_t* batch_size = sorted_lengths.batch_sizes.data_ptr<int64_t>();
  int64_t* sorted = sorted_lengths.sorted_indices.data_ptr<int64_t>();
  int64_t* unsorted = sorted_lengths.unsorted_indices.data_ptr<int64_t>();

  // Longest first, and equal lengths keep their input order, as torch.sort(stable=True).
  std::iota(sorted, sorted + num_sequences, int64_t{0});
  std::stable_sort(sorted, sorted + num_sequences,
                   [length](int64_t a, int64_t b) { return length[a] > length[b]; });
  for (int64_t k = 0; k < num_sequences; ++k) {
    unsorted[sorted[k]] = k;
  }

  // batch_sizes[t] counts the sequences longer than t, so it is k + 1 for the steps t
  // from the length of sorted sequence k + 1 up to the length of sorted sequence k.
  for (int64_t k = 0; k < num_sequences; ++k) {
    const int64_t next_length = k + 1 < num_sequences ? length[sorted[k + 1]] : 0;
    for (int64_t t = next_length; t < length[sorted[k]]; ++t) {
      batch_size[t] = k + 1;
    }
  }
  return sorted_lengths;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pack_order_cpu(
    const at::Tensor& lengths) {
  const SortedLengths sorted = sort_lengths(lengths, -1);
  const int64_t* batch_size = sorted.batch_sizes.const_data_ptr<int64_t>();
  const int64_t* unsorted = sorted.unsorted_indices.const_data_ptr<int64_t>();
  const int64_t* length = lengths.contiguous().const_data_ptr<int64_t>();
  at::Tensor packed_rows = at::empty({sorted.total}, lengths.options());
  int64_t* packed_row = packed_rows.data_ptr<int64_t>();

  // Step t starts at packed row sum(batch_sizes[:t]), and sequence n is at its sorted
  // position within every step it is active in.
  const int64_t num_steps = sorted.batch_sizes.size(0);
  std::vector<int64_t> step_offset(num_steps);
  int64_t offset = 0;
  for (int64_t t = 0; t < num_steps; ++t) {
    step_offset[t] = offset;
    offset += batch_size[t];
  }
  int64_t row = 0;
  for (int64_t n = 0; n < lengths.size(0); ++n) {
    for (int64_t t = 0; t < length[n]; ++t) {
      packed_row[row++] = step_offset[t] + unsorted[n];
    }
  }
  return {sorted.batch_sizes, sorted.sorted_indices, sorted.unsorted_indices, packed_rows};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> padded_pack_order_cpu(
    const at::Tensor& lengths, int64_t num_steps) {
  TORCH_CHECK_VALUE(num_steps >= 1, "num_steps must be at least 1, got ", num_steps);
  const SortedLengths sorted = sort_lengths(lengths, num_steps);
  const int64_t* batch_size = sorted.batch_sizes.const_data_ptr<int64_t>();
  const int64_t* sorted_index = sorted.sorted_indices.const_data_ptr<int64_t>();
  const int64_t batch = lengths.size(0);
  at::Tensor source_rows = at::empty({sorted.total}, lengths.options());
  int64_t* source_row = source_rows.data_ptr<int64_t>();

  // Packed row k of step t is sorted sequence k. Its batch position is
  // n = sorted_indices[k], so its sample t is row t * N + n of the padded input.
  int64_t row = 0;
  for (int64_t t = 0; t < sorted.batch_sizes.size(0); ++t) {
    for (int64_t k = 0; k < batch_size[t]; ++k) {
      source_row[row++] = t * batch + sorted_index[k];
    }
  }
  return {sorted.batch_sizes, sorted.sorted_indices, sorted.unsorted_indices, source_rows};
}

namespace {

// Checks that every entry of rows lies in [0, bound), where `bound_name` names the bound.
void check_row_values(const at::Tensor& rows, int64_t bound, const char* bound_name) {
  const int64_t* row = rows.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < rows.size(0); ++r) {
    TORCH_CHECK_INDEX(row[r] >= 0 && row[r] < bound, "rows[", r, "] = ", row[r],
                      " must lie in [0, ", bound_name, ") = [0, ", bound, ")");
  }
}

}  // namespace

at::Tensor gather_rows_cpu(const at::Tensor& source, const at::Tensor& rows_arg) {
  check_rows_args(source, rows_arg);
  check_device_type(source, "source", c10::DeviceType::CPU);
  const at::Tensor rows = rows_arg.contiguous();
  check_row_values(rows, source.size(0), "source.size(0)");
  const int64_t width = source.size(1);
  if (source.stride(1) != 1 && width > 1) {
    // The elements of a row are not adjacent, so index_select copies them.
    return source.index_select(0, rows);
  }
  // The rows are read where they are, so a source with a row stride other than its
  // width, such as an expanded gradient, is never copied whole.
  at::Tensor output = at::empty({rows.size(0), width}, source.options());
  const int64_t element_bytes = source.element_size();
  const int64_t row_bytes = width * element_bytes;
  const int64_t source_row_bytes = source.stride(0) * element_bytes;
  const char* from = static_cast<const char*>(source.const_data_ptr());
  char* to = static_cast<char*>(output.data_ptr());
  const int64_t* row = rows.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < rows.size(0); ++r) {
    std::memcpy(to + r * row_bytes, from + row[r] * source_row_bytes, row_bytes);
  }
  return output;
}

at::Tensor scatter_add_rows_cpu(const at::Tensor& source_arg, const at::Tensor& rows_arg,
                                int64_t num_rows) {
  check_scatter_rows_args(source_arg, rows_arg, num_rows);
  check_device_type(source_arg, "source", c10::DeviceType::CPU);
  const at::ScalarType dtype = source_arg.scalar_type();
  if (dtype == at::kHalf || dtype == at::kBFloat16) {
    // Rows that repeat are summed in float32, as index_add_ sums them.
    return scatter_add_rows_cpu(source_arg.to(at::kFloat), rows_arg, num_rows).to(dtype);
  }
  const at::Tensor source = source_arg.contiguous();
  const at::Tensor rows = rows_arg.contiguous();
  check_row_values(rows, num_rows, "num_rows");
  const int64_t width = source.size(1);
  at::Tensor output = at::empty({num_rows, width}, source.options());
  if (width == 0) {
    return output;
  }
  // The first source row for an output row is copied, later ones are added, and output
  // rows that no source row reaches are zeroed, so each output row is written once.
  const int64_t* row = rows.const_data_ptr<int64_t>();
  std::vector<bool> written(num_rows, false);
  AT_DISPATCH_FLOATING_TYPES(dtype, "scatter_add_rows_cpu", [&] {
    const scalar_t* from = source.const_data_ptr<scalar_t>();
    scalar_t* to = output.data_ptr<scalar_t>();
    for (int64_t r = 0; r < rows.size(0); ++r) {
      const scalar_t* source_row = from + r * width;
      scalar_t* target = to + row[r] * width;
      if (written[row[r]]) {
        for (int64_t j = 0; j < width; ++j) {
          target[j] += source_row[j];
        }
      } else {
        std::copy(source_row, source_row + width, target);
        written[row[r]] = true;
      }
    }
    for (int64_t output_row = 0; output_row < num_rows; ++output_row) {
      if (!written[output_row]) {
        std::fill(to + output_row * width, to + (output_row + 1) * width, scalar_t(0));
      }
    }
  });
  return output;
}

}  // namespace seqlstm

TORCH_LIBRARY_IMPL(seqlstm, CPU, m) {
  m.impl("pack_order", &seqlstm::pack_order_cpu);
  m.impl("padded_pack_order", &seqlstm::padded_pack_order_cpu);
  m.impl("gather_rows", &seqlstm::gather_rows_cpu);
  m.impl("scatter_add_rows", &seqlstm::scatter_add_rows_cpu);
}
