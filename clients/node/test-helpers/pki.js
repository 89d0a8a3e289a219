// A tiny X.509 issuer for the tests (Node's crypto parses certificates but cannot make them): DER by
// hand, ECDSA P-256 / SHA-256 signatures. Enough to build a federation CA and party certificates with
// the extensions collabedit's development PKI sets, and broken variants of them.

import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign } from 'node:crypto';

function length(n) {
  if (n < 0x80) return Buffer.from([n]);
  const bytes = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

export function tlv(tag, ...content) {
  const body = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), length(body.length), body]);
}

const seq = (...c) => tlv(0x30, ...c);
const set = (...c) => tlv(0x31, ...c);
const bool = (v) => tlv(0x01, Buffer.from([v ? 0xff : 0x00]));
const octets = (b) => tlv(0x04, b);
const bits = (b, unused = 0) => tlv(0x03, Buffer.from([unused]), b);
const utf8 = (s) => tlv(0x0c, Buffer.from(s, 'utf8'));

function integer(value) {
  let hex = BigInt(value).toString(16);
  if (hex.length % 2) hex = `0${hex}`;
  let bytes = Buffer.from(hex, 'hex');
  if (bytes[0] & 0x80) bytes = Buffer.concat([Buffer.from([0]), bytes]);
  return tlv(0x02, bytes);
}

export function oid(text) {
  const parts = text.split('.').map(Number);
  const out = [40 * parts[0] + parts[1]];
  for (const part of parts.slice(2)) {
    const groups = [];
    let v = part;
    do {
      groups.unshift(v & 0x7f);
      v = Math.floor(v / 128);
    } while (v > 0);
    groups.forEach((g, i) => out.push(i < groups.length - 1 ? g | 0x80 : g));
  }
  return tlv(0x06, Buffer.from(out));
}

function time(date) {
  const iso = date.toISOString().replace(/[-:T]/g, '').slice(0, 14); // YYYYMMDDHHMMSS
  const year = date.getUTCFullYear();
  return year >= 1950 && year < 2050 ? tlv(0x17, Buffer.from(`${iso.slice(2)}Z`)) : tlv(0x18, Buffer.from(`${iso}Z`));
}

const ECDSA_SHA256 = seq(oid('1.2.840.10045.4.3.2'));
const CN = '2.5.4.3';
export const EKU = { serverAuth: '1.3.6.1.5.5.7.3.1', clientAuth: '1.3.6.1.5.5.7.3.2' };

function name(commonNames) {
  return seq(...commonNames.map((cn) => set(seq(oid(CN), utf8(cn)))));
}

function extension(id, critical, value) {
  return seq(oid(id), ...(critical ? [bool(true)] : []), octets(value));
}

let serial = 1000n;

/**
 * A certificate PEM. subjectKey: a KeyObject (public or private); issuer: {key (private KeyObject),
 * names} or null for self-signed (then signingKey signs). Options: ca, eku (list of OIDs or null),
 * notBefore, notAfter, names (subject CNs).
 */
export function makeCertificate({ names, subjectKey, issuer = null, signingKey = null, ca = false,
  eku = [EKU.serverAuth, EKU.clientAuth], notBefore = new Date(Date.now() - 3600e3), notAfter = new Date(Date.now() + 86400e3) }) {
  const spki = createPublicKeyDer(subjectKey);
  const extensions = [extension('2.5.29.19', true, seq(...(ca ? [bool(true)] : [])))];
  // keyUsage: CA keyCertSign + cRLSign (bits 5, 6), leaf digitalSignature (bit 0)
  extensions.push(extension('2.5.29.15', true, ca ? bits(Buffer.from([0x06]), 1) : bits(Buffer.from([0x80]), 7)));
  if (eku) extensions.push(extension('2.5.29.37', false, seq(...eku.map(oid))));
  if (!ca) extensions.push(extension('2.5.29.17', false, seq(tlv(0x82, Buffer.from('localhost')), tlv(0x87, Buffer.from([127, 0, 0, 1])))));
  extensions.push(extension('2.5.29.14', false, octets(keyId(subjectKey)))); // subjectKeyIdentifier
  const authority = issuer ? issuer.key : signingKey;
  extensions.push(extension('2.5.29.35', false, seq(tlv(0x80, keyId(authority))))); // authorityKeyIdentifier
  serial += 1n;
  const tbs = seq(
    tlv(0xa0, integer(2)),
    integer(serial),
    ECDSA_SHA256,
    name(issuer ? issuer.names : names),
    seq(time(notBefore), time(notAfter)),
    name(names),
    spki,
    tlv(0xa3, seq(...extensions)),
  );
  const key = issuer ? issuer.key : signingKey;
  const signature = sign('sha256', tbs, { key, dsaEncoding: 'der' });
  const der = seq(tbs, ECDSA_SHA256, bits(signature));
  const b64 = der.toString('base64').match(/.{1,64}/g).join('\n');
  return `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`;
}

/** RFC 5280 method 1: SHA-1 of the subjectPublicKey bits. */
function keyId(key) {
  const der = createPublicKeyDer(key);
  return createHash('sha1').update(der.subarray(der.length - 65)).digest(); // P-256: 65-byte uncompressed point
}

function createPublicKeyDer(key) {
  const publicKey = key.type === 'private' ? createPublicKey(key) : key;
  return publicKey.export({ format: 'der', type: 'spki' });
}

export function p256() {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
}

/** A federation CA and issuer of party certificates: {caPem, caKey, issue(cn, options) -> {certPem, keyPem, key}}. */
export function makeFederationPki() {
  const caKey = p256();
  const caNames = ['collabedit federation CA'];
  const caPem = makeCertificate({ names: caNames, subjectKey: caKey, signingKey: caKey, ca: true, eku: null });
  const issue = (cn, options = {}) => {
    const key = options.key || p256();
    const certPem = makeCertificate({ names: options.names || [cn], subjectKey: key, issuer: { key: caKey, names: caNames }, ...options });
    return { certPem, key, keyPem: key.export({ format: 'pem', type: 'pkcs8' }) };
  };
  return { caPem, caKey, issue };
}

export { createPrivateKey };
