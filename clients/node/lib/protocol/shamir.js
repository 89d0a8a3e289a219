// Shamir secret sharing of 32-byte secrets over GF(p), p = 2^521 - 1
// (collabedit_secure/protocol/shamir.py).
//
// split: f(x) = secret + c_1 x + ... + c_{t-1} x^{t-1}, c_i uniform in [0, p); share i = (i, f(i)).
// combine: Lagrange interpolation at 0 from t shares (sorted by x; extra shares must lie on the
// polynomial), the result must be < 2^256. Share bytes (70): x as u32 big-endian || y as 66 bytes
// big-endian.

import { createHash, randomBytes } from 'node:crypto';

import { encodeFields } from './encoding.js';

export const PRIME = (1n << 521n) - 1n;
export const SHAMIR_SECRET_BYTES = 32;
export const X_BYTES = 4;
export const Y_BYTES = 66;
export const SHARE_BYTES = X_BYTES + Y_BYTES;
export const MAX_SHARES = 2 ** 32 - 1;
export const DIGEST_DOMAIN = 'collabedit.v1/shamir-secret-digest';

export class ShamirError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ShamirError';
  }
}

function mod(a, m = PRIME) {
  const r = a % m;
  return r < 0n ? r + m : r;
}

/** a^-1 mod m by the extended Euclidean algorithm (a not 0 mod m). */
export function inverse(a, m = PRIME) {
  let [r0, r1] = [mod(a, m), m];
  let [s0, s1] = [1n, 0n];
  while (r1 !== 0n) {
    const q = r0 / r1;
    [r0, r1] = [r1, r0 - q * r1];
    [s0, s1] = [s1, s0 - q * s1];
  }
  if (r0 !== 1n) throw new ShamirError('value has no inverse');
  return mod(s0, m);
}

export function bytesToBigInt(bytes) {
  return bytes.length ? BigInt(`0x${Buffer.from(bytes).toString('hex')}`) : 0n;
}

export function bigIntToBytes(value, length) {
  const hex = value.toString(16);
  if (hex.length > 2 * length) throw new ShamirError(`${value} does not fit in ${length} bytes`);
  return Buffer.from(hex.padStart(2 * length, '0'), 'hex');
}

function checkPoint(x, y, prime = PRIME) {
  const maxX = prime - 1n < BigInt(MAX_SHARES) ? Number(prime - 1n) : MAX_SHARES;
  if (!Number.isInteger(x) || x < 1 || x > maxX) throw new ShamirError(`share x must be an int in [1, ${maxX}], got ${x}`);
  if (typeof y !== 'bigint' || y < 0n || y >= prime) throw new ShamirError('share y must be an int in [0, p)');
}

export class Share {
  constructor(x, y) {
    this.x = x;
    this.y = BigInt(y);
    Object.freeze(this);
  }

  toBytes() {
    checkPoint(this.x, this.y);
    const out = Buffer.alloc(SHARE_BYTES);
    out.writeUInt32BE(this.x, 0);
    bigIntToBytes(this.y, Y_BYTES).copy(out, X_BYTES);
    return out;
  }

  static fromBytes(data) {
    if (!(data instanceof Uint8Array)) throw new ShamirError(`a share is ${SHARE_BYTES} bytes, got ${typeof data}`);
    if (data.length !== SHARE_BYTES) throw new ShamirError(`a share is ${SHARE_BYTES} bytes, got ${data.length}`);
    const buf = Buffer.from(data);
    const x = buf.readUInt32BE(0);
    const y = bytesToBigInt(buf.subarray(X_BYTES));
    checkPoint(x, y);
    return new Share(x, y);
  }
}

/** Uniform in [0, p): 66 random bytes cut to 521 bits, redrawn when >= p. */
export function randomFieldElement(prime = PRIME) {
  const bits = prime.toString(2).length;
  const bytes = Math.ceil(bits / 8);
  const mask = (1n << BigInt(bits)) - 1n;
  for (;;) {
    const candidate = bytesToBigInt(randomBytes(bytes)) & mask;
    if (candidate < prime) return candidate;
  }
}

function evaluate(coefficients, x, prime) {
  let result = 0n;
  for (let i = coefficients.length - 1; i >= 0; i--) result = mod(result * BigInt(x) + coefficients[i], prime);
  return result;
}

