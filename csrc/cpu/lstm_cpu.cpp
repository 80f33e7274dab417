// LSTM forward and backward over a packed batch on CPU (the contract is in ops.h, the
// cell math in lstm_cell.h).
//
// Forward: one GEMM projects the input of every step at once into the gates buffer
// (total, 4*H). Then each step t adds h_{t-1} W_hh^T for its active rows only, the
// first batch_sizes[t], and applies the cell math row by row. Backward runs the steps
// in reverse, writes the gate gradients of every step into a (total, 4*H) buffer, and
// computes the input and weight gradients from it with a few large GEMMs at the end.
//
// Both paths call BLAS directly where torch exports it (else ATen's GEMM), so a step costs
// no operator dispatch; at H = 25 that overhead would exceed the arithmetic. The
// per-step path (algorithm 1) splits the cell math of a step over threads. The
// small-hidden path (algorithm 2) runs it on the calling thread, which is faster when a
// step is too small to pay for waking the thread pool.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../common/checks.h"
#include "../common/lstm_calls.h"
#include "../common/lstm_cell.h"
#include "../common/ops.h"
#include "vector_math.h"

// Fortran BLAS entry points, which libtorch_cpu exports when torch is built with MKL (as
// the x86 wheels of torch 2.14 are). They are weak, so the extension still loads without
// them, and the GEMMs then go through ATen.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace seqlstm {
namespace {

enum class Algorithm : int64_t { kByShape = 0, kPerStep = 1, kSmallHidden = 2 };

// Row-major C (m, n) = alpha * op(A) op(B) + beta * C, with op(X) = X^T when trans_X.
// lda, ldb and ldc are the row strides of A, B and C as stored.
// NOTE: no standing test reaches this fallback, because torch's x86 wheels export BLAS.
// It passed the Python LSTM tests once when forced on.
template <typename scalar_t>
void gemm_aten(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, scalar_t alpha,
               const scalar_t* a, int64_t lda, const scalar_t* b, int64_t ldb, scalar_t beta,
               scalar_t* c, int64_t ldc) {
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  auto wrap = [&](const scalar_t* data, int64_t rows, int64_t cols, int64_t ld, bool trans) {
    at::Tensor matrix = at::from_blob(const_cast<scalar_t*>(data), {trans ? cols : rows,
                                      trans ? rows : cols}, {ld, 1}, options);
    return trans ? matrix.t() : matrix;
  };
  const at::Tensor a_matrix = wrap(a, m, k, lda, trans_a);
  const at::Tensor b_matrix = wrap(b, k, n, ldb, trans_b);
  at::Tensor c_matrix = at::from_blob(c, {m, n}, {ldc, 1}, options);
  if (beta == scalar_t(0)) {
    c_matrix.copy_(at::mm(a_matrix, b_matrix).mul_(alpha));
  } else {
    c_matrix.addmm_(a_matrix, b_matrix, beta, alpha);
  }
}

template <typename scalar_t>
bool blas_available();
template <>
bool blas_available<float>() {
  return sgemm_ != nullptr;
}
template <>
bool blas_available<double>() {
  return dgemm_ != nullptr;
}

void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
               const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
               const float* beta, float* c, const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
               const double* alpha, const double* a, const int* lda, const double* b,
               const int* ldb, const double* beta, double* c, const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// The GEMMs of one call, through BLAS directly or through ATen.
template <typename scalar_t>
struct Gemm {
  bool direct;

