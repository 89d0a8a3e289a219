// A masking party: one roster member of a real round, with statistics read from files instead of a
// model (docs/federation.md; the Python counterpart is collabedit_secure/party/round_client.py).
//
//   join (fingerprints from the config) -> wait for the roster -> advertise signed X25519 keys ->
//   verify every peer's advertisement -> Shamir-split and seal the secrets for every peer -> open the
//   boxes received -> per step: mask and upload S_KK (packed upper) and S_RK, take part in unmasking
//   (first step only), download ΔW, ReportApplied -> wait for COMPLETED.
//
// Mask and plain rounds, both schedules (sequential: one step per layer). HE rounds are refused.

import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { UsageError, describeError, grpc, readTlsFiles } from './channels.js';
import { CoordinatorClient, TERMINAL_PHASES, phaseName } from './coordinator.js';
import { Binding, checkPartyId } from './protocol/encoding.js';
import { RoundNumerics } from './protocol/fixedpoint.js';
import {
  KeyAdvertisementError, RoundKeys, checkUniqueKeys, commonNames, leafCertificate, signAdvertisement, verifyAdvertisement,
} from './protocol/keys.js';
import { maskedUpload } from './protocol/masking.js';
import { shareIndex, splitRoundSecrets } from './protocol/recovery.js';
import { Y_BYTES, bigIntToBytes } from './protocol/shamir.js';
import { ShareBoxError, openShares, sealShares } from './protocol/sharebox.js';
import { wordsToBytes } from './protocol/ring.js';
import { StatisticsFolder } from './stats.js';

const FINGERPRINT = /^[0-9a-f]{64}$/;
const CONFIG_KEYS = new Set(['party_id', 'federation_id', 'coordinator', 'tls', 'fingerprints', 'statistics', 'out',
  'timeouts', 'log_level']);
const TENSORS = ['TENSOR_S_KK_UPPER', 'TENSOR_S_RK'];

export class RoundError extends Error {
  /** This party cannot go on with the round (a local refusal or a protocol violation). */
  constructor(message) {
    super(message);
    this.name = 'RoundError';
  }
}

export class RoundAborted extends RoundError {
  /** The coordinator ended the round FAILED or ROLLED_BACK; nothing of it may be kept. */
  constructor(phase, reason) {
    super(`round ${phaseName(phase)}: ${reason || 'no reason given'}`);
    this.name = 'RoundAborted';
    this.phase = phase;
    this.reason = reason;
  }
}

function configError(path, message) {
  return new UsageError(`party config ${path}: ${message}`);
}

/**
 * Reads a party config (JSON). Paths are relative to the config's folder.
 *   {"federation_id": "...", "coordinator": "HOST:PORT",
 *    "tls": {"ca": "ca.pem", "cert": "c.pem", "key": "c.key", "server_name": optional},
 *    "fingerprints": {"model": hex64, "hparams": hex64, "c0": hex64},
 *    "statistics": "stats-folder", "out": "output-folder",
 *    "party_id": optional (must equal the certificate's CN),
 *    "timeouts": {"join": 60, "phase": 600, "rpc": 30} (seconds, optional), "log_level": "info"|"debug"|"quiet"}
 */
