// Public fixed-point parameters of a round and the party-side refusal to send what would overflow
// (collabedit_secure/protocol/fixedpoint.py).
//
// A float64 v is sent as x = round_half_even(v * 2^f) in Z_2^64 (f = scale_bits). A party refuses
// (FixedPointOverflowError, before anything is sent) unless every |x| <= bound, where the round's
// per-party bound is at most floor((2^63 - 1) / n) so that the ring sum of n uploads cannot wrap.

import { firstUnencodable, largestFloatAtMost, rint, safeBound } from './ring.js';

export const DEFAULT_SCALE_BITS = 40;
export const MAX_SCALE_BITS = 62;

export class FixedPointOverflowError extends Error {
  /** A value is NaN/Inf or too large to encode for this round; nothing has been sent. */
  constructor(message, tensor, index, value, bound) {
    super(message);
    this.name = 'FixedPointOverflowError';
    Object.assign(this, { tensor, index, value, bound });
  }
}

function unravel(flat, shape) {
  const index = new Array(shape.length);
  for (let d = shape.length - 1; d >= 0; d--) {
    index[d] = flat % shape[d];
    flat = Math.floor(flat / shape[d]);
  }
  return index;
}

function formatFloat(value) {
  return Number.isFinite(value) ? Number(value.toPrecision(6)).toString() : String(value);
}

export class RoundNumerics {
  /** nParties: the round's participants; bound: per-party |x| bound (bigint; default safeBound(n)). */
  constructor(nParties, scaleBits = DEFAULT_SCALE_BITS, bound = null) {
    if (!Number.isInteger(nParties) || nParties < 1) throw new Error(`n_parties must be an int >= 1, got ${nParties}`);
    if (!Number.isInteger(scaleBits) || scaleBits < 0 || scaleBits > MAX_SCALE_BITS) {
      throw new Error(`scale_bits must be an int in [0, ${MAX_SCALE_BITS}], got ${scaleBits}`);
    }
    const b = bound == null ? safeBound(nParties) : BigInt(bound);
    if (b < 1n || b > (1n << 63n) - 1n) throw new Error(`bound must be an int in [1, 2^63 - 1], got ${b}`);
    if (BigInt(nParties) * b >= 1n << 63n) {
      throw new Error(`bound ${b} x ${nParties} parties >= 2^63: the sum could wrap; use <= ${safeBound(nParties)}`);
    }
    this.nParties = nParties;
    this.scaleBits = scaleBits;
    this.bound = b;
    Object.freeze(this);
  }

  /** Largest float magnitude guaranteed to encode within the bound. */
  get maxAbs() {
    return largestFloatAtMost(this.bound) * 2 ** -this.scaleBits;
  }

  /** |decoded - exact| bound for an entry of the n-party sum with |exact sum| = absSum. */
  sumErrorBound(absSum = 0) {
    return this.nParties * 2 ** -(this.scaleBits + 1) + Math.abs(absSum) * 2 ** -53;
  }

  /** Throws FixedPointOverflowError naming the tensor, the first bad index, the value and the bound. */
  checkEncodable(name, values, shape = [values.length]) {
    const bad = firstUnencodable(values, this.scaleBits, this.bound);
    if (bad < 0) return;
    const value = values[bad];
    const index = unravel(bad, shape);
    const problem = Number.isFinite(value)
      ? `exceeds the largest encodable magnitude ${formatFloat(this.maxAbs)}`
      : 'is not finite';
    throw new FixedPointOverflowError(
      `tensor '${name}': value ${value} at index (${index.join(', ')}) ${problem} (per-party bound ${this.bound} ` +
      `at scale 2^${this.scaleBits} for ${this.nParties} parties); nothing was sent. Normalise the statistics or ` +
      'start the round with a smaller scale_bits.',
      name, index, value, this.bound);
  }

  /** The fixed-point integer of one value as a bigint (tests and diagnostics). */
  encodeOne(value) {
    return BigInt(rint(value * 2 ** this.scaleBits));
  }
}