  // Same contract as gemm_aten.
  void operator()(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, scalar_t alpha,
                  const scalar_t* a, int64_t lda, const scalar_t* b, int64_t ldb,
                  scalar_t beta, scalar_t* c, int64_t ldc) const {
    if (m == 0 || n == 0) {
      return;
    }
    if (k == 0) {
      for (int64_t row = 0; row < m; ++row) {
        for (int64_t col = 0; col < n; ++col) {
          c[row * ldc + col] = beta == scalar_t(0) ? scalar_t(0) : beta * c[row * ldc + col];
        }
      }
      return;
    }
    // Fortran BLAS takes 32-bit sizes; larger problems go through ATen.
    constexpr int64_t kMaxBlasSize = std::numeric_limits<int>::max();
    const bool fits_blas = std::max({m, n, k, lda, ldb, ldc}) <= kMaxBlasSize;
    if (!direct || !fits_blas) {
      gemm_aten(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
      return;
    }
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a row-major
    // matrix read as column-major is its transpose, so BLAS gets B first, then A.
    const int m_blas = static_cast<int>(n);
    const int n_blas = static_cast<int>(m);
    const int k_blas = static_cast<int>(k);
    const int lda_blas = static_cast<int>(ldb);
    const int ldb_blas = static_cast<int>(lda);
    const int ldc_blas = static_cast<int>(ldc);
    blas_gemm(trans_b ? "T" : "N", trans_a ? "T" : "N", &m_blas, &n_blas, &k_blas, &alpha, b,
              &lda_blas, a, &ldb_blas, &beta, c, &ldc_blas);
  }
};

// Runs body(begin, end) over [0, rows), split over threads on the per-step path when
// the rows carry enough work.
template <typename Body>
void for_rows(bool parallel, int64_t rows, int64_t work_per_row, const Body& body) {
  constexpr int64_t kMinWorkPerThread = 1 << 14;
  if (parallel && rows * work_per_row >= 2 * kMinWorkPerThread) {
    const int64_t grain = std::max<int64_t>(1, kMinWorkPerThread / std::max<int64_t>(1, work_per_row));
    at::parallel_for(0, rows, grain, body);
  } else {
    body(0, rows);
  }
}


Algorithm resolve_algorithm(int64_t algorithm, const LstmSizes& sizes) {
  TORCH_CHECK_VALUE(algorithm >= 0 && algorithm <= 2,
                    "algorithm must be 0 (pick by shape), 1 (per-step path) or 2 (small-hidden "
                    "path), got ",
                    algorithm);
  if (algorithm != 0) {
    return static_cast<Algorithm>(algorithm);
  }
  // The recurrent GEMM of one step with every row active, in multiply-adds. Below this,
  // waking the thread pool for a step's cell math costs more than it saves.
  constexpr int64_t kSmallStepWork = 1 << 20;
  const int64_t step_work = sizes.batch_size * 4 * sizes.hidden_size * sizes.proj_size;
  return step_work <= kSmallStepWork ? Algorithm::kSmallHidden : Algorithm::kPerStep;
}

// Start row of each step in the packed layout: offsets[t] = sum(batch_sizes[:t]).
std::vector<int64_t> step_offsets(const at::Tensor& batch_sizes) {
  const int64_t* batch_size = batch_sizes.const_data_ptr<int64_t>();
  std::vector<int64_t> offsets(batch_sizes.size(0) + 1, 0);
  for (int64_t t = 0; t < batch_sizes.size(0); ++t) {
    offsets[t + 1] = offsets[t] + batch_size[t];
  }
  return offsets;
}

// Packed row of the last step of every sequence, in sorted order: sequence n ends at
// the last step t with batch_sizes[t] > n.
std::vector<int64_t> last_rows(const at::Tensor& batch_sizes,
                               const std::vector<int64_t>& offsets) {
  const int64_t* batch_size = batch_sizes.const_data_ptr<int64_t>();
  const int64_t num_steps = batch_sizes.size(0);
  std::vector<int64_t> rows(batch_size[0]);
  for (int64_t t = 0; t < num_steps; ++t) {
    const int64_t next = t + 1 < num_steps ? batch_size[t + 1] : 0;
    for (int64_t n = next; n < batch_size[t]; ++n) {
      rows[n] = offsets[t] + n;
    }
  }
  return rows;
}

// Cell math of one row of one step, in lstm_cell.h's functions. The gate pointers are the
// four H-long parts of the row's 4*H gates. Every pointer is restrict, so that the
// compiler may vectorize the loop over j once the cell functions are inlined with a Math
// whose exp and tanh are plain arithmetic.
//   forward: z_* pre-activations in, activated gates out; c_prev in; c and r out
//   backward: gate_* and c as saved by forward; c_prev, dr in; dc in as dc_t, out as
//             dc_{t-1}; dz_* out
template <typename scalar_t, typename Math>
C10_ALWAYS_INLINE void cell_forward_row(int64_t H, scalar_t* __restrict z_i,
                                        scalar_t* __restrict z_f, scalar_t* __restrict z_g,
                                        scalar_t* __restrict z_o,
                                        const scalar_t* __restrict c_prev,
                                        scalar_t* __restrict c, scalar_t* __restrict r) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t j = 0; j < H; ++j) {
    const GateValues<acc_t> gate = activate_gates<acc_t, Math>(z_i[j], z_f[j], z_g[j], z_o[j]);
    z_i[j] = gate.i;
    z_f[j] = gate.f;
    z_g[j] = gate.g;
    z_o[j] = gate.o;
    acc_t r_value;
    c[j] = cell_forward<acc_t, Math>(gate, acc_t(c_prev[j]), &r_value);
    r[j] = r_value;
  }
}

