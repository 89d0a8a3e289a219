// Regularised solve on the GPU without cuSOLVER: assemble A = λC0 + C_acc + S_KK in float64,
// blocked right-looking Cholesky A = L Lᵀ (float32 with float64 refinement, or float64),
// then per right-hand side a forward and a backward substitution.
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels_cuda.h"

namespace ce::cuda {
namespace {

constexpr int kBlock = 32;  // Cholesky panel width
constexpr int64_t kFallBack = -3;  // float32 could not factor A or refinement did not converge

__device__ inline int64_t packed_row(int64_t i, int64_t d) { return i * d - i * (i - 1) / 2; }

__device__ inline double upper_entry(const Operand& op, int64_t r, int64_t c, int64_t d) {
  const int64_t off = op.packed ? packed_row(r, d) + (c - r) : r * d + c;
  return op.is_float32 ? static_cast<const float*>(op.data)[off] : static_cast<const double*>(op.data)[off];
}

// Full symmetric A from the operands' upper triangles (what the CPU path reads as well).
template <typename T>
__global__ void assemble(Operand c0, double lam, Operand c_acc, Operand s_kk, int64_t d, double* a64, T* a,
                         int* non_finite) {
  const int64_t i = blockIdx.y * int64_t(blockDim.y) + threadIdx.y, j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= d || j >= d) return;
  const int64_t r = min(i, j), c = max(i, j);
  double v = lam * upper_entry(c0, r, c, d);
  if (c_acc.data) v += upper_entry(c_acc, r, c, d);
  if (s_kk.data) v += upper_entry(s_kk, r, c, d);
  if (!isfinite(v)) atomicExch(non_finite, 1);
  a64[i * d + j] = v;
  a[i * d + j] = static_cast<T>(v);
}

// Unblocked Cholesky of the kb x kb diagonal block at (k0, k0), in shared memory.
template <typename T>
__global__ void factor_diagonal(T* a, int64_t d, int64_t k0, int kb, long long* info) {
  __shared__ T block[kBlock][kBlock + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  if (tx < kb && ty < kb) block[ty][tx] = a[(k0 + ty) * d + k0 + tx];
  __syncthreads();
  for (int j = 0; j < kb; ++j) {
    if (block[j][j] <= T(0) || !isfinite(static_cast<double>(block[j][j]))) {
      if (tx == 0 && ty == 0) atomicCAS(reinterpret_cast<unsigned long long*>(info), 0ull, static_cast<unsigned long long>(k0 + j + 1));
      return;  // uniform: every thread reads the same pivot
    }
    __syncthreads();
    const T pivot = sqrt(block[j][j]);
    __syncthreads();
    if (ty == j && tx == j) block[j][j] = pivot;
    if (tx == j && ty > j && ty < kb) block[ty][j] /= pivot;
    __syncthreads();
    if (ty > j && ty < kb && tx > j && tx <= ty) block[ty][tx] -= block[ty][j] * block[tx][j];
    __syncthreads();
  }
  if (tx < kb && ty < kb && tx <= ty) a[(k0 + ty) * d + k0 + tx] = block[ty][tx];
}

// Rows below the diagonal block: L[i, k0:k0+kb] = A[i, k0:k0+kb] L_kk⁻ᵀ, one thread per row.
template <typename T>
__global__ void solve_panel(T* a, int64_t d, int64_t k0, int kb) {
  __shared__ T diag[kBlock][kBlock];
  for (int e = threadIdx.x; e < kb * kb; e += blockDim.x) diag[e / kb][e % kb] = a[(k0 + e / kb) * d + k0 + e % kb];
  __syncthreads();
  const int64_t i = k0 + kb + blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= d) return;
  T* row = a + i * d + k0;
  for (int j = 0; j < kb; ++j) {
    T x = row[j];
    for (int m = 0; m < j; ++m) x -= row[m] * diag[j][m];
    row[j] = x / diag[j][j];
  }
}

// Trailing update of the lower triangle: A[i][j] -= L[i, k0:k0+kb] · L[j, k0:k0+kb].
template <typename T>
__global__ void update_trailing(T* a, int64_t d, int64_t k0, int kb) {
  const int64_t start = k0 + kb;
  const int64_t i0 = start + blockIdx.y * int64_t(kBlock), j0 = start + blockIdx.x * int64_t(kBlock);
  if (j0 > i0) return;
  __shared__ T li[kBlock][kBlock + 1], lj[kBlock][kBlock + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  li[ty][tx] = (i0 + ty < d && tx < kb) ? a[(i0 + ty) * d + k0 + tx] : T(0);
  lj[ty][tx] = (j0 + ty < d && tx < kb) ? a[(j0 + ty) * d + k0 + tx] : T(0);
  __syncthreads();
  const int64_t i = i0 + ty, j = j0 + tx;
  if (i >= d || j > i) return;
  T sum = 0;
  for (int m = 0; m < kb; ++m) sum += li[ty][m] * lj[tx][m];
  a[i * d + j] -= sum;
}

// One right-hand side per block: x L Lᵀ = b  (x row-major, in place), float64 arithmetic.
template <typename T>
__global__ void substitute(const T* l, int64_t d, double* x) {
  __shared__ double partial[256];
  double* row = x + blockIdx.x * d;
  // Forward: y Lᵀ = b  <=>  L yᵀ = bᵀ, y_i = (b_i - L[i, :i] · y[:i]) / L_ii.
  for (int64_t i = 0; i < d; ++i) {
    double s = 0;
    for (int64_t j = threadIdx.x; j < i; j += blockDim.x) s += static_cast<double>(l[i * d + j]) * row[j];
    partial[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w /= 2) {
      if (threadIdx.x < w) partial[threadIdx.x] += partial[threadIdx.x + w];
      __syncthreads();
    }
    if (threadIdx.x == 0) row[i] = (row[i] - partial[0]) / static_cast<double>(l[i * d + i]);
    __syncthreads();
  }
  // Backward: x L = y, x_i = y_i / L_ii, then y_j -= L[i][j] x_i for j < i (row i, coalesced).
  for (int64_t i = d - 1; i >= 0; --i) {
    const double xi = row[i] / static_cast<double>(l[i * d + i]);
    __syncthreads();
    for (int64_t j = threadIdx.x; j < i; j += blockDim.x) row[j] -= static_cast<double>(l[i * d + j]) * xi;
    if (threadIdx.x == 0) row[i] = xi;
    __syncthreads();
  }
}

// r = b - x·A (float64), 16x16 tiles.
__global__ void residual(const double* b, const double* x, const double* a, int64_t rows, int64_t d, double* r) {
  __shared__ double xs[16][17], as[16][17];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t i = blockIdx.y * 16 + ty, j = blockIdx.x * 16 + tx;
  double sum = 0;
  for (int64_t k0 = 0; k0 < d; k0 += 16) {
    xs[ty][tx] = (i < rows && k0 + tx < d) ? x[i * d + k0 + tx] : 0.0;
    as[ty][tx] = (k0 + ty < d && j < d) ? a[(k0 + ty) * d + j] : 0.0;
    __syncthreads();
    for (int m = 0; m < 16; ++m) sum += xs[ty][m] * as[m][tx];
    __syncthreads();
  }
  if (i < rows && j < d) r[i * d + j] = b[i * d + j] - sum;
}

__global__ void add_in_place(double* x, const double* dx, int64_t n, int* non_finite) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    x[i] += dx ? dx[i] : 0.0;
    if (!isfinite(x[i])) atomicExch(non_finite, 1);
  }
}

