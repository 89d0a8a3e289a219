#!/usr/bin/env node
// collabedit-node: queue edits at a party daemon, follow a round, download ΔW, or run a masking party.
//
//   collabedit-node submit   --party HOST:PORT --requests FILE.json
//   collabedit-node watch    --coordinator HOST:PORT --ca CA --cert CERT --key KEY [--round N] [--json]
//   collabedit-node download --coordinator HOST:PORT --ca CA --cert CERT --key KEY --round N --layer L --out FILE
//   collabedit-node party    --config FILE.json
//
// Exit status: 0 success; 1 an error (one line on stderr); 2 bad usage; 3 the round ended FAILED or
// ROLLED_BACK (watch, party); 4 submit: the daemon refused some requests.

import { main } from '../lib/cli.js';

// grpc-js sends the target host as TLS server name; for an IP address Node warns (DEP0123) on every
// connection. Certificates are still checked against the IP, so the warning is noise here.
process.removeAllListeners('warning');
process.on('warning', (warning) => {
  if (warning.code !== 'DEP0123') process.stderr.write(`${warning.name}: ${warning.message}\n`);
});

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
  // Channels are closed by now; should any gRPC handle linger, do not let it keep the process alive.
  setTimeout(() => process.exit(code), 2000).unref();
});
