// The collabedit-node command line (bin/collabedit-node.js runs main()).

import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import { UsageError, describeError, partyClient, unary } from './channels.js';
import { CoordinatorClient, TERMINAL_PHASES, phaseName } from './coordinator.js';
import { RoundAborted, currentLayer, runParty } from './party.js';
import { readEditRequests } from './requests.js';

const USAGE = `usage: collabedit-node <command> [options]

commands:
  submit   --party HOST:PORT --requests FILE.json [--timeout S]
           queue edit requests at a party daemon (PartyService.SubmitEditRequests); FILE is a JSON
           list of plain requests {"prompt": "{} is a citizen of", "subject": ..., "target_new": ...}
           or CounterFact records
  watch    --coordinator HOST:PORT --ca CA.pem --cert PARTY.pem --key PARTY.key [--round N] [--json]
           one line per status change of a round (0 = the current round) until it ends
  download --coordinator HOST:PORT --ca CA.pem --cert PARTY.pem --key PARTY.key --round N --layer L --out FILE
           ΔW of one layer, digests verified, written as raw float64 little-endian (d_out x d_in, row-major)
  party    --config FILE.json
           take part in one round as a masking party (see clients/node/README.md for the config)

common options: --server-name NAME (TLS name to expect from the coordinator), --help`;

const TLS_OPTIONS = {
  coordinator: { type: 'string' }, ca: { type: 'string' }, cert: { type: 'string' }, key: { type: 'string' },
  'server-name': { type: 'string' }, timeout: { type: 'string' },
};
const COMMANDS = {
  submit: { party: { type: 'string' }, requests: { type: 'string' }, timeout: { type: 'string' } },
  watch: { ...TLS_OPTIONS, round: { type: 'string' }, json: { type: 'boolean' } },
  download: { ...TLS_OPTIONS, round: { type: 'string' }, layer: { type: 'string' }, out: { type: 'string' } },
  party: { config: { type: 'string' } },
};

function required(values, names) {
  const missing = names.filter((n) => values[n] === undefined || values[n] === '');
  if (missing.length) throw new UsageError(`missing ${missing.map((n) => `--${n}`).join(', ')}`);
}

function integer(value, name, { min = 0, fallback = undefined } = {}) {
  if (value === undefined) {
    if (fallback !== undefined) return fallback;
    throw new UsageError(`missing --${name}`);
  }
  if (!/^[0-9]+$/.test(value) || Number(value) < min || !Number.isSafeInteger(Number(value))) {
    throw new UsageError(`--${name} must be an integer >= ${min}, got ${JSON.stringify(value)}`);
  }
  return Number(value);
}

function seconds(value, fallback) {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new UsageError(`--timeout must be a number of seconds > 0, got ${JSON.stringify(value)}`);
  return n;
}

function coordinatorFrom(values) {
  required(values, ['coordinator', 'ca', 'cert', 'key']);
  return new CoordinatorClient(values.coordinator, {
    tls: { ca: values.ca, cert: values.cert, key: values.key }, serverName: values['server-name'] || null,
    rpcTimeoutMs: seconds(values.timeout, 30) * 1000,
  });
}

async function submit(values, io) {
  required(values, ['party', 'requests']);
  const requests = readEditRequests(values.requests);
  const client = partyClient(values.party);
  try {
    const reply = await unary(client, 'SubmitEditRequests', { requests }, { timeoutMs: seconds(values.timeout, 30) * 1000 });
    io.out(`accepted ${reply.accepted_case_ids.length} of ${requests.length}: ${reply.accepted_case_ids.join(', ') || '-'}`);
    for (const rejected of reply.rejected) io.out(`rejected ${JSON.stringify(rejected.case_id)}: ${rejected.reason}`);
    return reply.rejected.length ? 4 : 0;
  } finally {
    client.close();
  }
}

/** When the status last changed (the coordinator's clock), else now. */
function changedAt(status) {
  const stamp = status.updated_at;
  if (!stamp || (stamp.seconds === '0' && !stamp.nanos)) return new Date().toISOString();
  return new Date(Number(stamp.seconds) * 1000 + Math.floor(Number(stamp.nanos || 0) / 1e6)).toISOString();
}

