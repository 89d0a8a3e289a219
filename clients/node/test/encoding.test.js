import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Binding, EncodingError, checkPartyId, decodeFields, encodeFields, toU64 } from '../lib/protocol/encoding.js';

test('fields encode as tag, u32 big-endian length, payload', () => {
  assert.equal(encodeFields('ab').toString('hex'), '02000000026162');
  assert.equal(encodeFields(1n).toString('hex'), '03000000080000000000000001');
  assert.equal(encodeFields(7).toString('hex'), '03000000080000000000000007');
  assert.equal(encodeFields(Buffer.from([1, 2])).toString('hex'), '01000000020102');
  assert.equal(encodeFields(new Uint8Array([9])).toString('hex'), '010000000109');
  assert.equal(encodeFields('a', 'bc').toString('hex'), `${encodeFields('a').toString('hex')}${encodeFields('bc').toString('hex')}`);
  assert.notDeepEqual(encodeFields('ab', 'c'), encodeFields('a', 'bc')); // injective
  assert.equal(encodeFields((1n << 64n) - 1n).toString('hex'), '0300000008ffffffffffffffff');
});

test('values that do not encode are refused', () => {
  for (const bad of [true, -1, 1.5, 1n << 64n, -1n, null, undefined, {}, [1], Number.MAX_SAFE_INTEGER + 1]) {
    assert.throws(() => encodeFields(bad), EncodingError, String(bad));
  }
});

test('decodeFields inverts encodeFields and rejects malformed input', () => {
  const fields = ['fed', 7n, 'ü-ß', Buffer.from('00ff', 'hex'), 0n, ''];
  assert.deepEqual(decodeFields(encodeFields(...fields)), fields);
  const good = encodeFields('abc', 3n);
  assert.throws(() => decodeFields(good.subarray(0, good.length - 1)), EncodingError);
  assert.throws(() => decodeFields(Buffer.from('0400000000', 'hex')), /unknown field tag/);
  assert.throws(() => decodeFields(Buffer.from('030000000100', 'hex')), /length 1, not 8/);
  assert.throws(() => decodeFields(Buffer.from('0200000001ff', 'hex')), /not UTF-8/);
  assert.throws(() => decodeFields(Buffer.from('0200', 'hex')), /truncated/);
});

test('Binding encodes federation, round, layer, tensor, rank and shape', () => {
  const b = new Binding('f', 3, 4, 'TENSOR_S_RK', [2, 5]);
  assert.equal(b.size, 10);
  assert.deepEqual(b.encode(), encodeFields('f', 3n, 4n, 'TENSOR_S_RK', 2n, 2n, 5n));
  assert.throws(() => new Binding('', 1, 0, 'T', [1]));
  assert.throws(() => new Binding('f', 1, 0, 'T', []));
  assert.throws(() => new Binding('f', -1, 0, 'T', [1]));
  assert.throws(() => new Binding('f', 1, 0, '', [1]));
  assert.equal(toU64('18446744073709551615'), (1n << 64n) - 1n);
});

test('party ids are 1-64 characters of [A-Za-z0-9_-]', () => {
  assert.equal(checkPartyId('party-A_1'), 'party-A_1');
  for (const bad of ['', 'a b', 'ü', 'x'.repeat(65), 3, 'a/b']) assert.throws(() => checkPartyId(bad));
});
