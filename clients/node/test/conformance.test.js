// Every conformance vector in proto/conformance/*.json, checked against this package's protocol code.
// A vector file whose "name" has no check here fails, so a new vector cannot be skipped silently.

import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { conformanceDir } from '../lib/proto.js';
import {
  Binding, PRIME, PayloadAssembler, RoundKeys, RoundNumerics, Share, SHARE_BOX_SALT, advertisementMessage, boxContext,
  boxKey, chunkPayload, combine, decodeFields, encodeField, encodeFields, fixedPointDecode, fixedPointEncode,
  FixedPointOverflowError, HE_SECRET_BOX_SALT, maskSeed, maskSeedInfo, maskedUpload, MASK_SEED_SALT, openShares, pairSign,
  prgMask, safeBound, sealShares, selfMask, sha256, signAdvertisement, split, sumUploads, unmaskSum, verifyAdvertisement,
  KeyAdvertisementError, wordsFromBigInts, wordsToBigInts, x25519PublicBytes, x25519SharedSecret,
} from '../lib/protocol/index.js';

const hex = (s) => Buffer.from(s, 'hex');

function f64(entry) {
  // {value, value_hex}: value_hex is the little-endian IEEE-754 bytes, the exact value (JSON loses -0.0 and NaN)
  const value = hex(entry.value_hex).readDoubleLE(0);
  if (entry.value !== undefined && entry.value !== null && Number.isFinite(value)) {
    assert.equal(value, entry.value, `value_hex ${entry.value_hex} is not ${entry.value}`);
  }
  return value;
}

function typedField([type, value]) {
  if (type === 'str') return value;
  if (type === 'int') return BigInt(value);
  if (type === 'bytes') return hex(value);
  throw new Error(`unknown field type ${type}`);
}

function bindingFrom(fields) {
  const [federation, round, layer, tensor, rank, ...shape] = fields;
  assert.equal(Number(rank), shape.length, 'binding rank');
  return new Binding(federation, BigInt(round), BigInt(layer), tensor, shape.map((d) => BigInt(d)));
}

