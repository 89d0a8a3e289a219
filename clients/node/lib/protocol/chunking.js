// Chunked payload framing (common.proto PayloadHeader / PayloadChunk): a header with the shape,
// encoding, total_bytes and the sha256 of the whole payload, then chunks of at most chunk_bytes,
// contiguous from offset 0, each non-empty and carrying the sha256 of its own data.

import { createHash } from 'node:crypto';

export const DEFAULT_CHUNK_BYTES = 1 << 20;

export class PayloadError extends Error {
  constructor(message) {
    super(message);
    this.name = 'PayloadError';
  }
}

export function sha256(data) {
  return createHash('sha256').update(data).digest();
}

/** The chunks of a payload: [{offset, data, sha256}], offsets as numbers. */
export function chunkPayload(data, chunkBytes = DEFAULT_CHUNK_BYTES) {
  if (!Number.isInteger(chunkBytes) || chunkBytes < 1) throw new PayloadError(`chunk_bytes must be an int >= 1, got ${chunkBytes}`);
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const chunks = [];
  for (let offset = 0; offset < buf.length; offset += chunkBytes) {
    const piece = buf.subarray(offset, Math.min(buf.length, offset + chunkBytes));
    chunks.push({ offset, data: piece, sha256: sha256(piece) });
  }
  return chunks;
}

/** Reassembles a downloaded payload, checking every rule; finish() checks length and whole digest. */
export class PayloadAssembler {
  constructor(header, { what = 'payload', startOffset = 0, prefix = null, chunkBytes = null } = {}) {
    this.header = header;
    this.what = what;
    this.total = Number(header.total_bytes);
    this.chunkBytes = chunkBytes;
    if (!Number.isSafeInteger(this.total) || this.total < 0) throw new PayloadError(`${what}: bad total_bytes ${header.total_bytes}`);
    this.buffer = Buffer.alloc(this.total);
    this.received = 0;
    if (prefix) {
      prefix.copy(this.buffer, 0, 0, startOffset);
      this.received = startOffset;
    }
  }

  add(chunk) {
    const offset = Number(chunk.offset);
    const data = Buffer.from(chunk.data);
    if (offset !== this.received) throw new PayloadError(`${this.what}: chunk at offset ${chunk.offset}, expected ${this.received}`);
    if (data.length === 0) throw new PayloadError(`${this.what}: empty chunk at offset ${offset}`);
    if (this.chunkBytes && data.length > this.chunkBytes) {
      throw new PayloadError(`${this.what}: chunk of ${data.length} bytes exceeds chunk_bytes ${this.chunkBytes}`);
    }
    if (offset + data.length > this.total) throw new PayloadError(`${this.what}: more bytes than total_bytes ${this.total}`);
    if (!sha256(data).equals(Buffer.from(chunk.sha256))) throw new PayloadError(`${this.what}: chunk at offset ${offset} fails its sha256`);
    data.copy(this.buffer, offset);
    this.received += data.length;
  }

  finish() {
    if (this.received !== this.total) {
      throw new PayloadError(`${this.what}: ${this.received} of ${this.total} bytes received`);
    }
    if (!sha256(this.buffer).equals(Buffer.from(this.header.sha256))) {
      throw new PayloadError(`${this.what}: the payload's sha256 does not match its header`);
    }
    return this.buffer;
  }
}
