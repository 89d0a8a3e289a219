// Loads the collabedit.v1 contract from the repository's .proto files at run time (the same files
// the Python stubs are generated from): proto-loader with proto/ as include directory, and
// protobufjs's bundled well-known types (google/protobuf/duration.proto, timestamp.proto).
//
// Conversions: field names as written in the .proto (snake_case), enums as their names
// ("ROUND_PHASE_UPLOADING"), uint64 / int64 as decimal strings (they can exceed 2^53), bytes as
// Buffers, default values filled in, and the name of the set oneof member in `part`.

import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

export const PROTO_FILES = ['collabedit/v1/common.proto', 'collabedit/v1/coordinator.proto', 'collabedit/v1/party.proto'];

export const LOADER_OPTIONS = Object.freeze({
  keepCase: true,
  longs: String,
  enums: String,
  bytes: Buffer,
  defaults: true,
  arrays: true,
  oneofs: true,
});

/** The proto/ directory: $COLLABEDIT_PROTO_DIR, else ../../proto from this package (the repository's). */
export function protoDir() {
  const dir = process.env.COLLABEDIT_PROTO_DIR || resolve(PACKAGE_ROOT, '..', '..', 'proto');
  if (!existsSync(join(dir, PROTO_FILES[0]))) {
    throw new Error(`collabedit .proto files not found in ${dir}; set COLLABEDIT_PROTO_DIR to the repository's proto/ folder`);
  }
  return dir;
}

export function conformanceDir() {
  return join(process.env.COLLABEDIT_PROTO_DIR || resolve(PACKAGE_ROOT, '..', '..', 'proto'), 'conformance');
}

let cached = null;

/** The loaded package: {CoordinatorService, PartyService, ...message types} of collabedit.v1. */
export function loadProtos(dir = protoDir()) {
  if (cached && cached.dir === dir) return cached.pkg;
  const definition = protoLoader.loadSync(PROTO_FILES, { ...LOADER_OPTIONS, includeDirs: [dir] });
  const pkg = grpc.loadPackageDefinition(definition).collabedit.v1;
  cached = { dir, pkg, definition };
  return pkg;
}

/** The proto-loader package definition (message and enum descriptors). */
export function packageDefinition(dir = protoDir()) {
  loadProtos(dir);
  return cached.definition;
}

/** Names of an enum's values, in number order. */
export function enumValues(enumName, dir = protoDir()) {
  const type = packageDefinition(dir)[`collabedit.v1.${enumName}`];
  if (!type || !type.type || !type.type.value) throw new Error(`no enum collabedit.v1.${enumName}`);
  return type.type.value.map((v) => v.name);
}