template <typename scalar_t, typename Math>
C10_ALWAYS_INLINE void cell_backward_row(
    int64_t H, const scalar_t* __restrict gate_i, const scalar_t* __restrict gate_f,
    const scalar_t* __restrict gate_g, const scalar_t* __restrict gate_o,
    const scalar_t* __restrict c, const scalar_t* __restrict c_prev,
    const scalar_t* __restrict dr, scalar_t* __restrict dc, scalar_t* __restrict dz_i,
    scalar_t* __restrict dz_f, scalar_t* __restrict dz_g, scalar_t* __restrict dz_o) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t j = 0; j < H; ++j) {
    const GateValues<acc_t> gate{gate_i[j], gate_f[j], gate_g[j], gate_o[j]};
    const CellGrad<acc_t> grad = cell_backward<acc_t, Math>(gate, acc_t(c[j]), acc_t(c_prev[j]),
                                                            acc_t(dr[j]), acc_t(dc[j]));
    dz_i[j] = grad.dz_i;
    dz_f[j] = grad.dz_f;
    dz_g[j] = grad.dz_g;
    dz_o[j] = grad.dz_o;
    dc[j] = grad.dc_prev;
  }
}

// Rows [begin, end) of one step: z, c_prev, c (rows, 4*H or H) and r (rows, r_stride).
template <typename scalar_t, typename Math>
C10_ALWAYS_INLINE void cell_forward_rows(int64_t begin, int64_t end, int64_t H, scalar_t* z,
                                         const scalar_t* c_prev, scalar_t* c, scalar_t* r,
                                         int64_t r_stride) {
  for (int64_t n = begin; n < end; ++n) {
    scalar_t* z_row = z + n * 4 * H;
    cell_forward_row<scalar_t, Math>(H, z_row, z_row + H, z_row + 2 * H, z_row + 3 * H,
                                     c_prev + n * H, c + n * H, r + n * r_stride);
  }
}

// Rows [begin, end) of one step: gate, dz (rows, 4*H); c, c_prev, dc (rows, H); dr (rows,
// dr_stride).
template <typename scalar_t, typename Math>
C10_ALWAYS_INLINE void cell_backward_rows(int64_t begin, int64_t end, int64_t H,
                                          const scalar_t* gate, const scalar_t* c,
                                          const scalar_t* c_prev, const scalar_t* dr,
                                          int64_t dr_stride, scalar_t* dc, scalar_t* dz) {
  for (int64_t n = begin; n < end; ++n) {
    const scalar_t* gate_row = gate + n * 4 * H;
    scalar_t* dz_row = dz + n * 4 * H;
    cell_backward_row<scalar_t, Math>(H, gate_row, gate_row + H, gate_row + 2 * H,
                                      gate_row + 3 * H, c + n * H, c_prev + n * H,
                                      dr + n * dr_stride, dc + n * H, dz_row, dz_row + H,
                                      dz_row + 2 * H, dz_row + 3 * H);
  }
}

// x86-64 builds compile the float loops twice, for the baseline and for x86-64-v3
// (AVX2 with FMA), and pick one at load time, so that the extension still runs on any
// x86-64 CPU.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SEQLSTM_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default"), flatten))
#else
#define SEQLSTM_VECTOR_CLONES
#endif

SEQLSTM_VECTOR_CLONES void cell_forward_rows_float(int64_t begin, int64_t end, int64_t H,
                                                   float* z, const float* c_prev, float* c,
                                                   float* r, int64_t r_stride) {
  cell_forward_rows<float, VectorMath>(begin, end, H, z, c_prev, c, r, r_stride);
}

SEQLSTM_VECTOR_CLONES void cell_backward_rows_float(int64_t begin, int64_t end, int64_t H,
                                                    const float* gate, const float* c,
                                                    const float* c_prev, const float* dr,
                                                    int64_t dr_stride, float* dc, float* dz) {
  cell_backward_rows<float, VectorMath>(begin, end, H, gate, c, c_prev, dr, dr_stride, dc, dz);
}

// r = o * tanh(c) for every unit of `rows` rows, from the output gates (rows of 4*H,
// the o part at 3*H) and the cells (rows of H).
template <typename scalar_t, typename Math>
C10_ALWAYS_INLINE void raw_hidden_rows(int64_t rows, int64_t H, const scalar_t* gate,
                                       const scalar_t* c, scalar_t* r) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t n = 0; n < rows; ++n) {
    const scalar_t* __restrict gate_o = gate + n * 4 * H + 3 * H;
    const scalar_t* __restrict c_row = c + n * H;
    scalar_t* __restrict r_row = r + n * H;
    for (int64_t j = 0; j < H; ++j) {
      r_row[j] = acc_t(gate_o[j]) * Math::tanh(acc_t(c_row[j]));
    }
  }
}

SEQLSTM_VECTOR_CLONES void raw_hidden_rows_float(int64_t rows, int64_t H, const float* gate,
                                                 const float* c, float* r) {
  raw_hidden_rows<float, VectorMath>(rows, H, gate, c, r);
}

// 8 floats; GCC's vector extension, lowered to AVX2 in the x86-64-v3 clone. Loads and
// stores go through a pointer to the unaligned, aliasing variant: copying arrays of
// vectors with memcpy kept the sums on the stack instead of in registers.
using FloatVector = float __attribute__((vector_size(32)));
using UnalignedFloatVector = float __attribute__((vector_size(32), aligned(4), may_alias));
constexpr int64_t kVectorLanes = 8;

