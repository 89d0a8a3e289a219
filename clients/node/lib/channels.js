// gRPC channels: mutual TLS to the coordinator with a party certificate, and insecure loopback to a
// party daemon's PartyService. Options follow collabedit_secure/rpc/channels.py (8 MiB messages,
// a keepalive ping every 2 minutes on idle connections).

import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';

import grpc from '@grpc/grpc-js';

import { loadProtos } from './proto.js';

export const MAX_MESSAGE_BYTES = 8 * 1024 * 1024;
export const CHANNEL_OPTIONS = Object.freeze({
  'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
  'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
  'grpc.keepalive_time_ms': 120_000,
  'grpc.keepalive_timeout_ms': 20_000,
  'grpc.keepalive_permit_without_calls': 1,
});

export const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED, grpc.status.RESOURCE_EXHAUSTED]);

export class UsageError extends Error {
  constructor(message) {
    super(message);
    this.name = 'UsageError';
  }
}

/** Checks "HOST:PORT" ("[::1]:PORT" for IPv6) or a unix: target; returns {host, port, target}. */
export function parseAddress(address, what = 'address') {
  if (typeof address !== 'string' || !address) throw new UsageError(`${what}: give HOST:PORT`);
  if (address.startsWith('unix:')) return { host: null, port: null, target: address };
  const match = address.match(/^(\[[0-9a-fA-F:.]+\]|[^:[\]\s]+):([0-9]{1,5})$/);
  const port = match ? Number(match[2]) : NaN;
  if (!match || port < 1 || port > 65535) throw new UsageError(`${what} ${JSON.stringify(address)} is not HOST:PORT`);
  return { host: match[1].replace(/^\[|\]$/g, ''), port, target: address };
}

function isLoopback(host) {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  if (isIP(host) === 6) return host === '::1';
  return false;
}

function readFile(path, what) {
  try {
    return readFileSync(path);
  } catch (error) {
    throw new UsageError(`cannot read ${what} ${path}: ${error.code || error.message}`);
  }
}

/** {ca, cert, key} file paths -> their PEM contents, with checks that they look like PEM. */
export function readTlsFiles({ ca, cert, key }) {
  const missing = Object.entries({ ca, cert, key }).filter(([, v]) => !v).map(([k]) => `--${k}`);
  if (missing.length) throw new UsageError(`the coordinator needs mutual TLS: give ${missing.join(', ')}`);
  const out = { ca: readFile(ca, 'CA certificate'), cert: readFile(cert, 'certificate'), key: readFile(key, 'private key') };
  if (!out.ca.includes('-----BEGIN CERTIFICATE-----')) throw new UsageError(`${ca} is not a PEM certificate`);
  if (!out.cert.includes('-----BEGIN CERTIFICATE-----')) throw new UsageError(`${cert} is not a PEM certificate`);
  if (!out.key.includes('PRIVATE KEY-----')) throw new UsageError(`${key} is not a PEM private key`);
  return out;
}

/** A CoordinatorService client over mutual TLS. tls: {ca, cert, key} PEM Buffers. */
export function coordinatorClient(address, tls, { serverName = null } = {}) {
  const { target } = parseAddress(address, 'coordinator address');
  const credentials = grpc.credentials.createSsl(tls.ca, tls.key, tls.cert);
  const options = { ...CHANNEL_OPTIONS };
  if (serverName) options['grpc.ssl_target_name_override'] = serverName;
  return new (loadProtos().CoordinatorService)(target, credentials, options);
}

/** A PartyService client: plaintext, loopback (or a Unix socket) only, as the daemon serves it. */
export function partyClient(address) {
  const { host, target } = parseAddress(address, 'party address');
  if (host !== null && !isLoopback(host)) {
    throw new UsageError(`party address ${address}: PartyService is served only on loopback (127.0.0.1, ::1, localhost) ` +
      'or a unix: socket, without TLS');
  }
  return new (loadProtos().PartyService)(target, grpc.credentials.createInsecure(), { ...CHANNEL_OPTIONS });
}

/** A unary call as a promise; timeoutMs sets the deadline. */
export function unary(client, method, request, { timeoutMs = 30_000, metadata = null } = {}) {
  if (typeof client[method] !== 'function') throw new Error(`no RPC ${method}`);
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + timeoutMs);
    client[method](request, metadata || new grpc.Metadata(), { deadline }, (error, response) => {
      if (error) reject(error);
      else resolve(response);
    });
  });
}

/** "CODE_NAME: details" of a gRPC error (or the message of another error). */
export function describeError(error) {
  if (error && typeof error.code === 'number' && error.details !== undefined) {
    const name = Object.keys(grpc.status).find((k) => grpc.status[k] === error.code) || String(error.code);
    return `${name}: ${error.details}`;
  }
  return error && error.message ? error.message : String(error);
}

export { grpc };
