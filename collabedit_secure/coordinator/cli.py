"""`collabedit coordinator serve` and `collabedit certs init`: add_commands(subparsers) registers both.

Handlers are set as `handler` (what collabedit_secure/cli.py's main calls); they raise ValueError /
OSError with a message for the person, which that main prints.
"""

from __future__ import annotations

import argparse


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    coordinator = subparsers.add_parser("coordinator", help="run a federation's coordinator")
    actions = coordinator.add_subparsers(dest="coordinator_command", required=True)
    serve = actions.add_parser("serve", help="serve CoordinatorService until SIGINT/SIGTERM")
    serve.add_argument("--config", required=True, help="coordinator YAML or TOML (see parties/coordinator.yaml)")
    serve.add_argument("--insecure", action="store_true",
                       help="no TLS; identity from x-collabedit-party metadata (debugging only)")
    serve.set_defaults(handler=_serve)

    certs = subparsers.add_parser("certs", help="development PKI for a federation")
    certs_actions = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_actions.add_parser("init", help="create a CA and certificates for the coordinator and parties")
    init.add_argument("--parties", required=True, help="comma-separated party ids, e.g. a,b,c")
    init.add_argument("--out", required=True, help="folder to write ca.pem, coordinator.pem, <party>.pem and keys")
    init.set_defaults(handler=_certs_init)


def _serve(args) -> int:
    from .server import main

    return main(args)


def _certs_init(args) -> int:
    from collabedit_secure.rpc.tls import init_federation_pki

    parties = [p.strip() for p in args.parties.split(",") if p.strip()]
    pki = init_federation_pki(args.out, parties)  # refuses to overwrite; the CLI prints its errors
    print(f"wrote CA {pki.ca_cert} and certificates for {', '.join(sorted(pki.certs))} in {args.out}")
    print("ca.key signs certificates: keep it offline in a real deployment")
    return 0
