// Per-round key material and the signed advertisement that publishes it
// (collabedit_secure/protocol/keys.py).
//
// Each party, each round, makes fresh RoundKeys: an X25519 mask key pair (pairwise mask seeds), an
// X25519 share key pair (share boxes) and a 32-byte self-mask secret. Public keys are raw 32 bytes.
//
//   message   = encodeFields("collabedit.v1/key-advertisement", federation_id, round_id, party_id,
//                            mask_public_key, share_public_key)
//   signature = ECDSA P-256 over SHA-256(message), DER encoded, with the certificate's key
//
// verifyAdvertisement accepts only if the certificate was issued by the federation CA (its
// signature, the validity window now, clientAuth usage where extended key usage is given, not a
// CA itself), its single subject CN equals party_id, its key is P-256, the signature verifies for
// this federation and round, and both keys are 32 bytes and not low-order points.

import {
  X509Certificate, createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, randomBytes, sign, verify,
} from 'node:crypto';

import { checkPartyId, encodeFields } from './encoding.js';

export const ADVERTISEMENT_DOMAIN = 'collabedit.v1/key-advertisement';
export const KEY_BYTES = 32;
export const SELF_SECRET_BYTES = 32;
const CLIENT_AUTH_OID = '1.3.6.1.5.5.7.3.2';
// DER prefixes of X25519 keys (RFC 8410): PKCS#8 private key and SubjectPublicKeyInfo.
const PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');
const SPKI_PREFIX = Buffer.from('302a300506032b656e032100', 'hex');

export class KeyAdvertisementError extends Error {
  constructor(message) {
    super(message);
    this.name = 'KeyAdvertisementError';
  }
}

function checkKeyBytes(value, name) {
  if (!(value instanceof Uint8Array) || value.length !== KEY_BYTES) {
    const size = value instanceof Uint8Array ? `${value.length} bytes` : typeof value;
    throw new Error(`${name} must be ${KEY_BYTES} raw bytes, got ${size}`);
  }
  return Buffer.from(value);
}

/** A KeyObject for a raw 32-byte X25519 private key. */
export function x25519PrivateKey(raw) {
  return createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, checkKeyBytes(raw, 'X25519 private key')]), format: 'der', type: 'pkcs8' });
}

/** A KeyObject for a raw 32-byte X25519 public key. */
export function x25519PublicKey(raw) {
  return createPublicKey({ key: Buffer.concat([SPKI_PREFIX, checkKeyBytes(raw, 'X25519 public key')]), format: 'der', type: 'spki' });
}

/** Raw 32-byte X25519 public key of a raw private key. */
export function x25519PublicBytes(rawPrivate) {
  const der = createPublicKey(x25519PrivateKey(rawPrivate)).export({ format: 'der', type: 'spki' });
  return Buffer.from(der.subarray(der.length - KEY_BYTES));
}

/** A fresh raw 32-byte X25519 private key. */
export function generateX25519() {
  const { privateKey } = generateKeyPairSync('x25519');
  const der = privateKey.export({ format: 'der', type: 'pkcs8' });
  return Buffer.from(der.subarray(der.length - KEY_BYTES));
}

/** X25519(private, peer public) as 32 bytes; refuses malformed keys and low-order points. */
export function x25519SharedSecret(rawPrivate, peerPublic) {
  const peer = checkKeyBytes(peerPublic, 'peer public key');
  let secret;
  try {
    secret = diffieHellman({ privateKey: x25519PrivateKey(rawPrivate), publicKey: x25519PublicKey(peer) });
  } catch (error) {
    throw new Error(`X25519 with this peer public key fails (${error.message}); the key is invalid`);
  }
  if (secret.every((byte) => byte === 0)) {
    throw new Error('X25519 with this peer public key gives all zeros (a low-order point); the key is invalid');
  }
  return secret;
}

/** One party's secrets for one round: raw X25519 private keys and the self-mask secret. */
export class RoundKeys {
  constructor(maskPrivateKey, sharePrivateKey, selfSecret) {
    this.maskPrivateKey = checkKeyBytes(maskPrivateKey, 'mask private key');
    this.sharePrivateKey = checkKeyBytes(sharePrivateKey, 'share private key');
    if (!(selfSecret instanceof Uint8Array) || selfSecret.length !== SELF_SECRET_BYTES) {
      throw new Error(`self_secret must be ${SELF_SECRET_BYTES} bytes`);
    }
    this.selfSecret = Buffer.from(selfSecret);
    this.maskPublicKey = x25519PublicBytes(this.maskPrivateKey);
    this.sharePublicKey = x25519PublicBytes(this.sharePrivateKey);
    Object.freeze(this);
  }

  static generate() {
    return new RoundKeys(generateX25519(), generateX25519(), randomBytes(SELF_SECRET_BYTES));
  }
}

/** The exact bytes that are signed. */
export function advertisementMessage(federationId, roundId, partyId, maskPublicKey, sharePublicKey) {
  return encodeFields(ADVERTISEMENT_DOMAIN, federationId, BigInt(roundId), partyId, maskPublicKey, sharePublicKey);
}

function spkiDer(key) {
  const publicKey = key.type === 'public' ? key : createPublicKey(key);
  return publicKey.export({ format: 'der', type: 'spki' });
}

/** The leaf (first) certificate of a PEM bundle. */
export function leafCertificate(pem) {
  const text = Buffer.isBuffer(pem) ? pem.toString('utf8') : String(pem);
  const match = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/);
  if (!match) throw new Error('no PEM certificate found');
  return new X509Certificate(match[0]);
}

/** The subject's common names, in order ("CN=..." lines of X509Certificate.subject). */
export function commonNames(cert) {
  return cert.subject.split('\n').filter((line) => line.startsWith('CN=')).map((line) => line.slice(3));
}

