// Canonical field encoding (collabedit_secure/protocol/encoding.py).
//
// Every field is  tag (1 byte) || length (4 bytes, unsigned big-endian) || payload:
//   0x01 bytes  the bytes themselves          (Buffer / Uint8Array)
//   0x02 str    UTF-8 of the string, as given  (string; no Unicode normalisation)
//   0x03 int    8 bytes, unsigned big-endian   (bigint, or a safe-integer number; 0 <= v < 2^64)
// encodeFields(a, b, c) is the concatenation of the three encodings. Booleans are refused (Python
// refuses them too), as are floats and anything else.
//
// A Binding (federation, round, layer, tensor, shape) encodes as
//   encodeFields(federation_id, round_id, layer, tensor, rank, dim_0, ..., dim_{rank-1}).

export const TAG_BYTES = 0x01;
export const TAG_STR = 0x02;
export const TAG_INT = 0x03;

const U64_LIMIT = 1n << 64n;
const U32_LIMIT = 2 ** 32;
const PARTY_ID = /^[A-Za-z0-9_-]{1,64}$/;

export class EncodingError extends Error {
  constructor(message) {
    super(message);
    this.name = 'EncodingError';
  }
}

/** Returns v as a bigint in [0, 2^64), or throws naming `what`. Accepts bigint, safe integers and decimal strings. */
export function toU64(value, what = 'value') {
  let v;
  if (typeof value === 'bigint') v = value;
  else if (typeof value === 'number' && Number.isSafeInteger(value)) v = BigInt(value);
  else if (typeof value === 'string' && /^[0-9]+$/.test(value)) v = BigInt(value);
  else throw new EncodingError(`${what} must be an integer in [0, 2^64), got ${describe(value)}`);
  if (v < 0n || v >= U64_LIMIT) throw new EncodingError(`${what}: int ${v} is outside [0, 2^64)`);
  return v;
}

function describe(value) {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'bigint') return `${value}n`;
  if (value instanceof Uint8Array) return `${value.length} bytes`;
  return `${typeof value} ${String(value)}`;
}

function header(tag, length) {
  if (length >= U32_LIMIT) throw new EncodingError(`field of ${length} bytes exceeds the 4-byte length prefix`);
  const out = Buffer.alloc(5);
  out[0] = tag;
  out.writeUInt32BE(length, 1);
  return out;
}

/** One field's encoding. Strings are str, Uint8Arrays bytes, bigints and safe integers int. */
export function encodeField(value, position = 0) {
  if (typeof value === 'boolean') {
    throw new EncodingError(`field ${position} is a bool; encode it as an int 0/1 explicitly`);
  }
  if (typeof value === 'bigint' || typeof value === 'number') {
    const v = toU64(value, `field ${position}`);
    const payload = Buffer.alloc(8);
    payload.writeBigUInt64BE(v);
    return Buffer.concat([header(TAG_INT, 8), payload]);
  }
  if (typeof value === 'string') {
    const payload = Buffer.from(value, 'utf8');
    return Buffer.concat([header(TAG_STR, payload.length), payload]);
  }
  if (value instanceof Uint8Array) {
    return Buffer.concat([header(TAG_BYTES, value.length), Buffer.from(value.buffer, value.byteOffset, value.length)]);
  }
  throw new EncodingError(`field ${position} has type ${value === null ? 'null' : typeof value}; only str, int and bytes encode`);
}

/** Concatenated tag-length-value encoding of the fields, in order. */
export function encodeFields(...fields) {
  return Buffer.concat(fields.map((value, position) => encodeField(value, position)));
}

/** Inverse of encodeFields: strings, bigints (ints) and Buffers (bytes); throws on malformed or trailing bytes. */
export function decodeFields(data) {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.length);
  const fields = [];
  let offset = 0;
  while (offset < buf.length) {
    if (buf.length - offset < 5) throw new EncodingError(`truncated field header at byte ${offset}`);
    const tag = buf[offset];
    const length = buf.readUInt32BE(offset + 1);
    const start = offset + 5;
    if (buf.length - start < length) {
      throw new EncodingError(`field at byte ${offset} declares ${length} bytes, ${buf.length - start} present`);
    }
    const payload = buf.subarray(start, start + length);
    if (tag === TAG_BYTES) {
      fields.push(Buffer.from(payload));
    } else if (tag === TAG_STR) {
      let text;
      try {
        text = new TextDecoder('utf-8', { fatal: true }).decode(payload);
      } catch {
        throw new EncodingError(`str field at byte ${offset} is not UTF-8`);
      }
      fields.push(text);
    } else if (tag === TAG_INT) {
      if (length !== 8) throw new EncodingError(`int field at byte ${offset} has length ${length}, not 8`);
      fields.push(payload.readBigUInt64BE(0));
    } else {
      throw new EncodingError(`unknown field tag 0x${tag.toString(16).padStart(2, '0')} at byte ${offset}`);
    }
    offset = start + length;
  }
  return fields;
}

/** Returns partyId if it is 1-64 characters of [A-Za-z0-9_-], else throws. */
export function checkPartyId(partyId, what = 'party id') {
  if (typeof partyId !== 'string' || !PARTY_ID.test(partyId)) {
    throw new Error(`${what} ${JSON.stringify(partyId)} is invalid: use 1-64 characters from A-Z a-z 0-9 '-' '_'`);
  }
  return partyId;
}

/** Byte-order comparison of two party ids (ASCII, so JS string order is byte order). */
export function compareIds(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** (federation, round, layer, tensor, shape): what one masked tensor upload is bound to. */
export class Binding {
  constructor(federationId, roundId, layer, tensor, shape) {
    if (typeof federationId !== 'string' || !federationId) {
      throw new Error(`federation_id must be a non-empty string, got ${describe(federationId)}`);
    }
    if (typeof tensor !== 'string' || !tensor) throw new Error(`tensor must be a non-empty string, got ${describe(tensor)}`);
    if (!Array.isArray(shape) || shape.length === 0) throw new Error(`shape must be a non-empty array of ints`);
    this.federationId = federationId;
    this.roundId = toU64(roundId, 'round_id');
    this.layer = toU64(layer, 'layer');
    this.tensor = tensor;
    this.shape = shape.map((dim) => toU64(dim, `shape entry of ${tensor}`));
    Object.freeze(this.shape);
    Object.freeze(this);
  }

  /** Number of elements (ring words); throws if beyond Number's safe range. */
  get size() {
    const n = this.shape.reduce((a, b) => a * b, 1n);
    if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`binding ${this.tensor} has too many elements (${n})`);
    return Number(n);
  }

  /** The fields encode() writes, in order. */
  fields() {
    return [this.federationId, this.roundId, this.layer, this.tensor, BigInt(this.shape.length), ...this.shape];
  }

  encode() {
    return encodeFields(...this.fields());
  }
}
