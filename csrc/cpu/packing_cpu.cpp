// The packed layout of a batch of variable-length sequences (PackedSequence's), computed
// once per minibatch on the host.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "../common/checks.h"
#include "../common/ops.h"

namespace seqlstm {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pack_order_cpu(
    const at::Tensor& lengths_arg) {
  check_dim(lengths_arg, "lengths", 1);
  check_dtype(lengths_arg, "lengths", at::kLong);
  check_device_type(lengths_arg, "lengths", c10::DeviceType::CPU);
  const int64_t num_sequences = lengths_arg.size(0);
  TORCH_CHECK_VALUE(num_sequences > 0,
                    "lengths must contain at least one sequence, got an empty batch");
  const at::Tensor lengths = lengths_arg.contiguous();
  const int64_t* length = lengths.const_data_ptr<int64_t>();
  int64_t max_length = 0;
  int64_t total = 0;
  for (int64_t n = 0; n < num_sequences; ++n) {
    TORCH_CHECK_VALUE(length[n] >= 1, "lengths[", n, "] must be at least 1, got ", length[n]);
    max_length = std::max(max_length, length[n]);
    total += length[n];
  }

  const auto options = lengths.options();
  at::Tensor batch_sizes = at::empty({max_length}, options);
  at::Tensor sorted_indices = at::empty({num_sequences}, options);
  at::Tensor unsorted_indices = at::empty({num_sequences}, options);
  at::Tensor packed_rows = at::empty({total}, options);
  int64_t* batch_size = batch_sizes.data_ptr<int64_t>();
  int64_t* sorted = sorted_indices.data_ptr<int64_t>();
  int64_t* unsorted = unsorted_indices.data_ptr<int64_t>();
  int64_t* packed_row = packed_rows.data_ptr<int64_t>();

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

  // Step t starts at packed row sum(batch_sizes[:t]), and sequence n is at its sorted
  // position within every step it is active in.
  std::vector<int64_t> step_offset(max_length);
  int64_t offset = 0;
  for (int64_t t = 0; t < max_length; ++t) {
    step_offset[t] = offset;
    offset += batch_size[t];
  }
  int64_t row = 0;
  for (int64_t n = 0; n < num_sequences; ++n) {
    for (int64_t t = 0; t < length[n]; ++t) {
      packed_row[row++] = step_offset[t] + unsorted[n];
    }
  }
  return {batch_sizes, sorted_indices, unsorted_indices, packed_rows};
}

}  // namespace seqlstm

TORCH_LIBRARY_IMPL(seqlstm, CPU, m) {
  m.impl("pack_order", &seqlstm::pack_order_cpu);
}
