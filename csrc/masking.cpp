// Fixed-point encoding and AES-128-CTR masking in Z_2^64, streamed once over memory.
// PRG: key = seed[0:16], initial counter block = seed[16:32] (128-bit big-endian, incremented
// per 16-byte block); keystream bytes 8i..8i+8 read little-endian are word i. Threads split
// the word range at even indices, so each starts on a block boundary of its own counter.
#include <openssl/evp.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "kernels.h"
#include "parallel.h"

namespace ce {
namespace {

// Words per keystream call: small enough that the values, output and keystream chunks of one
// step stay in L1/L2, large enough that the per-call cost of EVP_EncryptUpdate is amortised.
constexpr int64_t kChunkWords = 1024;
// Words per task handed to a thread (a multiple of kChunkWords). Tasks are handed out
// dynamically, so a thread descheduled by other processes does not hold up the rest.
constexpr int64_t kTaskWords = 1 << 16;
alignas(64) const uint8_t kZeros[kChunkWords * 8] = {};

struct CtxDeleter {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CtxDeleter>;

// Counter block of the seed advanced by `blocks` (128-bit big-endian addition, wraps mod 2^128).
void advance_counter(const uint8_t* seed32, uint64_t blocks, uint8_t iv[16]) {
  std::memcpy(iv, seed32 + 16, 16);
  unsigned carry = 0;
  for (int byte = 15; byte >= 0; --byte) {
    const unsigned add = static_cast<unsigned>(blocks & 0xff) + carry;
    blocks >>= 8;
    const unsigned sum = iv[byte] + add;
    iv[byte] = static_cast<uint8_t>(sum);
    carry = sum >> 8;
  }
}

// One AES-128-CTR keystream per seed, keyed once and re-positioned per task (IV only: no new key
// schedule, no new context).
class Streams {
 public:
  Streams(const uint8_t* seeds, int n_seeds) : seeds_(seeds) {
    for (int s = 0; s < n_seeds; ++s) {
      CipherCtx ctx(EVP_CIPHER_CTX_new());
      if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_128_ctr(), nullptr, seeds + 32 * s, seeds + 32 * s + 16) != 1)
        throw std::runtime_error("OpenSSL could not initialise AES-128-CTR");
      ctxs_.push_back(std::move(ctx));
    }
  }
  // Positions every stream at word `first_word` (even) of its PRG.
  void seek(int64_t first_word) {
    for (size_t s = 0; s < ctxs_.size(); ++s) {
      uint8_t iv[16];
      advance_counter(seeds_ + 32 * s, static_cast<uint64_t>(first_word) / 2, iv);
      if (EVP_EncryptInit_ex(ctxs_[s].get(), nullptr, nullptr, nullptr, iv) != 1)
        throw std::runtime_error("OpenSSL could not position AES-128-CTR");
    }
  }
  // The next `words` (≤ kChunkWords) keystream words of stream s.
  void next(int s, uint64_t* out, int64_t words) {
    int produced = 0;
    if (EVP_EncryptUpdate(ctxs_[s].get(), reinterpret_cast<uint8_t*>(out), &produced, kZeros,
                          static_cast<int>(words * 8)) != 1 || produced != words * 8)
      throw std::runtime_error("OpenSSL AES-128-CTR keystream failed");
  }

 private:
  const uint8_t* seeds_;
  std::vector<CipherCtx> ctxs_;
};

// Runs body(streams, begin, end) over [0, n) in tasks of kTaskWords, each worker with its own
// keyed streams. Tasks start at even words, i.e. on AES block boundaries.
template <typename Body>
void over_tasks(const uint8_t* seeds, int n_seeds, int64_t n, Body&& body) {
  const int64_t tasks = (n + kTaskWords - 1) / kTaskWords;
  std::vector<std::unique_ptr<Streams>> per_worker(static_cast<size_t>(num_threads()));
  parallel_tasks(tasks, [&](int64_t t, int worker) {
    auto& streams = per_worker[worker];
    if (!streams) streams = std::make_unique<Streams>(seeds, n_seeds);
    const int64_t begin = t * kTaskWords, end = std::min(n, begin + kTaskWords);
    streams->seek(begin);
    body(*streams, begin, end);
  });
}

inline int64_t bits_of(double v) {
  int64_t b;
  std::memcpy(&b, &v, 8);
  return b;
}

// Encodes values[0..n) into out; returns the first invalid index or -1. Exact scalar path.
int64_t encode_chunk_exact(const double* values, int64_t n, double scale, int64_t bound, uint64_t* out) {
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) {
    const double r = std::nearbyint(values[i] * scale);  // round half to even
    const bool in_range = std::fabs(r) < 0x1p63;         // false for NaN and ±Inf
    const int64_t x = in_range ? static_cast<int64_t>(r) : 0;
    bad |= !in_range || x > bound || x < -bound;
    out[i] = static_cast<uint64_t>(x);
  }
  if (!bad) return -1;
  for (int64_t i = 0; i < n; ++i) {
    const double r = std::nearbyint(values[i] * scale);
    if (!(std::fabs(r) < 0x1p63) || static_cast<int64_t>(r) > bound ||
        static_cast<int64_t>(r) < -bound)
      return i;
  }
  return -1;
}

