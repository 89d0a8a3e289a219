"""The coordinator service: roster, round state machine, durable state, secure-sum solve.

- config.py   the coordinator's YAML/TOML configuration (federation, roster, threshold, C0, TLS...)
- store.py    durable state: SQLite (WAL) rows + accumulator/result files, crash-safe generations
- rounds.py   the round state machine (independent of gRPC, driven by RPCs and a deadline tick)
- service.py  the gRPC CoordinatorService: identity from mTLS, exact status codes, chunk streams
- server.py   serve(config) -> RunningCoordinator, and the `collabedit coordinator serve` entry
- cli.py      add_commands(subparsers): `coordinator serve` and `certs init`

The round flow and the wire rules it implements are in docs/federation.md.
"""
