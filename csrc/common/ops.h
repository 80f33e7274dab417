// Host entry points of the seqlstm operators, one per backend. bindings.cpp registers
// them under the `seqlstm` torch.library namespace; the C++ tests call them directly.
#pragma once

#include <ATen/core/Tensor.h>
#include <optional>

#include <cstdint>
#include <tuple>

namespace seqlstm {

// Sparse-embedding gather: output row output_order[s] (or s) of sample s is
//   sum over k in [offsets[s], offsets[s+1]) of per_sample_weights[k] * weight[indices[k]].
// Returns (num_samples, embedding_dim) with weight's dtype.
// `sparse` selects the weight gradient that the autograd kernel returns, dense from
// embedding_bag_backward or sparse from embedding_bag_backward_values. The kernels ignore it.
at::Tensor embedding_bag_forward_cpu(const at::Tensor& weight, const at::Tensor& indices,
                                     const at::Tensor& offsets,
                                     const std::optional<at::Tensor>& per_sample_weights,
                                     const std::optional<at::Tensor>& output_order,
                                     bool sparse = false);

// Gradient of embedding_bag_forward with respect to weight: (num_embeddings, embedding_dim).
// Duplicate indices accumulate. `deterministic` has no effect on CPU, where the sum
// order is always the order of the indices.
at::Tensor embedding_bag_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                      const at::Tensor& offsets,
                                      const std::optional<at::Tensor>& per_sample_weights,
                                      const std::optional<at::Tensor>& output_order,
                                      int64_t num_embeddings, bool deterministic);

// Computes the weight gradient as one row per non-zero, the values of a sparse COO
// gradient whose row indices are `indices`:
//   values[k] = per_sample_weights[k] * grad_output[output row of k's sample].
// Returns (nnz, embedding_dim). Duplicate indices stay separate rows, and adding the
// sparse gradient to a dense tensor sums them.
at::Tensor embedding_bag_backward_values_cpu(const at::Tensor& grad_output,
                                             const at::Tensor& indices,
                                             const at::Tensor& offsets,
                                             const std::optional<at::Tensor>& per_sample_weights,
                                             const std::optional<at::Tensor>& output_order,
                                             int64_t num_embeddings);

// The output row of each non-zero's sample, output_order[s] or s: (nnz,) int64 on
// offsets' device. offsets must be valid CSR row pointers ending at nnz.
at::Tensor embedding_bag_output_rows(const at::Tensor& offsets, const at::Tensor& output_order,
                                     int64_t nnz);

// The same values from ATen operators, for any device; the CUDA backend registers it.
// Unlike the CPU kernel it does not read the index values, which the forward checked.
at::Tensor embedding_bag_backward_values_aten(
    const at::Tensor& grad_output, const at::Tensor& indices, const at::Tensor& offsets,
    const std::optional<at::Tensor>& per_sample_weights,
    const std::optional<at::Tensor>& output_order, int64_t num_embeddings);

// The same gather on CUDA. The index values are checked with one device-to-host
// transfer before any kernel reads through them, so a bad index raises IndexError.
at::Tensor embedding_bag_forward_cuda(const at::Tensor& weight, const at::Tensor& indices,
                                      const at::Tensor& offsets,
                                      const std::optional<at::Tensor>& per_sample_weights,
                                      const std::optional<at::Tensor>& output_order,
                                      bool sparse = false);

// With `deterministic`, the CUDA backward sums duplicate indices in index order after a
// stable sort, so repeated calls give bit-identical gradients. Without it, the backward
// scatters with atomics, whose order varies between runs.
at::Tensor embedding_bag_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices,
                                       const at::Tensor& offsets,
                                       const std::optional<at::Tensor>& per_sample_weights,
                                       const std::optional<at::Tensor>& output_order,
                                       int64_t num_embeddings, bool deterministic);

}  // namespace seqlstm

namespace seqlstm {

// One layer, one direction of an LSTM over a packed batch (see lstm_cell.h for the
// equations and shape letters). The layout is PackedSequence's: sequences sorted by
// length, longest first, and step t is rows [sum(batch_sizes[:t]), +batch_sizes[t])
// of `input`, the first batch_sizes[t] sequences.
//
//   input        (total, H_in)   total = sum(batch_sizes)
//   batch_sizes  (L,) int64 on CPU, non-increasing, batch_sizes[0] = N
//   h_0          (N, P)          c_0 (N, H)
//   weight_ih    (4*H, H_in)     weight_hh (4*H, P)
//   bias         (4*H,) or none: bias_ih + bias_hh
//   weight_hr    (P, H) or none: the projection
//   algorithm    0 picks by shape, 1 the per-step path, 2 the fused small-hidden path
//
// Returns (output, h_n, c_n, gates, cell):
//   output (total, P), h_n (N, P), c_n (N, H): as torch.nn.LSTM, packed
//   gates  (total, 4*H): activated i, f, g, o of every step, saved for backward
//   cell   (total, H):   c_t of every step, saved for backward
// h_n and c_n hold each sequence's state after its own last step.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_cpu(
    const at::Tensor& input, const at::Tensor& batch_sizes, const at::Tensor& h_0,
    const at::Tensor& c_0, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& weight_hr,
    int64_t algorithm);

