// Party-to-party boxes for Shamir shares, relayed unreadably by the coordinator
// (collabedit_secure/protocol/sharebox.py).
//
//   context   = encodeFields(F, r, S, R)                      (str, int, str, str)
//   key       = HKDF-SHA256(X25519(S share sk, R share pk), salt "collabedit.v1/share-box", info context, 32)
//   plaintext = encodeFields(S, R, self_secret_share (70 bytes), mask_key_share (70 bytes))
//   box       = nonce (12 random bytes) || AES-256-GCM(key, nonce, plaintext, aad = context) || tag (16)

import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';

import { checkPartyId, decodeFields, encodeFields } from './encoding.js';
import { x25519SharedSecret } from './keys.js';
import { hkdf32 } from './seeds.js';
import { SHARE_BYTES, Share } from './shamir.js';

export const SHARE_BOX_SALT = Buffer.from('collabedit.v1/share-box');
export const HE_SECRET_BOX_SALT = Buffer.from('collabedit.v1/he-secret-box');
export const NONCE_BYTES = 12;
export const GCM_TAG_BYTES = 16;

export class ShareBoxError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ShareBoxError';
  }
}

/** The HKDF info and AES-GCM associated data of a box. */
export function boxContext(federationId, roundId, sender, recipient) {
  if (typeof federationId !== 'string' || !federationId) throw new Error('federation_id must be a non-empty string');
  checkPartyId(sender, 'sender');
  checkPartyId(recipient, 'recipient');
  if (sender === recipient) throw new Error(`a party does not send a share box to itself (${JSON.stringify(sender)})`);
  return encodeFields(federationId, BigInt(roundId), sender, recipient);
}

/** AES-256-GCM key of a box: HKDF-SHA256(X25519(private, peer public), salt, info = context). */
export function boxKey(privateKey, peerPublicKey, context, salt = SHARE_BOX_SALT) {
  return hkdf32(x25519SharedSecret(privateKey, peerPublicKey), salt, context);
}

export function aesGcmSeal(key, nonce, plaintext, aad) {
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(aad);
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([nonce, body, cipher.getAuthTag()]);
}

/** The plaintext of nonce || ciphertext || tag, or null if it does not authenticate. */
export function aesGcmOpen(key, box, aad) {
  const nonce = box.subarray(0, NONCE_BYTES);
  const tag = box.subarray(box.length - GCM_TAG_BYTES);
  const body = box.subarray(NONCE_BYTES, box.length - GCM_TAG_BYTES);
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, nonce);
    decipher.setAAD(aad);
    decipher.setAuthTag(tag);
    return Buffer.concat([decipher.update(body), decipher.final()]);
  } catch {
    return null;
  }
}

/** Encrypts the recipient's two shares of the sender's round secrets. nonce: tests only. */
export function sealShares(federationId, roundId, sender, recipient, senderSharePrivateKey, recipientSharePublicKey,
  selfSecretShare, maskKeyShare, nonce = null) {
  const context = boxContext(federationId, roundId, sender, recipient);
  const plaintext = encodeFields(sender, recipient, selfSecretShare.toBytes(), maskKeyShare.toBytes());
  const key = boxKey(senderSharePrivateKey, recipientSharePublicKey, context);
  return aesGcmSeal(key, nonce == null ? randomBytes(NONCE_BYTES) : Buffer.from(nonce), plaintext, context);
}

/** [selfSecretShare, maskKeyShare] from a box; ShareBoxError if anything is off. */
export function openShares(federationId, roundId, sender, recipient, recipientSharePrivateKey, senderSharePublicKey,
  box, expectedX = null) {
  const context = boxContext(federationId, roundId, sender, recipient);
  if (!(box instanceof Uint8Array) || box.length < NONCE_BYTES + GCM_TAG_BYTES) {
    throw new ShareBoxError(`share box from ${JSON.stringify(sender)} is too short to be a box`);
  }
  const plaintext = aesGcmOpen(boxKey(recipientSharePrivateKey, senderSharePublicKey, context), Buffer.from(box), context);
  if (plaintext == null) {
    throw new ShareBoxError(`share box from ${JSON.stringify(sender)} to ${JSON.stringify(recipient)} for round ${roundId} ` +
      'does not authenticate (tampered, or meant for another party, round or federation)');
  }
  let selfShare;
  let maskShare;
  try {
    const fields = decodeFields(plaintext);
    if (fields.length !== 4 || fields[0] !== sender || fields[1] !== recipient) {
      throw new ShareBoxError(`share box names ${JSON.stringify(fields.slice(0, 2).map(String))}, expected ${JSON.stringify([sender, recipient])}`);
    }
    if (!fields.slice(2).every((f) => Buffer.isBuffer(f) && f.length === SHARE_BYTES)) {
      throw new ShareBoxError('share box does not hold two shares');
    }
    selfShare = Share.fromBytes(fields[2]);
    maskShare = Share.fromBytes(fields[3]);
  } catch (error) {
    if (error instanceof ShareBoxError) throw error;
    throw new ShareBoxError(`share box from ${JSON.stringify(sender)} is malformed: ${error.message}`);
  }
  if (selfShare.x !== maskShare.x || (expectedX != null && selfShare.x !== expectedX)) {
    throw new ShareBoxError(`share box from ${JSON.stringify(sender)} holds shares for x=${selfShare.x}/${maskShare.x}, expected ${expectedX}`);
  }
  return [selfShare, maskShare];
}
