"""A whole federation on this machine, as real processes on loopback: the demo's and the tests' harness.

    fed = LocalFederation(root, ["a", "b", "c"], coordinator={...}, party={...})
    with fed:                        # writes PKI + configs, starts every process, waits for SERVING
        fed.party_stub("a").SubmitEditRequests(...)
    # every process is terminated (then killed) on exit, whatever happened

Each process logs to root/logs/<name>.log; `fed.describe_logs()` says where when something fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from collabedit_secure.rpc.generated import coordinator_pb2_grpc, party_pb2_grpc
from collabedit_secure.rpc.tls import channel_credentials, init_federation_pki, load_identity


# Four processes share this machine's cores: with one math thread each, no OpenMP thread spins
# waiting for a sibling that another process has preempted (two threads per process on two cores
# made compute_z 10-40 times slower). The demo computes its global reference on one thread too, so
# both sides run the same kernels.
SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class ProcessFailed(RuntimeError):
    pass


class LocalFederation:
    def __init__(self, root: str | Path, parties: list[str], coordinator: dict, party: dict | None = None,
                 per_party: dict[str, dict] | None = None, federation_id: str = "local-federation",
                 env: dict[str, dict] | None = None):
        self.root, self.parties, self.federation_id = Path(root), list(parties), federation_id
        self.coordinator_fields, self.party_fields = coordinator, party or {}
        self.per_party, self.env = per_party or {}, env or {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.channels: list[grpc.Channel] = []

    # ------------------------------------------------------------------ files

    def write(self) -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self.pki = init_federation_pki(self.root / "pki", self.parties)
        pki = self.root / "pki"
        coordinator = {"federation_id": self.federation_id, "listen": "127.0.0.1:0", "port_file": "coordinator.port",
                       "state_dir": "coordinator-state", "roster": self.parties,
                       "tls": {"ca": str(pki / "ca.pem"), "cert": str(pki / "coordinator.pem"),
                               "key": str(pki / "coordinator.key")}, **self.coordinator_fields}
        (self.root / "coordinator.yaml").write_text(yaml.safe_dump(coordinator, sort_keys=False))
        for party in self.parties:
            config = {"party_id": party, "federation_id": self.federation_id, "coordinator": "PENDING",
                      "listen": "127.0.0.1:0", "port_file": f"{party}.port", "state_dir": f"{party}-state",
                      "tls": {"ca": str(pki / "ca.pem"), "cert": str(pki / f"{party}.pem"),
                              "key": str(pki / f"{party}.key")},
                      **self.party_fields, **self.per_party.get(party, {})}
            (self.root / f"{party}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def _set_coordinator_address(self, address: str) -> None:
        for party in self.parties:
            path = self.root / f"{party}.yaml"
            config = yaml.safe_load(path.read_text())
            config["coordinator"] = address
            path.write_text(yaml.safe_dump(config, sort_keys=False))

    # ------------------------------------------------------------------ processes

    def _spawn(self, name: str, args: list[str]) -> None:
        port_file = self.root / f"{name}.port"
        port_file.unlink(missing_ok=True)
        log = open(self.root / "logs" / f"{name}.log", "ab")
        env = {**os.environ, **SINGLE_THREADED, "PYTHONUNBUFFERED": "1", **self.env.get(name, {})}
        self.procs[name] = subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.root, env=env, start_new_session=True)
        log.close()

    def start_coordinator(self) -> None:
        self._spawn("coordinator", ["collabedit_secure.cli", "coordinator", "serve", "--config",
                                    str(self.root / "coordinator.yaml")])

    def start_party(self, party: str) -> None:
        self._spawn(party, ["collabedit_secure.cli", "party", "run", "--config", str(self.root / f"{party}.yaml")])

    def wait_port(self, name: str, timeout: float) -> int:
        deadline, path = time.monotonic() + timeout, self.root / f"{name}.port"
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise ProcessFailed(f"{name} exited with status {proc.returncode} before serving; "
                                    f"see {self.root / 'logs' / (name + '.log')}")
            if path.is_file() and path.read_text().strip():
                self.ports[name] = int(path.read_text())
                return self.ports[name]
            time.sleep(0.1)
        raise ProcessFailed(f"{name} did not write {path} within {timeout:.0f} s; see {self.log_path(name)}")

    def wait_serving(self, name: str, timeout: float) -> None:
        port = self.wait_port(name, timeout)
        channel = self._coordinator_channel(port) if name == "coordinator" else self._party_channel(port)
        stub, deadline = health_pb2_grpc.HealthStub(channel), time.monotonic() + timeout
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise ProcessFailed(f"{name} is not SERVING on port {port}; see {self.log_path(name)}") from None
            time.sleep(0.1)

    def start(self, timeout: float = 180.0) -> None:
        """Coordinator first (the parties need its port), then every party; all SERVING."""
        self.write()
        self.start_coordinator()
        self.wait_serving("coordinator", timeout)
        self._set_coordinator_address(f"127.0.0.1:{self.ports['coordinator']}")
        for party in self.parties:
            self.start_party(party)
        for party in self.parties:
            self.wait_serving(party, timeout)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)

    def close(self, grace: float = 10.0) -> list[str]:
        """Terminate every process (SIGTERM, then SIGKILL after `grace`); names of those that failed."""
        for channel in self.channels:
            channel.close()
        failed = []
        for name, proc in self.procs.items():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                failed.append(name)
            if proc.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL, 128 + signal.SIGTERM):
                failed.append(name)
        return failed

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ clients

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def describe_logs(self) -> str:
        return "logs: " + ", ".join(str(self.log_path(n)) for n in self.procs)

    def _party_channel(self, port: int) -> grpc.Channel:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.channels.append(channel)
        return channel

    def _coordinator_channel(self, port: int) -> grpc.Channel:
        # Any federation member may read round status: use the first party's certificate.
        identity = load_identity(self.pki.certs[self.parties[0]], self.pki.keys[self.parties[0]], self.pki.ca_cert)
        channel = grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(identity))
        self.channels.append(channel)
        return channel

    def party_stub(self, party: str) -> party_pb2_grpc.PartyServiceStub:
        return party_pb2_grpc.PartyServiceStub(self._party_channel(self.ports[party]))

    def coordinator_stub(self) -> coordinator_pb2_grpc.CoordinatorServiceStub:
        return coordinator_pb2_grpc.CoordinatorServiceStub(self._coordinator_channel(self.ports["coordinator"]))


def wait_results(stubs: dict, round_id: int, timeout: float, poll: float = 0.2) -> dict:
    """party -> GetRoundResultResponse once every party finished round_id (FAILED_PRECONDITION: not yet)."""
    from collabedit_secure.rpc.generated import party_pb2 as ppb

    results, deadline = {}, time.monotonic() + timeout
    while len(results) < len(stubs):
        for party, stub in stubs.items():
            if party in results:
                continue
            try:
                results[party] = stub.GetRoundResult(ppb.GetRoundResultRequest(round_id=round_id), timeout=10)
            except grpc.RpcError as error:
                if error.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                    raise
        if len(results) < len(stubs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"round {round_id} did not finish at {sorted(set(stubs) - set(results))} "
                                   f"within {timeout:.0f} s")
            time.sleep(poll)
    return results