// Same result, vectorisable: for |y| < 2^51, y + 1.5·2^52 lies in [2^52, 2^53) where the spacing
// of doubles is 1, so the addition rounds y half-to-even to an integer (the default rounding mode,
// as nearbyint) and the low mantissa bits minus those of 1.5·2^52 are that integer as int64. (y is
// v·2^scale_bits, exact, so contraction into an FMA could not change it either.) Chunks holding
// NaN, ±Inf or |y| ≥ 2^51 take the exact scalar path.
int64_t encode_chunk(const double* __restrict values, int64_t n, double scale, int64_t bound,
                     uint64_t* __restrict out) {
  constexpr double kMagic = 0x1.8p52;
  const int64_t magic_bits = bits_of(kMagic);
  int64_t i = 0;
  bool slow = false, bad = false;
#ifdef __AVX2__
  const __m256d v_scale = _mm256_set1_pd(scale), v_magic = _mm256_set1_pd(kMagic),
                v_limit = _mm256_set1_pd(0x1p51),
                v_abs = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffffLL));
  const __m256i v_magic_bits = _mm256_set1_epi64x(magic_bits), v_bound = _mm256_set1_epi64x(bound),
                v_neg_bound = _mm256_set1_epi64x(-bound);
  __m256d slow_any = _mm256_setzero_pd();
  __m256i bad_any = _mm256_setzero_si256();
  for (; i + 4 <= n; i += 4) {
    const __m256d y = _mm256_mul_pd(_mm256_loadu_pd(values + i), v_scale);
    // not (|y| < 2^51): also true for NaN
    slow_any = _mm256_or_pd(slow_any, _mm256_cmp_pd(_mm256_and_pd(y, v_abs), v_limit, _CMP_NLT_UQ));
    const __m256i x = _mm256_sub_epi64(_mm256_castpd_si256(_mm256_add_pd(y, v_magic)), v_magic_bits);
    bad_any = _mm256_or_si256(bad_any, _mm256_or_si256(_mm256_cmpgt_epi64(x, v_bound), _mm256_cmpgt_epi64(v_neg_bound, x)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), x);
  }
  slow = _mm256_movemask_pd(slow_any) != 0;
  bad = !_mm256_testz_si256(bad_any, bad_any);
#endif
  for (; i < n; ++i) {
    const double y = values[i] * scale;
    slow |= !(std::fabs(y) < 0x1p51);
    const int64_t x = bits_of(y + kMagic) - magic_bits;
    bad |= (x > bound) | (x < -bound);
    out[i] = static_cast<uint64_t>(x);
  }
  if (slow || bad) return encode_chunk_exact(values, n, scale, bound, out);
  return -1;
}

void add_words(uint64_t* __restrict acc, const uint64_t* __restrict w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += w[i];
}
void sub_words(uint64_t* __restrict acc, const uint64_t* __restrict w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] -= w[i];
}

// dst[0..n) = src[0..n) with non-temporal stores (the output is written once and not read back
// by this kernel: no read-for-ownership of its lines, no eviction of the working set).
void store_words(uint64_t* __restrict dst, const uint64_t* __restrict src, int64_t n) {
  int64_t i = 0;
#ifdef __AVX2__
  for (; i < n && reinterpret_cast<uintptr_t>(dst + i) % 32 != 0; ++i) dst[i] = src[i];
  for (; i + 4 <= n; i += 4)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
#endif
  for (; i < n; ++i) dst[i] = src[i];
}

