// Request files, statistics folders, party configs and the unmasking refusal rules.
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { UsageError } from '../lib/channels.js';
import { MaskingParty, RoundError, loadPartyConfig } from '../lib/party.js';
import { Share } from '../lib/protocol/shamir.js';
import { editRequestsFromJson, readEditRequests } from '../lib/requests.js';
import { StatisticsError, StatisticsFolder } from '../lib/stats.js';

const dir = mkdtempSync(join(tmpdir(), 'collabedit-node-test-'));

test('plain and CounterFact request lists become EditRequest messages', () => {
  const plain = editRequestsFromJson([
    { prompt: '{} is a citizen of', subject: 'Danielle Darrieux', target_new: 'France' },
    { case_id: 7, prompt: '{} plays', subject: 'X', target_new: ' piano', target_true: 'violin', relation_id: 'P1303' },
  ]);
  assert.deepEqual(plain[0], { case_id: '0', prompt: '{} is a citizen of', subject: 'Danielle Darrieux', target_new: 'France',
    paraphrase_prompts: [], neighborhood_prompts: [] });
  assert.equal(plain[1].case_id, '7');
  assert.equal(plain[1].target_true, 'violin');
  assert.equal(plain[1].relation_id, 'P1303');
  const [cf] = editRequestsFromJson([{ case_id: 0, requested_rewrite: { prompt: '{} is in', subject: 'Paris',
    target_new: { str: 'Rome' }, target_true: { str: 'France' }, relation_id: 'P17' },
  paraphrase_prompts: ['Where is Paris? It is in'], neighborhood_prompts: ['Lyon is in'] }]);
  assert.equal(cf.target_new, 'Rome');
  assert.equal(cf.target_true, 'France');
  assert.deepEqual(cf.paraphrase_prompts, ['Where is Paris? It is in']);
  assert.deepEqual(cf.neighborhood_prompts, ['Lyon is in']);
});

test('malformed request files fail with one message naming the request', () => {
  const bad = [
    [{}, /JSON list/], [[], /empty/], [[3], /expected a JSON object/], [[{ prompt: '{}', subject: 's' }], /no "target_new"/],
    [[{ prompt: '{}', subject: 's', target_new: 't', target_neww: 'x' }], /unknown field\(s\) "target_neww"/],
    [[{ case_id: true, prompt: '{}', subject: 's', target_new: 't' }], /case_id must be/],
    [[{ prompt: 1, subject: 's', target_new: 't' }], /prompt must be a string/],
    [[{ case_id: 1, prompt: '{}', subject: 's', target_new: 't' }, { case_id: '1', prompt: '{}', subject: 's', target_new: 't' }], /share the id "1"/],
    [[{ requested_rewrite: 'x' }], /requested_rewrite must be an object/],
  ];
  for (const [data, message] of bad) assert.throws(() => editRequestsFromJson(data, 'f.json'), (e) => e instanceof UsageError && message.test(e.message), JSON.stringify(data));
  const path = join(dir, 'broken.json');
  writeFileSync(path, '[{"prompt": ');
  assert.throws(() => readEditRequests(path), /not valid JSON/);
  assert.throws(() => readEditRequests(join(dir, 'missing.json')), /no such file/);
});

function writeStats(folder, layers) {
  const manifest = { format: 'collabedit-stats/1', layers: {} };
  for (const [layer, dIn, dOut] of layers) {
    manifest.layers[layer] = { d_in: dIn, d_out: dOut };
    writeFileSync(join(folder, `layer-${layer}-s_kk_upper.f64`), Buffer.from(new Float64Array((dIn * (dIn + 1)) / 2).fill(layer).buffer));
    writeFileSync(join(folder, `layer-${layer}-s_rk.f64`), Buffer.from(new Float64Array(dOut * dIn).fill(-layer).buffer));
  }
  writeFileSync(join(folder, 'manifest.json'), JSON.stringify(manifest));
}