export function loadPartyConfig(path) {
  let data;
  try {
    data = JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw configError(path, error.code === 'ENOENT' ? 'no such file' : `not valid JSON (${error.message})`);
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) throw configError(path, 'expected a JSON object');
  const unknown = Object.keys(data).filter((k) => !CONFIG_KEYS.has(k));
  if (unknown.length) throw configError(path, `unknown key(s) ${unknown.join(', ')}; known: ${[...CONFIG_KEYS].join(', ')}`);
  const base = dirname(resolve(path));
  const at = (p) => (isAbsolute(p) ? p : join(base, p));
  const need = (value, what) => {
    if (typeof value !== 'string' || !value) throw configError(path, `${what} must be a non-empty string`);
    return value;
  };
  const tls = data.tls;
  if (!tls || typeof tls !== 'object') throw configError(path, 'tls must be {"ca": ..., "cert": ..., "key": ...}');
  const fp = data.fingerprints;
  if (!fp || typeof fp !== 'object') throw configError(path, 'fingerprints must be {"model": ..., "hparams": ..., "c0": ...}');
  for (const name of ['model', 'hparams', 'c0']) {
    if (typeof fp[name] !== 'string' || !FINGERPRINT.test(fp[name])) {
      throw configError(path, `fingerprints.${name} must be 64 lowercase hex characters (protocol/fingerprints.py)`);
    }
  }
  const timeouts = { join: 60, phase: 600, rpc: 30, ...(data.timeouts || {}) };
  for (const [name, value] of Object.entries(timeouts)) {
    if (!['join', 'phase', 'rpc'].includes(name)) throw configError(path, `unknown timeout ${name}; known: join, phase, rpc`);
    if (typeof value !== 'number' || !(value > 0)) throw configError(path, `timeouts.${name} must be a number of seconds > 0`);
  }
  if (data.party_id !== undefined) {
    try {
      checkPartyId(data.party_id);
    } catch (error) {
      throw configError(path, error.message);
    }
  }
  return {
    partyId: data.party_id,
    federationId: need(data.federation_id, 'federation_id'),
    coordinator: need(data.coordinator, 'coordinator'),
    tls: { ca: at(need(tls.ca, 'tls.ca')), cert: at(need(tls.cert, 'tls.cert')), key: at(need(tls.key, 'tls.key')) },
    serverName: tls.server_name || null,
    fingerprints: { model: fp.model, hparams: fp.hparams, c0: fp.c0 },
    statistics: at(need(data.statistics, 'statistics')),
    out: at(need(data.out, 'out')),
    timeouts,
    logLevel: data.log_level || 'info',
  };
}

function makeLogger(partyId, level) {
  const emit = (name) => (...parts) => {
    process.stderr.write(`${new Date().toISOString()} collabedit.node.${partyId} ${name} ${parts.join(' ')}\n`);
  };
  const quiet = () => {};
  return {
    debug: level === 'debug' ? emit('DEBUG') : quiet,
    info: level === 'quiet' ? quiet : emit('INFO'),
    warn: emit('WARNING'),
    error: emit('ERROR'),
  };
}

/** One round of one party. Make a new MaskingParty for every round (its keys are per round). */
export class MaskingParty {
  constructor(config, { log = null, coordinator = null } = {}) {
    this.config = config;
    // Everything local is checked before a channel is opened.
    this.pem = coordinator ? coordinator.pem : readTlsFiles(config.tls);
    const names = commonNames(leafCertificate(this.pem.cert));
    if (names.length !== 1) throw new UsageError(`certificate ${config.tls.cert} must have exactly one common name`);
    this.me = checkPartyId(names[0], 'certificate common name');
    if (config.partyId && config.partyId !== this.me) {
      throw new UsageError(`party_id ${config.partyId} differs from the certificate's common name ${this.me}`);
    }
    try {
      this.stats = new StatisticsFolder(config.statistics);
    } catch (error) {
      throw new UsageError(error.message);
    }
    this.coordinator = coordinator || new CoordinatorClient(config.coordinator, {
      tlsPem: this.pem, serverName: config.serverName, rpcTimeoutMs: config.timeouts.rpc * 1000,
      streamTimeoutMs: config.timeouts.phase * 1000, onBytes: (stage, sent, received) => this.#count(stage, sent, received),
    });
    this.log = log || makeLogger(this.me, config.logLevel);
    this.params = null;
    this.status = null;
    this.keys = null;
    this.peerMaskKeys = new Map();
    this.shares = new Map(); // owner -> [self-secret share, mask-key share] held by this party
    this.revealed = new Map(); // owner -> share kind revealed this round (never both kinds)
    this.digests = new Map(); // layer -> sha256 of the ΔW payload downloaded
    this.deltas = new Map(); // layer -> {values, payload, shape}
    this.stepsDone = 0;
    this.stageSeconds = {};
    this.bytes = { sent: 0, received: 0 };
  }

