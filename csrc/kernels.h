// CPU kernels behind collabedit_secure._kernels. Pointers are raw; the bindings check shapes,
// dtypes and sizes before calling, and release the GIL around these calls.
#pragma once
#include <cstdint>

namespace ce {

enum class KeyType { Float32, BFloat16, Float64 };

// A 2-D strided view of key vectors (n rows of width d); strides are in elements.
struct KeyView {
  const void* data;
  KeyType type;
  int64_t n, d, row_stride, col_stride;
};

// Float64: exact products, float64 sums (DSYRK on widened keys). Mixed: float32 SSYRK over row
// blocks of at most 1024 keys, blocks summed in float64 (float64 keys always use Float64).
enum class Precision { Float64, Mixed };

// acc += keysᵀ keys over rows with mask[i*mask_stride] != 0 (mask may be null). acc is d x d
// row-major (upper triangle computed, then mirrored) or the packed row-major upper triangle.
void covariance_accumulate(double* acc, bool packed, const KeyView& keys, const uint8_t* mask,
                           int64_t mask_stride, Precision precision = Precision::Float64);

// A matrix operand of the solve: contiguous float32 or float64, full d x d or packed upper.
struct SymOperand {
  const void* data = nullptr;  // null: absent (only c_acc may be)
  bool is_float32 = false;
  bool packed = false;
};

enum SolveStatus : int64_t { kSolveOk = 0, kNonFiniteInput = -1, kNonFiniteOutput = -2 };

// Solves x · A = b in place (x holds b = S_RK on entry, d_out x d row-major), with
// A = lam·c0 + c_acc + s_kk assembled into `system` (d x d scratch, upper triangle used).
// Returns kSolveOk, a negative SolveStatus, or k > 0 when the leading minor k is not
// positive definite.
int64_t regularized_solve(const SymOperand& c0, double lam, const SymOperand& c_acc,
                          const SymOperand& s_kk, int64_t d, double* system, double* x,
                          int64_t d_out);

// Keystream words of the protocol PRG (see collabedit_secure/kernels/__init__.py).
void prg_mask(const uint8_t* seed32, int64_t n, uint64_t* out);

// Produces n words of each of the n_seeds keystreams with the same AES-CTR calls, chunking and
// threads as mask_encode, into a chunk-sized buffer that is discarded: the time mask_encode
// cannot beat (its AES work alone), measured by the benchmark in the same run.
void keystream_bound(const uint8_t* seeds, int n_seeds, int64_t n);

// out[i] = encode(values[i]) + Σ_s sign_s · PRG(seed_s)[i] (mod 2^64). Returns the first index
// whose value is not finite or encodes outside [-bound, bound], or -1 when all are valid.
int64_t mask_encode(const double* values, int64_t n, int scale_bits, int64_t bound,
                    const uint8_t* seeds, const int8_t* signs, int n_seeds, uint64_t* out);

// The index mask_encode would report (first value not finite or encoding outside [-bound, bound]),
// or -1, without writing anything: callers that hand mask_encode their own buffer check first, so
// that a refused call leaves it as it was.
int64_t first_unencodable(const double* values, int64_t n, int scale_bits, int64_t bound);

void ring_add(const uint64_t* a, const uint64_t* b, uint64_t* out, int64_t n);
void ring_sub(const uint64_t* a, const uint64_t* b, uint64_t* out, int64_t n);
void mask_decode(const uint64_t* sum, int64_t n, int scale_bits, double* out);

}  // namespace ce