function statusLine(status) {
  const layer = currentLayer(status);
  const parts = [`${changedAt(status)} round ${status.round_id} ${phaseName(status.phase)}`];
  if (layer !== null) parts.push(`layer=${layer}`);
  parts.push(`alive=[${status.parties_alive.join(',')}]`);
  if (status.parties_dropped.length) parts.push(`dropped=[${status.parties_dropped.join(',')}]`);
  if (status.layers_completed.length) parts.push(`completed=[${status.layers_completed.join(',')}]`);
  if (status.failure_reason) parts.push(`reason=${JSON.stringify(status.failure_reason)}`);
  return parts.join(' ');
}

function statusJson(status) {
  const layer = currentLayer(status);
  return JSON.stringify({
    updated_at: changedAt(status), round_id: Number(status.round_id), phase: phaseName(status.phase), current_layer: layer,
    parties_alive: status.parties_alive, parties_dropped: status.parties_dropped, layers_completed: status.layers_completed,
    failure_reason: status.failure_reason,
  });
}

async function watch(values, io) {
  const round = integer(values.round, 'round', { fallback: 0 });
  const client = coordinatorFrom(values);
  let last = null;
  let lastKey = null;
  try {
    for await (const status of client.watchRound(round)) {
      const key = JSON.stringify([status.round_id, status.phase, currentLayer(status), status.parties_alive,
        status.parties_dropped, status.layers_completed, status.failure_reason]);
      if (key !== lastKey) io.out(values.json ? statusJson(status) : statusLine(status));
      lastKey = key;
      last = status;
      if (TERMINAL_PHASES.has(status.phase)) break;
    }
  } finally {
    client.close();
  }
  if (last === null) throw new Error('the coordinator ended WatchRound without a status');
  return last.phase === 'ROUND_PHASE_COMPLETED' || !TERMINAL_PHASES.has(last.phase) ? 0 : 3;
}

async function download(values, io) {
  required(values, ['out']);
  const round = integer(values.round, 'round', { min: 1 });
  const layer = integer(values.layer, 'layer');
  const client = coordinatorFrom(values);
  try {
    const { header, payload, shape } = await client.downloadUpdate(round, layer);
    writeFileSync(values.out, payload);
    io.out(`wrote ${values.out}: ΔW of round ${round} layer ${layer}, shape [${shape.join(', ')}], float64 little-endian, ` +
      `sha256 ${Buffer.from(header.sha256).toString('hex')}`);
    return 0;
  } finally {
    client.close();
  }
}

async function party(values, io) {
  required(values, ['config']);
  try {
    const result = await runParty(values.config);
    io.out(JSON.stringify({ round_id: result.round_id, phase: result.phase, out_dir: result.out_dir }));
    return 0;
  } catch (error) {
    if (error instanceof RoundAborted) {
      io.err(`collabedit-node: ${error.message}`);
      return 3;
    }
    throw error;
  }
}

const HANDLERS = { submit, watch, download, party };

/**
 * Runs the CLI; returns the exit status. io: {out(line), err(line)} (default: stdout, stderr).
 * Errors become one line on io.err: bad usage or input exits 2, anything else 1.
 */
export async function main(argv, io = { out: (line) => console.log(line), err: (line) => process.stderr.write(`${line}\n`) }) {
  try {
    return await dispatch(argv, io);
  } catch (error) {
    const usage = error instanceof UsageError;
    io.err(`collabedit-node: ${usage ? error.message : describeError(error)}`);
    if (process.env.COLLABEDIT_NODE_DEBUG && error.stack) io.err(error.stack);
    return usage ? 2 : 1;
  }
}

async function dispatch(argv, io) {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    io.out(USAGE);
    return command ? 0 : 2;
  }
  const handler = HANDLERS[command];
  if (!handler) throw new UsageError(`unknown command ${JSON.stringify(command)}; commands: ${Object.keys(HANDLERS).join(', ')}`);
  if (rest.includes('--help') || rest.includes('-h')) {
    io.out(USAGE);
    return 0;
  }
  let values;
  try {
    ({ values } = parseArgs({ args: rest, options: COMMANDS[command], strict: true, allowPositionals: false }));
  } catch (error) {
    throw new UsageError(`${command}: ${error.message.split('\n')[0]}`);
  }
  return handler(values, io);
}