// Writes through a reference rather than returning the vector, which GCC warns would
// change the ABI of the clone built without AVX.
C10_ALWAYS_INLINE void load_vector(FloatVector& value, const float* source) {
  value = *reinterpret_cast<const UnalignedFloatVector*>(source);
}

C10_ALWAYS_INLINE void store_vector(float* target, const FloatVector& value) {
  *reinterpret_cast<UnalignedFloatVector*>(target) = value;
}

// Computes rows [row, row + kRows) and columns [col, col + kVectors * 8) of
// small_gemm_float. The kRows * kVectors sums stay in registers over the k multiply-adds,
// so the multiply-adds of different sums overlap (12 of them in the 3-row, 32-column tile).
template <int kRows, int kVectors>
C10_ALWAYS_INLINE void small_gemm_tile(int64_t row, int64_t col, int64_t k, const float* a,
                                       int64_t lda, const float* b, int64_t ldb,
                                       bool accumulate, float* c, int64_t ldc) {
  FloatVector sum[kRows][kVectors];
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kVectors; ++v) {
      sum[r][v] = FloatVector{};
      if (accumulate) {
        load_vector(sum[r][v], c + (row + r) * ldc + col + v * kVectorLanes);
      }
    }
  }
  for (int64_t p = 0; p < k; ++p) {
    const float* b_row = b + p * ldb + col;
    for (int r = 0; r < kRows; ++r) {
      const float x = a[(row + r) * lda + p];
      for (int v = 0; v < kVectors; ++v) {
        FloatVector b_value;
        load_vector(b_value, b_row + v * kVectorLanes);
        sum[r][v] += x * b_value;
      }
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kVectors; ++v) {
      store_vector(c + (row + r) * ldc + col + v * kVectorLanes, sum[r][v]);
    }
  }
}

// Computes rows [row, row + kRows) of small_gemm_float: 32 columns at a time, then 8,
// then the last columns one at a time.
template <int kRows>
C10_ALWAYS_INLINE void small_gemm_rows(int64_t row, int64_t n, int64_t k, const float* a,
                                       int64_t lda, const float* b, int64_t ldb,
                                       bool accumulate, float* c, int64_t ldc) {
  int64_t col = 0;
  for (; col + 4 * kVectorLanes <= n; col += 4 * kVectorLanes) {
    small_gemm_tile<kRows, 4>(row, col, k, a, lda, b, ldb, accumulate, c, ldc);
  }
  for (; col + kVectorLanes <= n; col += kVectorLanes) {
    small_gemm_tile<kRows, 1>(row, col, k, a, lda, b, ldb, accumulate, c, ldc);
  }
  for (; col < n; ++col) {
    for (int r = 0; r < kRows; ++r) {
      float* c_value = c + (row + r) * ldc + col;
      float sum = accumulate ? *c_value : 0.0f;
      for (int64_t p = 0; p < k; ++p) {
        sum += a[(row + r) * lda + p] * b[p * ldb + col];
      }
      *c_value = sum;
    }
  }
}

// C (m, n) = A (m, k) B (k, n), plus C itself when `accumulate`, all row-major with row
// strides lda, ldb and ldc. It serves the per-step products of small batches, where a
// BLAS call costs more than its arithmetic. Three rows of C at a time are built in
// registers from broadcast multiply-adds of the rows of B.
SEQLSTM_VECTOR_CLONES void small_gemm_float(int64_t m, int64_t n, int64_t k, const float* a,
                                            int64_t lda, const float* b, int64_t ldb,
                                            bool accumulate, float* c, int64_t ldc) {
  int64_t row = 0;
  for (; row + 3 <= m; row += 3) {
    small_gemm_rows<3>(row, n, k, a, lda, b, ldb, accumulate, c, ldc);
  }
  if (m - row == 2) {
    small_gemm_rows<2>(row, n, k, a, lda, b, ldb, accumulate, c, ldc);
  } else if (m - row == 1) {
    small_gemm_rows<1>(row, n, k, a, lda, b, ldb, accumulate, c, ldc);
  }
}

// The row loops per dtype: float uses VectorMath, double the standard functions.
template <typename scalar_t>
struct CellRows {
  static void forward(int64_t begin, int64_t end, int64_t H, scalar_t* z,
                      const scalar_t* c_prev, scalar_t* c, scalar_t* r, int64_t r_stride) {
    cell_forward_rows<scalar_t, StdMath>(begin, end, H, z, c_prev, c, r, r_stride);
  }
  static void backward(int64_t begin, int64_t end, int64_t H, const scalar_t* gate,
                       const scalar_t* c, const scalar_t* c_prev, const scalar_t* dr,
                       int64_t dr_stride, scalar_t* dc, scalar_t* dz) {
    cell_backward_rows<scalar_t, StdMath>(begin, end, H, gate, c, c_prev, dr, dr_stride, dc, dz);
  }
  static void raw_hidden(int64_t rows, int64_t H, const scalar_t* gate, const scalar_t* c,
                         scalar_t* r) {
    raw_hidden_rows<scalar_t, StdMath>(rows, H, gate, c, r);
  }
};

