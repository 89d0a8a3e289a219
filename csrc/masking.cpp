// Fixed-point encoding and AES-128-CTR masking in Z_2^64, streamed once over memory.
// PRG: key = seed[0:16], initial counter block = seed[16:32] (128-bit big-endian, incremented
// per 16-byte block); keystream bytes 8i..8i+8 read little-endian are word i. Threads split
// the word range at even indices, so each starts on a block boundary of its own counter.
#include <openssl/evp.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "kernels.h"
#include "parallel.h"

namespace ce {
namespace {

constexpr int64_t kChunkWords = 2048;          // 16 KiB per keystream: stays in L1/L2
constexpr int64_t kMinWordsPerThread = 1 << 15;  // below this, threads cost more than they save
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

// A keystream positioned at word `first_word` (even) of the seed's PRG.
CipherCtx open_stream(const uint8_t* seed32, int64_t first_word) {
  uint8_t iv[16];
  advance_counter(seed32, static_cast<uint64_t>(first_word) / 2, iv);
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_128_ctr(), nullptr, seed32, iv) != 1)
    throw std::runtime_error("OpenSSL could not initialise AES-128-CTR");
  return ctx;
}

void keystream(EVP_CIPHER_CTX* ctx, uint64_t* out, int64_t words) {
  int produced = 0;
  if (EVP_EncryptUpdate(ctx, reinterpret_cast<uint8_t*>(out), &produced, kZeros,
                        static_cast<int>(words * 8)) != 1 || produced != words * 8)
    throw std::runtime_error("OpenSSL AES-128-CTR keystream failed");
}

// Encodes values[0..n) into out; returns the first invalid index or -1.
int64_t encode_chunk(const double* values, int64_t n, double scale, int64_t bound, uint64_t* out) {
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

void add_words(uint64_t* acc, const uint64_t* w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += w[i];
}
void sub_words(uint64_t* acc, const uint64_t* w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] -= w[i];
}

}  // namespace

void prg_mask(const uint8_t* seed32, int64_t n, uint64_t* out) {
  parallel_ranges(n, 2, kMinWordsPerThread, [&](int64_t b, int64_t e) {
    CipherCtx ctx = open_stream(seed32, b);
    for (int64_t w = b; w < e; w += kChunkWords) keystream(ctx.get(), out + w, std::min(kChunkWords, e - w));
  });
}

int64_t mask_encode(const double* values, int64_t n, int scale_bits, int64_t bound,
                    const uint8_t* seeds, const int8_t* signs, int n_seeds, uint64_t* out) {
  const double scale = std::ldexp(1.0, scale_bits);
  std::vector<int64_t> first_bad;
  std::mutex lock;
  parallel_ranges(n, 2, kMinWordsPerThread / (n_seeds + 1), [&](int64_t b, int64_t e) {
    std::vector<CipherCtx> streams;
    for (int s = 0; s < n_seeds; ++s) streams.push_back(open_stream(seeds + 32 * s, b));
    alignas(64) static thread_local uint64_t ks[kChunkWords];
    int64_t bad = -1;
    for (int64_t w = b; w < e; w += kChunkWords) {
      const int64_t len = std::min(kChunkWords, e - w);
      const int64_t chunk_bad = encode_chunk(values + w, len, scale, bound, out + w);
      if (chunk_bad >= 0 && bad < 0) bad = w + chunk_bad;
      for (int s = 0; s < n_seeds; ++s) {
        keystream(streams[s].get(), ks, len);
        if (signs[s] > 0) add_words(out + w, ks, len);
        else sub_words(out + w, ks, len);
      }
    }
    std::lock_guard<std::mutex> guard(lock);
    first_bad.push_back(bad);
  });
  int64_t worst = -1;
  for (int64_t bad : first_bad)
    if (bad >= 0 && (worst < 0 || bad < worst)) worst = bad;
  return worst;
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