// Orders this thread's streaming stores before it reports its task done.
void stream_fence() {
#ifdef __AVX2__
  _mm_sfence();
#endif
}

}  // namespace

void prg_mask(const uint8_t* seed32, int64_t n, uint64_t* out) {
  over_tasks(seed32, 1, n, [&](Streams& streams, int64_t b, int64_t e) {
    for (int64_t w = b; w < e; w += kChunkWords) streams.next(0, out + w, std::min(kChunkWords, e - w));
  });
}

void keystream_bound(const uint8_t* seeds, int n_seeds, int64_t n) {
  over_tasks(seeds, n_seeds, n, [&](Streams& streams, int64_t b, int64_t e) {
    alignas(64) uint64_t ks[kChunkWords];
    for (int64_t w = b; w < e; w += kChunkWords)
      for (int s = 0; s < n_seeds; ++s) streams.next(s, ks, std::min(kChunkWords, e - w));
  });
}

int64_t mask_encode(const double* values, int64_t n, int scale_bits, int64_t bound,
                    const uint8_t* seeds, const int8_t* signs, int n_seeds, uint64_t* out) {
  const double scale = std::ldexp(1.0, scale_bits);
  std::atomic<int64_t> first_bad{-1};
  // Per chunk: encode into an L1 buffer, add or subtract each keystream chunk while both are in
  // L1, and write the finished chunk to the output once, with streaming stores where the output
  // is aligned (no read-for-ownership of output lines). Values are read once.
  over_tasks(seeds, n_seeds, n, [&](Streams& streams, int64_t b, int64_t e) {
    alignas(64) uint64_t acc[kChunkWords];
    alignas(64) uint64_t ks[kChunkWords];
    for (int64_t w = b; w < e; w += kChunkWords) {
      const int64_t len = std::min(kChunkWords, e - w);
      const int64_t chunk_bad = encode_chunk(values + w, len, scale, bound, acc);
      if (chunk_bad >= 0) {
        int64_t seen = first_bad.load();
        while ((seen < 0 || w + chunk_bad < seen) && !first_bad.compare_exchange_weak(seen, w + chunk_bad)) {}
      }
      // Fetch the next chunk's values while AES runs: the loads then overlap the keystream work.
      if (w + len < e) {
        const int64_t ahead = std::min(kChunkWords, e - w - len);
        for (int64_t i = 0; i < ahead; i += 8) __builtin_prefetch(values + w + len + i, 0, 3);
      }
      for (int s = 0; s < n_seeds; ++s) {
        streams.next(s, ks, len);
        if (signs[s] > 0) add_words(acc, ks, len);
        else sub_words(acc, ks, len);
      }
      store_words(out + w, acc, len);
    }
    stream_fence();
  });
  return first_bad.load();
}

int64_t first_unencodable(const double* values, int64_t n, int scale_bits, int64_t bound) {
  const double scale = std::ldexp(1.0, scale_bits);
  std::atomic<int64_t> first_bad{-1};
  parallel_ranges(n, kChunkWords, 1 << 16, [&](int64_t b, int64_t e) {
    alignas(64) uint64_t scratch[kChunkWords];
    for (int64_t w = b; w < e; w += kChunkWords) {
      const int64_t bad = encode_chunk(values + w, std::min(kChunkWords, e - w), scale, bound, scratch);
      if (bad < 0) continue;
      int64_t seen = first_bad.load();
      while ((seen < 0 || w + bad < seen) && !first_bad.compare_exchange_weak(seen, w + bad)) {}
      return;  // later chunks of this range cannot hold an earlier index
    }
  });
  return first_bad.load();
}

void ring_add(const uint64_t* a, const uint64_t* b, uint64_t* out, int64_t n) {
  parallel_ranges(n, 8, 1 << 18, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) out[i] = a[i] + b[i];
  });
}

void ring_sub(const uint64_t* a, const uint64_t* b, uint64_t* out, int64_t n) {
  parallel_ranges(n, 8, 1 << 18, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) out[i] = a[i] - b[i];
  });
}

void mask_decode(const uint64_t* sum, int64_t n, int scale_bits, double* out) {
  const double inv_scale = std::ldexp(1.0, -scale_bits);
  parallel_ranges(n, 8, 1 << 18, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) out[i] = static_cast<double>(static_cast<int64_t>(sum[i])) * inv_scale;
  });
}

}  // namespace ce
