import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  KeyAdvertisementError, RoundKeys, checkUniqueKeys, certificateProblem, generateX25519, leafCertificate, signAdvertisement,
  verifyAdvertisement, x25519PublicBytes, x25519SharedSecret,
} from '../lib/protocol/keys.js';
import { EKU, makeFederationPki, p256 } from '../test-helpers/pki.js';

const pki = makeFederationPki();
const FED = 'fed-test';

function advertise(party = 'a', options = {}) {
  const issued = pki.issue(party, options);
  const keys = RoundKeys.generate();
  return { keys, issued, adv: signAdvertisement(issued.keyPem, issued.certPem, FED, 3n, party, keys) };
}

test('X25519 raw keys agree on one secret and refuse low-order points', () => {
  const a = generateX25519();
  const b = generateX25519();
  assert.equal(a.length, 32);
  assert.deepEqual(x25519SharedSecret(a, x25519PublicBytes(b)), x25519SharedSecret(b, x25519PublicBytes(a)));
  assert.throws(() => x25519SharedSecret(a, Buffer.alloc(32)), /invalid/); // the zero point has low order
  assert.throws(() => x25519SharedSecret(a, Buffer.alloc(31)), /32 raw bytes/);
  const keys = RoundKeys.generate();
  assert.deepEqual(keys.maskPublicKey, x25519PublicBytes(keys.maskPrivateKey));
  assert.notDeepEqual(keys.maskPublicKey, keys.sharePublicKey);
});

test('an advertisement signed with the certificate key verifies for its federation and round only', () => {
  const { adv } = advertise('a');
  verifyAdvertisement(adv, pki.caPem, FED, 3n);
  assert.throws(() => verifyAdvertisement(adv, pki.caPem, FED, 4n), /signature does not verify/);
  assert.throws(() => verifyAdvertisement(adv, pki.caPem, 'other', 3n), /signature does not verify/);
  assert.throws(() => verifyAdvertisement({ ...adv, party_id: 'b' }, pki.caPem, FED, 3n), /common name "a"/);
  assert.throws(() => verifyAdvertisement({ ...adv, mask_public_key: Buffer.alloc(32) }, pki.caPem, FED, 3n), KeyAdvertisementError);
  const other = advertise('a');
  assert.throws(() => verifyAdvertisement({ ...adv, signature: other.adv.signature }, pki.caPem, FED, 3n), KeyAdvertisementError);
});

test('signing refuses a key that is not the certificate\'s', () => {
  const issued = pki.issue('a');
  const wrong = p256().export({ format: 'pem', type: 'pkcs8' });
  assert.throws(() => signAdvertisement(wrong, issued.certPem, FED, 1n, 'a', RoundKeys.generate()), /does not belong/);
});

test('certificates not issued by the CA, expired, CA-flagged or without clientAuth are rejected', () => {
  const elsewhere = makeFederationPki();
  const foreign = elsewhere.issue('a');
  const keys = RoundKeys.generate();
  const foreignAdv = signAdvertisement(foreign.keyPem, foreign.certPem, FED, 3n, 'a', keys);
  assert.throws(() => verifyAdvertisement(foreignAdv, pki.caPem, FED, 3n), /not issued by the federation CA/);
  const expired = advertise('a', { notBefore: new Date(Date.now() - 10 * 86400e3), notAfter: new Date(Date.now() - 86400e3) });
  assert.throws(() => verifyAdvertisement(expired.adv, pki.caPem, FED, 3n), /not valid at/);
  const caFlag = advertise('a', { ca: true });
  assert.throws(() => verifyAdvertisement(caFlag.adv, pki.caPem, FED, 3n), /CA certificate/);
  const serverOnly = advertise('a', { eku: [EKU.serverAuth] });
  assert.throws(() => verifyAdvertisement(serverOnly.adv, pki.caPem, FED, 3n), /clientAuth/);
  const twoNames = advertise('a', { names: ['a', 'b'] });
  assert.throws(() => verifyAdvertisement(twoNames.adv, pki.caPem, FED, 3n), /common name "a", "b"/);
  assert.match(certificateProblem(leafCertificate(pki.issue('a').certPem), 'not a pem'), /CA certificate does not parse/);
  assert.match(certificateProblem(leafCertificate(pki.issue('a').certPem), pki.issue('x').certPem), /not a CA/);
});

test('repeated keys or parties are refused', () => {
  const a = advertise('a').adv;
  const b = advertise('b').adv;
  checkUniqueKeys([a, b]);
  assert.throws(() => checkUniqueKeys([a, { ...b, mask_public_key: a.share_public_key }]), /already advertised by "a"/);
  assert.throws(() => checkUniqueKeys([a, a]), /advertised keys twice/);
});
