"""`collabedit party run --config FILE [--insecure]` (wired into collabedit_secure/cli.py by add_commands)."""

from __future__ import annotations

import argparse
import sys


def _run(args: argparse.Namespace) -> None:
    from .daemon import run

    code = run(args.config, insecure=args.insecure)
    if code:
        sys.exit(code)


def add_commands(subparsers) -> None:
    party = subparsers.add_parser("party", help="a party daemon: private edit queue, local API, its side of rounds")
    commands = party.add_subparsers(dest="party_command", required=True)
    run = commands.add_parser("run", help="serve the party daemon until SIGTERM / Ctrl-C")
    run.add_argument("--config", required=True, help="party configuration, YAML or TOML (see parties/a.yaml)")
    run.add_argument("--insecure", action="store_true",
                     help="no TLS to the coordinator (identity sent as plain metadata): tests on one machine only")
    run.set_defaults(handler=_run)


def main(argv: list[str] | None = None) -> int:
    """`python -m collabedit_secure.party run --config FILE`: the same command without the main CLI."""
    parser = argparse.ArgumentParser(prog="collabedit")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["party", *(sys.argv[1:] if argv is None else argv)])
    args.handler(args)
    return 0
