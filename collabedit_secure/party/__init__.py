"""The party daemon: private edit queue, local API, and its side of a round (docs/federation.md).

- round_client.py  the protocol side of one round, model-free: join, keys, masked uploads, ΔW downloads
- engine.py        what the party computes: MEMIT on its model, or synthetic statistics (tests)
- queue.py         the private edit queue (SQLite, WAL, 0600)
- config.py        the daemon's YAML/TOML configuration
- service.py       PartyService, the local loopback API
- daemon.py        `collabedit party run`: all of the above in one process
- cli.py           add_commands(subparsers) for the main CLI
"""
