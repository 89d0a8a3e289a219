import assert from 'node:assert/strict';
import { createCipheriv, randomBytes } from 'node:crypto';
import { test } from 'node:test';

import { FixedPointOverflowError, RoundNumerics } from '../lib/protocol/fixedpoint.js';
import {
  FixedPointRangeError, fixedPointDecode, fixedPointEncode, largestFloatAtMost, maskEncode, prgMask, ringAdd, ringNegate,
  ringSub, rint, safeBound, wordsFromBigInts, wordsToBigInts,
} from '../lib/protocol/ring.js';

const U64 = 1n << 64n;

test('rint rounds half to even, like numpy.rint', () => {
  const cases = [[0.5, 0], [1.5, 2], [2.5, 2], [-0.5, -0], [-1.5, -2], [-2.5, -2], [3.5, 4], [0.49999999999999994, 0],
    [2 ** 52 + 1, 2 ** 52 + 1], [-(2 ** 53), -(2 ** 53)], [1.4999999999999998, 1], [-3.5, -4]];
  for (const [x, want] of cases) assert.ok(Object.is(rint(x) + 0, want + 0), `rint(${x}) = ${rint(x)}, want ${want}`);
});

test('fixed point encodes two\'s complement words, refuses past the bound, and decodes', () => {
  const f = 40;
  const values = Float64Array.of(1, -1, 0.5 * 2 ** -40, 1.5 * 2 ** -40, -2.5 * 2 ** -40, 1e6, -123.456);
  const words = wordsToBigInts(fixedPointEncode(values, f));
  const want = [2n ** 40n, U64 - 2n ** 40n, 0n, 2n, U64 - 2n, BigInt(1e6) * 2n ** 40n,
    BigInt.asUintN(64, BigInt(rint(-123.456 * 2 ** 40)))];
  assert.deepEqual(words, want);
  const decoded = fixedPointDecode(fixedPointEncode(values, f), f);
  assert.equal(decoded[0], 1);
  assert.equal(decoded[6], rint(-123.456 * 2 ** 40) / 2 ** 40);
  assert.throws(() => fixedPointEncode(Float64Array.of(0, NaN), f), (e) => e instanceof FixedPointRangeError && e.index === 1);
  assert.throws(() => fixedPointEncode(Float64Array.of(Infinity), f), FixedPointRangeError);
  // exactly at the bound encodes; one unit past it does not
  const bound = 1000n;
  assert.deepEqual(wordsToBigInts(fixedPointEncode(Float64Array.of(1000, -1000), 0, bound)), [1000n, U64 - 1000n]);
  assert.throws(() => fixedPointEncode(Float64Array.of(1001), 0, bound), FixedPointRangeError);
  assert.deepEqual(wordsToBigInts(fixedPointEncode(Float64Array.of(1000.5), 0, bound)), [1000n]); // half to even
  assert.throws(() => fixedPointEncode(Float64Array.of(1000.6), 0, bound), FixedPointRangeError);
});

test('the largest bounds round down to a float that still encodes', () => {
  const b = safeBound(3); // 3074457345618258602, not a double
  assert.equal(b, 3074457345618258602n);
  const limit = largestFloatAtMost(b);
  assert.ok(BigInt(limit) <= b && BigInt(limit) > b - 1024n);
  assert.equal(largestFloatAtMost(2n ** 53n), 2 ** 53);
  const words = wordsToBigInts(fixedPointEncode(Float64Array.of(limit, -limit), 0, b));
  assert.deepEqual(words, [BigInt(limit), U64 - BigInt(limit)]);
  assert.throws(() => fixedPointEncode(Float64Array.of(2 ** 63), 0, (1n << 63n) - 1n), FixedPointRangeError);
});

test('RoundNumerics refuses a wrapping bound and names the tensor, index and bound', () => {
  assert.throws(() => new RoundNumerics(3, 40, safeBound(3) + 1n), /could wrap/);
  const numerics = new RoundNumerics(2, 50);
  assert.equal(numerics.bound, safeBound(2));
  const values = new Float64Array(6);
  values[4] = 1e6;
  assert.throws(() => numerics.checkEncodable('TENSOR_S_RK', values, [2, 3]), (e) => e instanceof FixedPointOverflowError
    && e.tensor === 'TENSOR_S_RK' && e.index.join(',') === '1,1' && e.bound === numerics.bound && /nothing was sent/.test(e.message));
  values[4] = NaN;
  assert.throws(() => numerics.checkEncodable('T', values), /is not finite/);
  numerics.checkEncodable('T', Float64Array.of(4095.5, -4095.5));
  assert.throws(() => numerics.checkEncodable('T', Float64Array.of(4096)), FixedPointOverflowError); // 2^62 > 2^62 - 1
});

test('ring arithmetic carries and borrows across the 32-bit halves', () => {
  const a = wordsFromBigInts([U64 - 1n, 0xffffffffn, 5n, 0n]);
  const b = wordsFromBigInts([1n, 1n, U64 - 6n, 0n]);
  assert.deepEqual(wordsToBigInts(ringAdd(a, b)), [0n, 0x100000000n, U64 - 1n, 0n]);
  assert.deepEqual(wordsToBigInts(ringSub(a, b)), [U64 - 2n, 0xfffffffen, 11n, 0n]);
  assert.deepEqual(wordsToBigInts(ringNegate(wordsFromBigInts([0n, 1n, 1n << 32n, U64 - 1n]))), [0n, U64 - 1n, U64 - (1n << 32n), 1n]);
  for (let i = 0; i < 200; i++) {
    const x = BigInt.asUintN(64, BigInt(`0x${randomBytes(8).toString('hex')}`));
    const y = BigInt.asUintN(64, BigInt(`0x${randomBytes(8).toString('hex')}`));
    const [wx, wy] = [wordsFromBigInts([x]), wordsFromBigInts([y])];
    assert.equal(wordsToBigInts(ringAdd(wx, wy))[0], (x + y) % U64);
    assert.equal(wordsToBigInts(ringSub(wx, wy))[0], BigInt.asUintN(64, x - y));
  }
});

test('the PRG is AES-128-CTR over zeros, continuous across chunks', () => {
  const seed = randomBytes(32);
  const n = (1 << 17) + 3; // past one internal chunk
  const words = prgMask(seed, n);
  const cipher = createCipheriv('aes-128-ctr', seed.subarray(0, 16), seed.subarray(16));
  const stream = cipher.update(Buffer.alloc(8 * n));
  assert.ok(Buffer.from(words.buffer).equals(stream));
  assert.equal(wordsToBigInts(words.subarray(0, 2))[0], stream.readBigUInt64LE(0));
});

test('maskEncode adds self and signed pairwise masks; pairwise masks cancel in a sum', () => {
  const values = new Float64Array(200_000).map((_, i) => Math.sin(i) * 100);
  const other = new Float64Array(values.length).map((_, i) => Math.cos(i));
  const [self1, self2, pair] = [randomBytes(32), randomBytes(32), randomBytes(32)];
  const up1 = maskEncode(values, 40, self1, [pair], [1]);
  const up2 = maskEncode(other, 40, self2, [pair], [-1]);
  const total = ringSub(ringSub(ringAdd(up1, up2), prgMask(self1, values.length)), prgMask(self2, values.length));
  const plain = ringAdd(fixedPointEncode(values, 40), fixedPointEncode(other, 40));
  assert.deepEqual(total, plain);
  assert.throws(() => maskEncode(values, 40, self1, [pair], [2]), /sign/);
});