/**
 * Signs this round's public keys with the party's certificate key (ECDSA P-256, SHA-256, DER).
 * Returns the KeyAdvertisement fields as the proto names them.
 */
export function signAdvertisement(certPrivateKeyPem, certificatePem, federationId, roundId, partyId, keys) {
  checkPartyId(partyId);
  const privateKey = createPrivateKey(certPrivateKeyPem);
  if (privateKey.asymmetricKeyType !== 'ec' || privateKey.asymmetricKeyDetails.namedCurve !== 'prime256v1') {
    throw new TypeError("the certificate key must be the ECDSA P-256 key of the party's certificate");
  }
  const cert = leafCertificate(certificatePem);
  if (!spkiDer(privateKey).equals(spkiDer(cert.publicKey))) {
    throw new Error('the private key does not belong to the certificate'); // peers would reject it anyway
  }
  const message = advertisementMessage(federationId, roundId, partyId, keys.maskPublicKey, keys.sharePublicKey);
  const signature = sign('sha256', message, { key: privateKey, dsaEncoding: 'der' });
  return {
    party_id: partyId,
    mask_public_key: keys.maskPublicKey,
    share_public_key: keys.sharePublicKey,
    certificate_pem: Buffer.isBuffer(certificatePem) ? certificatePem.toString('utf8') : String(certificatePem),
    signature,
  };
}

/**
 * Throws KeyAdvertisementError unless the advertisement is genuine for this federation and round.
 * It verifies the certificate against the federation CA, then the certificate's CN against party_id,
 * then the signature.
 * adv: {party_id, mask_public_key, share_public_key, certificate_pem, signature}; caPem: the CA's PEM.
 */
export function verifyAdvertisement(adv, caPem, federationId, roundId, now = new Date()) {
  const who = JSON.stringify(adv.party_id);
  let cert;
  try {
    checkPartyId(adv.party_id);
    for (const [key, name] of [[adv.mask_public_key, 'mask public key'], [adv.share_public_key, 'share public key']]) {
      checkKeyBytes(key, name);
      // A low-order point makes every X25519 output zero: probe it with a throwaway key.
      x25519SharedSecret(generateX25519(), key);
    }
    cert = leafCertificate(adv.certificate_pem);
  } catch (error) {
    throw new KeyAdvertisementError(`advertisement of ${who}: ${error.message}`);
  }
  const problem = certificateProblem(cert, caPem, now);
  if (problem) throw new KeyAdvertisementError(`advertisement of ${who}: certificate rejected by the federation CA: ${problem}`);
  const names = commonNames(cert);
  if (names.length !== 1 || names[0] !== adv.party_id) {
    const found = names.map((n) => JSON.stringify(n)).join(', ') || 'none';
    throw new KeyAdvertisementError(`advertisement of ${who} carries the certificate of common name ${found}`);
  }
  const publicKey = cert.publicKey;
  if (publicKey.asymmetricKeyType !== 'ec' || publicKey.asymmetricKeyDetails.namedCurve !== 'prime256v1') {
    throw new KeyAdvertisementError(`advertisement of ${who}: certificate key is not ECDSA P-256`);
  }
  const message = advertisementMessage(federationId, roundId, adv.party_id, adv.mask_public_key, adv.share_public_key);
  let ok = false;
  try {
    ok = verify('sha256', message, { key: publicKey, dsaEncoding: 'der' }, Buffer.from(adv.signature));
  } catch {
    ok = false;
  }
  if (!ok) {
    throw new KeyAdvertisementError(
      `advertisement of ${who}: signature does not verify for federation ${JSON.stringify(federationId)} round ${roundId}`);
  }
}

/** Why a leaf certificate is not a valid client certificate issued by the CA now, or null. */
export function certificateProblem(cert, caPem, now = new Date()) {
  let ca;
  try {
    ca = leafCertificate(caPem);
  } catch (error) {
    return `the CA certificate does not parse: ${error.message}`;
  }
  if (!ca.ca) return 'the federation CA certificate is not a CA';
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) return 'not issued by the federation CA';
  if (cert.ca) return 'it is a CA certificate, not a party certificate';
  const from = new Date(cert.validFrom);
  const to = new Date(cert.validTo);
  if (!(now >= from && now <= to)) return `not valid at ${now.toISOString()} (valid ${from.toISOString()} to ${to.toISOString()})`;
  const caFrom = new Date(ca.validFrom);
  const caTo = new Date(ca.validTo);
  if (!(now >= caFrom && now <= caTo)) return `the CA certificate is not valid at ${now.toISOString()}`;
  if (Array.isArray(cert.keyUsage) && !cert.keyUsage.includes(CLIENT_AUTH_OID)) {
    return 'its extended key usage does not allow clientAuth';
  }
  return null;
}

/** Throws if a party id repeats or any public key appears twice (copied or replayed keys). */
export function checkUniqueKeys(advertisements) {
  const ids = new Set();
  const owner = new Map();
  for (const adv of advertisements) {
    if (ids.has(adv.party_id)) throw new KeyAdvertisementError(`party ${JSON.stringify(adv.party_id)} advertised keys twice`);
    ids.add(adv.party_id);
    for (const key of [adv.mask_public_key, adv.share_public_key]) {
      const hex = Buffer.from(key).toString('hex');
      if (owner.has(hex)) {
        throw new KeyAdvertisementError(
          `public key ${hex.slice(0, 16)}... of ${JSON.stringify(adv.party_id)} was already advertised by ${JSON.stringify(owner.get(hex))}`);
      }
      owner.set(hex, adv.party_id);
    }
  }
}