const checks = {
  encoding(v) {
    for (const field of v.fields) {
      const value = typedField([field.type, field.value]);
      assert.equal(encodeField(value).toString('hex'), field.encoding, `${field.type} ${field.value}`);
      assert.deepEqual(decodeFields(hex(field.encoding)), [field.type === 'str' ? value : value], 'decode');
    }
    const fields = v.concatenation.fields.map(typedField);
    assert.equal(encodeFields(...fields).toString('hex'), v.concatenation.encoding);
    const b = v.binding;
    const binding = new Binding(b.federation_id, BigInt(b.round_id), BigInt(b.layer), b.tensor, b.shape.map(BigInt));
    assert.equal(binding.encode().toString('hex'), b.encoding);
  },

  fixed_point(v) {
    const numerics = new RoundNumerics(v.n_parties, v.scale_bits);
    assert.equal(numerics.bound, BigInt(v.bound), 'bound = floor((2^63 - 1) / n)');
    assert.equal(safeBound(v.n_parties), BigInt(v.bound));
    const values = Float64Array.from(v.cases.map(f64));
    const words = fixedPointEncode(values, v.scale_bits, numerics.bound);
    assert.deepEqual(wordsToBigInts(words).map(String), v.cases.map((c) => c.word));
    for (const refused of v.refused) {
      const value = f64(refused);
      assert.throws(() => numerics.checkEncodable('t', Float64Array.of(value)), FixedPointOverflowError,
        `${refused.value_hex} (${refused.why}) must be refused`);
      assert.throws(() => fixedPointEncode(Float64Array.of(value), v.scale_bits, numerics.bound));
    }
    const summed = v.decode_example.words_summed.map(BigInt);
    const parts = summed.map((w) => wordsFromBigInts([w]));
    const sum = sumUploads(parts);
    assert.equal(wordsToBigInts(sum)[0].toString(), v.decode_example.sum);
    assert.equal(fixedPointDecode(sum, v.scale_bits)[0], v.decode_example.decoded);
  },

  prg(v) {
    for (const c of v.cases) {
      assert.deepEqual(wordsToBigInts(prgMask(hex(c.seed), c.words.length)).map(String), c.words, c.name);
    }
  },

  mask_seeds(v) {
    assert.equal(MASK_SEED_SALT.toString('hex'), v.salt);
    const binding = bindingFrom(v.binding);
    assert.equal(maskSeedInfo(binding, null).toString('hex'), v.self.info);
    assert.equal(maskSeed(hex(v.secret), binding, null).toString('hex'), v.self.seed);
    assert.equal(maskSeedInfo(binding, v.pairwise.pair).toString('hex'), v.pairwise.info);
    assert.equal(maskSeed(hex(v.secret), binding, v.pairwise.pair).toString('hex'), v.pairwise.seed);
    assert.equal(maskSeed(hex(v.secret), binding, [...v.pairwise.pair].reverse()).toString('hex'), v.pairwise.seed);
    for (const c of v.pair_sign) assert.equal(pairSign(c.me, c.peer), c.sign);
  },

  key_advertisement(v) {
    assert.equal(x25519PublicBytes(hex(v.mask_private_key)).toString('hex'), v.mask_public_key);
    assert.equal(x25519PublicBytes(hex(v.share_private_key)).toString('hex'), v.share_public_key);
    const message = advertisementMessage(v.federation_id, BigInt(v.round_id), v.party_id, hex(v.mask_public_key), hex(v.share_public_key));
    assert.equal(message.toString('hex'), v.message);
    const adv = {
      party_id: v.party_id, mask_public_key: hex(v.mask_public_key), share_public_key: hex(v.share_public_key),
      certificate_pem: v.certificate_pem, signature: hex(v.signature),
    };
    // Verified at a time inside the vector certificate's validity (the vector names none).
    const at = v.verify_at ? new Date(v.verify_at) : certificateMidpoint(v.certificate_pem);
    verifyAdvertisement(adv, v.ca_pem, v.federation_id, BigInt(v.round_id), at);
    const tampered = (change) => assert.throws(() => verifyAdvertisement({ ...adv, ...change }, v.ca_pem,
      v.federation_id, BigInt(v.round_id), at), KeyAdvertisementError);
    tampered({ party_id: 'b' }); // CN is "a"
    tampered({ mask_public_key: hex(v.share_public_key), share_public_key: hex(v.mask_public_key) });
    const sig = hex(v.signature);
    sig[sig.length - 1] ^= 1;
    tampered({ signature: sig });
    assert.throws(() => verifyAdvertisement(adv, v.ca_pem, v.federation_id, BigInt(v.round_id) + 1n, at), KeyAdvertisementError);
    assert.throws(() => verifyAdvertisement(adv, v.ca_pem, `${v.federation_id}x`, BigInt(v.round_id), at), KeyAdvertisementError);
    assert.throws(() => verifyAdvertisement(adv, v.certificate_pem, v.federation_id, BigInt(v.round_id), at), KeyAdvertisementError);
    if (v.private_key_pem) {
      const keys = new RoundKeys(hex(v.mask_private_key), hex(v.share_private_key), Buffer.alloc(32, 1));
      const mine = signAdvertisement(v.private_key_pem, v.certificate_pem, v.federation_id, BigInt(v.round_id), v.party_id, keys);
      verifyAdvertisement(mine, v.ca_pem, v.federation_id, BigInt(v.round_id), at);
    }
  },

  shamir(v) {
    assert.equal(PRIME.toString(), v.prime);
    // coefficients: [f(0) = the secret, c_1, ..., c_{t-1}]
    const coefficients = v.coefficients.map(BigInt);
    assert.equal(coefficients.length, v.t);
    assert.equal(coefficients[0], BigInt(`0x${v.secret}`), 'coefficient 0 is the secret');
    const shares = split(hex(v.secret), v.n, v.t, coefficients.slice(1));
    assert.equal(shares.length, v.shares.length);
    shares.forEach((share, i) => {
      assert.equal(share.x, v.shares[i].x);
      assert.equal(share.y.toString(), v.shares[i].y);
      assert.equal(share.toBytes().toString('hex'), v.shares[i].bytes);
      assert.deepEqual(Share.fromBytes(hex(v.shares[i].bytes)), share);
    });
    for (const c of v.combine) {
      const picked = c.xs.map((x) => Share.fromBytes(hex(v.shares.find((s) => s.x === x).bytes)));
      assert.equal(combine(picked, v.t).toString('hex'), c.secret);
    }
  },

  share_box(v) {
    assert.equal(SHARE_BOX_SALT.toString('hex'), v.salt);
    if (v.he_secret_box_salt) assert.equal(HE_SECRET_BOX_SALT.toString('hex'), v.he_secret_box_salt);
    const round = BigInt(v.round_id);
    const context = boxContext(v.federation_id, round, v.sender, v.recipient);
    assert.equal(context.toString('hex'), v.context);
    assert.equal(x25519PublicBytes(hex(v.sender_share_private_key)).toString('hex'), v.sender_share_public_key);
    assert.equal(x25519PublicBytes(hex(v.recipient_share_private_key)).toString('hex'), v.recipient_share_public_key);
    assert.equal(boxKey(hex(v.sender_share_private_key), hex(v.recipient_share_public_key), context).toString('hex'), v.key);
    assert.equal(boxKey(hex(v.recipient_share_private_key), hex(v.sender_share_public_key), context).toString('hex'), v.key);
    const [selfShare, maskShare] = openShares(v.federation_id, round, v.sender, v.recipient,
      hex(v.recipient_share_private_key), hex(v.sender_share_public_key), hex(v.box));
    const plaintext = encodeFields(v.sender, v.recipient, selfShare.toBytes(), maskShare.toBytes());
    assert.equal(plaintext.toString('hex'), v.plaintext);
    const sealed = sealShares(v.federation_id, round, v.sender, v.recipient, hex(v.sender_share_private_key),
      hex(v.recipient_share_public_key), selfShare, maskShare, hex(v.nonce));
    assert.equal(sealed.toString('hex'), v.box, 'sealing with the vector nonce gives the vector box');
    const bad = hex(v.box);
    bad[20] ^= 1;
    assert.throws(() => openShares(v.federation_id, round, v.sender, v.recipient, hex(v.recipient_share_private_key),
      hex(v.sender_share_public_key), bad));
    assert.throws(() => openShares(v.federation_id, round + 1n, v.sender, v.recipient, hex(v.recipient_share_private_key),
      hex(v.sender_share_public_key), hex(v.box)));
  },

  masked_round(v) {
    const binding = bindingFrom(v.binding);
    assert.equal(binding.federationId, v.federation_id);
    assert.equal(binding.roundId, BigInt(v.round_id));
    const numerics = new RoundNumerics(v.parties.length, v.scale_bits, BigInt(v.bound));
    const publicKeys = new Map(v.parties.map((p) => [p.party, hex(p.mask_public_key)]));
    const uploads = [];
    for (const p of v.parties) {
      assert.equal(x25519PublicBytes(hex(p.mask_private_key)).toString('hex'), p.mask_public_key);
      assert.equal(maskSeed(hex(p.self_secret), binding, null).toString('hex'), p.self_seed);
      for (const pair of p.pairwise) {  // each pair's seed and sign, so a wrong pair is named
        const secret = x25519SharedSecret(hex(p.mask_private_key), publicKeys.get(pair.peer));
        assert.equal(maskSeed(secret, binding, [p.party, pair.peer]).toString('hex'), pair.seed, `${p.party}-${pair.peer}`);
        assert.equal(pairSign(p.party, pair.peer), pair.sign);
      }
      const keys = new RoundKeys(hex(p.mask_private_key), hex(`${'11'.repeat(31)}12`), hex(p.self_secret));
      const peers = new Map([...publicKeys].filter(([id]) => id !== p.party));
      const words = maskedUpload(Float64Array.from(p.values.map(f64)), numerics, binding, p.party, keys, peers);
      assert.deepEqual(wordsToBigInts(words).map(String), p.upload, `upload of ${p.party}`);
      uploads.push(words);
    }
    const total = sumUploads(uploads);
    assert.deepEqual(wordsToBigInts(total).map(String), v.ring_sum);
    const secrets = new Map(v.parties.map((p) => [p.party, hex(p.self_secret)]));
    const decoded = unmaskSum(total, secrets, new Map(), publicKeys, binding, numerics);
    assert.deepEqual([...decoded], v.decoded_sum.map(f64));
    // Every pairwise mask cancels: the sum minus the self masks is the sum of the encodings.
    const plain = sumUploads(v.parties.map((p) => fixedPointEncode(Float64Array.from(p.values.map(f64)), v.scale_bits)));
    const unmasked = Uint32Array.from(total);
    for (const p of v.parties) {
      const mask = selfMask(hex(p.self_secret), binding);
      for (let i = 0; i < unmasked.length; i += 2) {
        const a = (BigInt(unmasked[i + 1]) << 32n) | BigInt(unmasked[i]);
        const b = (BigInt(mask[i + 1]) << 32n) | BigInt(mask[i]);
        const d = BigInt.asUintN(64, a - b);
        unmasked[i] = Number(d & 0xffffffffn);
        unmasked[i + 1] = Number(d >> 32n);
      }
    }
    assert.deepEqual([...unmasked], [...plain]);
    // The X25519 agreement is symmetric (both members of a pair derive one secret).
    const [a, b] = v.parties;
    assert.deepEqual(x25519SharedSecret(hex(a.mask_private_key), hex(b.mask_public_key)),
      x25519SharedSecret(hex(b.mask_private_key), hex(a.mask_public_key)));
  },

  chunking(v) {
    const payload = hex(v.payload);
    assert.equal(payload.length, v.total_bytes);
    assert.equal(sha256(payload).toString('hex'), v.sha256);
    const chunks = chunkPayload(payload, v.chunk_bytes);
    assert.deepEqual(chunks.map((c) => ({ offset: c.offset, data: c.data.toString('hex'), sha256: c.sha256.toString('hex') })), v.chunks);
    const header = { total_bytes: String(v.total_bytes), sha256: hex(v.sha256), shape: v.shape };
    const assembler = new PayloadAssembler(header, { chunkBytes: v.chunk_bytes });
    for (const c of v.chunks) assembler.add({ offset: String(c.offset), data: hex(c.data), sha256: hex(c.sha256) });
    assert.ok(assembler.finish().equals(payload));
    const gap = new PayloadAssembler(header);
    assert.throws(() => gap.add({ offset: String(v.chunks[1].offset), data: hex(v.chunks[1].data), sha256: hex(v.chunks[1].sha256) }));
    const corrupt = new PayloadAssembler(header);
    const data = hex(v.chunks[0].data);
    data[0] ^= 1;
    assert.throws(() => corrupt.add({ offset: '0', data, sha256: hex(v.chunks[0].sha256) }));
    if (v.encoding === 'ENCODING_FLOAT64_LE') {
      const count = v.shape.reduce((x, y) => x * y, 1);
      assert.equal(count * 8, v.total_bytes);
    }
  },
};

function certificateMidpoint(pem) {
  const match = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/);
  return new Date(certificateValidity(match[0]));
}


function certificateValidity(pem) {
  const cert = new X509Certificate(pem);
  const from = new Date(cert.validFrom).getTime();
  const to = new Date(cert.validTo).getTime();
  return (from + to) / 2;
}

const dir = conformanceDir();
let files = [];
try {
  files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
} catch {
  files = [];
}

test('conformance vectors are present', () => {
  assert.ok(files.length > 0, `no conformance vectors in ${dir}`);
});

for (const file of files) {
  test(`conformance vector ${file}`, () => {
    const vector = JSON.parse(readFileSync(join(dir, file), 'utf8'));
    const check = checks[vector.name];
    assert.ok(check, `${file}: no Node check for vector "${vector.name}"; add one to test/conformance.test.js`);
    check(vector);
  });
}