// ‖A‖∞ (max row sum of |A|), one block per row; non-negative doubles order as their bit patterns.
__global__ void inf_norm(const double* a, int64_t d, unsigned long long* norm_bits) {
  __shared__ double partial[256];
  const double* row = a + blockIdx.x * d;
  double s = 0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) s += fabs(row[j]);
  partial[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) partial[threadIdx.x] += partial[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) atomicMax(norm_bits, static_cast<unsigned long long>(__double_as_longlong(partial[0])));
}

// Sets *flag unless every right-hand side (one block per row) has ‖r‖∞ <= tolerance · ‖x‖∞ and is finite.
__global__ void flag_unconverged(const double* r, const double* x, int64_t d, double tolerance, int* flag) {
  __shared__ double r_max[256], x_max[256];
  const double *r_row = r + blockIdx.x * d, *x_row = x + blockIdx.x * d;
  double rm = 0, xm = 0;
  bool bad = false;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    bad |= !isfinite(r_row[j]) || !isfinite(x_row[j]);
    rm = fmax(rm, fabs(r_row[j]));
    xm = fmax(xm, fabs(x_row[j]));
  }
  bad = __syncthreads_or(bad);
  r_max[threadIdx.x] = rm;
  x_max[threadIdx.x] = xm;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) {
      r_max[threadIdx.x] = fmax(r_max[threadIdx.x], r_max[threadIdx.x + w]);
      x_max[threadIdx.x] = fmax(x_max[threadIdx.x], x_max[threadIdx.x + w]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0 && (bad || !(r_max[0] <= tolerance * x_max[0]))) atomicExch(flag, 1);
}

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  cudaStream_t stream;
  DeviceBuffer(size_t count, cudaStream_t s) : stream(s) { check(cudaMallocAsync(&ptr, count * sizeof(T) + 1, s), "allocating solve workspace"); }
  ~DeviceBuffer() { cudaFreeAsync(ptr, stream); }
};

