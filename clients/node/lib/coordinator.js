// A CoordinatorService client with the party-side conventions of collabedit_secure/party/round_client.py:
// unary calls retried with full-jitter backoff on UNAVAILABLE / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED,
// chunked uploads (resent from the header when a stream breaks) and downloads (resumed at the bytes
// already received), every chunk and the whole payload checked against their sha256.

import { setTimeout as sleep } from 'node:timers/promises';

import { RETRYABLE, coordinatorClient, describeError, grpc, readTlsFiles, unary } from './channels.js';
import { DEFAULT_CHUNK_BYTES, PayloadAssembler, PayloadError, chunkPayload, sha256 } from './protocol/chunking.js';

export const TERMINAL_PHASES = new Set(['ROUND_PHASE_COMPLETED', 'ROUND_PHASE_FAILED', 'ROUND_PHASE_ROLLED_BACK']);

/** Full jitter (AWS architecture blog): random in [0, min(cap, base 2^attempt)] seconds. */
export function backoffMs(attempt, baseMs = 100, capMs = 5000) {
  return Math.random() * Math.min(capMs, baseMs * 2 ** attempt);
}

export function phaseName(phase) {
  return String(phase).replace(/^ROUND_PHASE_/, '');
}

export class CoordinatorClient {
  /**
   * address: HOST:PORT; tls: {ca, cert, key} file paths (or tlsPem: PEM Buffers).
   * rpcTimeoutMs: deadline of unary calls; retries: attempts after the first for retryable codes.
   */
  constructor(address, { tls = null, tlsPem = null, serverName = null, rpcTimeoutMs = 30_000, retries = 5,
    streamTimeoutMs = 600_000, onBytes = null } = {}) {
    this.pem = tlsPem || readTlsFiles(tls || {});
    this.stub = coordinatorClient(address, this.pem, { serverName });
    this.rpcTimeoutMs = rpcTimeoutMs;
    this.streamTimeoutMs = streamTimeoutMs;
    this.retries = retries;
    this.onBytes = onBytes || (() => {});
  }

  close() {
    this.stub.close();
  }

  /** A unary RPC, retried with backoff on retryable codes unless retry is false. */
  async call(method, request, { retry = true, timeoutMs = this.rpcTimeoutMs } = {}) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await unary(this.stub, method, request, { timeoutMs });
      } catch (error) {
        if (!retry || !RETRYABLE.has(error.code) || attempt >= this.retries) throw error;
        await sleep(backoffMs(attempt));
      }
    }
  }

  getRound(roundId = 0) {
    return this.call('GetRound', { round_id: String(roundId) });
  }

  /** Async iterator of RoundStatus messages (the current one first); ends after a terminal phase. */
  async* watchRound(roundId = 0) {
    const call = this.stub.WatchRound({ round_id: String(roundId) });
    try {
      for await (const message of call) yield message.status;
    } finally {
      call.cancel();
    }
  }

  /**
   * Streams one payload: header (round, layer, tensor, shape, encoding) then chunks of chunkBytes.
   * Returns the UploadContributionResponse; throws if the coordinator echoes another digest.
   */
  async upload({ roundId, layer, tensor, shape, encoding }, data, chunkBytes = DEFAULT_CHUNK_BYTES) {
    const payload = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const digest = sha256(payload);
    const header = {
      round_id: String(roundId), layer, tensor, shape: shape.map(String), encoding,
      total_bytes: String(payload.length), sha256: digest,
    };
    const chunks = chunkPayload(payload, chunkBytes);
    for (let attempt = 0; ; attempt++) {
      try {
        const response = await this.#uploadOnce(header, chunks);
        this.onBytes('upload', payload.length + 48 * (chunks.length + 1), 0);
        if (!Buffer.from(response.sha256).equals(digest)) {
          throw new Error(`the coordinator acknowledged layer ${layer} ${tensor} with another digest`);
        }
        return response;
      } catch (error) {
        // A cut stream changed nothing durable at the coordinator: resend from the header.
        const retry = RETRYABLE.has(error.code) || error.code === grpc.status.DATA_LOSS;
        if (!retry || attempt >= this.retries) throw error;
        await sleep(backoffMs(attempt));
      }
    }
  }

  #uploadOnce(header, chunks) {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + this.streamTimeoutMs);
      const call = this.stub.UploadContribution(new grpc.Metadata(), { deadline }, (error, response) => {
        if (error) reject(error);
        else resolve(response);
      });
      const messages = [{ header }, ...chunks.map((c) => ({ chunk: { offset: String(c.offset), data: c.data, sha256: c.sha256 } }))];
      let i = 0;
      const pump = () => {
        while (i < messages.length) {
          if (!call.write(messages[i++])) {
            call.once('drain', pump);
            return;
          }
        }
        call.end();
      };
      pump();
    });
  }

  /**
   * Downloads a chunked payload (DownloadUpdate or DownloadAggregate): {header, payload}. A cut stream
   * resumes at the bytes received; every chunk and the whole payload are checked.
   */
  async download(method, request, what = 'payload') {
    let assembler = null;
    for (let attempt = 0; ; attempt++) {
      const start = assembler ? assembler.received : 0;
      const call = this.stub[method]({ ...request, start_offset: String(start) }, new grpc.Metadata(),
        { deadline: new Date(Date.now() + this.streamTimeoutMs) });
      try {
        for await (const message of call) {
          if (message.part === 'header' || message.header) {
            const header = message.header;
            if (assembler === null) {
              assembler = new PayloadAssembler(header, { what });
            } else if (!Buffer.from(header.sha256).equals(Buffer.from(assembler.header.sha256))
              || String(header.total_bytes) !== String(assembler.header.total_bytes)) {
              throw new PayloadError(`${what}: the payload changed while resuming its download`);
            }
            continue;
          }
          if (assembler === null) throw new PayloadError(`${what}: a chunk came before the header`);
          assembler.add(message.chunk);
          this.onBytes('download', 0, message.chunk.data.length + 48);
        }
        if (assembler === null) throw new PayloadError(`${what}: the download has no header`);
        return { header: assembler.header, payload: assembler.finish() };
      } catch (error) {
        if (!RETRYABLE.has(error.code) || attempt >= this.retries) throw error;
        await sleep(backoffMs(attempt));
      } finally {
        call.cancel();
      }
    }
  }

  /** ΔW of one layer: {header, payload (float64 LE bytes), values (Float64Array), shape}. */
  async downloadUpdate(roundId, layer) {
    const { header, payload } = await this.download('DownloadUpdate', { round_id: String(roundId), layer },
      `ΔW of layer ${layer}`);
    if (header.tensor !== 'TENSOR_DELTA_W' || header.encoding !== 'ENCODING_FLOAT64_LE') {
      throw new PayloadError(`layer ${layer}: ΔW header is ${header.tensor} ${header.encoding}, expected TENSOR_DELTA_W ENCODING_FLOAT64_LE`);
    }
    const shape = header.shape.map(Number);
    const count = shape.reduce((a, b) => a * b, 1);
    if (count * 8 !== payload.length) throw new PayloadError(`layer ${layer}: ΔW shape [${shape}] does not match ${payload.length} bytes`);
    const values = new Float64Array(count);
    Buffer.from(values.buffer).set(payload);
    return { header, payload, values, shape };
  }
}

export { describeError };
