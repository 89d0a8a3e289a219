// Launchers of the CUDA kernels (device pointers in, work queued on `stream`).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace ce::cuda {

// Same layout conventions as the CPU kernels (csrc/kernels.h). key_type: 0 f32, 1 bf16, 2 f64.
void covariance_accumulate(double* acc, bool packed, int64_t d, const void* keys, int key_type,
                           int64_t n, int64_t row_stride, int64_t col_stride, const uint8_t* mask,
                           int64_t mask_stride, cudaStream_t stream);

struct Operand {
  const void* data = nullptr;
  bool is_float32 = false;
  bool packed = false;
};

// x (d_out x d, float64, row-major) holds S_RK on entry and ΔW on return. refine: factor in
// float32 and correct in float64 until every right-hand side's backward error is at float64 level
// (at most max_iter corrections), falling back to a float64 factor where float32 cannot factor A
// or does not converge; otherwise factor in float64.
// Returns 0, -1 (non-finite input), -2 (non-finite output) or k > 0 (leading minor k not PD).
int64_t regularized_solve(const Operand& c0, double lam, const Operand& c_acc, const Operand& s_kk,
                          int64_t d, double* x, int64_t d_out, bool refine, int max_iter,
                          cudaStream_t stream);

// AES-128 round keys (44 big-endian words) and initial counter of a 32-byte seed.
struct Stream {
  uint32_t round_keys[44];
  uint8_t counter[16];
};
Stream make_stream(const uint8_t* seed32);

void prg_mask(const Stream& s, int64_t n, uint64_t* out, cudaStream_t stream);
int64_t mask_encode(const double* values, int64_t n, int scale_bits, int64_t bound,
                    const Stream* streams, const int8_t* signs, int n_streams, uint64_t* out,
                    cudaStream_t stream);
void ring_op(const uint64_t* a, const uint64_t* b, uint64_t* out, int64_t n, bool subtract,
             cudaStream_t stream);
void mask_decode(const uint64_t* sum, int64_t n, int scale_bits, double* out, cudaStream_t stream);

// The device AES-CTR code run on the host, so its bit-exactness is testable without a GPU.
void prg_mask_host(const Stream& s, int64_t n, uint64_t* out);

void check(cudaError_t status, const char* what);

}  // namespace ce::cuda
