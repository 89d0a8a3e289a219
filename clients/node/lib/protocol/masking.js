// Masked uploads (party side) and unmasking of their sum (coordinator side), mask mode
// (collabedit_secure/protocol/masking.py).
//
//   upload_p = encode(values_p) + PRG(maskSeed(self_secret_p, b, null))
//              + sum_{q != p} pairSign(p, q) * PRG(maskSeed(X25519(mask sk_p, mask pk_q), b, [p, q]))   (mod 2^64)
//
// Peers are taken in sorted order (the order does not change the sum, but it is the Python order).

import { checkPartyId } from './encoding.js';
import { x25519PublicBytes, x25519SharedSecret } from './keys.js';
import {
  fixedPointDecode, maskEncode, prgMask, ringAccumulate, ringNegate,
} from './ring.js';
import { maskSeed, pairSign } from './seeds.js';

function entries(peers) {
  return peers instanceof Map ? [...peers.entries()] : Object.entries(peers);
}

/**
 * values (Float64Array, binding.size entries) -> masked ring words (Uint32Array of 2 * size).
 * peerMaskPublicKeys: Map or object, every other party of the round -> its verified mask public key.
 * Throws FixedPointOverflowError (before any masking) if a value cannot be encoded.
 */
export function maskedUpload(values, numerics, binding, me, myKeys, peerMaskPublicKeys) {
  checkPartyId(me);
  if (!(values instanceof Float64Array)) throw new TypeError(`values for ${binding.tensor} must be a Float64Array`);
  if (values.length !== binding.size) {
    throw new Error(`values for ${binding.tensor} have ${values.length} entries, the binding's shape [${binding.shape}] has ${binding.size}`);
  }
  const peers = entries(peerMaskPublicKeys).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  if (peers.some(([peer]) => peer === me)) throw new Error(`the peer keys must not include the uploading party ${me}`);
  if (peers.length + 1 > numerics.nParties) {
    throw new Error(`${peers.length + 1} parties in the roster but the round numerics allow ${numerics.nParties}`);
  }
  numerics.checkEncodable(binding.tensor, values, binding.shape.map(Number));
  const seeds = peers.map(([peer, key]) => maskSeed(x25519SharedSecret(myKeys.maskPrivateKey, key), binding, [me, peer]));
  const signs = peers.map(([peer]) => pairSign(me, peer));
  const selfSeed = maskSeed(myKeys.selfSecret, binding, null);
  return maskEncode(values, numerics.scaleBits, selfSeed, seeds, signs, numerics.bound);
}

/** PRG(maskSeed(selfSecret, binding, null)): the self mask a survivor added. */
export function selfMask(selfSecret, binding) {
  return prgMask(maskSeed(selfSecret, binding, null), binding.size);
}

/** Words to ADD to the ring sum to cancel a survivor's pairwise mask with a dropped party. */
export function pairwiseMaskForDropped(droppedMaskPrivateKey, droppedId, survivorId, survivorPublicKey, binding) {
  const secret = x25519SharedSecret(droppedMaskPrivateKey, survivorPublicKey);
  const words = prgMask(maskSeed(secret, binding, [droppedId, survivorId]), binding.size);
  return pairSign(droppedId, survivorId) < 0 ? ringNegate(words) : words;
}

/** Ring sum of uploads (Uint32Array words). */
export function sumUploads(uploads) {
  if (!uploads.length) throw new Error('no uploads to sum');
  const total = Uint32Array.from(uploads[0]);
  for (const upload of uploads.slice(1)) ringAccumulate(total, upload, 1);
  return total;
}

/**
 * Float64Array sum of the survivors' values from the ring sum of their uploads.
 * survivorsSelfSecrets: Map survivor -> self secret; droppedMaskPrivateKeys: Map dropped -> raw mask
 * private key; maskPublicKeys: Map of the whole roster's advertised mask keys.
 */
export function unmaskSum(ringSum, survivorsSelfSecrets, droppedMaskPrivateKeys, maskPublicKeys, binding, numerics) {
  const survivors = [...survivorsSelfSecrets.keys()].sort();
  const dropped = [...droppedMaskPrivateKeys.keys()].sort();
  if (survivors.some((p) => dropped.includes(p))) throw new Error('a party cannot be both survivor and dropped');
  const roster = [...maskPublicKeys.keys()].sort();
  if ([...survivors, ...dropped].sort().join('\n') !== roster.join('\n')) {
    throw new Error(`survivors ${survivors} and dropped ${dropped} must together be the roster ${roster}`);
  }
  if (!survivors.length) throw new Error('no survivors: there is no sum to unmask');
  if (ringSum.length !== 2 * binding.size) throw new Error(`ring sum must be ${binding.size} words`);
  const total = Uint32Array.from(ringSum);
  for (const party of survivors) ringAccumulate(total, selfMask(survivorsSelfSecrets.get(party), binding), -1);
  for (const gone of dropped) {
    const key = droppedMaskPrivateKeys.get(gone);
    if (!x25519PublicBytes(key).equals(Buffer.from(maskPublicKeys.get(gone)))) {
      throw new Error(`mask private key given for dropped party ${gone} does not match its advertised key`);
    }
    for (const party of survivors) {
      ringAccumulate(total, pairwiseMaskForDropped(key, gone, party, maskPublicKeys.get(party), binding), 1);
    }
  }
  return fixedPointDecode(total, numerics.scaleBits);
}

