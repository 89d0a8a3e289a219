// Regularised solve ΔW = S_RK (λC0 + C_acc + S_KK)⁻¹ by Cholesky. The system is assembled
// straight into one d x d buffer (upper triangle only, read from full or packed operands),
// factored with LAPACK dpotrf and solved for all d_out right-hand sides with two TRSMs.
#include <algorithm>
#include <cmath>
#include <vector>

#include "blas.h"
#include "kernels.h"
#include "parallel.h"

namespace ce {
namespace {

inline int64_t packed_row(int64_t i, int64_t d) { return i * d - i * (i - 1) / 2; }

// Pointer to the entries (i, i..d-1) of an operand, as T.
template <typename T>
const T* upper_row(const SymOperand& op, int64_t i, int64_t d) {
  const T* base = static_cast<const T*>(op.data);
  return op.packed ? base + packed_row(i, d) : base + i * d + i;
}

template <typename T>
void row_assign(double* dst, const T* src, int64_t n, double scale) {
  for (int64_t j = 0; j < n; ++j) dst[j] = scale * static_cast<double>(src[j]);
}

template <typename T>
void row_add(double* dst, const T* src, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] += static_cast<double>(src[j]);
}

void assign_row(double* dst, const SymOperand& op, int64_t i, int64_t d, double scale) {
  if (op.is_float32) row_assign(dst, upper_row<float>(op, i, d), d - i, scale);
  else row_assign(dst, upper_row<double>(op, i, d), d - i, scale);
}

void add_row(double* dst, const SymOperand& op, int64_t i, int64_t d) {
  if (!op.data) return;
  if (op.is_float32) row_add(dst, upper_row<float>(op, i, d), d - i);
  else row_add(dst, upper_row<double>(op, i, d), d - i);
}

// Builds row i of the upper triangle; returns false if any entry is not finite.
bool assemble_row(const SymOperand& c0, double lam, const SymOperand& c_acc,
                  const SymOperand& s_kk, int64_t i, int64_t d, double* system) {
  double* dst = system + i * d + i;
  assign_row(dst, c0, i, d, lam);
  add_row(dst, c_acc, i, d);
  add_row(dst, s_kk, i, d);
  bool finite = true;
  for (int64_t j = 0; j < d - i; ++j) finite &= std::isfinite(dst[j]);
  return finite;
}

// Rows are paired (r, d-1-r) so every thread gets the same share of the triangle.
bool assemble(const SymOperand& c0, double lam, const SymOperand& c_acc, const SymOperand& s_kk,
              int64_t d, double* system) {
  std::vector<char> ok_parts(static_cast<size_t>((d + 1) / 2), 1);
  parallel_ranges((d + 1) / 2, 1, 8, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      bool ok = assemble_row(c0, lam, c_acc, s_kk, r, d, system);
      if (d - 1 - r != r) ok &= assemble_row(c0, lam, c_acc, s_kk, d - 1 - r, d, system);
      ok_parts[r] = ok;
    }
  });
  for (char ok : ok_parts)
    if (!ok) return false;
  return true;
}

bool all_finite(const double* x, int64_t n) {
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) finite &= std::isfinite(x[i]);
  return finite;
}

// Blocked right-looking Cholesky (column-major lower, leading dimension d). Each step factors
// one diagonal block, then threads split the panel TRSM by rows and the trailing SYRK/GEMM by
// equal-area column ranges, each with one-thread BLAS: few, coarse synchronisation points.
int64_t cholesky_lower(double* a, int64_t d) {
  const int64_t nb = 192;
  for (int64_t k = 0; k < d; k += nb) {
    const int64_t kb = std::min(nb, d - k), below = d - k - kb;
    double* diag = a + k + k * d;
    const int64_t info = scipy_LAPACKE_dpotrf_work64_(blas::ColMajor, 'L', kb, diag, d);
    if (info != 0) return info > 0 ? k + info : info;
    if (below == 0) break;
    double* panel = diag + kb;  // rows k+kb.., columns k..k+kb
    parallel_ranges(below, 8, 64, [&](int64_t b, int64_t e) {
      scipy_cblas_dtrsm64_(blas::ColMajor, blas::Right, blas::Lower, blas::Transposed, blas::NonUnit, e - b, kb,
                           1.0, diag, d, panel + b, d);
    });
    double* trailing = a + (k + kb) + (k + kb) * d;
    const std::vector<int64_t> cols = equal_area_split(below, below >= 256 ? num_threads() : 1);
    parallel_ranges(int64_t(cols.size()) - 1, 1, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t c0 = cols[t], c1 = cols[t + 1];
        if (c0 == c1) continue;
        scipy_cblas_dsyrk64_(blas::ColMajor, blas::Lower, blas::NoTrans, c1 - c0, kb, -1.0, panel + c0, d, 1.0,
                             trailing + c0 + c0 * d, d);
        if (c1 < below)
          scipy_cblas_dgemm64_(blas::ColMajor, blas::NoTrans, blas::Transposed, below - c1, c1 - c0, kb, -1.0,
                               panel + c1, d, panel + c0, d, 1.0, trailing + c1 + c0 * d, d);
      }
    });
  }
  return 0;
}

}  // namespace

int64_t regularized_solve(const SymOperand& c0, double lam, const SymOperand& c_acc,
                          const SymOperand& s_kk, int64_t d, double* system, double* x,
                          int64_t d_out) {
  if (d == 0) return kSolveOk;
  if (!assemble(c0, lam, c_acc, s_kk, d, system)) return kNonFiniteInput;
  // Row-major upper == column-major lower: factor A = L Lᵀ in LAPACK's column-major terms.
  const int64_t info = cholesky_lower(system, d);
  if (info != 0) return info > 0 ? info : kNonFiniteInput;
  if (d_out == 0) return kSolveOk;
  // x (d_out x d row-major) is Xᵀ column-major; ΔW A = S_RK  <=>  A Xᵀ = S_RKᵀ.
  // Right-hand sides are independent: each thread solves its own slab with one-thread BLAS.
  parallel_ranges(d_out, 8, 8, [&](int64_t b, int64_t e) {
    scipy_cblas_dtrsm64_(blas::ColMajor, blas::Left, blas::Lower, blas::NoTrans, blas::NonUnit, d,
                         e - b, 1.0, system, d, x + b * d, d);
    scipy_cblas_dtrsm64_(blas::ColMajor, blas::Left, blas::Lower, blas::Transposed, blas::NonUnit,
                         d, e - b, 1.0, system, d, x + b * d, d);
  });
  return all_finite(x, d * d_out) ? kSolveOk : kNonFiniteOutput;
}

}  // namespace ce
