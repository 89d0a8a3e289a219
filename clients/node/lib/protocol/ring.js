// Z_2^64 ring words, the protocol PRG and fixed point, as collabedit_secure/kernels defines them
// (kernels/__init__.py, kernels/reference.py), bit for bit.
//
// Words live in a Uint32Array of 2n entries, [lo_0, hi_0, lo_1, hi_1, ...]: on a little-endian
// host that is exactly the ENCODING_RING_U64_LE byte layout (8 bytes per word, little-endian), so
// a payload is Buffer.from(words.buffer). Arithmetic is done on the 32-bit halves with an explicit
// carry, which is exact and much faster than a BigInt per element.
//
// - PRG: AES-128-CTR with key seed[0:16] and initial counter block seed[16:32] (128-bit big-endian,
//   +1 per 16-byte block mod 2^128), encrypting zeros; keystream bytes 8i..8i+8 read little-endian
//   are word i. (OpenSSL's aes-128-ctr increments the whole 128-bit block, as `cryptography` does.)
// - encode(v) = round_half_even(v * 2^f) as a two's-complement int64; NaN, Inf and |x| > bound refused.
// - decode(w) = int64(w) * 2^-f (int64 -> float64 correctly rounded, then an exact scaling).

import { createCipheriv } from 'node:crypto';
import { endianness } from 'node:os';

if (endianness() !== 'LE') {
  throw new Error('@collabedit/client needs a little-endian host (ring words are stored as native uint32 pairs)');
}

export const PRG_SEED_BYTES = 32;
export const DEFAULT_BOUND = 1n << 62n;
const TWO32 = 4294967296;
const CHUNK_WORDS = 1 << 17; // 1 MiB of keystream per cipher update

export class FixedPointRangeError extends Error {
  /** A value is NaN/Inf or encodes outside [-bound, bound]; `index` is its flat index. */
  constructor(message, index, value) {
    super(message);
    this.name = 'FixedPointRangeError';
    this.index = index;
    this.value = value;
  }
}

function checkSeed(seed, what = 'seed') {
  if (!(seed instanceof Uint8Array) || seed.length !== PRG_SEED_BYTES) {
    throw new Error(`${what} must be ${PRG_SEED_BYTES} bytes`);
  }
  return seed;
}

/** A keystream generator for one seed: next(nWords) returns a Uint32Array view of 2*nWords words. */
export function keystream(seed) {
  checkSeed(seed);
  const cipher = createCipheriv('aes-128-ctr', Buffer.from(seed.subarray(0, 16)), Buffer.from(seed.subarray(16, 32)));
  let scratch = new Uint32Array(0);
  return (nWords) => {
    const bytes = cipher.update(Buffer.alloc(8 * nWords));
    if (scratch.length < 2 * nWords) scratch = new Uint32Array(2 * nWords);
    Buffer.from(scratch.buffer, 0, 8 * nWords).set(bytes); // aligned copy: cipher output may be unaligned
    return scratch.subarray(0, 2 * nWords);
  };
}

/** The first n mask words of the PRG keyed by a 32-byte seed (Uint32Array of 2n). */
export function prgMask(seed, n) {
  const out = new Uint32Array(2 * n);
  const next = keystream(seed);
  for (let start = 0; start < n; start += CHUNK_WORDS) {
    const count = Math.min(CHUNK_WORDS, n - start);
    out.set(next(count), 2 * start);
  }
  return out;
}

/** dst[offset + i] += sign * src[i] (mod 2^64) for i < count; word indices, sign = +1 or -1. */
export function ringAccumulate(dst, src, sign = 1, offset = 0, count = src.length / 2) {
  let d = 2 * offset;
  if (sign > 0) {
    for (let s = 0; s < 2 * count; s += 2, d += 2) {
      const lo = dst[d] + src[s];
      dst[d] = lo; // ToUint32: mod 2^32
      dst[d + 1] = dst[d + 1] + src[s + 1] + (lo > 0xffffffff ? 1 : 0);
    }
  } else {
    for (let s = 0; s < 2 * count; s += 2, d += 2) {
      const lo = dst[d] - src[s];
      dst[d] = lo;
      dst[d + 1] = dst[d + 1] - src[s + 1] - (lo < 0 ? 1 : 0);
    }
  }
  return dst;
}

export function ringAdd(a, b) {
  return ringAccumulate(Uint32Array.from(a), b, 1);
}

export function ringSub(a, b) {
  return ringAccumulate(Uint32Array.from(a), b, -1);
}

/** -w mod 2^64, in place. */
export function ringNegate(words) {
  for (let i = 0; i < words.length; i += 2) {
    const lo = -words[i];
    words[i] = lo;
    words[i + 1] = -words[i + 1] - (lo < 0 ? 1 : 0);
  }
  return words;
}

/** round half to even of a double (np.rint). */
export function rint(x) {
  const r = Math.round(x); // halves go up
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The largest double <= integer (a bigint): what Number() gives, or the next one toward zero. */
export function largestFloatAtMost(integer) {
  const asFloat = Number(integer);
  if (BigInt(asFloat) <= integer) return asFloat;
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, asFloat);
  view.setBigUint64(0, view.getBigUint64(0) - 1n); // positive: one ulp toward zero
  return view.getFloat64(0);
}

