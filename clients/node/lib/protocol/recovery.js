// Splitting a party's round secrets into Shamir shares, and recovering them
// (collabedit_secure/protocol/recovery.py).
//
// Share indices: the roster sorted by id in byte order; the party at 0-based position i holds the
// shares with x = i + 1 of every party, itself included. Each party shares its self-mask secret
// (revealed for survivors) and its raw X25519 mask private key (revealed for dropped parties),
// never both for one owner.

import { checkPartyId } from './encoding.js';
import { x25519PublicBytes } from './keys.js';
import { ShamirError, combine, split } from './shamir.js';

/** x coordinate (1-based) of partyId's shares: its position in the sorted roster, plus one. */
export function shareIndex(roster, partyId) {
  const ordered = [...roster].map((p) => checkPartyId(p)).sort();
  if (new Set(ordered).size !== ordered.length) throw new Error('roster has repeated party ids');
  const i = ordered.indexOf(partyId);
  if (i < 0) throw new Error(`party ${JSON.stringify(partyId)} is not in the round's roster`);
  return i + 1;
}

/** Map recipient id -> [its share of keys.selfSecret, its share of the mask private key]. */
export function splitRoundSecrets(keys, roster, threshold) {
  const n = roster.length;
  const selfShares = split(keys.selfSecret, n, threshold);
  const maskShares = split(keys.maskPrivateKey, n, threshold);
  const out = new Map();
  for (const party of roster) {
    const i = shareIndex(roster, party) - 1;
    out.set(party, [selfShares[i], maskShares[i]]);
  }
  return out;
}

/** A survivor's 32-byte self-mask secret from at least `threshold` of its shares. */
export function recoverSelfSecret(shares, threshold) {
  return combine(shares, threshold);
}

/** A dropped party's raw X25519 mask private key, checked against its advertised public key. */
export function recoverMaskPrivateKey(shares, threshold, expectedPublicKey) {
  const raw = combine(shares, threshold);
  if (!x25519PublicBytes(raw).equals(Buffer.from(expectedPublicKey))) {
    throw new ShamirError('recovered mask private key does not match the advertised public key: a share is wrong');
  }
  return raw;
}
