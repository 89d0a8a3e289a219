import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Binding } from '../lib/protocol/encoding.js';
import { FixedPointOverflowError, RoundNumerics } from '../lib/protocol/fixedpoint.js';
import { RoundKeys } from '../lib/protocol/keys.js';
import { maskedUpload, sumUploads, unmaskSum } from '../lib/protocol/masking.js';
import { recoverMaskPrivateKey, recoverSelfSecret, splitRoundSecrets } from '../lib/protocol/recovery.js';
import { fixedPointDecode, fixedPointEncode } from '../lib/protocol/ring.js';

const roster = ['a', 'b', 'c'];
const binding = new Binding('fed', 2n, 5n, 'TENSOR_S_RK', [3, 4]);
const numerics = new RoundNumerics(3, 40);

function federation() {
  const keys = new Map(roster.map((p) => [p, RoundKeys.generate()]));
  const publicKeys = new Map(roster.map((p) => [p, keys.get(p).maskPublicKey]));
  const values = new Map(roster.map((p, i) => [p, new Float64Array(12).map((_, j) => (i + 1) * Math.sin(j + i) * 3)]));
  const upload = (p) => maskedUpload(values.get(p), numerics, binding, p, keys.get(p),
    new Map([...publicKeys].filter(([q]) => q !== p)));
  return { keys, publicKeys, values, upload };
}

function exactSum(values, parties) {
  return fixedPointDecode(sumUploads(parties.map((p) => fixedPointEncode(values.get(p), 40))), 40);
}

test('every party uploading: the masks cancel and the sum unmasks exactly', () => {
  const { keys, publicKeys, values, upload } = federation();
  const uploads = roster.map(upload);
  assert.notDeepEqual(uploads[0], fixedPointEncode(values.get('a'), 40)); // masked
  const secrets = new Map(roster.map((p) => [p, keys.get(p).selfSecret]));
  const total = unmaskSum(sumUploads(uploads), secrets, new Map(), publicKeys, binding, numerics);
  assert.deepEqual(total, exactSum(values, roster));
});

test('a party dropped before uploading is recovered from t shares of its mask key', () => {
  const { keys, publicKeys, values, upload } = federation();
  const shares = new Map(roster.map((p) => [p, splitRoundSecrets(keys.get(p), roster, 2)]));
  // a and b upload; c drops. The survivors reveal self shares of a, b and mask-key shares of c.
  const selfOf = (owner) => recoverSelfSecret(['a', 'b'].map((holder) => shares.get(owner).get(holder)[0]), 2);
  const cKey = recoverMaskPrivateKey(['a', 'b'].map((holder) => shares.get('c').get(holder)[1]), 2, publicKeys.get('c'));
  const total = unmaskSum(sumUploads([upload('a'), upload('b')]), new Map([['a', selfOf('a')], ['b', selfOf('b')]]),
    new Map([['c', cKey]]), publicKeys, binding, numerics);
  assert.deepEqual(total, exactSum(values, ['a', 'b']));
  assert.throws(() => unmaskSum(sumUploads([upload('a')]), new Map([['a', selfOf('a')]]), new Map([['a', cKey]]), publicKeys,
    binding, numerics), /both/);
});

test('a value past the per-party bound is refused before any masking, naming tensor and index', () => {
  const { keys, publicKeys } = federation();
  const values = new Float64Array(12);
  values[7] = 2 ** 23; // > (2^63 - 1) / 3 / 2^40
  assert.throws(() => maskedUpload(values, numerics, binding, 'a', keys.get('a'), new Map([['b', publicKeys.get('b')]])),
    (e) => e instanceof FixedPointOverflowError && e.tensor === 'TENSOR_S_RK' && e.index.join(',') === '1,3');
  assert.throws(() => maskedUpload(new Float64Array(11), numerics, binding, 'a', keys.get('a'), new Map()), /entries/);
  assert.throws(() => maskedUpload(new Float64Array(12), numerics, binding, 'a', keys.get('a'),
    new Map([['a', publicKeys.get('a')]])), /must not include/);
});