// Backward of lstm_forward. grad_output, grad_h_n and grad_c_n have the shapes of
// output, h_n and c_n (zeros where no gradient flows); output, gates and cell are what
// lstm_forward returned. Returns (grad_input, grad_h_0, grad_c_0, grad_weight_ih,
// grad_weight_hh, grad_bias, grad_weight_hr); grad_weight_hr is empty without a
// projection.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_backward_cpu(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                  const at::Tensor& grad_c_n, const at::Tensor& input,
                  const at::Tensor& batch_sizes, const at::Tensor& h_0, const at::Tensor& c_0,
                  const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                  const std::optional<at::Tensor>& weight_hr, const at::Tensor& output,
                  const at::Tensor& gates, const at::Tensor& cell, int64_t algorithm);

// The same operators on CUDA. Algorithm 2 runs the whole recurrence in one kernel launch
// per pass and supports hidden_size up to 1024; algorithm 0 picks it for hidden_size up
// to 128. float16 and bfloat16 are supported too, computed in float32.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_cuda(
    const at::Tensor& input, const at::Tensor& batch_sizes, const at::Tensor& h_0,
    const at::Tensor& c_0, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& weight_hr,
    int64_t algorithm);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_backward_cuda(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                   const at::Tensor& grad_c_n, const at::Tensor& input,
                   const at::Tensor& batch_sizes, const at::Tensor& h_0, const at::Tensor& c_0,
                   const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                   const std::optional<at::Tensor>& weight_hr, const at::Tensor& output,
                   const at::Tensor& gates, const at::Tensor& cell, int64_t algorithm);

}  // namespace seqlstm

namespace seqlstm {

// Packed layout of sequences with the given int64 CPU lengths (N,), each >= 1:
// (batch_sizes (L,), sorted_indices (N,), unsorted_indices (N,), packed_rows (total,)),
// all int64 on the CPU. Sequences sort by descending length, stable for equal lengths,
// and packed_rows[i] is the packed row of sample i in sequence-major order.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pack_order_cpu(
    const at::Tensor& lengths);

// The same layout for a time-major padded (num_steps, N, .) input, each length at most
// num_steps: (batch_sizes, sorted_indices, unsorted_indices, source_rows), where
// source_rows[r] is the row of the padded input viewed as (num_steps * N, .) that
// packed row r comes from.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> padded_pack_order_cpu(
    const at::Tensor& lengths, int64_t num_steps);

// Moves rows between a padded and a packed layout, or any two row orders:
//   gather_rows: output[r] = source[rows[r]], (K, F) from source (R, F) and rows (K,).
//   scatter_add_rows: output (num_rows, F) is zero except output[rows[r]] += source[r],
//     from source (K, F) and rows (K,).
// Each is the other's gradient. rows is int64 and every entry must lie in
// [0, source rows) for gather_rows and in [0, num_rows) for scatter_add_rows.
at::Tensor gather_rows_cpu(const at::Tensor& source, const at::Tensor& rows);
at::Tensor scatter_add_rows_cpu(const at::Tensor& source, const at::Tensor& rows,
                                int64_t num_rows);

// Softmax cross-entropy summed over the rows of logits (N, C), and the number of rows
// whose first argmax of logits differs from their class. The class of row n is the
// first argmax of labels[n]. Returns (loss, errors), 0-d tensors of logits' dtype and
// of int64.
std::tuple<at::Tensor, at::Tensor> softmax_cross_entropy_cpu(const at::Tensor& logits,
                                                             const at::Tensor& labels);

// Gradient of softmax_cross_entropy's loss with respect to logits, given the 0-d
// gradient of the loss: (N, C).
at::Tensor softmax_cross_entropy_backward_cpu(const at::Tensor& grad_loss,
                                              const at::Tensor& logits, const at::Tensor& labels);

// softmax_cross_entropy of the logits input @ weight^T + bias, with input (N, in_features),
// weight (C, in_features) and bias (C,) or none, as torch.nn.Linear has them.
std::tuple<at::Tensor, at::Tensor> linear_softmax_cross_entropy_cpu(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& labels);

// Gradients of linear_softmax_cross_entropy's loss, given the 0-d gradient of the loss:
// (grad_input, grad_weight, grad_bias), grad_bias of shape (0,) without bias.
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_softmax_cross_entropy_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& labels);

}  // namespace seqlstm
