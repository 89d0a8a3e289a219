"""`collabedit party run --config FILE [--insecure]`: one organisation's party daemon.

It holds the model (or synthetic statistics), the private edit queue, and a channel to the
coordinator; it serves PartyService on loopback for the organisation's own tools. A round runs in
its own thread: join -> keys -> steps -> checkpoint -> evaluation, and its result is recorded.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

from collabedit_secure.editing.requests import RequestError
from collabedit_secure.protocol.fixedpoint import FixedPointOverflowError
from collabedit_secure.rpc.channels import GRPC_OPTIONS, PARTY_SERVICE, serve_health_and_reflection
from collabedit_secure.rpc.generated import coordinator_pb2_grpc, party_pb2_grpc

from .config import PartyConfig
from .queue import EditQueue
from .round_client import RoundAborted, RoundClient, RoundError, phase_name


class StartRoundError(Exception):
    """StartRound cannot start a round; `code` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # the queue, checkpoints and round results are the party's secrets
    return path


def _write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)  # atomic: a reader never sees a half-written port


class PartyDaemon:
    def __init__(self, config: PartyConfig, insecure: bool = False, log: logging.Logger | None = None):
        self.config, self.insecure = config, insecure
        self.log = log or logging.getLogger(f"collabedit.party.{config.party_id}")
        self.state_dir = _private_dir(config.state_dir)
        _private_dir(self.state_dir / "rounds")
        self.queue = EditQueue(self.state_dir / "queue.db")
        requeued = self.queue.requeue_interrupted()
        if requeued:
            self.log.warning("%d requests were in a round when the daemon last stopped; queued again", requeued)
        self.identity = None
        if config.tls is not None:
            from collabedit_secure.rpc.tls import load_identity

            self.identity = load_identity(config.tls.cert, config.tls.key, config.tls.ca)
        if insecure:
            self.log.warning("INSECURE: no TLS to the coordinator; this party's identity travels as plain metadata "
                             "(x-collabedit-party). Never use this outside a test on one machine.")
            self.channel = grpc.insecure_channel(config.coordinator, options=GRPC_OPTIONS)
        else:
            from collabedit_secure.rpc.tls import channel_credentials

            self.channel = grpc.secure_channel(config.coordinator, channel_credentials(self.identity),
                                               options=GRPC_OPTIONS)
        self._channel_state = None
        self.channel.subscribe(self._on_state)
        self.stub = coordinator_pb2_grpc.CoordinatorServiceStub(self.channel)
        self.engine = self._make_engine()
        self.last_checkpoint = self.engine.restore(self.queue.results())
        self._lock = threading.Lock()
        self.client: RoundClient | None = None
        self.round_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.server = None
        self.port = None

    def _on_state(self, state) -> None:
        self._channel_state = state

    @property
    def connected(self) -> bool:
        return self._channel_state == grpc.ChannelConnectivity.READY

    def _make_engine(self):
        from .engine import ModelEngine, SyntheticEngine

        started = time.perf_counter()
        engine = SyntheticEngine(self.config, self.log) if self.config.synthetic else ModelEngine(self.config, self.log)
        self.log.info("engine ready in %.1f s (%s)", time.perf_counter() - started, type(engine).__name__)
        return engine

    # ------------------------------------------------------------------ serving

    def start(self) -> int:
        from .service import PartyServicer

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=GRPC_OPTIONS)
        party_pb2_grpc.add_PartyServiceServicer_to_server(PartyServicer(self), self.server)
        self.health = serve_health_and_reflection(self.server, [PARTY_SERVICE])
        self.port = self.server.add_insecure_port(self.config.listen)  # loopback only (config refuses others)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        self.server.start()
        if self.config.port_file is not None:
            _write_port_file(self.config.port_file, self.port)
        self.log.info("party %s serving PartyService on %s:%d", self.config.party_id, self.config.listen_host,
                      self.port)
        if self.config.auto_start:
            threading.Thread(target=self._auto_loop, name="auto-start", daemon=True).start()
        return self.port

    def stop(self, grace: float = 2.0) -> None:
        self._stop.set()
        if self.server is not None:
            self.health.enter_graceful_shutdown()
            self.server.stop(grace).wait()
        if self.round_thread is not None:
            self.round_thread.join(timeout=grace)
        self.channel.close()
        self.queue.close()

    def wait(self) -> None:
        while not self._stop.wait(0.5):
            pass

    def _auto_loop(self) -> None:
        """Join a round whenever at least min_batch requests wait (auto_start)."""
        failures = 0
        while not self._stop.wait(1.0 if failures == 0 else min(30.0, 2.0 ** failures)):
            if self.busy or self.queue.count() < self.config.min_batch:
                continue
            try:
                self.start_round()
                failures = 0
            except StartRoundError as error:
                failures += 1
                self.log.warning("auto-start: %s", error)

    # ------------------------------------------------------------------ rounds

    @property
    def busy(self) -> bool:
        return self.round_thread is not None and self.round_thread.is_alive()

    def new_client(self) -> RoundClient:
        c = self.config
        return RoundClient(self.stub, self.identity, self.identity.ca_pem if self.identity else None, c.federation_id,
                           self.engine.fingerprints, self.log, party_id=c.party_id, insecure=self.insecure,
                           rpc_timeout_s=c.timeout("rpc"), join_deadline_s=c.timeout("join"),
                           phase_timeout_s=c.timeout("phase"), stall=os.environ.get("COLLABEDIT_TEST_STALL"),
                           he_workers=c.he_workers)

    def start_round(self) -> tuple[int, int]:
        """Join the open round with the queued requests; the round goes on in a thread."""
        with self._lock:
            if self.busy:
                raise StartRoundError(grpc.StatusCode.FAILED_PRECONDITION,
                                      f"already in round {self.client.round_id}")
            queued = self.queue.count()
            if queued == 0:
                raise StartRoundError(grpc.StatusCode.FAILED_PRECONDITION, "no queued edit requests")
            if queued < self.config.min_batch:
                raise StartRoundError(grpc.StatusCode.FAILED_PRECONDITION,
                                      f"{queued} queued requests, min_batch is {self.config.min_batch}")
            client = self.new_client()
            try:
                client.join()
            except RoundError as error:
                raise StartRoundError(grpc.StatusCode.UNAVAILABLE, str(error)) from None
            except grpc.RpcError as error:
                raise StartRoundError(error.code(), f"the coordinator refused to let this party join: "
                                                    f"{error.details()}") from None
            batch = self.queue.take_batch(client.round_id, self.config.max_batch)
            self.client = client
            self.round_thread = threading.Thread(target=self._run_round, args=(client, batch),
                                                 name=f"round-{client.round_id}", daemon=True)
            self.round_thread.start()
            return client.round_id, len(batch)

    def _run_round(self, client: RoundClient, batch) -> None:
        round_id = client.round_id
        result = {"round_id": round_id, "case_ids": [e.case_id for e in batch], "applied_layers": [],
                  "checkpoint_path": "", "delta_path": "", "metrics": None, "error": ""}
        round_dir = self.state_dir / "rounds" / str(round_id)
        outcome, started = "QUEUED", time.perf_counter()
        try:
            client.wait_roster()
            client.setup_keys()
            result.update(self.engine.run_round(client, batch, round_dir))
            result["phase"], outcome = "COMPLETED", "APPLIED"
            self.last_checkpoint = result["checkpoint_path"]
            self.log.info("round %d COMPLETED: %d edits applied, checkpoint %s", round_id, len(batch),
                          result["checkpoint_path"])
        except RoundAborted as error:  # the federation gave up: the edits wait for the next round
            result["phase"], result["error"] = phase_name(error.phase), str(error)
            self.log.error("round %d %s; %d requests queued again", round_id, error, len(batch))
        except (FixedPointOverflowError, RequestError) as error:  # retrying cannot help these edits
            result["phase"], result["error"], outcome = "FAILED", str(error), "FAILED"
            self.log.error("round %d: this party refused to go on: %s", round_id, error)
        except Exception as error:  # noqa: BLE001 - any local failure: leave the round, keep the edits
            result["phase"], result["error"] = "FAILED", f"{type(error).__name__}: {error}"
            self.log.exception("round %d failed at this party; requests queued again", round_id)
        finally:
            stats = client.stats.as_dict()
            seconds = {**stats["stage_seconds"]}
            for stage, value in (result.pop("stage_seconds", None) or {}).items():
                seconds[stage] = seconds.get(stage, 0.0) + value
            result.update(stage_seconds=seconds, bytes_sent=sum(stats["bytes_sent"].values()),
                          bytes_received=sum(stats["bytes_received"].values()),
                          bytes_sent_by_stage=stats["bytes_sent"], bytes_received_by_stage=stats["bytes_received"],
                          wall_seconds=time.perf_counter() - started, status=_status_dict(client.status),
                          # the daemon's peak resident memory so far (Linux reports ru_maxrss in KiB)
                          peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
            self.queue.finish_round(round_id, outcome, result["error"])
            self.queue.save_result(round_id, result)
            if round_dir.is_dir():
                (round_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))


def _status_dict(status) -> dict | None:
    if status is None:
        return None
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(status)


def run(config_path: str, insecure: bool = False) -> int:
    """Entry point of `collabedit party run`: serve until SIGTERM / SIGINT."""
    import signal

    from .config import ConfigError, load_config

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = load_config(config_path, insecure=insecure)
    except ConfigError as error:
        print(f"collabedit party: error: {error}", file=sys.stderr)
        return 2
    daemon = PartyDaemon(config, insecure=insecure)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    daemon.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        daemon.stop()
    return 0


__all__ = ["PartyDaemon", "StartRoundError", "run"]
