"""Starting and stopping the coordinator: gRPC server, mTLS, health, the deadline ticker."""

from __future__ import annotations

import os
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc

from collabedit_secure.rpc import tls
from collabedit_secure.rpc.channels import COORDINATOR_SERVICE, GRPC_OPTIONS, serve_health_and_reflection
from collabedit_secure.rpc.generated import coordinator_pb2_grpc

from .config import ConfigError, CoordinatorConfig, load_config
from .rounds import Rounds, log_event
from .service import INSECURE_IDENTITY_KEY, CoordinatorService

TICK_SECONDS = 0.2
WORKERS = 16  # each WatchRound stream holds one while it waits: room for a few parties and their uploads


def _loud(line: str) -> None:
    sys.stderr.write(f"\n!!! {line} !!!\n\n")
    sys.stderr.flush()


@dataclass
class RunningCoordinator:
    server: grpc.Server
    port: int
    rounds: Rounds
    health: object
    _stop_ticking: threading.Event
    _ticker: threading.Thread

    def stop(self, grace: float | None = 1.0) -> None:
        """Reports NOT_SERVING, stops accepting calls, waits up to `grace` s for running ones, closes state."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self._stop_ticking.set()
        self._ticker.join()
        self.rounds.close()
        log_event("coordinator_stopped", port=self.port)

    def wait(self) -> None:
        self.server.wait_for_termination()


def _tick_forever(rounds: Rounds, stop: threading.Event) -> None:
    while not stop.wait(TICK_SECONDS):
        try:
            rounds.tick()
        except Exception as err:  # noqa: BLE001 - the ticker must outlive one bad tick; say what happened
            log_event("tick_error", error=repr(err))


def serve(config: CoordinatorConfig, insecure: bool = False) -> RunningCoordinator:
    """Starts the coordinator on config.host:config.port (0 = a free port) and returns at once."""
    if config.privacy == "plain":
        _loud("PLAIN MODE: the coordinator sees every party's statistics")
    if not insecure and config.tls is None:
        raise ConfigError(f"{config.source}: field 'tls' is required (ca, cert, key); --insecure is for debugging only")
    rounds = Rounds(config)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS), options=list(GRPC_OPTIONS))
    coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(CoordinatorService(rounds, insecure), server)
    health = serve_health_and_reflection(server, [COORDINATOR_SERVICE])
    address = f"[{config.host}]:{config.port}" if ":" in config.host else f"{config.host}:{config.port}"
    try:
        if insecure:
            _loud(f"INSECURE: no TLS, and a party is whoever the '{INSECURE_IDENTITY_KEY}' metadata says; "
                  "for debugging only")
            port = server.add_insecure_port(address)
        else:
            identity = tls.load_identity(config.tls.cert, config.tls.key, config.tls.ca)
            port = server.add_secure_port(address, tls.server_credentials(identity))
    except Exception:
        rounds.close()
        raise
    if not port:
        rounds.close()
        raise OSError(f"cannot listen on {address} (in use, or not an address of this machine)")
    server.start()
    if config.port_file is not None:
        tmp = config.port_file.with_name(config.port_file.name + ".tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, config.port_file)  # readers never see a half-written number
    stop = threading.Event()
    ticker = threading.Thread(target=_tick_forever, args=(rounds, stop), name="coordinator-ticker", daemon=True)
    ticker.start()
    log_event("coordinator_started", federation=config.federation_id, port=port, privacy=config.privacy,
              schedule=config.schedule, roster=",".join(config.roster), threshold=config.threshold)
    return RunningCoordinator(server, port, rounds, health, stop, ticker)


def main(args) -> int:
    """`collabedit coordinator serve --config FILE [--insecure]`: runs until SIGINT or SIGTERM."""
    running = serve(load_config(args.config), insecure=args.insecure)  # errors: the CLI prints them
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    print(f"coordinator listening on port {running.port}", flush=True)
    while not done.wait(1.0):
        pass
    running.stop(grace=5.0)
    return 0

