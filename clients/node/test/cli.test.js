// The CLI's refusals: one line on stderr and a non-zero status, before any network call.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { main } from '../lib/cli.js';

const CLI = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'bin', 'collabedit-node.js');
const dir = mkdtempSync(join(tmpdir(), 'collabedit-node-cli-'));

/** The CLI in a child process (exit status and streams as a user sees them). */
function spawn(...args) {
  const result = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 30_000 });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** The CLI's main() in this process (fast): the same status and lines. */
async function run(...args) {
  const out = [];
  const err = [];
  const code = await main(args, { out: (line) => out.push(line), err: (line) => err.push(line) });
  return { code, stdout: out.map((l) => `${l}\n`).join(''), stderr: err.map((l) => `${l}\n`).join('') };
}

test('usage errors exit 2 with one line', async () => {
  const requests = join(dir, 'requests.json');
  writeFileSync(requests, JSON.stringify([{ prompt: '{} is', subject: 's', target_new: 't' }]));
  const cases = [
    [[], /usage: collabedit-node/],
    [['frobnicate'], /unknown command "frobnicate"/],
    [['submit', '--requests', requests], /missing --party/],
    [['submit', '--party', '10.1.2.3:50051', '--requests', requests], /served only on loopback/],
    [['submit', '--party', 'nonsense', '--requests', requests], /is not HOST:PORT/],
    [['submit', '--party', '127.0.0.1:1', '--requests', join(dir, 'none.json')], /no such file/],
    [['watch', '--coordinator', '127.0.0.1:1'], /missing --ca, --cert, --key/],
    [['watch', '--coordinator', '127.0.0.1:1', '--ca', join(dir, 'x'), '--cert', 'y', '--key', 'z'], /cannot read CA certificate/],
    [['watch', '--round', 'one'], /--round must be an integer/],
    [['download', '--coordinator', '127.0.0.1:1', '--ca', 'a', '--cert', 'b', '--key', 'c', '--layer', '0', '--out', 'o'], /missing --round/],
    [['download', '--bogus'], /Unknown option '--bogus'/],
    [['party'], /missing --config/],
    [['party', '--config', join(dir, 'none.json')], /no such file/],
  ];
  for (const [args, message] of cases) {
    const { code, stdout, stderr } = await run(...args);
    assert.equal(code, 2, `${args.join(' ')}: ${stderr}`);
    const text = args.length ? stderr : stdout;
    assert.match(text, message, args.join(' '));
    if (args.length) assert.equal(stderr.trim().split('\n').length, 1, stderr);
  }
  assert.equal((await run('--help')).code, 0);
  const child = spawn('submit', '--party', '10.1.2.3:50051', '--requests', requests);
  assert.equal(child.code, 2);
  assert.match(child.stderr, /^collabedit-node: party address 10\.1\.2\.3:50051: PartyService is served only on loopback/);
  assert.equal(child.stderr.trim().split('\n').length, 1, child.stderr);
  assert.equal(spawn().code, 2);
});

test('an unreachable daemon is a one-line error with status 1', () => {
  const requests = join(dir, 'requests.json');
  const { code, stderr } = spawn('submit', '--party', '127.0.0.1:1', '--requests', requests, '--timeout', '2');
  assert.equal(code, 1, stderr);
  assert.match(stderr, /^collabedit-node: (UNAVAILABLE|DEADLINE_EXCEEDED): /);
  assert.equal(stderr.trim().split('\n').length, 1, stderr);
});
