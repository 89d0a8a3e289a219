import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';

import { RoundKeys } from '../lib/protocol/keys.js';
import { recoverMaskPrivateKey, recoverSelfSecret, shareIndex, splitRoundSecrets } from '../lib/protocol/recovery.js';
import {
  PRIME, Share, ShamirError, combine, combineInt, inverse, secretDigest, split, splitInt,
} from '../lib/protocol/shamir.js';
import { ShareBoxError, openShares, sealShares } from '../lib/protocol/sharebox.js';

test('any t of n shares rebuild the secret; fewer do not determine it', () => {
  for (const [n, t] of [[1, 1], [3, 2], [5, 3], [7, 7]]) {
    const secret = randomBytes(32);
    const shares = split(secret, n, t);
    assert.deepEqual(combine(shares.slice(n - t), t), secret);
    assert.deepEqual(combine([...shares].reverse(), t), secret); // extra shares are checked, order does not matter
    if (t > 1) assert.throws(() => combine(shares.slice(0, t - 1), t), /at least/);
  }
});

test('share bytes are x (u32 BE) and y (66 bytes BE)', () => {
  const share = new Share(3, PRIME - 1n);
  const bytes = share.toBytes();
  assert.equal(bytes.length, 70);
  assert.equal(bytes.readUInt32BE(0), 3);
  assert.deepEqual(Share.fromBytes(bytes), share);
  assert.throws(() => Share.fromBytes(bytes.subarray(1)), /70 bytes/);
  const tooBig = Buffer.from(bytes);
  tooBig.fill(0xff, 4);
  assert.throws(() => Share.fromBytes(tooBig), /\[0, p\)/);
  assert.throws(() => new Share(0, 1n).toBytes(), /x must be/);
});

test('tampered, duplicate and inconsistent shares are caught', () => {
  const secret = randomBytes(32);
  const shares = split(secret, 4, 2);
  assert.throws(() => combine([shares[0], shares[0]], 2), /duplicate/);
  const bad = new Share(shares[2].x, (shares[2].y + 1n) % PRIME);
  assert.throws(() => combine([shares[0], shares[1], bad], 2), /inconsistent/);
  assert.throws(() => combine(shares.slice(0, 2), 2, secretDigest(randomBytes(32))), /digest/);
  assert.deepEqual(combine(shares.slice(0, 2), 2, secretDigest(secret)), secret);
  assert.throws(() => splitInt(PRIME, 3, 2), ShamirError);
  assert.throws(() => split(secret, 2, 3), /t <= n/);
  assert.equal((inverse(12345n) * 12345n) % PRIME, 1n);
  assert.equal(combineInt(splitInt(5n, 3, 3, [7n, 11n]), 3), 5n);
});

test('round secrets split by sorted roster position; the mask key is checked on recovery', () => {
  const roster = ['c', 'a', 'b'];
  assert.deepEqual(roster.map((p) => shareIndex(roster, p)), [3, 1, 2]);
  assert.throws(() => shareIndex(roster, 'd'), /not in the round's roster/);
  const keys = RoundKeys.generate();
  const shares = splitRoundSecrets(keys, roster, 2);
  assert.deepEqual([...shares.keys()], roster);
  assert.equal(shares.get('b')[0].x, 2);
  assert.deepEqual(recoverSelfSecret([shares.get('a')[0], shares.get('c')[0]], 2), keys.selfSecret);
  const maskShares = [shares.get('b')[1], shares.get('c')[1]];
  assert.deepEqual(recoverMaskPrivateKey(maskShares, 2, keys.maskPublicKey), keys.maskPrivateKey);
  assert.throws(() => recoverMaskPrivateKey(maskShares, 2, keys.sharePublicKey), /does not match/);
});

test('share boxes open only for their recipient, round, federation and sender', () => {
  const [s, r, other] = [RoundKeys.generate(), RoundKeys.generate(), RoundKeys.generate()];
  const [selfShare, maskShare] = [new Share(2, 123n), new Share(2, 456n)];
  const box = sealShares('fed', 5n, 'a', 'b', s.sharePrivateKey, r.sharePublicKey, selfShare, maskShare);
  assert.equal(box.length, 12 + 2 * (5 + 1) + 2 * (5 + 70) + 16);
  const opened = openShares('fed', 5n, 'a', 'b', r.sharePrivateKey, s.sharePublicKey, box, 2);
  assert.deepEqual(opened, [selfShare, maskShare]);
  assert.throws(() => openShares('fed', 6n, 'a', 'b', r.sharePrivateKey, s.sharePublicKey, box), ShareBoxError);
  assert.throws(() => openShares('fee', 5n, 'a', 'b', r.sharePrivateKey, s.sharePublicKey, box), ShareBoxError);
  assert.throws(() => openShares('fed', 5n, 'a', 'b', other.sharePrivateKey, s.sharePublicKey, box), /does not authenticate/);
  assert.throws(() => openShares('fed', 5n, 'a', 'b', r.sharePrivateKey, s.sharePublicKey, box, 3), /expected 3/);
  assert.throws(() => openShares('fed', 5n, 'a', 'b', r.sharePrivateKey, s.sharePublicKey, box.subarray(0, 27)), /too short/);
  assert.throws(() => sealShares('fed', 5n, 'a', 'a', s.sharePrivateKey, r.sharePublicKey, selfShare, maskShare), /itself/);
});