test('statistics folders are read and checked against the round', () => {
  const folder = mkdtempSync(join(dir, 'stats-'));
  writeStats(folder, [[3, 4, 2], [1, 2, 5]]);
  const stats = new StatisticsFolder(folder);
  assert.deepEqual(stats.layers(), [1, 3]);
  const layer = stats.read(3, { dIn: 4, dOut: 2 });
  assert.equal(layer.sKkUpper.length, 10);
  assert.equal(layer.sRk.length, 8);
  assert.equal(layer.sRk[0], -3);
  assert.throws(() => stats.read(3, { dIn: 5, dOut: 2 }), /the round expects 2 x 5/);
  assert.throws(() => stats.read(2), /no layer 2/);
  writeFileSync(join(folder, 'layer-1-s_rk.f64'), Buffer.alloc(8));
  assert.throws(() => stats.read(1), (e) => e instanceof StatisticsError && /has 8 bytes, expected 80/.test(e.message));
  assert.throws(() => new StatisticsFolder(join(dir, 'nowhere')), /missing/);
  writeFileSync(join(folder, 'manifest.json'), '{"layers": {"x": {}}}');
  assert.throws(() => new StatisticsFolder(folder), /not a layer number/);
});

test('party configs are checked and their paths resolved next to the file', () => {
  const fp = 'ab'.repeat(32);
  const good = { federation_id: 'f', coordinator: '127.0.0.1:1', tls: { ca: 'ca.pem', cert: 'a.pem', key: 'a.key' },
    fingerprints: { model: fp, hparams: fp, c0: fp }, statistics: 'stats', out: '/abs/out' };
  const path = join(dir, 'party.json');
  writeFileSync(path, JSON.stringify(good));
  const config = loadPartyConfig(path);
  assert.equal(config.tls.ca, join(dir, 'ca.pem'));
  assert.equal(config.statistics, join(dir, 'stats'));
  assert.equal(config.out, '/abs/out');
  assert.deepEqual(config.timeouts, { join: 60, phase: 600, rpc: 30 });
  const cases = [
    [{ ...good, extra: 1 }, /unknown key\(s\) extra/], [{ ...good, fingerprints: { ...good.fingerprints, c0: 'AB' } }, /fingerprints.c0/],
    [{ ...good, tls: undefined }, /tls must be/], [{ ...good, coordinator: '' }, /coordinator must be/],
    [{ ...good, timeouts: { join: -1 } }, /timeouts.join/], [{ ...good, party_id: 'a b' }, /invalid/],
  ];
  for (const [data, message] of cases) {
    writeFileSync(path, JSON.stringify(data));
    assert.throws(() => loadPartyConfig(path), (e) => e instanceof UsageError && message.test(e.message), message.source);
  }
  writeFileSync(path, 'nope');
  assert.throws(() => loadPartyConfig(path), /not valid JSON/);
});

test('an unmasking plan asking for both share kinds of one party is refused, and nothing is revealed', () => {
  const share = (x, y) => new Share(x, y);
  const party = {
    me: 'b', params: { roster: ['a', 'b', 'c'] }, revealed: new Map(),
    shares: new Map([['a', [share(2, 1n), share(2, 2n)]], ['b', [share(2, 3n), share(2, 4n)]], ['c', [share(2, 5n), share(2, 6n)]]]),
  };
  const reveals = (survivors, dropped) => MaskingParty.prototype.revealsFor.call(party, survivors, dropped);
  assert.throws(() => reveals(['a', 'b'], ['a']), /REFUSED.*both share kinds of a/);
  assert.throws(() => reveals(['a', 'c'], []), /does not list this party/);
  assert.equal(party.revealed.size, 0);
  const out = reveals(['a', 'b'], ['c']);
  assert.deepEqual(out.map((s) => [s.owner_party_id, s.kind, s.x, s.y.length]), [
    ['a', 'SHARE_KIND_SELF_MASK_SEED', 2, 66], ['b', 'SHARE_KIND_SELF_MASK_SEED', 2, 66], ['c', 'SHARE_KIND_MASK_KEY', 2, 66]]);
  assert.equal(out[2].y[65], 6);
  // later in the round, c may not become a survivor: its mask-key share was revealed
  assert.throws(() => reveals(['b', 'c'], []), (e) => e instanceof RoundError && /other kind was already revealed for c/.test(e.message));
});
