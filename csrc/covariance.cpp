// Covariance accumulation: acc += KᵀK in float64 via BLAS SYRK (one triangle, half a GEMM's
// flops). Keys arrive as float32/bfloat16/float64 with any strides; rows are compacted (mask)
// and widened to float64 in cache-sized chunks, so precision is float64 throughout.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "blas.h"
#include "kernels.h"
#include "parallel.h"

namespace ce {
namespace {

double key_at(const KeyView& k, int64_t row, int64_t col) {
  const int64_t off = row * k.row_stride + col * k.col_stride;
  switch (k.type) {
    case KeyType::Float32: return static_cast<const float*>(k.data)[off];
    case KeyType::Float64: return static_cast<const double*>(k.data)[off];
    case KeyType::BFloat16: {
      uint32_t bits = uint32_t(static_cast<const uint16_t*>(k.data)[off]) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
  }
  return 0.0;
}

template <typename T>
void widen_row(const T* src, int64_t stride, int64_t d, double* dst) {
  for (int64_t c = 0; c < d; ++c) dst[c] = static_cast<double>(src[c * stride]);
}

// Copies the selected rows into a dense row-major float64 block (rows x d).
void widen_rows(const KeyView& k, const int64_t* rows, int64_t count, double* dst) {
  parallel_ranges(count, 1, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      double* out = dst + r * k.d;
      const int64_t base = rows[r] * k.row_stride;
      if (k.type == KeyType::Float32) {
        widen_row(static_cast<const float*>(k.data) + base, k.col_stride, k.d, out);
      } else if (k.type == KeyType::Float64) {
        widen_row(static_cast<const double*>(k.data) + base, k.col_stride, k.d, out);
      } else {
        for (int64_t c = 0; c < k.d; ++c) out[c] = key_at(k, rows[r], c);
      }
    }
  });
}

// Offset of row i in the packed row-major upper triangle of a d x d matrix.
inline int64_t packed_row(int64_t i, int64_t d) { return i * d - i * (i - 1) / 2; }

// acc rows [i0, i1) += upper part of blockᵀblock: SYRK on the diagonal block, GEMM right of it.
void syrk_rows_full(double* acc, const double* block, int64_t rows, int64_t d, int64_t i0, int64_t i1) {
  const int64_t m = i1 - i0;
  scipy_cblas_dsyrk64_(blas::RowMajor, blas::Upper, blas::Transposed, m, rows, 1.0, block + i0, d, 1.0,
                       acc + i0 * d + i0, d);
  if (i1 < d)
    scipy_cblas_dgemm64_(blas::RowMajor, blas::Transposed, blas::NoTrans, m, d - i1, rows, 1.0, block + i0, d,
                         block + i1, d, 1.0, acc + i0 * d + i1, d);
}

// Packed rows [i0, i1) += upper part of blockᵀblock, in panels through a small scratch.
void syrk_rows_packed(double* packed, const double* block, int64_t rows, int64_t d, int64_t i0, int64_t i1) {
  const int64_t panel = 256;
  std::vector<double> scratch(static_cast<size_t>(std::min(panel, i1 - i0) * (d - i0)));
  for (int64_t p0 = i0; p0 < i1; p0 += panel) {
    const int64_t m = std::min(panel, i1 - p0), width = d - p0;
    scipy_cblas_dgemm64_(blas::RowMajor, blas::Transposed, blas::NoTrans, m, width, rows, 1.0, block + p0, d,
                         block + p0, d, 0.0, scratch.data(), width);
    for (int64_t r = 0; r < m; ++r) {
      const int64_t i = p0 + r;
      double* dst = packed + packed_row(i, d);
      const double* src = scratch.data() + r * width + r;
      for (int64_t j = 0; j < d - i; ++j) dst[j] += src[j];
    }
  }
}

// One single-threaded BLAS call per thread on disjoint, equal-area row ranges: no fine-grained
// BLAS barriers, which stall badly when the cores are shared with other processes.
void syrk_update(double* acc, bool packed, const double* block, int64_t rows, int64_t d) {
  const std::vector<int64_t> bounds = equal_area_split(d, d >= 256 ? num_threads() : 1);
  parallel_ranges(int64_t(bounds.size()) - 1, 1, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      if (bounds[t] == bounds[t + 1]) continue;
      if (packed) syrk_rows_packed(acc, block, rows, d, bounds[t], bounds[t + 1]);
      else syrk_rows_full(acc, block, rows, d, bounds[t], bounds[t + 1]);
    }
  });
}

// Copies the upper triangle of a row-major d x d matrix onto its lower triangle, tile by tile.
void mirror_upper(double* acc, int64_t d) {
  const int64_t tile = 64, tiles = (d + tile - 1) / tile;
  parallel_ranges(tiles, 1, 1, [&](int64_t b, int64_t e) {
    for (int64_t ti = b; ti < e; ++ti)
      for (int64_t tj = 0; tj <= ti; ++tj)
        for (int64_t i = ti * tile; i < std::min(d, (ti + 1) * tile); ++i)
          for (int64_t j = tj * tile; j < std::min(i, (tj + 1) * tile); ++j)
            acc[i * d + j] = acc[j * d + i];
  });
}

}  // namespace

void covariance_accumulate(double* acc, bool packed, const KeyView& keys, const uint8_t* mask,
                           int64_t mask_stride) {
  const int64_t d = keys.d;
  std::vector<int64_t> rows;
  rows.reserve(static_cast<size_t>(keys.n));
  for (int64_t r = 0; r < keys.n; ++r)
    if (!mask || mask[r * mask_stride]) rows.push_back(r);
  if (rows.empty() || d == 0) return;

  // Chunk of up to ~48 MiB of float64 rows: large k keeps SYRK efficient, bounded memory.
  const int64_t chunk = std::clamp<int64_t>((int64_t(48) << 20) / (8 * d), 64, 4096);
  std::vector<double> block(static_cast<size_t>(std::min<int64_t>(chunk, rows.size()) * d));
  for (size_t start = 0; start < rows.size(); start += chunk) {
    const int64_t count = std::min<int64_t>(chunk, rows.size() - start);
    widen_rows(keys, rows.data() + start, count, block.data());
    syrk_update(acc, packed, block.data(), count, d);
  }
  if (!packed) mirror_upper(acc, d);
}

}  // namespace ce
