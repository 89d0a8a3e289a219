// Regularised solve ΔW = S_RK (λC0 + C_acc + S_KK)⁻¹ by Cholesky. The system is assembled
// straight into one d x d buffer (upper triangle only, read from full or packed operands),
// factored by Cholesky and solved for all d_out right-hand sides with two TRSMs, threaded either
// inside OpenBLAS or by the kernel itself (see use_blas_threading).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
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

// OpenBLAS runs `threads` threads inside the calls of this scope, then one again (the other
// kernels parallelise coarsely themselves and call one-thread BLAS from their own threads).
class BlasThreads {
 public:
  explicit BlasThreads(int threads) { scipy_openblas_set_num_threads64_(threads); }
  ~BlasThreads() { scipy_openblas_set_num_threads64_(1); }
  BlasThreads(const BlasThreads&) = delete;
  BlasThreads& operator=(const BlasThreads&) = delete;
};

// Idle cores over a short window, from /proc/stat (-1 when it cannot be read).
double idle_cores(int window_ms) {
  auto sample = [](double& idle, double& total) {
    std::ifstream stat("/proc/stat");
    std::string cpu;
    if (!(stat >> cpu) || cpu != "cpu") return false;
    double field, sum = 0, idle_sum = 0;
    for (int i = 0; i < 8 && (stat >> field); ++i) {
      sum += field;
      if (i == 3 || i == 4) idle_sum += field;  // idle, iowait
    }
    idle = idle_sum;
    total = sum;
    return sum > 0;
  };
  double idle0, total0, idle1, total1;
  if (!sample(idle0, total0)) return -1.0;
  std::this_thread::sleep_for(std::chrono::milliseconds(window_ms));
  if (!sample(idle1, total1) || total1 <= total0) return -1.0;
  return (idle1 - idle0) / (total1 - total0) * double(std::thread::hardware_concurrency());
}

// Which threading the factorisation and triangular solves use (COLLABEDIT_SOLVE_THREADING):
// - "blas": OpenBLAS's own threads inside LAPACK dpotrf and the TRSMs: fastest on free cores, but
//   its fine-grained barriers spin and stall for whole time slices when other processes hold
//   the cores (measured 1.5-4x slower than "split" on a loaded 2-core machine);
// - "split": one-thread BLAS calls on work split across the kernel's threads (blocked Cholesky,
//   right-hand sides handed out in slabs): coarse synchronisation, robust under load;
// - "auto" (default): "blas" when the cores the kernel would use are idle right now (a 20 ms
//   look at /proc/stat), "split" otherwise and for small systems, which "split" handles well.
bool use_blas_threading(int64_t d) {
  const char* env = std::getenv("COLLABEDIT_SOLVE_THREADING");
  const std::string mode = env && *env ? env : "auto";
  if (mode != "auto" && mode != "blas" && mode != "split")
    throw std::invalid_argument("COLLABEDIT_SOLVE_THREADING must be auto, blas or split, not " + mode);
  if (mode == "blas") return true;
  if (mode == "split" || num_threads() == 1) return false;
  if (d < 2048) return false;
  const double idle = idle_cores(20);
  return idle < 0 || idle >= num_threads() - 0.5;
}

}  // namespace

int64_t regularized_solve(const SymOperand& c0, double lam, const SymOperand& c_acc,
                          const SymOperand& s_kk, int64_t d, double* system, double* x,
                          int64_t d_out) {
  if (d == 0) return kSolveOk;
  if (!assemble(c0, lam, c_acc, s_kk, d, system)) return kNonFiniteInput;
  // Row-major upper == column-major lower: factor A = L Lᵀ in LAPACK's column-major terms.
  if (use_blas_threading(d)) {
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
  const int64_t slab = std::max<int64_t>(64, std::min<int64_t>(256, (d_out + 4 * num_threads() - 1) / (4 * num_threads())));
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