template <>
struct CellRows<float> {
  static void forward(int64_t begin, int64_t end, int64_t H, float* z, const float* c_prev,
                      float* c, float* r, int64_t r_stride) {
    cell_forward_rows_float(begin, end, H, z, c_prev, c, r, r_stride);
  }
  static void backward(int64_t begin, int64_t end, int64_t H, const float* gate,
                       const float* c, const float* c_prev, const float* dr, int64_t dr_stride,
                       float* dc, float* dz) {
    cell_backward_rows_float(begin, end, H, gate, c, c_prev, dr, dr_stride, dc, dz);
  }
  static void raw_hidden(int64_t rows, int64_t H, const float* gate, const float* c, float* r) {
    raw_hidden_rows_float(rows, H, gate, c, r);
  }
};

// small_gemm_float for float; the other dtypes never take the small-product path.
template <typename scalar_t>
void small_gemm(int64_t, int64_t, int64_t, const scalar_t*, int64_t, const scalar_t*, int64_t,
                bool, scalar_t*, int64_t) {
  TORCH_INTERNAL_ASSERT(false, "small_gemm supports float only");
}

template <>
void small_gemm<float>(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                       const float* b, int64_t ldb, bool accumulate, float* c, int64_t ldc) {
  small_gemm_float(m, n, k, a, lda, b, ldb, accumulate, c, ldc);
}

// Whether the per-step products of a call go through small_gemm: float batches of at
// most kSmallBatch sequences on the small-hidden path.
template <typename scalar_t>
bool use_small_products(Algorithm algorithm, const LstmSizes& sizes) {
  // At N = 1 and 4 it took a fifth to a quarter less time than MKL's sgemm per forward
  // and backward; at N = 44 it took about a tenth more (H = 25 and 64, one thread, AMD
  // EPYC), partly because its last n % 8 columns run one float at a time.
  constexpr int64_t kSmallBatch = 8;
  return std::is_same_v<scalar_t, float> && algorithm == Algorithm::kSmallHidden &&
         sizes.batch_size <= kSmallBatch;
}