function checkScaleBits(scaleBits) {
  if (!Number.isInteger(scaleBits) || scaleBits < 0 || scaleBits > 62) {
    throw new Error(`scale_bits must be an int in [0, 62], got ${scaleBits}`);
  }
  return scaleBits;
}

function checkBound(bound) {
  const b = BigInt(bound);
  if (b < 1n || b >= 1n << 63n) throw new Error(`bound must be in [1, 2^63), got ${b}`);
  return b;
}

/** Flat index of the first value that does not encode (NaN, Inf, |rint(v 2^f)| > bound), or -1. */
export function firstUnencodable(values, scaleBits, bound = DEFAULT_BOUND) {
  const scale = 2 ** checkScaleBits(scaleBits);
  const limit = largestFloatAtMost(checkBound(bound));
  for (let i = 0; i < values.length; i++) {
    if (!(Math.abs(rint(values[i] * scale)) <= limit)) return i; // NaN compares false
  }
  return -1;
}

/** round_half_even(v * 2^f) as two's-complement words; FixedPointRangeError on the first bad value. */
export function fixedPointEncode(values, scaleBits, bound = DEFAULT_BOUND) {
  const scale = 2 ** checkScaleBits(scaleBits);
  const b = checkBound(bound);
  const limit = largestFloatAtMost(b);
  const out = new Uint32Array(2 * values.length);
  for (let i = 0; i < values.length; i++) {
    const x = rint(values[i] * scale);
    if (!(Math.abs(x) <= limit)) {
      throw new FixedPointRangeError(
        `value ${values[i]} at flat index ${i} does not encode within the fixed-point bound |x| <= ${b} at scale 2^${scaleBits}`,
        i, values[i]);
    }
    const hi = Math.floor(x / TWO32); // exact: x is an integer-valued double below 2^63
    out[2 * i] = x - hi * TWO32;
    out[2 * i + 1] = hi; // ToUint32 of a negative hi is its two's complement
  }
  return out;
}

/** int64(words) * 2^-f as float64. */
export function fixedPointDecode(words, scaleBits) {
  const inv = 2 ** -checkScaleBits(scaleBits);
  const out = new Float64Array(words.length / 2);
  for (let i = 0; i < out.length; i++) {
    out[i] = ((words[2 * i + 1] | 0) * TWO32 + words[2 * i]) * inv; // one rounding: int64 -> double
  }
  return out;
}

/** encode(values) + PRG(selfSeed) + sum_p sign_p PRG(peerSeed_p) (mod 2^64): kernels.mask_encode. */
export function maskEncode(values, scaleBits, selfSeed, peerSeeds = [], peerSigns = [], bound = DEFAULT_BOUND) {
  if (peerSeeds.length !== peerSigns.length) throw new Error('one sign per peer seed');
  const words = fixedPointEncode(values, scaleBits, bound);
  const streams = [];
  if (selfSeed != null) streams.push([keystream(selfSeed), 1]);
  peerSeeds.forEach((seed, i) => {
    const sign = peerSigns[i];
    if (sign !== 1 && sign !== -1) throw new Error(`peer sign must be +1 or -1, got ${sign}`);
    streams.push([keystream(seed), sign]);
  });
  const n = values.length;
  for (let start = 0; start < n; start += CHUNK_WORDS) {
    const count = Math.min(CHUNK_WORDS, n - start);
    for (const [next, sign] of streams) ringAccumulate(words, next(count), sign, start, count);
  }
  return words;
}

/** Words <-> decimal strings / bigints (for vectors and tests). */
export function wordsToBigInts(words) {
  const out = [];
  for (let i = 0; i < words.length; i += 2) out.push((BigInt(words[i + 1]) << 32n) | BigInt(words[i]));
  return out;
}

export function wordsFromBigInts(values) {
  const out = new Uint32Array(2 * values.length);
  values.forEach((value, i) => {
    const v = BigInt.asUintN(64, BigInt(value));
    out[2 * i] = Number(v & 0xffffffffn);
    out[2 * i + 1] = Number(v >> 32n);
  });
  return out;
}

/** The little-endian bytes of the words (a view, no copy). */
export function wordsToBytes(words) {
  return Buffer.from(words.buffer, words.byteOffset, words.byteLength);
}

/** Words from little-endian bytes (copied into an aligned buffer). */
export function wordsFromBytes(bytes) {
  if (bytes.length % 8 !== 0) throw new Error(`a ring payload is a multiple of 8 bytes, got ${bytes.length}`);
  const out = new Uint32Array(bytes.length / 4);
  Buffer.from(out.buffer).set(bytes);
  return out;
}

/** Largest per-party bound whose n-party sum cannot wrap: floor((2^63 - 1) / n). */
export function safeBound(nParties) {
  if (!Number.isInteger(nParties) || nParties < 1) throw new Error(`n_parties must be an int >= 1, got ${nParties}`);
  return ((1n << 63n) - 1n) / BigInt(nParties);
}