function checkParams(n, t, prime) {
  const maxN = prime - 1n < BigInt(MAX_SHARES) ? Number(prime - 1n) : MAX_SHARES;
  if (!Number.isInteger(n) || !Number.isInteger(t) || !(t >= 1 && t <= n && n <= maxN)) {
    throw new ShamirError(`need 1 <= t <= n <= ${maxN}, got n=${n}, t=${t}`);
  }
}

/**
 * Shares of a field element. coefficients: the t-1 non-constant coefficients (tests and vectors);
 * by default drawn uniformly with crypto.randomBytes.
 */
export function splitInt(secret, n, t, coefficients = null, prime = PRIME) {
  checkParams(n, t, prime);
  if (typeof secret !== 'bigint' || secret < 0n || secret >= prime) throw new ShamirError('secret is not a field element');
  const rest = coefficients == null
    ? Array.from({ length: t - 1 }, () => randomFieldElement(prime))
    : coefficients.map((c) => BigInt(c));
  if (rest.length !== t - 1 || rest.some((c) => c < 0n || c >= prime)) {
    throw new ShamirError(`need ${t - 1} coefficients in [0, p)`);
  }
  const poly = [secret, ...rest];
  return Array.from({ length: n }, (_, i) => new Share(i + 1, evaluate(poly, i + 1, prime)));
}

/** Value at x of the polynomial of degree < shares.length through the shares. */
export function lagrangeAt(shares, x, prime = PRIME) {
  let total = 0n;
  const bx = BigInt(x);
  for (let i = 0; i < shares.length; i++) {
    let numerator = 1n;
    let denominator = 1n;
    for (let j = 0; j < shares.length; j++) {
      if (i === j) continue;
      numerator = mod(numerator * (bx - BigInt(shares[j].x)), prime);
      denominator = mod(denominator * BigInt(shares[i].x - shares[j].x), prime);
    }
    total = mod(total + shares[i].y * numerator * inverse(denominator, prime), prime);
  }
  return total;
}

/** f(0) from >= t shares; rejects duplicates, bad values and extra shares off the polynomial. */
export function combineInt(shares, t, prime = PRIME) {
  if (!Number.isInteger(t) || t < 1) throw new ShamirError(`threshold t must be an int >= 1, got ${t}`);
  if (shares.length < t) throw new ShamirError(`need at least ${t} shares to reconstruct, got ${shares.length}`);
  for (const share of shares) {
    if (!(share instanceof Share)) throw new ShamirError('expected Share objects');
    checkPoint(share.x, share.y, prime);
  }
  const xs = shares.map((s) => s.x);
  if (new Set(xs).size !== xs.length) throw new ShamirError(`duplicate share x in ${[...xs].sort((a, b) => a - b)}`);
  const sorted = [...shares].sort((a, b) => a.x - b.x);
  const basis = sorted.slice(0, t);
  for (const share of sorted.slice(t)) {
    if (lagrangeAt(basis, share.x, prime) !== share.y) {
      throw new ShamirError(`share x=${share.x} is inconsistent with the others (tampered or from another secret)`);
    }
  }
  return lagrangeAt(basis, 0, prime);
}

/** n shares of a 32-byte secret, any t of which reconstruct it. */
export function split(secret, n, t, coefficients = null) {
  if (!(secret instanceof Uint8Array) || secret.length !== SHAMIR_SECRET_BYTES) throw new ShamirError(`secret must be ${SHAMIR_SECRET_BYTES} bytes`);
  return splitInt(bytesToBigInt(secret), n, t, coefficients);
}

/** The 32-byte secret from at least t shares (optionally checked against secretDigest). */
export function combine(shares, t, digest = null) {
  const value = combineInt(shares, t);
  if (value >= 1n << BigInt(8 * SHAMIR_SECRET_BYTES)) {
    throw new ShamirError('reconstructed value is not a 32-byte secret: a share is wrong or tampered');
  }
  const secret = bigIntToBytes(value, SHAMIR_SECRET_BYTES);
  if (digest != null && !secretDigest(secret).equals(Buffer.from(digest))) {
    throw new ShamirError('reconstructed secret does not match its digest: a share is wrong or tampered');
  }
  return secret;
}

/** SHA-256(encodeFields("collabedit.v1/shamir-secret-digest", secret)). */
export function secretDigest(secret) {
  return createHash('sha256').update(encodeFields(DIGEST_DOMAIN, Buffer.from(secret))).digest();
}