template <typename scalar_t>
void lstm_forward_kernel(Algorithm algorithm, const LstmSizes& sizes,
                         const at::Tensor& batch_sizes, const at::Tensor& input,
                         const at::Tensor& h_0, const at::Tensor& c_0,
                         const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                         const at::Tensor& bias, const at::Tensor& weight_hr,
                         at::Tensor& output, at::Tensor& h_n, at::Tensor& c_n,
                         at::Tensor& gates, at::Tensor& cell) {
  const int64_t H = sizes.hidden_size;
  const int64_t G = 4 * H;
  const int64_t P = sizes.proj_size;
  const int64_t H_in = sizes.input_size;
  const bool projected = weight_hr.defined();
  const bool parallel = algorithm == Algorithm::kPerStep;
  const Gemm<scalar_t> gemm{blas_available<scalar_t>()};

  const int64_t* batch_size = batch_sizes.const_data_ptr<int64_t>();
  const std::vector<int64_t> offsets = step_offsets(batch_sizes);
  const scalar_t* x = input.const_data_ptr<scalar_t>();
  const scalar_t* w_ih = weight_ih.const_data_ptr<scalar_t>();
  const scalar_t* w_hh = weight_hh.const_data_ptr<scalar_t>();
  const scalar_t* w_hr = projected ? weight_hr.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* z = gates.data_ptr<scalar_t>();     // (total, 4*H): pre-activations, then gates
  scalar_t* c_all = cell.data_ptr<scalar_t>();  // (total, H)
  scalar_t* h_all = output.data_ptr<scalar_t>();  // (total, P)
  at::Tensor raw_buffer = projected ? at::empty({sizes.batch_size, H}, input.options())
                                    : at::Tensor();
  // small_gemm reads W_hh^T (P, 4*H) and W_hr^T (H, P) as row-major (k, n) matrices.
  const bool small = use_small_products<scalar_t>(algorithm, sizes);
  const at::Tensor w_hh_t = small ? weight_hh.t().contiguous() : at::Tensor();
  const at::Tensor w_hr_t = small && projected ? weight_hr.t().contiguous() : at::Tensor();
  scalar_t* raw = projected ? raw_buffer.data_ptr<scalar_t>() : nullptr;  // (N, H): r_t

  // Input projection of every step, with the bias summed in.
  if (bias.defined()) {
    const scalar_t* b = bias.const_data_ptr<scalar_t>();
    for (int64_t row = 0; row < sizes.total; ++row) {
      std::copy(b, b + G, z + row * G);
    }
  }
  gemm(false, true, sizes.total, G, H_in, scalar_t(1), x, H_in, w_ih, H_in,
       bias.defined() ? scalar_t(1) : scalar_t(0), z, G);

  for (int64_t t = 0; t < sizes.num_steps; ++t) {
    const int64_t rows = batch_size[t];
    scalar_t* z_t = z + offsets[t] * G;
    const scalar_t* h_prev = t == 0 ? h_0.const_data_ptr<scalar_t>() : h_all + offsets[t - 1] * P;
    const scalar_t* c_prev = t == 0 ? c_0.const_data_ptr<scalar_t>() : c_all + offsets[t - 1] * H;
    scalar_t* c_t = c_all + offsets[t] * H;
    scalar_t* h_t = h_all + offsets[t] * P;
    scalar_t* r_t = projected ? raw : h_t;
    const int64_t r_stride = projected ? H : P;

    if (small) {
      small_gemm(rows, G, P, h_prev, P, w_hh_t.const_data_ptr<scalar_t>(), G, true, z_t, G);
    } else {
      gemm(false, true, rows, G, P, scalar_t(1), h_prev, P, w_hh, P, scalar_t(1), z_t, G);
    }

    for_rows(parallel, rows, G, [&](int64_t begin, int64_t end) {
      CellRows<scalar_t>::forward(begin, end, H, z_t, c_prev, c_t, r_t, r_stride);
    });

    if (projected) {
      if (small) {
        small_gemm(rows, P, H, raw, H, w_hr_t.const_data_ptr<scalar_t>(), P, false, h_t, P);
      } else {
        gemm(false, true, rows, P, H, scalar_t(1), raw, H, w_hr, H, scalar_t(0), h_t, P);
      }
    }
  }

  const std::vector<int64_t> last = last_rows(batch_sizes, offsets);
  scalar_t* h_last = h_n.data_ptr<scalar_t>();
  scalar_t* c_last = c_n.data_ptr<scalar_t>();
  for (int64_t n = 0; n < sizes.batch_size; ++n) {
    std::copy(h_all + last[n] * P, h_all + (last[n] + 1) * P, h_last + n * P);
    std::copy(c_all + last[n] * H, c_all + (last[n] + 1) * H, c_last + n * H);
  }
}

