// The mask seeds (collabedit_secure/protocol/seeds.py).
//
//   maskSeed(secret, binding, pair) = HKDF-SHA256(ikm = secret (32 bytes), salt = "collabedit.v1/mask-seed",
//       info = encodeFields("pairwise", ...binding.fields(), low_id, high_id)   for a pair
//              encodeFields("self", ...binding.fields())                         for pair = null,
//       length = 32)
//
// (low_id, high_id): the pair's ids in byte order, so both members derive the same seed. Pairwise
// secret = X25519(my mask private key, peer's mask public key); self secret = RoundKeys.selfSecret.
// pairSign(me, peer) = +1 if me < peer else -1: the lower id adds the pairwise mask, the higher
// subtracts it.

import { hkdfSync } from 'node:crypto';

import { Binding, checkPartyId, encodeFields } from './encoding.js';

export const MASK_SEED_SALT = Buffer.from('collabedit.v1/mask-seed');
export const SEED_BYTES = 32;
export const SECRET_BYTES = 32;

/** HKDF-SHA256 with a 32-byte output, as a Buffer. */
export function hkdf32(ikm, salt, info) {
  return Buffer.from(hkdfSync('sha256', ikm, salt, info, 32));
}

/** The info string of a seed (exposed for the conformance vectors). */
export function maskSeedInfo(binding, pair) {
  if (!(binding instanceof Binding)) throw new TypeError('binding must be a Binding');
  if (pair == null) return encodeFields('self', ...binding.fields());
  if (!Array.isArray(pair) || pair.length !== 2) throw new Error(`pair must be two party ids, got ${JSON.stringify(pair)}`);
  const [low, high] = pair.map((p) => checkPartyId(p)).sort();
  if (low === high) throw new Error(`a pairwise mask needs two different parties, got ${JSON.stringify(pair)}`);
  return encodeFields('pairwise', ...binding.fields(), low, high);
}

/** 32-byte PRG seed for one tensor: pairwise (pair = [id, id]) or self (pair = null). */
export function maskSeed(sharedSecret, binding, pair = null) {
  if (!(sharedSecret instanceof Uint8Array) || sharedSecret.length !== SECRET_BYTES) {
    throw new Error(`shared secret must be ${SECRET_BYTES} bytes`);
  }
  return hkdf32(sharedSecret, MASK_SEED_SALT, maskSeedInfo(binding, pair));
}

/** +1 if me sorts before peer, else -1 (the sign of the pairwise mask in me's upload). */
export function pairSign(me, peer) {
  checkPartyId(me);
  checkPartyId(peer);
  if (me === peer) throw new Error(`party ${JSON.stringify(me)} has no pairwise mask with itself`);
  return me < peer ? 1 : -1;
}
