// AES-128-CTR masking on the GPU with T-tables in shared memory. One thread produces one
// 16-byte keystream block (two mask words), identical to OpenSSL/cryptography AES-CTR: the
// counter block is the seed's 128-bit big-endian counter plus the block index.
#include <cmath>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>

#include "kernels_cuda.h"

namespace ce::cuda {
namespace {

struct Tables {
  uint32_t te[4][256];
  uint8_t sbox[256];
};

uint8_t xtime(uint8_t x) { return static_cast<uint8_t>((x << 1) ^ ((x & 0x80) ? 0x1b : 0)); }

uint8_t gf_mul(uint8_t a, uint8_t b) {
  uint8_t p = 0;
  for (; b; b >>= 1, a = xtime(a))
    if (b & 1) p ^= a;
  return p;
}

// The AES S-box from its definition: multiplicative inverse in GF(2^8), then the affine map.
Tables build_tables() {
  Tables t{};
  for (int x = 0; x < 256; ++x) {
    uint8_t inv = 0;
    for (int y = 1; y < 256 && x; ++y)
      if (gf_mul(static_cast<uint8_t>(x), static_cast<uint8_t>(y)) == 1) { inv = static_cast<uint8_t>(y); break; }
    uint8_t s = inv;
    for (int r = 1; r < 5; ++r) s ^= static_cast<uint8_t>((inv << r) | (inv >> (8 - r)));
    t.sbox[x] = static_cast<uint8_t>(s ^ 0x63);
  }
  for (int x = 0; x < 256; ++x) {
    const uint8_t s = t.sbox[x], s2 = xtime(s), s3 = static_cast<uint8_t>(s2 ^ s);
    const uint32_t w = (uint32_t(s2) << 24) | (uint32_t(s) << 16) | (uint32_t(s) << 8) | s3;
    for (int k = 0; k < 4; ++k) t.te[k][x] = (w >> (8 * k)) | (k ? (w << (32 - 8 * k)) : 0);
  }
  return t;
}

const Tables& host_tables() {
  static const Tables tables = build_tables();
  return tables;
}

__constant__ Tables d_tables;

// Encrypts one counter block; te/sbox point at shared (device) or static (host) tables.
__host__ __device__ inline void aes_block(const uint32_t* rk, const uint32_t (*te)[256],
                                          const uint8_t* sbox, const uint32_t in[4], uint32_t out[4]) {
  uint32_t s0 = in[0] ^ rk[0], s1 = in[1] ^ rk[1], s2 = in[2] ^ rk[2], s3 = in[3] ^ rk[3];
  for (int round = 1; round < 10; ++round) {
    const uint32_t* k = rk + 4 * round;
    const uint32_t t0 = te[0][s0 >> 24] ^ te[1][(s1 >> 16) & 0xff] ^ te[2][(s2 >> 8) & 0xff] ^ te[3][s3 & 0xff] ^ k[0];
    const uint32_t t1 = te[0][s1 >> 24] ^ te[1][(s2 >> 16) & 0xff] ^ te[2][(s3 >> 8) & 0xff] ^ te[3][s0 & 0xff] ^ k[1];
    const uint32_t t2 = te[0][s2 >> 24] ^ te[1][(s3 >> 16) & 0xff] ^ te[2][(s0 >> 8) & 0xff] ^ te[3][s1 & 0xff] ^ k[2];
    const uint32_t t3 = te[0][s3 >> 24] ^ te[1][(s0 >> 16) & 0xff] ^ te[2][(s1 >> 8) & 0xff] ^ te[3][s2 & 0xff] ^ k[3];
    s0 = t0; s1 = t1; s2 = t2; s3 = t3;
  }
  const uint32_t* k = rk + 40;
  const uint32_t s[4] = {s0, s1, s2, s3};
  for (int c = 0; c < 4; ++c)
    out[c] = ((uint32_t(sbox[s[c] >> 24]) << 24) | (uint32_t(sbox[(s[(c + 1) & 3] >> 16) & 0xff]) << 16) |
              (uint32_t(sbox[(s[(c + 2) & 3] >> 8) & 0xff]) << 8) | uint32_t(sbox[s[(c + 3) & 3] & 0xff])) ^ k[c];
}

// Counter block `index` of a stream as four big-endian words (128-bit addition with carry).
__host__ __device__ inline void counter_block(const uint8_t* counter, uint64_t index, uint32_t out[4]) {
  uint64_t hi = 0, lo = 0;
  for (int i = 0; i < 8; ++i) hi = (hi << 8) | counter[i];
  for (int i = 8; i < 16; ++i) lo = (lo << 8) | counter[i];
  const uint64_t new_lo = lo + index;
  hi += new_lo < lo;
  out[0] = uint32_t(hi >> 32); out[1] = uint32_t(hi); out[2] = uint32_t(new_lo >> 32); out[3] = uint32_t(new_lo);
}

// Keystream block as the two little-endian mask words the protocol reads from its bytes.
__host__ __device__ inline void mask_words(const Stream& s, const uint32_t (*te)[256], const uint8_t* sbox,
                                           uint64_t block, uint64_t words[2]) {
  uint32_t in[4], out[4];
  counter_block(s.counter, block, in);
  aes_block(s.round_keys, te, sbox, in, out);
  for (int w = 0; w < 2; ++w) {
    uint64_t v = 0;
    for (int b = 7; b >= 0; --b) v = (v << 8) | ((out[2 * w + b / 4] >> (24 - 8 * (b % 4))) & 0xff);
    words[w] = v;
  }
}

__device__ void load_tables(uint32_t (*te)[256], uint8_t* sbox) {
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    for (int k = 0; k < 4; ++k) te[k][i] = d_tables.te[k][i];
    sbox[i] = d_tables.sbox[i];
  }
  __syncthreads();
}

__global__ void prg_kernel(Stream s, int64_t n, uint64_t* out) {
  __shared__ uint32_t te[4][256];
  __shared__ uint8_t sbox[256];
  load_tables(te, sbox);
  const int64_t block = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (2 * block >= n) return;
  uint64_t words[2];
  mask_words(s, te, sbox, block, words);
  out[2 * block] = words[0];
  if (2 * block + 1 < n) out[2 * block + 1] = words[1];
}

constexpr int kMaxStreams = 64;
struct StreamSet {
  Stream streams[kMaxStreams];
  int8_t signs[kMaxStreams];
  int count;
};

__device__ inline uint64_t encode_one(double v, double scale, int64_t bound, bool& bad) {
  const double r = nearbyint(v * scale);
  const bool in_range = fabs(r) < 0x1p63;
  const int64_t x = in_range ? static_cast<int64_t>(r) : 0;
  bad = !in_range || x > bound || x < -bound;
  return static_cast<uint64_t>(x);
}

__global__ void encode_kernel(const double* values, int64_t n, double scale, int64_t bound,
                              const StreamSet* set, uint64_t* out, unsigned long long* first_bad) {
  __shared__ uint32_t te[4][256];
  __shared__ uint8_t sbox[256];
  load_tables(te, sbox);
  const int64_t block = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t i = 2 * block;
  if (i >= n) return;
  const bool has_second = i + 1 < n;
  bool bad0 = false, bad1 = false;
  uint64_t acc[2] = {encode_one(values[i], scale, bound, bad0), has_second ? encode_one(values[i + 1], scale, bound, bad1) : 0};
  if (bad0 || bad1) atomicMin(first_bad, static_cast<unsigned long long>(bad0 ? i : i + 1));
  for (int s = 0; s < set->count; ++s) {
    uint64_t words[2];
    mask_words(set->streams[s], te, sbox, block, words);
    if (set->signs[s] > 0) { acc[0] += words[0]; acc[1] += words[1]; }
    else { acc[0] -= words[0]; acc[1] -= words[1]; }
  }
  out[i] = acc[0];
  if (has_second) out[i + 1] = acc[1];
}

__global__ void ring_kernel(const uint64_t* a, const uint64_t* b, uint64_t* out, int64_t n, bool subtract) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = subtract ? a[i] - b[i] : a[i] + b[i];
}