  #count(stage, sent, received) {
    this.bytes.sent += sent;
    this.bytes.received += received;
  }

  async #timed(stage, fn) {
    const started = process.hrtime.bigint();
    try {
      return await fn();
    } finally {
      this.stageSeconds[stage] = (this.stageSeconds[stage] || 0) + Number(process.hrtime.bigint() - started) / 1e9;
    }
  }

  get roundId() {
    return this.params.round_id;
  }

  get maskMode() {
    return this.params.privacy_mode === 'PRIVACY_MODE_MASK';
  }

  get sequential() {
    return this.params.schedule === 'SCHEDULE_SEQUENTIAL';
  }

  async #getRound() {
    const response = await this.coordinator.getRound(this.roundId);
    this.status = response.status;
    return response;
  }

  /** Polls GetRound until done(status); a terminal phase that is not done raises RoundAborted. */
  async #wait(done, what, timeoutS = this.config.timeouts.phase) {
    const deadline = Date.now() + timeoutS * 1000;
    let interval = 20;
    for (;;) {
      const { status } = await this.#getRound();
      if (done(status)) return status;
      if (TERMINAL_PHASES.has(status.phase)) throw new RoundAborted(status.phase, status.failure_reason);
      if (Date.now() > deadline) {
        throw new RoundError(`round ${this.roundId}: timed out waiting for ${what} (phase ${phaseName(status.phase)})`);
      }
      await sleep(interval);
      interval = Math.min(interval * 1.5, 250);
    }
  }

  /** Calls until the RPC stops answering FAILED_PRECONDITION (its phase has not come yet). */
  async #pollPrecondition(method, request, what) {
    const deadline = Date.now() + this.config.timeouts.phase * 1000;
    let interval = 20;
    for (;;) {
      try {
        return await this.coordinator.call(method, request);
      } catch (error) {
        if (error.code !== grpc.status.FAILED_PRECONDITION) throw error;
        const { status } = await this.#getRound();
        if (TERMINAL_PHASES.has(status.phase)) throw new RoundAborted(status.phase, status.failure_reason);
        if (Date.now() > deadline) throw new RoundError(`round ${this.roundId}: timed out waiting for ${what}: ${error.details}`);
      }
      await sleep(interval);
      interval = Math.min(interval * 1.5, 250);
    }
  }

  // ------------------------------------------------------------------ join

  /** Enrols in the open round (retrying while the coordinator is unreachable or no round is open). */
  async join() {
    const request = {
      federation_id: this.config.federationId, model_fingerprint: this.config.fingerprints.model,
      hparams_fingerprint: this.config.fingerprints.hparams, c0_fingerprint: this.config.fingerprints.c0,
    };
    const deadline = Date.now() + this.config.timeouts.join * 1000;
    let response;
    await this.#timed('join', async () => {
      for (let attempt = 0; ; attempt++) {
        try {
          response = await this.coordinator.call('JoinFederation', request, { retry: false });
          return;
        } catch (error) {
          const waiting = error.code === grpc.status.FAILED_PRECONDITION && !/fingerprint/i.test(error.details || '');
          if (!(waiting || (error.code === grpc.status.UNAVAILABLE || error.code === grpc.status.DEADLINE_EXCEEDED))
            || Date.now() > deadline) {
            if (error.code === grpc.status.UNAVAILABLE) {
              throw new RoundError(`coordinator ${this.config.coordinator} unreachable for ${this.config.timeouts.join} s: ${error.details}`);
            }
            throw new RoundError(`JoinFederation refused: ${describeError(error)}`);
          }
          await sleep(Math.min(100 * 2 ** Math.min(attempt, 5), 2000) * Math.random());
        }
      }
    });
    if (response.party_id && response.party_id !== this.me) {
      throw new RoundError(`the coordinator knows this party as ${response.party_id}, not ${this.me}`);
    }
    this.params = response.parameters;
    this.status = response.status;
    this.log.info(`joined round ${this.roundId} (${this.params.privacy_mode}, ${this.params.schedule})`);
    if (this.params.privacy_mode === 'PRIVACY_MODE_PLAIN') {
      this.log.warn('PLAIN MODE: this round sends this party\'s statistics UNPROTECTED; the coordinator sees them.');
    }
    return this.params;
  }

  /** Blocks until the round leaves WAITING_FOR_PARTIES; returns the final parameters. */
  async waitRoster() {
    const joinS = durationSeconds(this.params.deadlines && this.params.deadlines.join) || this.config.timeouts.join;
    await this.#timed('join', () => this.#wait((s) => s.phase !== 'ROUND_PHASE_WAITING_FOR_PARTIES', 'the roster', joinS + 30));
    this.params = (await this.#getRound()).parameters;
    if (!this.params.roster.includes(this.me)) {
      throw new RoundError(`round ${this.roundId} started without this party (${this.me} is not in the roster ${this.params.roster})`);
    }
    if (!['PRIVACY_MODE_MASK', 'PRIVACY_MODE_PLAIN'].includes(this.params.privacy_mode)) {
      throw new RoundError(`privacy mode ${this.params.privacy_mode} is not supported by the Node party (mask and plain only)`);
    }
    return this.params;
  }

  /** The schedule's steps: [[layer, ...]] with every layer (parallel) or one per layer (sequential). */
  steps() {
    const layers = this.params.layers.map((spec) => spec.layer);
    return this.sequential ? layers.map((layer) => [layer]) : [layers];
  }

  // ------------------------------------------------------------------ keys and shares

  /** Mask mode: advertise signed keys, verify every peer's, exchange Shamir share boxes. */
  async setupKeys() {
    if (!this.maskMode) return;
    await this.#timed('keys', async () => {
      this.keys = RoundKeys.generate();
      const mine = signAdvertisement(this.pem.key, this.pem.cert, this.config.federationId, BigInt(this.roundId), this.me, this.keys);
      await this.coordinator.call('AdvertiseKeys', {
        round_id: this.roundId, mask_public_key: mine.mask_public_key, share_public_key: mine.share_public_key,
        certificate_pem: mine.certificate_pem, signature: mine.signature,
      });
      const listed = (await this.#pollPrecondition('ListKeyAdvertisements', { round_id: this.roundId }, "every party's keys")).advertisements;
      this.params = (await this.#getRound()).parameters; // the roster is final now (Shamir x)
      const adverts = this.#verifyAdvertisements(listed, mine);
      await this.#shareSecrets(adverts);
    });
  }

  #verifyAdvertisements(listed, mine) {
    const adverts = new Map();
    try {
      for (const item of listed) {
        const adv = {
          party_id: item.party_id, mask_public_key: Buffer.from(item.mask_public_key),
          share_public_key: Buffer.from(item.share_public_key), certificate_pem: item.certificate_pem, signature: Buffer.from(item.signature),
        };
        verifyAdvertisement(adv, this.pem.ca, this.config.federationId, BigInt(this.roundId));
        if (!this.params.roster.includes(adv.party_id)) {
          throw new KeyAdvertisementError(`advertisement of ${adv.party_id}, who is not in the roster`);
        }
        adverts.set(adv.party_id, adv);
      }
      checkUniqueKeys([...adverts.values()]);
      const own = adverts.get(this.me);
      if (!own || !own.mask_public_key.equals(mine.mask_public_key) || !own.share_public_key.equals(mine.share_public_key)) {
        throw new KeyAdvertisementError(`the coordinator lists keys for ${this.me} that are not the ones this party advertised (substituted keys)`);
      }
    } catch (error) {
      if (!(error instanceof KeyAdvertisementError)) throw error;
      this.log.error(`ABORTING round ${this.roundId}: ${error.message}`);
      throw new RoundError(`round ${this.roundId} aborted locally: ${error.message}`);
    }
    return adverts;
  }

  async #shareSecrets(adverts) {
    const roster = [...this.params.roster];
    const myX = shareIndex(roster, this.me);
    const split = splitRoundSecrets(this.keys, roster, this.params.threshold);
    const boxes = [...adverts.keys()].sort().filter((peer) => peer !== this.me).map((peer) => ({
      sender_party_id: this.me,
      recipient_party_id: peer,
      ciphertext: sealShares(this.config.federationId, BigInt(this.roundId), this.me, peer, this.keys.sharePrivateKey,
        adverts.get(peer).share_public_key, ...split.get(peer)),
    }));
    await this.coordinator.call('SubmitEncryptedShares', { round_id: this.roundId, shares: boxes });
    const received = (await this.#pollPrecondition('ListEncryptedShares', { round_id: this.roundId },
      "every party's share boxes")).shares;
    this.shares = new Map([[this.me, split.get(this.me)]]);
    try {
      for (const box of received) {
        const sender = box.sender_party_id;
        if (box.recipient_party_id !== this.me || !adverts.has(sender) || sender === this.me) {
          throw new RoundError(`unexpected share box from ${sender} to ${box.recipient_party_id}`);
        }
        this.shares.set(sender, openShares(this.config.federationId, BigInt(this.roundId), sender, this.me,
          this.keys.sharePrivateKey, adverts.get(sender).share_public_key, Buffer.from(box.ciphertext), myX));
      }
    } catch (error) {
      if (!(error instanceof ShareBoxError)) throw error;
      this.log.error(`ABORTING round ${this.roundId}: ${error.message}`);
      throw new RoundError(`round ${this.roundId} aborted locally: ${error.message}`);
    }
    // Masks pair this party with every party still in after the share exchange (those it holds shares of).
    this.peerMaskKeys = new Map([...this.shares.keys()].filter((p) => p !== this.me)
      .map((p) => [p, adverts.get(p).mask_public_key]));
    this.log.info(`round ${this.roundId}: keys verified for ${adverts.size} parties, shares from ${received.length}`);
  }

  // ------------------------------------------------------------------ one step

  /** Uploads this step's statistics, takes part in unmasking, downloads ΔW of every layer of the step. */
  async exchangeStep(stepLayers) {
    const specs = new Map(this.params.layers.map((spec) => [spec.layer, spec]));
    const layer = this.sequential ? stepLayers[0] : null;
    await this.#timed('wait', () => this.#wait((s) => s.phase === 'ROUND_PHASE_UPLOADING'
      && (layer === null || currentLayer(s) === layer), `uploads of step ${this.stepsDone}`));
    const payloads = await this.#timed('mask', async () => this.#encode(stepLayers, specs)); // all, before anything is sent
    await this.#timed('upload', async () => {
      const chunkBytes = this.params.chunk_bytes || (1 << 20);
      for (const p of payloads) {
        await this.coordinator.upload({ roundId: this.roundId, layer: p.layer, tensor: p.tensor, shape: p.shape, encoding: p.encoding },
          p.data, chunkBytes);
      }
    });
    if (this.maskMode && this.stepsDone === 0) await this.#timed('unmask', () => this.#unmask(layer));
    await this.#timed('wait', () => this.#wait((s) => ['ROUND_PHASE_DOWNLOADING', 'ROUND_PHASE_COMPLETED'].includes(s.phase)
      && (layer === null || currentLayer(s) === layer || s.layers_completed.includes(layer)), `the solve of step ${this.stepsDone}`));
    await this.#timed('download', async () => {
      for (const lay of stepLayers) {
        const delta = await this.coordinator.downloadUpdate(this.roundId, lay);
        const spec = specs.get(lay);
        if (delta.shape.length !== 2 || delta.shape[0] !== Number(spec.d_out) || delta.shape[1] !== Number(spec.d_in)) {
          throw new RoundError(`layer ${lay}: ΔW header is not float64 [${spec.d_out}, ${spec.d_in}]`);
        }
        this.digests.set(lay, Buffer.from(delta.header.sha256));
        this.deltas.set(lay, delta);
      }
    });
    this.stepsDone += 1;
  }

  #encode(stepLayers, specs) {
    const numerics = this.maskMode
      ? new RoundNumerics(this.params.roster.length, this.params.scale_bits, BigInt(this.params.per_party_bound))
      : null;
    const out = [];
    for (const lay of stepLayers) {
      const spec = specs.get(lay);
      if (!spec) throw new RoundError(`layer ${lay} is not in round ${this.roundId}`);
      const dIn = Number(spec.d_in);
      const dOut = Number(spec.d_out);
      const stats = this.stats.read(lay, { dIn, dOut });
      const tensors = [['TENSOR_S_KK_UPPER', [(dIn * (dIn + 1)) / 2], stats.sKkUpper], ['TENSOR_S_RK', [dOut, dIn], stats.sRk]];
      for (const [tensor, shape, values] of tensors) {
        if (this.maskMode) {
          const binding = new Binding(this.config.federationId, BigInt(this.roundId), lay, tensor, shape);
          const words = maskedUpload(values, numerics, binding, this.me, this.keys, this.peerMaskKeys);
          out.push({ layer: lay, tensor, shape, encoding: 'ENCODING_RING_U64_LE', data: wordsToBytes(words) });
        } else {
          for (let i = 0; i < values.length; i++) {
            if (!Number.isFinite(values[i])) throw new RoundError(`layer ${lay} ${tensor}: value ${values[i]} at ${i} is not finite`);
          }
          out.push({ layer: lay, tensor, shape, encoding: 'ENCODING_FLOAT64_LE', data: Buffer.from(values.buffer) });
        }
      }
    }
    return out;
  }

  /** Reveals self-mask shares of survivors and mask-key shares of dropped parties, never both. */
  async #unmask(layer) {
    const request = { round_id: this.roundId };
    if (layer !== null) request.layer = layer;
    let status = await this.#wait((s) => s.phase !== 'ROUND_PHASE_UPLOADING', 'the end of uploads');
    while (status.phase === 'ROUND_PHASE_UNMASKING') {
      try {
        const plan = await this.coordinator.call('GetUnmaskingPlan', request);
        const shares = this.revealsFor(plan.survivors, plan.dropped);
        await this.coordinator.call('SubmitUnmaskingShares', { ...request, shares });
        return;
      } catch (error) {
        if (error.code !== grpc.status.FAILED_PRECONDITION) throw error;
      }
      status = (await this.#getRound()).status; // moved on without our reveals: fine
    }
    if (TERMINAL_PHASES.has(status.phase) && status.phase !== 'ROUND_PHASE_COMPLETED') {
      throw new RoundAborted(status.phase, status.failure_reason);
    }
  }

  /** The RevealedShares a plan asks for; RoundError for a plan that must be refused. */
  revealsFor(survivors, dropped) {
    const both = survivors.filter((p) => dropped.includes(p)).sort();
    if (both.length) {
      throw new RoundError(`REFUSED unmasking plan: it asks for both share kinds of ${both.join(', ')}; that would unmask their contributions`);
    }
    if (!survivors.includes(this.me)) throw new RoundError(`unmasking plan does not list this party (${this.me}) as a survivor`);
    const x = shareIndex(this.params.roster, this.me);
    const asked = [[survivors, 'SHARE_KIND_SELF_MASK_SEED', 0], [dropped, 'SHARE_KIND_MASK_KEY', 1]];
    // Every owner is checked before anything is recorded, so a refused plan reveals nothing.
    for (const [owners, kind] of asked) {
      for (const owner of owners) {
        if (!this.shares.has(owner)) throw new RoundError(`unmasking plan names ${owner}, of whom this party holds no shares`);
        if ((this.revealed.get(owner) || kind) !== kind) {
          throw new RoundError(`REFUSED unmasking plan: a share of the other kind was already revealed for ${owner} in this round`);
        }
      }
    }
    const out = [];
    for (const [owners, kind, pick] of asked) {
      for (const owner of owners) {
        this.revealed.set(owner, kind);
        out.push({ owner_party_id: owner, kind, x, y: bigIntToBytes(this.shares.get(owner)[pick].y, Y_BYTES) });
      }
    }
    return out;
  }

  // ------------------------------------------------------------------ after the step

  async reportApplied(layer) {
    return this.#timed('report', () => this.coordinator.call('ReportApplied', {
      round_id: this.roundId, layer, sha256: this.digests.get(layer), aggregate_digest: Buffer.alloc(0),
    }));
  }

  async waitFinished() {
    return this.#timed('wait', () => this.#wait((s) => s.phase === 'ROUND_PHASE_COMPLETED', 'the end of the round'));
  }

  /** The whole round; returns the result written to out/round-<id>/result.json. */
  async run() {
    const started = Date.now();
    await this.join();
    try {
      await this.waitRoster();
      await this.setupKeys();
      for (const step of this.steps()) {
        await this.exchangeStep(step);
        for (const layer of step) await this.reportApplied(layer);
      }
      const status = await this.waitFinished();
      const result = this.#writeResult('COMPLETED', status, started);
      this.log.info(`round ${this.roundId} COMPLETED: ΔW of layers ${[...this.deltas.keys()].join(', ')} in ${result.out_dir}`);
      return result;
    } catch (error) {
      if (error instanceof RoundAborted) this.#writeResult(phaseName(error.phase), this.status, started, error.reason);
      throw error;
    }
  }

  #writeResult(phase, status, started, reason = '') {
    const dir = join(this.config.out, `round-${this.roundId}`);
    mkdirSync(dir, { recursive: true });
    const layers = {};
    if (phase === 'COMPLETED') {
      for (const [layer, delta] of this.deltas) {
        const file = join(dir, `delta-layer-${layer}.f64`);
        writeAtomic(file, delta.payload);
        layers[layer] = { file, shape: delta.shape, sha256: this.digests.get(layer).toString('hex') };
      }
    }
    const result = {
      party_id: this.me, federation_id: this.config.federationId, round_id: Number(this.roundId), phase,
      failure_reason: reason || (status && status.failure_reason) || '', schedule: this.params.schedule,
      privacy_mode: this.params.privacy_mode, roster: this.params.roster, applied_layers: Object.keys(layers).map(Number),
      layers, out_dir: dir, bytes_sent: this.bytes.sent, bytes_received: this.bytes.received,
      stage_seconds: this.stageSeconds, wall_seconds: (Date.now() - started) / 1000,
    };
    writeAtomic(join(dir, 'result.json'), Buffer.from(`${JSON.stringify(result, null, 1)}\n`));
    return result;
  }
}

function writeAtomic(path, data) {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}

/** RoundStatus.current_layer, or null when unset (proto3 `optional`: absent from the decoded object). */
export function currentLayer(status) {
  return status.current_layer === undefined || status.current_layer === null ? null : status.current_layer;
}

function durationSeconds(duration) {
  if (!duration) return 0;
  return Number(duration.seconds || 0) + Number(duration.nanos || 0) / 1e9;
}

/** Runs one round for the config file; returns the result object. */
export async function runParty(configPath, options = {}) {
  const config = loadPartyConfig(configPath);
  const party = new MaskingParty(config, options);
  try {
    return await party.run();
  } finally {
    party.coordinator.close();
  }
}

