// Covariance accumulation: acc += KᵀK via BLAS SYRK (one triangle, half a GEMM's flops). Keys
// arrive as float32/bfloat16/float64 with any strides; rows are compacted (mask).
// - Precision::Float64: rows are widened to float64 in cache-sized chunks; exact products and
//   float64 round-off throughout (DSYRK).
// - Precision::Mixed (float32/bfloat16 keys): SSYRK over blocks of at most kMixedBlockRows keys,
//   each block's float32 result added into the float64 accumulator. Per entry and block the
//   float32 error is at most γ_(b+1)·Σ_r |k_ri·k_rj| (b ≤ 1024 rows, u = 2^-24, γ_m = m·u/(1-m·u)
//   ≈ 6.1e-5 relative to Σ|k_ri k_rj| worst case; ~√b·u ≈ 2e-6 typical), the float64 sums
//   across blocks add only float64 round-off. Float64 keys always take the exact path.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "blas.h"
#include "kernels.h"
#include "parallel.h"

namespace ce {
namespace {

// Longest run of keys summed in float32 before the result is added to the float64 accumulator.
constexpr int64_t kMixedBlockRows = 1024;

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

// Row panels [b_t, b_t+1) of the triangle with equal area: the units of work handed to threads.
// Enough panels for dynamic balancing (a descheduled thread's share moves to the others), not so
// many that the BLAS calls get thin.
std::vector<int64_t> triangle_panels(int64_t d) {
  const int64_t panels = std::clamp<int64_t>(d / 256, 1, 4 * int64_t(num_threads()));
  return equal_area_split(d, panels);
}

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

// One single-threaded BLAS call per panel, panels handed out dynamically: no fine-grained BLAS
// barriers, which stall badly when the cores are shared with other processes.
void syrk_update(double* acc, bool packed, const double* block, int64_t rows, int64_t d) {
  const std::vector<int64_t> bounds = triangle_panels(d);
  parallel_tasks(int64_t(bounds.size()) - 1, [&](int64_t t, int) {
    if (bounds[t] == bounds[t + 1]) return;
    if (packed) syrk_rows_packed(acc, block, rows, d, bounds[t], bounds[t + 1]);
    else syrk_rows_full(acc, block, rows, d, bounds[t], bounds[t + 1]);
  });
}

// ---- mixed precision: float32 products over row blocks, float64 accumulation across blocks.

// Copies the selected rows into a dense row-major float32 block (exact: keys are float32/bfloat16).
void narrow_rows(const KeyView& k, const int64_t* rows, int64_t count, float* dst) {
  parallel_ranges(count, 1, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      float* out = dst + r * k.d;
      const int64_t base = rows[r] * k.row_stride;
      if (k.type == KeyType::Float32) {
        const float* src = static_cast<const float*>(k.data) + base;
        for (int64_t c = 0; c < k.d; ++c) out[c] = src[c * k.col_stride];
      } else {
        const uint16_t* src = static_cast<const uint16_t*>(k.data) + base;
        for (int64_t c = 0; c < k.d; ++c) {
          const uint32_t bits = uint32_t(src[c * k.col_stride]) << 16;
          std::memcpy(out + c, &bits, 4);
        }
      }
    }
  });
}

// acc (upper triangle, full or packed) += fl32(blockᵀblock) for one block of `rows` float32 keys
// (row-major, leading dimension ld). Each panel's product goes through a per-worker float32
// scratch (SSYRK on the diagonal block, SGEMM right of it) and is then added in float64.
void mixed_update(double* acc, bool packed, const float* block, int64_t ld, int64_t rows, int64_t d,
                  const std::vector<int64_t>& bounds, std::vector<std::unique_ptr<float[]>>& scratch) {
  parallel_tasks(int64_t(bounds.size()) - 1, [&](int64_t t, int worker) {
    const int64_t i0 = bounds[t], i1 = bounds[t + 1], m = i1 - i0, width = d - i0;
    if (m == 0) return;
    float* s = scratch[worker].get();
    scipy_cblas_ssyrk64_(blas::RowMajor, blas::Upper, blas::Transposed, m, rows, 1.0f, block + i0, ld, 0.0f, s,
                         width);
    if (i1 < d)
      scipy_cblas_sgemm64_(blas::RowMajor, blas::Transposed, blas::NoTrans, m, d - i1, rows, 1.0f, block + i0, ld,
                           block + i1, ld, 0.0f, s + m, width);
    for (int64_t r = 0; r < m; ++r) {
      const int64_t i = i0 + r;
      double* dst = packed ? acc + packed_row(i, d) : acc + i * d + i;
      const float* src = s + r * width + r;
      for (int64_t j = 0; j < d - i; ++j) dst[j] += static_cast<double>(src[j]);
    }
  });
}

void mixed_accumulate(double* acc, bool packed, const KeyView& keys, const std::vector<int64_t>& rows,
                      bool all_rows) {
  const int64_t d = keys.d;
  const std::vector<int64_t> bounds = triangle_panels(d);
  int64_t need = 0;
  for (size_t t = 0; t + 1 < bounds.size(); ++t) need = std::max(need, (bounds[t + 1] - bounds[t]) * (d - bounds[t]));
  std::vector<std::unique_ptr<float[]>> scratch(static_cast<size_t>(num_threads()));
  for (auto& s : scratch) s.reset(new float[static_cast<size_t>(need)]);
  // Dense float32 rows can be read in place; anything else is compacted block by block.
  const bool in_place = all_rows && keys.type == KeyType::Float32 && keys.col_stride == 1 && keys.row_stride >= d;
  std::unique_ptr<float[]> block;
  if (!in_place) block.reset(new float[static_cast<size_t>(std::min<int64_t>(kMixedBlockRows, rows.size()) * d)]);
  for (size_t start = 0; start < rows.size(); start += kMixedBlockRows) {
    const int64_t count = std::min<int64_t>(kMixedBlockRows, rows.size() - start);
    if (in_place) {
      const float* first = static_cast<const float*>(keys.data) + int64_t(start) * keys.row_stride;
      mixed_update(acc, packed, first, keys.row_stride, count, d, bounds, scratch);
    } else {
      narrow_rows(keys, rows.data() + start, count, block.get());
      mixed_update(acc, packed, block.get(), d, count, d, bounds, scratch);
    }
  }
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
                           int64_t mask_stride, Precision precision) {
  const int64_t d = keys.d;
  std::vector<int64_t> rows;
  rows.reserve(static_cast<size_t>(keys.n));
  for (int64_t r = 0; r < keys.n; ++r)
    if (!mask || mask[r * mask_stride]) rows.push_back(r);
  if (rows.empty() || d == 0) return;
  if (precision == Precision::Mixed && keys.type != KeyType::Float64) {
    mixed_accumulate(acc, packed, keys, rows, int64_t(rows.size()) == keys.n);
    if (!packed) mirror_upper(acc, d);
    return;
  }

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
