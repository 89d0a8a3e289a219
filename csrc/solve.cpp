// Regularised solve ΔW = S_RK (λC0 + C_acc + S_KK)⁻¹ by Cholesky. The system is assembled
// straight into one d x d buffer (upper triangle only, read from full or packed operands),
// factored by Cholesky and solved for all d_out right-hand sides with two TRSMs, threaded either
// inside OpenBLAS or by the kernel itself (see use_blas_threading).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>
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
// one diagonal block, then threads take fixed-size tiles of the panel TRSM (rows) and of the
// trailing SYRK/GEMM (columns) in turn, each with one-thread BLAS. The tiles do not depend on the
// thread count, so every entry is computed by the same BLAS calls whatever the budget or the
// machine's load: results are bit-identical across both.
constexpr int64_t kTile = 256;

int64_t cholesky_lower(double* a, int64_t d) {
  const int64_t nb = 192;
  for (int64_t k = 0; k < d; k += nb) {
    const int64_t kb = std::min(nb, d - k), below = d - k - kb;
    double* diag = a + k + k * d;
    const int64_t info = scipy_LAPACKE_dpotrf_work64_(blas::ColMajor, 'L', kb, diag, d);
    if (info != 0) return info > 0 ? k + info : info;
    if (below == 0) break;
    double* panel = diag + kb;  // rows k+kb.., columns k..k+kb
    parallel_tasks((below + kTile - 1) / kTile, [&](int64_t t, int) {
      const int64_t b = t * kTile, rows = std::min(kTile, below - b);
      scipy_cblas_dtrsm64_(blas::ColMajor, blas::Right, blas::Lower, blas::Transposed, blas::NonUnit, rows, kb,
                           1.0, diag, d, panel + b, d);
    });
    double* trailing = a + (k + kb) + (k + kb) * d;
    // Tiles of the lower trailing triangle, widest (leftmost, most work) first for balance.
    parallel_tasks((below + kTile - 1) / kTile, [&](int64_t t, int) {
      const int64_t c0 = t * kTile, c1 = std::min(below, c0 + kTile);
      scipy_cblas_dsyrk64_(blas::ColMajor, blas::Lower, blas::NoTrans, c1 - c0, kb, -1.0, panel + c0, d, 1.0,
                           trailing + c0 + c0 * d, d);
      if (c1 < below)
        scipy_cblas_dgemm64_(blas::ColMajor, blas::NoTrans, blas::Transposed, below - c1, c1 - c0, kb, -1.0,
                             panel + c1, d, panel + c0, d, 1.0, trailing + c1 + c0 * d, d);
    });
  }
  return 0;
}

// OpenBLAS runs `threads` threads inside the calls of this scope, then one again (the other
// kernels parallelise coarsely themselves and call one-thread BLAS from their own threads).
class BlasThreads {
 public:
  explicit BlasThreads(int threads) { scipy_openblas_set_num_threads64_(threads); }
  ~BlasThreads() { scipy_openblas_set_num_threads64_(1); }
  BlasThreads(const BlasThreads&) = delete;
  BlasThreads& operator=(const BlasThreads&) = delete;
};

// Which threading the factorisation and triangular solves use (COLLABEDIT_SOLVE_THREADING):
// - "split" (default): one-thread BLAS calls on fixed tiles handed out to the kernel's threads
//   (blocked Cholesky, right-hand sides in fixed slabs): coarse synchronisation, robust under
//   load, safe in a multithreaded server, and bit-identical whatever the thread budget;
// - "blas": OpenBLAS's own threads inside LAPACK dpotrf and the TRSMs, for benchmarks on idle
//   cores. It sets OpenBLAS's thread count, a process-wide switch, for the call: never use it
//   where two solves may run at once. (An earlier "auto" chose between the two from a 20 ms look
//   at /proc/stat, so results depended on the machine's load; it is gone.)
bool use_blas_threading() {
  const char* env = std::getenv("COLLABEDIT_SOLVE_THREADING");
  const std::string mode = env && *env ? env : "split";
  if (mode != "blas" && mode != "split")
    throw std::invalid_argument("COLLABEDIT_SOLVE_THREADING must be split or blas, not " + mode);
  return mode == "blas" && num_threads() > 1;
}

}  // namespace

int64_t regularized_solve(const SymOperand& c0, double lam, const SymOperand& c_acc,
                          const SymOperand& s_kk, int64_t d, double* system, double* x,
                          int64_t d_out) {
  if (d == 0) return kSolveOk;
  if (!assemble(c0, lam, c_acc, s_kk, d, system)) return kNonFiniteInput;
  // Row-major upper == column-major lower: factor A = L Lᵀ in LAPACK's column-major terms.
  if (use_blas_threading()) {
    BlasThreads threads(num_threads());
    const int64_t info = scipy_LAPACKE_dpotrf_work64_(blas::ColMajor, 'L', d, system, d);
    if (info != 0) return info > 0 ? info : kNonFiniteInput;
    if (d_out == 0) return kSolveOk;
    scipy_cblas_dtrsm64_(blas::ColMajor, blas::Left, blas::Lower, blas::NoTrans, blas::NonUnit, d, d_out, 1.0,
                         system, d, x, d);
    scipy_cblas_dtrsm64_(blas::ColMajor, blas::Left, blas::Lower, blas::Transposed, blas::NonUnit, d, d_out, 1.0,
                         system, d, x, d);
    return all_finite(x, d * d_out) ? kSolveOk : kNonFiniteOutput;
  }
  const int64_t info = cholesky_lower(system, d);
  if (info != 0) return info > 0 ? info : kNonFiniteInput;
  if (d_out == 0) return kSolveOk;
  // x (d_out x d row-major) is Xᵀ column-major; ΔW A = S_RK  <=>  A Xᵀ = S_RKᵀ.
  // Right-hand sides are independent: threads take slabs of them in turn, one-thread BLAS each.
  const int64_t slab = 128;  // fixed: the same TRSM calls whatever the thread count
  parallel_tasks((d_out + slab - 1) / slab, [&](int64_t t, int) {
    const int64_t b = t * slab, cols = std::min(slab, d_out - b);
    scipy_cblas_dtrsm64_(blas::ColMajor, blas::Left, blas::Lower, blas::NoTrans, blas::NonUnit, d,
                         cols, 1.0, system, d, x + b * d, d);
    scipy_cblas_dtrsm64_(blas::ColMajor, blas::Left, blas::Lower, blas::Transposed, blas::NonUnit,
                         d, cols, 1.0, system, d, x + b * d, d);
  });
  return all_finite(x, d * d_out) ? kSolveOk : kNonFiniteOutput;
}

}  // namespace ce
