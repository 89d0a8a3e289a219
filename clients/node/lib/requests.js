// Edit request files, as `collabedit edit --requests` reads them (collabedit_secure/pipeline.py,
// editing/requests.py), turned into PartyService EditRequest messages:
//
// - a JSON list of plain requests: {"case_id"?, "prompt", "subject", "target_new", "target_true"?,
//   "relation_id"?} (prompt with one "{}" subject slot; case_id defaults to the index);
// - a CounterFact / MultiCounterFact list: {"case_id", "requested_rewrite": {"prompt", "subject",
//   "target_new": {"str": ...} or a string, "target_true"?, "relation_id"?}, "paraphrase_prompts"?,
//   "neighborhood_prompts"?}.
//
// The structure is checked here (one clear error for the first bad request); the daemon checks each
// request's content and answers which it refused and why.

import { readFileSync } from 'node:fs';

import { UsageError } from './channels.js';

export const PLAIN_REQUEST_KEYS = new Set(['case_id', 'prompt', 'subject', 'target_new', 'target_true', 'relation_id']);

function fail(path, message) {
  return new UsageError(`${path}: ${message}`);
}

function caseIdOf(path, value, index) {
  if (value === undefined) return String(index);
  if (typeof value === 'string' || (typeof value === 'number' && Number.isInteger(value))) return String(value);
  throw fail(path, `edit request ${index}: case_id must be an integer or a string, got ${JSON.stringify(value)}`);
}

function text(path, where, record, key, required) {
  const value = record[key];
  if (value === undefined || value === null) {
    if (required) throw fail(path, `${where}: no ${JSON.stringify(key)}`);
    return undefined;
  }
  const str = value !== null && typeof value === 'object' && !Array.isArray(value) ? value.str : value;
  if (typeof str !== 'string') {
    throw fail(path, `${where}: ${key} must be a string${key.startsWith('target') ? ' or {"str": string}' : ''}, got ${JSON.stringify(value)}`);
  }
  return str;
}

function strings(path, where, record, key) {
  const value = record[key];
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw fail(path, `${where}: ${key} must be a list of strings`);
  return value.map((item, i) => {
    if (typeof item === 'string') return item;
    if (item && typeof item === 'object' && typeof item.prompt === 'string') return item.prompt; // zsRE-style {prompt, target}
    throw fail(path, `${where}: ${key}[${i}] must be a string`);
  });
}

/** EditRequest messages (proto field names) from a parsed JSON document. */
export function editRequestsFromJson(data, path = 'requests') {
  if (!Array.isArray(data)) throw fail(path, 'expected a JSON list of edit requests');
  if (data.length === 0) throw fail(path, 'the list of edit requests is empty');
  const out = [];
  data.forEach((record, index) => {
    if (record === null || typeof record !== 'object' || Array.isArray(record)) {
      throw fail(path, `edit request ${index}: expected a JSON object, got ${JSON.stringify(record)}`);
    }
    const caseId = caseIdOf(path, record.case_id, index);
    const where = `edit request ${JSON.stringify(caseId)}`;
    let rewrite = record;
    let extra = { paraphrase_prompts: [], neighborhood_prompts: [] };
    if ('requested_rewrite' in record) {
      rewrite = record.requested_rewrite;
      if (rewrite === null || typeof rewrite !== 'object' || Array.isArray(rewrite)) {
        throw fail(path, `${where}: requested_rewrite must be an object`);
      }
      extra = {
        paraphrase_prompts: strings(path, where, record, 'paraphrase_prompts'),
        neighborhood_prompts: strings(path, where, record, 'neighborhood_prompts'),
      };
    } else {
      const unknown = Object.keys(record).filter((k) => !PLAIN_REQUEST_KEYS.has(k)).sort();
      if (unknown.length) {
        throw fail(path, `${where}: unknown field(s) ${unknown.map((k) => JSON.stringify(k)).join(', ')}; a plain request has ` +
          `${[...PLAIN_REQUEST_KEYS].sort().join(', ')} (prompt, subject and target_new required), or use CounterFact records`);
      }
    }
    const request = {
      case_id: caseId,
      prompt: text(path, where, rewrite, 'prompt', true),
      subject: text(path, where, rewrite, 'subject', true),
      target_new: text(path, where, rewrite, 'target_new', true),
      ...extra,
    };
    const targetTrue = text(path, where, rewrite, 'target_true', false);
    if (targetTrue !== undefined) request.target_true = targetTrue;
    const relation = rewrite.relation_id;
    if (relation !== undefined && relation !== null) {
      if (typeof relation !== 'string') throw fail(path, `${where}: relation_id must be a string`);
      request.relation_id = relation;
    }
    out.push(request);
  });
  const seen = new Map();
  for (const r of out) {
    if (seen.has(r.case_id)) throw fail(path, `edit requests ${seen.get(r.case_id)} and ${out.indexOf(r)} share the id ${JSON.stringify(r.case_id)}; give every request its own case_id`);
    seen.set(r.case_id, out.indexOf(r));
  }
  return out;
}

/** EditRequest messages from a JSON file. */
export function readEditRequests(path) {
  let raw;
  try {
    raw = readFileSync(path, 'utf8');
  } catch (error) {
    throw fail(path, error.code === 'ENOENT' ? 'no such file' : error.message);
  }
  let data;
  try {
    data = JSON.parse(raw);
  } catch (error) {
    throw fail(path, `not valid JSON (${error.message})`);
  }
  return editRequestsFromJson(data, path);
}