__global__ void decode_kernel(const uint64_t* sum, int64_t n, double inv_scale, double* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = static_cast<double>(static_cast<int64_t>(sum[i])) * inv_scale;
}

// __constant__ memory belongs to each device: the tables are uploaded once per device (the
// current one, which the Python adapter sets to the operands' device), under a lock, so that
// server threads masking on two GPUs at once both get them.
void upload_tables() {
  static std::mutex lock;
  static std::set<int> uploaded;
  int device = 0;
  check(cudaGetDevice(&device), "reading the current device");
  std::lock_guard<std::mutex> guard(lock);
  if (uploaded.count(device)) return;
  check(cudaMemcpyToSymbol(d_tables, &host_tables(), sizeof(Tables)), "uploading AES tables");
  uploaded.insert(device);
}

unsigned grid_for(int64_t items, int threads) { return static_cast<unsigned>((items + threads - 1) / threads); }

}  // namespace

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string("CUDA error ") + what + ": " + cudaGetErrorString(status));
}

Stream make_stream(const uint8_t* seed32) {
  const uint8_t* sbox = host_tables().sbox;
  Stream s{};
  for (int i = 0; i < 4; ++i)
    s.round_keys[i] = (uint32_t(seed32[4 * i]) << 24) | (uint32_t(seed32[4 * i + 1]) << 16) |
                      (uint32_t(seed32[4 * i + 2]) << 8) | seed32[4 * i + 3];
  uint8_t rcon = 1;
  for (int i = 4; i < 44; ++i) {
    uint32_t t = s.round_keys[i - 1];
    if (i % 4 == 0) {
      t = (uint32_t(sbox[(t >> 16) & 0xff]) << 24) | (uint32_t(sbox[(t >> 8) & 0xff]) << 16) |
          (uint32_t(sbox[t & 0xff]) << 8) | sbox[t >> 24];
      t ^= uint32_t(rcon) << 24;
      rcon = xtime(rcon);
    }
    s.round_keys[i] = s.round_keys[i - 4] ^ t;
  }
  for (int i = 0; i < 16; ++i) s.counter[i] = seed32[16 + i];
  return s;
}

