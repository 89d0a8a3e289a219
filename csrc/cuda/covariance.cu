// SYRK-style covariance accumulation on the GPU: acc += KᵀK in float64, only upper-triangle
// tiles launched work, keys widened to float64 as they are staged in shared memory.
#include <cuda_bf16.h>

#include "kernels_cuda.h"

namespace ce::cuda {
namespace {

constexpr int kTile = 64, kStep = 16, kThreads = 16;  // 16x16 threads, 4x4 outputs each

__device__ inline double load_key(const void* keys, int type, int64_t off) {
  if (type == 0) return static_cast<const float*>(keys)[off];
  if (type == 1) return __bfloat162float(static_cast<const __nv_bfloat16*>(keys)[off]);
  return static_cast<const double*>(keys)[off];
}

__device__ inline int64_t packed_row(int64_t i, int64_t d) { return i * d - i * (i - 1) / 2; }

__global__ void syrk_upper(double* acc, bool packed, int64_t d, const void* keys, int type, int64_t n,
                           int64_t rs, int64_t cs, const uint8_t* mask, int64_t ms) {
  const int64_t ti = blockIdx.y, tj = blockIdx.x;
  if (tj < ti) return;  // lower tiles: the triangle is mirrored, not computed
  __shared__ double a[kStep][kTile], b[kStep][kTile];
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kThreads + tx;
  double c[4][4] = {};
  for (int64_t k0 = 0; k0 < n; k0 += kStep) {
    for (int e = tid; e < kStep * kTile; e += kThreads * kThreads) {
      const int kk = e / kTile, col = e % kTile;
      const int64_t row = k0 + kk, ci = ti * kTile + col, cj = tj * kTile + col;
      const bool keep = row < n && (!mask || mask[row * ms]);
      a[kk][col] = keep && ci < d ? load_key(keys, type, row * rs + ci * cs) : 0.0;
      b[kk][col] = keep && cj < d ? load_key(keys, type, row * rs + cj * cs) : 0.0;
    }
    __syncthreads();
    for (int kk = 0; kk < kStep; ++kk)
      for (int p = 0; p < 4; ++p)
        for (int q = 0; q < 4; ++q) c[p][q] += a[kk][ty + kThreads * p] * b[kk][tx + kThreads * q];
    __syncthreads();
  }
  for (int p = 0; p < 4; ++p)
    for (int q = 0; q < 4; ++q) {
      const int64_t i = ti * kTile + ty + kThreads * p, j = tj * kTile + tx + kThreads * q;
      if (i < d && j < d && j >= i) {
        double* dst = packed ? acc + packed_row(i, d) + (j - i) : acc + i * d + j;
        *dst += c[p][q];
      }
    }
}

__global__ void mirror_upper(double* acc, int64_t d) {
  const int64_t i = blockIdx.y * int64_t(blockDim.y) + threadIdx.y, j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < d && j < i) acc[i * d + j] = acc[j * d + i];
}

}  // namespace

void covariance_accumulate(double* acc, bool packed, int64_t d, const void* keys, int key_type, int64_t n,
                           int64_t row_stride, int64_t col_stride, const uint8_t* mask, int64_t mask_stride,
                           cudaStream_t stream) {
  if (d == 0 || n == 0) return;
  const unsigned tiles = static_cast<unsigned>((d + kTile - 1) / kTile);
  syrk_upper<<<dim3(tiles, tiles), dim3(kThreads, kThreads), 0, stream>>>(acc, packed, d, keys, key_type, n,
                                                                         row_stride, col_stride, mask, mask_stride);
  check(cudaGetLastError(), "covariance launch");
  if (!packed) {
    const unsigned blocks = static_cast<unsigned>((d + 31) / 32);
    mirror_upper<<<dim3(blocks, blocks), dim3(32, 32), 0, stream>>>(acc, d);
    check(cudaGetLastError(), "mirror launch");
  }
}

}  // namespace ce::cuda