template <typename scalar_t>
void lstm_backward_kernel(Algorithm algorithm, const LstmSizes& sizes,
                          const at::Tensor& batch_sizes, const at::Tensor& grad_output,
                          const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
                          const at::Tensor& input, const at::Tensor& h_0, const at::Tensor& c_0,
                          const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                          const at::Tensor& weight_hr, const at::Tensor& output,
                          const at::Tensor& gates, const at::Tensor& cell,
                          at::Tensor& grad_input, at::Tensor& grad_h_0, at::Tensor& grad_c_0,
                          at::Tensor& grad_weight_ih, at::Tensor& grad_weight_hh,
                          at::Tensor& grad_bias, at::Tensor& grad_weight_hr) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = sizes.hidden_size;
  const int64_t G = 4 * H;
  const int64_t P = sizes.proj_size;
  const int64_t H_in = sizes.input_size;
  const int64_t N = sizes.batch_size;
  const int64_t total = sizes.total;
  const bool projected = weight_hr.defined();
  const bool parallel = algorithm == Algorithm::kPerStep;
  const Gemm<scalar_t> gemm{blas_available<scalar_t>()};
  const bool small = use_small_products<scalar_t>(algorithm, sizes);

  const int64_t* batch_size = batch_sizes.const_data_ptr<int64_t>();
  const std::vector<int64_t> offsets = step_offsets(batch_sizes);
  const scalar_t* w_hh = weight_hh.const_data_ptr<scalar_t>();
  const scalar_t* w_hr = projected ? weight_hr.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* gate_all = gates.const_data_ptr<scalar_t>();  // (total, 4*H)
  const scalar_t* c_all = cell.const_data_ptr<scalar_t>();      // (total, H)
  const scalar_t* h_all = output.const_data_ptr<scalar_t>();    // (total, P)
  const scalar_t* grad_out = grad_output.const_data_ptr<scalar_t>();  // (total, P)

  at::Tensor grad_gates = at::empty({total, G}, input.options());
  scalar_t* dz_all = grad_gates.data_ptr<scalar_t>();
  // dh and dc carry the gradient of each sequence's h and c from step t+1 to step t.
  // Rows of sequences that end at step t still hold grad_h_n and grad_c_n.
  grad_h_0.copy_(grad_h_n);
  grad_c_0.copy_(grad_c_n);
  scalar_t* dh = grad_h_0.data_ptr<scalar_t>();  // (N, P)
  scalar_t* dc = grad_c_0.data_ptr<scalar_t>();  // (N, H)
  // With a projection, dh of every row is kept for grad_weight_hr, and dr = dh W_hr.
  at::Tensor grad_hidden = projected ? at::empty({total, P}, input.options()) : at::Tensor();
  at::Tensor grad_raw = projected ? at::empty({N, H}, input.options()) : at::Tensor();
  scalar_t* dh_all = projected ? grad_hidden.data_ptr<scalar_t>() : nullptr;
  scalar_t* dr = projected ? grad_raw.data_ptr<scalar_t>() : dh;
  const int64_t dr_stride = projected ? H : P;

  for (int64_t t = sizes.num_steps - 1; t >= 0; --t) {
    const int64_t rows = batch_size[t];
    const int64_t row0 = offsets[t];
    const scalar_t* c_prev =
        t == 0 ? c_0.const_data_ptr<scalar_t>() : c_all + offsets[t - 1] * H;

    for (int64_t n = 0; n < rows; ++n) {
      for (int64_t k = 0; k < P; ++k) {
        dh[n * P + k] += grad_out[(row0 + n) * P + k];
      }
    }
    if (projected) {
      std::copy(dh, dh + rows * P, dh_all + row0 * P);
      if (small) {
        small_gemm(rows, H, P, dh, P, w_hr, H, false, dr, H);
      } else {
        gemm(false, false, rows, H, P, scalar_t(1), dh, P, w_hr, H, scalar_t(0), dr, H);
      }
    }

    for_rows(parallel, rows, G, [&](int64_t begin, int64_t end) {
      CellRows<scalar_t>::backward(begin, end, H, gate_all + row0 * G, c_all + row0 * H, c_prev,
                                   dr, dr_stride, dc, dz_all + row0 * G);
    });

    if (small) {
      small_gemm(rows, P, G, dz_all + row0 * G, G, w_hh, P, false, dh, P);
    } else {
      gemm(false, false, rows, P, G, scalar_t(1), dz_all + row0 * G, G, w_hh, P, scalar_t(0), dh,
           P);
    }
  }

  // Gradients that sum over every step, from the saved gate gradients.
  const scalar_t* x = input.const_data_ptr<scalar_t>();
  gemm(false, false, total, H_in, G, scalar_t(1), dz_all, G, weight_ih.const_data_ptr<scalar_t>(),
       H_in, scalar_t(0), grad_input.data_ptr<scalar_t>(), H_in);
  gemm(true, false, G, H_in, total, scalar_t(1), dz_all, G, x, H_in, scalar_t(0),
       grad_weight_ih.data_ptr<scalar_t>(), H_in);

  // h_{t-1} of every packed row: h_0 for step 0, the previous step's output after it.
  at::Tensor hidden_prev = at::empty({total, P}, input.options());
  scalar_t* h_prev_all = hidden_prev.data_ptr<scalar_t>();
  std::copy(h_0.const_data_ptr<scalar_t>(), h_0.const_data_ptr<scalar_t>() + N * P, h_prev_all);
  for (int64_t t = 1; t < sizes.num_steps; ++t) {
    std::copy(h_all + offsets[t - 1] * P, h_all + (offsets[t - 1] + batch_size[t]) * P,
              h_prev_all + offsets[t] * P);
  }
  gemm(true, false, G, P, total, scalar_t(1), dz_all, G, h_prev_all, P, scalar_t(0),
       grad_weight_hh.data_ptr<scalar_t>(), P);

  scalar_t* db = grad_bias.data_ptr<scalar_t>();
  std::vector<acc_t> bias_sum(G, acc_t(0));
  for (int64_t row = 0; row < total; ++row) {
    for (int64_t k = 0; k < G; ++k) {
      bias_sum[k] += dz_all[row * G + k];
    }
  }
  std::copy(bias_sum.begin(), bias_sum.end(), db);

  if (projected) {
    // r_t = o * tanh(c_t), recomputed from the saved gates and cell.
    at::Tensor raw_all = at::empty({total, H}, input.options());
    scalar_t* r_all = raw_all.data_ptr<scalar_t>();
    CellRows<scalar_t>::raw_hidden(total, H, gate_all, c_all, r_all);
    gemm(true, false, P, H, total, scalar_t(1), dh_all, P, r_all, H, scalar_t(0),
         grad_weight_hr.data_ptr<scalar_t>(), H);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_cpu(
    const at::Tensor& input_arg, const at::Tensor& batch_sizes_arg, const at::Tensor& h_0_arg,
    const at::Tensor& c_0_arg, const at::Tensor& weight_ih_arg, const at::Tensor& weight_hh_arg,
    const std::optional<at::Tensor>& bias_arg, const std::optional<at::Tensor>& weight_hr_arg,
    int64_t algorithm_arg) {
  const at::Tensor bias_given = bias_arg.value_or(at::Tensor());
  const at::Tensor weight_hr_given = weight_hr_arg.value_or(at::Tensor());
  const LstmSizes sizes = check_lstm_args(input_arg, batch_sizes_arg, h_0_arg, c_0_arg,
                                          weight_ih_arg, weight_hh_arg, bias_given,
                                          weight_hr_given);
  check_device_type(input_arg, "input", c10::DeviceType::CPU);
  check_cpu_dtype(input_arg, "input");
  const Algorithm algorithm = resolve_algorithm(algorithm_arg, sizes);
  LstmForwardCall call = prepare_lstm_forward(sizes, input_arg, batch_sizes_arg, h_0_arg,
                                              c_0_arg, weight_ih_arg, weight_hh_arg, bias_arg,
                                              weight_hr_arg);

  const LstmArgs& args = call.args;
  AT_DISPATCH_FLOATING_TYPES(args.input.scalar_type(), "lstm_forward_cpu", [&] {
    lstm_forward_kernel<scalar_t>(algorithm, sizes, args.batch_sizes, args.input, args.h_0,
                                  args.c_0, args.weight_ih, args.weight_hh, call.bias,
                                  args.weight_hr, call.output, call.h_n, call.c_n, call.gates,
                                  call.cell);
  });
  return {call.output, call.h_n, call.c_n, call.gates, call.cell};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_backward_cpu(const at::Tensor& grad_output_arg, const at::Tensor& grad_h_n_arg,
                  const at::Tensor& grad_c_n_arg, const at::Tensor& input_arg,
                  const at::Tensor& batch_sizes_arg, const at::Tensor& h_0_arg,
                  const at::Tensor& c_0_arg, const at::Tensor& weight_ih_arg,
                  const at::Tensor& weight_hh_arg, const std::optional<at::Tensor>& weight_hr_arg,
                  const at::Tensor& output_arg, const at::Tensor& gates_arg,
                  const at::Tensor& cell_arg, int64_t algorithm_arg) {
  const at::Tensor weight_hr_given = weight_hr_arg.value_or(at::Tensor());
  const LstmSizes sizes = check_lstm_args(input_arg, batch_sizes_arg, h_0_arg, c_0_arg,
                                          weight_ih_arg, weight_hh_arg, at::Tensor(),
                                          weight_hr_given);
  check_lstm_backward_args(sizes, input_arg, grad_output_arg, grad_h_n_arg, grad_c_n_arg,
                           output_arg, gates_arg, cell_arg);
  check_device_type(input_arg, "input", c10::DeviceType::CPU);
  check_cpu_dtype(input_arg, "input");
  const Algorithm algorithm = resolve_algorithm(algorithm_arg, sizes);
  LstmBackwardCall call = prepare_lstm_backward(
      sizes, grad_output_arg, grad_h_n_arg, grad_c_n_arg, input_arg, batch_sizes_arg, h_0_arg,
      c_0_arg, weight_ih_arg, weight_hh_arg, weight_hr_arg, output_arg, gates_arg, cell_arg);

  const LstmArgs& args = call.args;
  const auto options = args.input.options();
  const int64_t H = sizes.hidden_size;
  at::Tensor grad_input = at::empty({sizes.total, sizes.input_size}, options);
  at::Tensor grad_weight_ih = at::empty({4 * H, sizes.input_size}, options);
  at::Tensor grad_weight_hh = at::empty({4 * H, sizes.proj_size}, options);
  at::Tensor grad_bias = at::empty({4 * H}, options);
  at::Tensor grad_weight_hr = args.weight_hr.defined() ? at::empty({sizes.proj_size, H}, options)
                                                       : at::empty({0}, options);

  AT_DISPATCH_FLOATING_TYPES(args.input.scalar_type(), "lstm_backward_cpu", [&] {
    lstm_backward_kernel<scalar_t>(
        algorithm, sizes, args.batch_sizes, call.grad_output, call.grad_h_n, call.grad_c_n,
        args.input, args.h_0, args.c_0, args.weight_ih, args.weight_hh, args.weight_hr,
        call.output, call.gates, call.cell, grad_input, call.grad_h_0, call.grad_c_0,
        grad_weight_ih, grad_weight_hh, grad_bias, grad_weight_hr);
  });
  return {grad_input, call.grad_h_0, call.grad_c_0, grad_weight_ih, grad_weight_hh, grad_bias,
          grad_weight_hr};
}

}  // namespace seqlstm

TORCH_LIBRARY_IMPL(seqlstm, CPU, m) {
  m.impl("lstm_forward", &seqlstm::lstm_forward_cpu);
  m.impl("lstm_backward", &seqlstm::lstm_backward_cpu);
}