template <typename T>
int64_t factor(T* a, int64_t d, long long* info, cudaStream_t stream) {
  for (int64_t k0 = 0; k0 < d; k0 += kBlock) {
    const int kb = static_cast<int>(std::min<int64_t>(kBlock, d - k0));
    factor_diagonal<T><<<1, dim3(kBlock, kBlock), 0, stream>>>(a, d, k0, kb, info);
    long long host_info = 0;
    check(cudaMemcpyAsync(&host_info, info, sizeof(host_info), cudaMemcpyDeviceToHost, stream), "reading info");
    check(cudaStreamSynchronize(stream), "Cholesky diagonal block");
    if (host_info != 0) return host_info;
    const int64_t below = d - k0 - kb;
    if (below <= 0) break;
    solve_panel<T><<<static_cast<unsigned>((below + 127) / 128), 128, 0, stream>>>(a, d, k0, kb);
    const unsigned tiles = static_cast<unsigned>((below + kBlock - 1) / kBlock);
    update_trailing<T><<<dim3(tiles, tiles), dim3(kBlock, kBlock), 0, stream>>>(a, d, k0, kb);
    check(cudaGetLastError(), "Cholesky launch");
  }
  return 0;
}

// Float64 residuals and float32-factor corrections until every right-hand side's backward error is
// at float64 level (LAPACK dsposv's test: ‖r‖∞ <= ‖x‖∞ · ‖A‖∞ · eps · √d); false if max_iter
// corrections do not get there, as on systems too ill-conditioned for a float32 factor.
bool refine_until_converged(const float* l, const double* a64, const double* rhs, double* r, double* x, int64_t d,
                            int64_t d_out, int max_iter, int* flag, cudaStream_t stream) {
  DeviceBuffer<unsigned long long> norm_bits(1, stream);
  check(cudaMemsetAsync(norm_bits.ptr, 0, sizeof(unsigned long long), stream), "clearing norm");
  inf_norm<<<static_cast<unsigned>(d), 256, 0, stream>>>(a64, d, norm_bits.ptr);
  unsigned long long bits = 0;
  check(cudaMemcpyAsync(&bits, norm_bits.ptr, sizeof(bits), cudaMemcpyDeviceToHost, stream), "reading norm");
  check(cudaStreamSynchronize(stream), "norm");
  double a_norm = 0;
  std::memcpy(&a_norm, &bits, sizeof(a_norm));
  const double lapack_eps = std::numeric_limits<double>::epsilon() / 2;  // LAPACK's dlamch('E')
  const double tolerance = a_norm * lapack_eps * std::sqrt(static_cast<double>(d));
  const unsigned blocks = static_cast<unsigned>((d + 15) / 16);
  const dim3 tiles(blocks, static_cast<unsigned>((d_out + 15) / 16));
  const int64_t words = d_out * d;
  for (int step = 0;; ++step) {
    residual<<<tiles, dim3(16, 16), 0, stream>>>(rhs, x, a64, d_out, d, r);
    check(cudaMemsetAsync(flag, 0, sizeof(int), stream), "clearing flag");
    flag_unconverged<<<static_cast<unsigned>(d_out), 256, 0, stream>>>(r, x, d, tolerance, flag);
    int unconverged = 0;
    check(cudaMemcpyAsync(&unconverged, flag, sizeof(int), cudaMemcpyDeviceToHost, stream), "reading flag");
    check(cudaStreamSynchronize(stream), "refinement");
    if (!unconverged) return true;
    if (step == max_iter) return false;
    substitute<float><<<static_cast<unsigned>(d_out), 256, 0, stream>>>(l, d, r);
    add_in_place<<<1024, 256, 0, stream>>>(x, r, words, flag);
  }
}

