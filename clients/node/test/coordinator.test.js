// CoordinatorClient against an in-process fake CoordinatorService over mutual TLS: upload framing,
// download resumption after a cut stream, digest checks, WatchRound.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import grpc from '@grpc/grpc-js';

import { CoordinatorClient } from '../lib/coordinator.js';
import { loadProtos } from '../lib/proto.js';
import { PayloadError, sha256 } from '../lib/protocol/chunking.js';
import { makeFederationPki } from '../test-helpers/pki.js';

const pki = makeFederationPki();
const server = new grpc.Server();
const uploads = [];
const served = { cutOnce: true, corrupt: false, starts: [] };
const delta = Buffer.alloc(8 * 4 * 6);
for (let i = 0; i < 24; i++) delta.writeDoubleLE(i / 7, 8 * i);
let client;
let address;

function fail(callback, code, details) {
  callback({ code, details });
}

const impl = {
  UploadContribution(call, callback) {
    const messages = [];
    call.on('data', (m) => messages.push(m));
    call.on('end', () => {
      const [first, ...rest] = messages;
      if (first.part !== 'header') return fail(callback, grpc.status.INVALID_ARGUMENT, 'no header first');
      let offset = 0;
      const parts = [];
      for (const m of rest) {
        if (m.part !== 'chunk' || Number(m.chunk.offset) !== offset) return fail(callback, grpc.status.INVALID_ARGUMENT, 'offset');
        if (m.chunk.data.length > 64 || !sha256(m.chunk.data).equals(m.chunk.sha256)) return fail(callback, grpc.status.INVALID_ARGUMENT, 'chunk');
        parts.push(m.chunk.data);
        offset += m.chunk.data.length;
      }
      const payload = Buffer.concat(parts);
      if (String(payload.length) !== first.header.total_bytes || !sha256(payload).equals(first.header.sha256)) {
        return fail(callback, grpc.status.DATA_LOSS, 'digest');
      }
      uploads.push({ header: first.header, payload, chunks: rest.length });
      return callback(null, { received_bytes: String(payload.length), sha256: sha256(payload), already_accepted: false });
    });
  },
  DownloadUpdate(call) {
    const start = Number(call.request.start_offset);
    served.starts.push(start);
    call.write({ header: { round_id: call.request.round_id, layer: call.request.layer, tensor: 'TENSOR_DELTA_W', shape: ['4', '6'],
      encoding: 'ENCODING_FLOAT64_LE', total_bytes: String(delta.length), sha256: sha256(delta) } });
    for (let offset = start; offset < delta.length; offset += 40) {
      const data = Buffer.from(delta.subarray(offset, offset + 40));
      const digest = sha256(data);
      if (served.corrupt) data[0] ^= 1;
      call.write({ chunk: { offset: String(offset), data, sha256: digest } });
      if (served.cutOnce && offset >= 80) {
        served.cutOnce = false;
        call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'cut for the test' });
        return;
      }
    }
    call.end();
  },
  WatchRound(call) {
    for (const phase of ['ROUND_PHASE_UPLOADING', 'ROUND_PHASE_DOWNLOADING', 'ROUND_PHASE_COMPLETED']) {
      call.write({ status: { round_id: '1', phase, parties_alive: ['a'], current_layer: phase === 'ROUND_PHASE_COMPLETED' ? undefined : 4 } });
    }
    call.end();
  },
  GetRound(call, callback) {
    callback(null, { status: { round_id: call.request.round_id, phase: 'ROUND_PHASE_UPLOADING' } });
  },
};

before(async () => {
  const coordinator = pki.issue('coordinator');
  server.addService(loadProtos().CoordinatorService.service, impl);
  const credentials = grpc.ServerCredentials.createSsl(Buffer.from(pki.caPem),
    [{ private_key: Buffer.from(coordinator.keyPem), cert_chain: Buffer.from(coordinator.certPem) }], true);
  const port = await new Promise((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', credentials, (error, p) => (error ? reject(error) : resolve(p)));
  });
  address = `localhost:${port}`;
  const party = pki.issue('a');
  client = new CoordinatorClient(address, {
    tlsPem: { ca: Buffer.from(pki.caPem), cert: Buffer.from(party.certPem), key: Buffer.from(party.keyPem) }, retries: 3,
  });
});

after(() => {
  client.close();
  server.forceShutdown();
});

test('uploads are a header then contiguous chunks of at most chunk_bytes, each with its digest', async () => {
  const data = Buffer.alloc(200).map((_, i) => i);
  const response = await client.upload({ roundId: 1n, layer: 4, tensor: 'TENSOR_S_RK', shape: [5, 5], encoding: 'ENCODING_RING_U64_LE' }, data, 64);
  assert.deepEqual(response.sha256, sha256(data));
  const [received] = uploads;
  assert.equal(received.chunks, 4);
  assert.deepEqual(received.payload, data);
  assert.deepEqual(received.header.shape, ['5', '5']);
  assert.equal(received.header.round_id, '1');
  assert.equal(received.header.tensor, 'TENSOR_S_RK');
});

test('a download cut mid-stream resumes at the bytes already received', async () => {
  const { values, shape, payload } = await client.downloadUpdate(1n, 4);
  assert.deepEqual(shape, [4, 6]);
  assert.deepEqual(payload, delta);
  assert.equal(values[7], 1);
  assert.deepEqual(served.starts, [0, 120]);
});

test('a chunk that fails its digest is refused', async () => {
  served.corrupt = true;
  try {
    await assert.rejects(client.downloadUpdate(1n, 4), PayloadError);
  } finally {
    served.corrupt = false;
  }
});

test('WatchRound yields every status until a terminal phase; GetRound answers', async () => {
  const seen = [];
  for await (const status of client.watchRound(1)) seen.push([status.phase, status.current_layer]);
  assert.deepEqual(seen, [['ROUND_PHASE_UPLOADING', 4], ['ROUND_PHASE_DOWNLOADING', 4], ['ROUND_PHASE_COMPLETED', undefined]]);
  assert.equal((await client.getRound(1)).status.phase, 'ROUND_PHASE_UPLOADING');
});