void prg_mask_host(const Stream& s, int64_t n, uint64_t* out) {
  const Tables& t = host_tables();
  for (int64_t block = 0; 2 * block < n; ++block) {
    uint64_t words[2];
    mask_words(s, t.te, t.sbox, static_cast<uint64_t>(block), words);
    out[2 * block] = words[0];
    if (2 * block + 1 < n) out[2 * block + 1] = words[1];
  }
}

void prg_mask(const Stream& s, int64_t n, uint64_t* out, cudaStream_t stream) {
  if (n == 0) return;
  upload_tables();
  prg_kernel<<<grid_for((n + 1) / 2, 256), 256, 0, stream>>>(s, n, out);
  check(cudaGetLastError(), "prg_mask launch");
}

int64_t mask_encode(const double* values, int64_t n, int scale_bits, int64_t bound, const Stream* streams,
                    const int8_t* signs, int n_streams, uint64_t* out, cudaStream_t stream) {
  if (n_streams > kMaxStreams) throw std::invalid_argument("at most 64 masks per encode call");
  if (n == 0) return -1;
  upload_tables();
  StreamSet host_set{};
  for (int s = 0; s < n_streams; ++s) { host_set.streams[s] = streams[s]; host_set.signs[s] = signs[s]; }
  host_set.count = n_streams;
  StreamSet* set = nullptr;
  unsigned long long* first_bad = nullptr;
  check(cudaMallocAsync(&set, sizeof(StreamSet), stream), "allocating mask streams");
  check(cudaMallocAsync(&first_bad, sizeof(unsigned long long), stream), "allocating flag");
  const unsigned long long none = ~0ull;
  check(cudaMemcpyAsync(set, &host_set, sizeof(StreamSet), cudaMemcpyHostToDevice, stream), "copying streams");
  check(cudaMemcpyAsync(first_bad, &none, sizeof(none), cudaMemcpyHostToDevice, stream), "copying flag");
  encode_kernel<<<grid_for((n + 1) / 2, 256), 256, 0, stream>>>(values, n, std::ldexp(1.0, scale_bits), bound, set, out, first_bad);
  check(cudaGetLastError(), "mask_encode launch");
  unsigned long long bad = none;
  check(cudaMemcpyAsync(&bad, first_bad, sizeof(bad), cudaMemcpyDeviceToHost, stream), "reading flag");
  check(cudaFreeAsync(set, stream), "freeing streams");
  check(cudaFreeAsync(first_bad, stream), "freeing flag");
  check(cudaStreamSynchronize(stream), "mask_encode");
  return bad == none ? -1 : static_cast<int64_t>(bad);
}

void ring_op(const uint64_t* a, const uint64_t* b, uint64_t* out, int64_t n, bool subtract, cudaStream_t stream) {
  if (n == 0) return;
  ring_kernel<<<std::min<unsigned>(grid_for(n, 256), 65535u), 256, 0, stream>>>(a, b, out, n, subtract);
  check(cudaGetLastError(), "ring op launch");
}

void mask_decode(const uint64_t* sum, int64_t n, int scale_bits, double* out, cudaStream_t stream) {
  if (n == 0) return;
  decode_kernel<<<std::min<unsigned>(grid_for(n, 256), 65535u), 256, 0, stream>>>(sum, n, std::ldexp(1.0, -scale_bits), out);
  check(cudaGetLastError(), "mask_decode launch");
}

}  // namespace ce::cuda