template <typename T>
int64_t solve_with(const Operand& c0, double lam, const Operand& c_acc, const Operand& s_kk, int64_t d, double* x,
                   int64_t d_out, int max_iter, cudaStream_t stream) {
  constexpr bool mixed = std::is_same_v<T, float>;
  DeviceBuffer<double> a64(size_t(d) * d, stream);
  DeviceBuffer<T> a(size_t(d) * d, stream);
  DeviceBuffer<int> flag(1, stream);
  DeviceBuffer<long long> info(1, stream);
  check(cudaMemsetAsync(flag.ptr, 0, sizeof(int), stream), "clearing flag");
  check(cudaMemsetAsync(info.ptr, 0, sizeof(long long), stream), "clearing info");
  const unsigned blocks = static_cast<unsigned>((d + 15) / 16);
  assemble<T><<<dim3(blocks, blocks), dim3(16, 16), 0, stream>>>(c0, lam, c_acc, s_kk, d, a64.ptr, a.ptr, flag.ptr);
  int non_finite = 0;
  check(cudaMemcpyAsync(&non_finite, flag.ptr, sizeof(int), cudaMemcpyDeviceToHost, stream), "reading flag");
  check(cudaStreamSynchronize(stream), "assembling the system");
  if (non_finite) return -1;
  // A float64-definite A can round to a float32 matrix that is not: only float64 may call it indefinite.
  if (const int64_t status = factor(a.ptr, d, info.ptr, stream)) return mixed ? kFallBack : status;
  if (d_out == 0) return 0;
  const size_t words = size_t(d_out) * d;
  DeviceBuffer<double> rhs(mixed ? words : 0, stream), r(mixed ? words : 0, stream);
  if (mixed) check(cudaMemcpyAsync(rhs.ptr, x, words * sizeof(double), cudaMemcpyDeviceToDevice, stream), "copying S_RK");
  substitute<T><<<static_cast<unsigned>(d_out), 256, 0, stream>>>(a.ptr, d, x);
  if constexpr (mixed) {
    if (!refine_until_converged(a.ptr, a64.ptr, rhs.ptr, r.ptr, x, d, d_out, max_iter, flag.ptr, stream)) {
      check(cudaMemcpyAsync(x, rhs.ptr, words * sizeof(double), cudaMemcpyDeviceToDevice, stream), "restoring S_RK");
      return kFallBack;
    }
  }
  check(cudaMemsetAsync(flag.ptr, 0, sizeof(int), stream), "clearing flag");
  add_in_place<<<1024, 256, 0, stream>>>(x, nullptr, static_cast<int64_t>(words), flag.ptr);
  check(cudaGetLastError(), "solve launch");
  check(cudaMemcpyAsync(&non_finite, flag.ptr, sizeof(int), cudaMemcpyDeviceToHost, stream), "reading flag");
  check(cudaStreamSynchronize(stream), "solve");
  return non_finite ? -2 : 0;
}

}  // namespace

int64_t regularized_solve(const Operand& c0, double lam, const Operand& c_acc, const Operand& s_kk, int64_t d,
                          double* x, int64_t d_out, bool refine, int max_iter, cudaStream_t stream) {
  if (d == 0) return 0;
  if (refine) {  // LAPACK dsposv's strategy: mixed precision where it converges, float64 where not
    const int64_t status = solve_with<float>(c0, lam, c_acc, s_kk, d, x, d_out, max_iter, stream);
    if (status != kFallBack) return status;
  }
  return solve_with<double>(c0, lam, c_acc, s_kk, d, x, d_out, 0, stream);
}

}  // namespace ce::cuda
