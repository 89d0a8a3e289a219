"""A party's side of one round (docs/federation.md), with no model: statistics in, ΔW out.

    client = RoundClient(stub, identity, ca_pem, federation_id, fingerprints, log)
    params = client.join()                 # enrol, wait until the roster is fixed
    client.setup_keys()                    # mask/he: signed keys, verified peers, Shamir or CKKS-context boxes
    for step in client.steps():            # {layer: module name}, one per step of the schedule
        deltas = client.exchange_step(step, {layer: (s_kk_upper, s_rk)}, solve)  # solve: HE mode only
        ...apply...; client.report_applied(layer)
    client.wait_finished()                 # COMPLETED, or RoundAborted (FAILED / ROLLED_BACK)

Everything a party sends is checked before it leaves: fixed-point overflow refuses the whole step
before the first byte. Then each tensor is encoded, masked or encrypted a block at a time and
streamed (through a spool file: the header carries the payload's sha256), and each ΔW is downloaded
into an array of its size: beyond its statistics a party holds a block, not the step's payloads.
Costs (seconds, bytes sent/received) are kept per stage in `client.stats`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import grpc
import numpy as np
import torch

from collabedit_secure.blockio import drop_pages
from collabedit_secure.protocol.encoding import Binding
from collabedit_secure.protocol.fixedpoint import FixedPointOverflowError, RoundNumerics
from collabedit_secure.protocol.he import (
    Encryptor, HeError, HeParameters, aggregate_digest, check_encryptable, decrypt_payload, load_secret_context,
    new_secret_context, open_secret_context, public_context_bytes, seal_secret_context, secret_context_bytes,
)
from collabedit_secure.protocol.keys import (
    KeyAdvertisement, KeyAdvertisementError, RoundKeys, check_unique_keys, sign_advertisement, verify_advertisement,
)
from collabedit_secure.protocol.recovery import share_index, split_round_secrets
from collabedit_secure.protocol.shamir import Y_BYTES
from collabedit_secure.protocol.sharebox import ShareBoxError, open_shares, seal_shares
from collabedit_secure.protocol.streaming import BLOCK_WORDS, MaskedEncoder
from collabedit_secure.rpc.generated import common_pb2 as cpb
from collabedit_secure.rpc.generated import coordinator_pb2 as pb

PHASE = cpb.RoundPhase
TERMINAL = {PHASE.ROUND_PHASE_COMPLETED, PHASE.ROUND_PHASE_FAILED, PHASE.ROUND_PHASE_ROLLED_BACK}
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
TENSORS = ("TENSOR_S_KK_UPPER", "TENSOR_S_RK")
PARTY_METADATA_KEY = "x-collabedit-party"  # identity on an --insecure channel (no client certificate)


class RoundError(RuntimeError):
    """This party cannot go on with the round (a local refusal or a protocol violation)."""


class RoundAborted(RoundError):
    """The coordinator ended the round FAILED or ROLLED_BACK; nothing of it may be kept."""

    def __init__(self, phase: int, reason: str):
        super().__init__(f"round {PHASE.Name(phase)}: {reason or 'no reason given'}")
        self.phase, self.reason = phase, reason


def phase_name(phase: int) -> str:
    return PHASE.Name(phase).removeprefix("ROUND_PHASE_")


@dataclass
class StageStats:
    """Wall seconds and gRPC payload bytes per stage ("join", "keys", "mask", "upload", ...)."""

    seconds: dict[str, float] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)

    def add(self, stage: str, seconds: float = 0.0, sent: int = 0, received: int = 0) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        self.sent[stage] = self.sent.get(stage, 0) + sent
        self.received[stage] = self.received.get(stage, 0) + received

    def as_dict(self) -> dict:
        return {"stage_seconds": dict(self.seconds), "bytes_sent": dict(self.sent),
                "bytes_received": dict(self.received)}


class _Timer:
    def __init__(self, stats: StageStats, stage: str):
        self.stats, self.stage = stats, stage

    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.stats.add(self.stage, time.perf_counter() - self.started)


def _sha(data) -> bytes:
    return hashlib.sha256(data).digest()


# ------------------------------------------------------------------ bounded memory: blocks, spools, sinks

def _blocks(flat: np.ndarray, size: int = BLOCK_WORDS) -> Iterator[tuple[int, np.ndarray]]:
    """(offset, view) of consecutive blocks of a flat array; a block's mapped file pages are dropped
    once the caller is done with it (drop_pages)."""
    for start in range(0, flat.size, size):
        block = flat[start:start + size]
        yield start, block
        drop_pages(block)


class _SpoolPayload:
    """A payload written once, hashed as it is written, and read back as often as it is sent: a
    private temporary file (0600, unlinked at once, so nothing is left behind by a crash)."""

    def __init__(self, directory: str | Path | None):
        self.directory = directory

    def __enter__(self) -> "_SpoolPayload":
        if self.directory is not None:
            Path(self.directory).mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=".collabedit-spool-", dir=self.directory)
        os.unlink(path)
        self._handle = os.fdopen(fd, "w+b")
        self._hasher, self.total_bytes, self.sha256 = hashlib.sha256(), 0, b""
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._handle.write(view)
        self._hasher.update(view)
        self.total_bytes += view.nbytes
        return view.nbytes

    def close_writing(self) -> None:
        self._handle.flush()
        self.sha256 = self._hasher.digest()

    def chunks(self, size: int) -> Iterator[bytes]:
        fd = self._handle.fileno()
        for offset in range(0, self.total_bytes, size):
            yield os.pread(fd, min(size, self.total_bytes - offset), offset)

    def reader(self):
        """The file from its start, for reading (a downloaded payload)."""
        self._handle.flush()
        self._handle.seek(0)
        return self._handle


class _ArrayPayload:
    """Plain mode: the float64 values as little-endian bytes, hashed in one pass, sent in another."""

    def __init__(self, flat: np.ndarray):
        self.raw = np.ascontiguousarray(flat, dtype="<f8").reshape(-1).view(np.uint8)
        hasher = hashlib.sha256()
        for _, block in _blocks(self.raw, 8 * BLOCK_WORDS):
            hasher.update(block)
        self.sha256, self.total_bytes = hasher.digest(), int(self.raw.size)

    def chunks(self, size: int) -> Iterator[bytes]:
        for _, block in _blocks(self.raw, size):
            yield block.tobytes()


_Payload = _SpoolPayload | _ArrayPayload


class _ArraySink:
    """Takes a download's bytes, in order, into a preallocated array."""

    def __init__(self, array: np.ndarray):
        self.raw, self.offset = array.reshape(-1).view(np.uint8), 0

    def write(self, data: bytes) -> None:
        self.raw[self.offset:self.offset + len(data)] = np.frombuffer(data, dtype=np.uint8)
        self.offset += len(data)


def _float64_values(values, keep_on_gpu: bool):
    """float64 values to encode. A CUDA tensor stays on its GPU in mask mode, where the CUDA kernels
    check and mask it and only the masked words come to the host; otherwise host values, as a view
    where they already are float64 (a memory-mapped file stays mapped)."""
    if isinstance(values, torch.Tensor):
        values = values.detach()
        if values.is_cuda and keep_on_gpu:
            return values.to(torch.float64).contiguous()
        values = values.cpu().numpy()
    return np.ascontiguousarray(values, dtype=np.float64)


class RoundClient:
    """One round of one party. Make a new RoundClient for every round (keys are per round)."""

    def __init__(self, stub, identity, ca_pem: bytes | None, federation_id: str, fingerprints: dict[str, str],
                 log: logging.Logger | None = None, *, party_id: str | None = None, insecure: bool = False,
                 rpc_timeout_s: float = 30.0, join_deadline_s: float = 60.0, phase_timeout_s: float = 600.0,
                 retries: int = 5, sleep: Callable[[float], None] = time.sleep, stall: str | None = None,
                 he_workers: int = 1, spool_dir: str | Path | None = None):
        self.stub, self.identity, self.ca_pem = stub, identity, ca_pem
        self.federation_id, self.fingerprints = federation_id, fingerprints
        self.log = log or logging.getLogger(__name__)
        self.me = party_id or (identity.common_name if identity is not None else None)
        if not self.me:
            raise ValueError("RoundClient needs a party id (the certificate CN)")
        self.metadata = ((PARTY_METADATA_KEY, self.me),) if insecure else None
        self.rpc_timeout_s, self.join_deadline_s, self.phase_timeout_s = rpc_timeout_s, join_deadline_s, phase_timeout_s
        self.retries, self.sleep = retries, sleep
        self.stats = StageStats()
        self.params: pb.RoundParameters | None = None  # type: ignore[name-defined]
        self.status = None
        self.keys: RoundKeys | None = None
        self.peer_mask_keys: dict[str, bytes] = {}
        self.shares: dict[str, tuple] = {}  # owner -> (self_secret share, mask key share) held by me
        self.revealed: dict[str, int] = {}  # owner -> ShareKind revealed this round (never both kinds)
        self.digests: dict[int, bytes] = {}  # layer -> sha256 of the ΔW payload downloaded (HE: solved)
        self.he_ctx = None  # HE mode: the round's secret CKKS context, from the dealer
        self.he_digest_key = b""
        self.he_workers = he_workers
        # Where masked words and ciphertexts wait between encoding and upload (and downloaded
        # ciphertexts before decryption), one tensor at a time; None: the system's temporary folder.
        self.spool_dir = spool_dir
        self.aggregate_digests: dict[int, bytes] = {}  # HE mode: layer -> HMAC of the decrypted sums
        self.steps_done = 0
        # Tests only: "before_upload:K" / "after_upload:K" hangs at that point of step K, so that a test
        # can SIGKILL the process exactly there (daemon: COLLABEDIT_TEST_STALL).
        self.stall = stall

    # ------------------------------------------------------------------ plumbing

    @property
    def round_id(self) -> int:
        return self.params.round_id

    @property
    def mask_mode(self) -> bool:
        return self.params.privacy_mode == cpb.PRIVACY_MODE_MASK

    @property
    def he_mode(self) -> bool:
        return self.params.privacy_mode == cpb.PRIVACY_MODE_HE

    @property
    def he_params(self) -> HeParameters:
        he = self.params.he
        return HeParameters(he.poly_modulus_degree, tuple(he.coeff_mod_bit_sizes), he.scale_bits)

    @property
    def sequential(self) -> bool:
        return self.params.schedule == cpb.SCHEDULE_SEQUENTIAL

    def _call(self, stage: str, method: str, request, retry: bool = True):
        """A unary RPC with its bytes counted; UNAVAILABLE and friends are retried with backoff."""
        for attempt in range(self.retries + 1):
            try:
                response = getattr(self.stub, method)(request, timeout=self.rpc_timeout_s, metadata=self.metadata)
                self.stats.add(stage, sent=request.ByteSize(), received=response.ByteSize())
                return response
            except grpc.RpcError as error:
                if not retry or error.code() not in RETRYABLE or attempt == self.retries:
                    raise
                self.sleep(self._backoff(attempt))

    @staticmethod
    def _backoff(attempt: int, base: float = 0.1, cap: float = 5.0) -> float:
        # Full jitter (AWS architecture blog): parties that lost the coordinator together do not return together.
        return random.uniform(0, min(cap, base * 2 ** attempt))

    def _get_round(self, stage: str = "wait"):
        response = self._call(stage, "GetRound", pb.GetRoundRequest(round_id=self.round_id))
        self.status = response.status
        return response

    def _wait(self, done: Callable, stage: str, what: str, timeout: float | None = None):
        """Poll GetRound until done(status); a terminal phase that is not done raises RoundAborted."""
        deadline = time.monotonic() + (timeout or self.phase_timeout_s)
        interval = 0.02
        with _Timer(self.stats, stage):
            while True:
                status = self._get_round(stage).status
                if done(status):
                    return status
                if status.phase in TERMINAL:
                    raise RoundAborted(status.phase, status.failure_reason)
                if time.monotonic() > deadline:
                    raise RoundError(f"round {self.round_id}: timed out waiting for {what} "
                                     f"(phase {phase_name(status.phase)})")
                self.sleep(interval)
                interval = min(interval * 1.5, 0.25)

    def _poll_precondition(self, stage: str, method: str, request, what: str):
        """Call until the RPC stops answering FAILED_PRECONDITION (its phase has not come yet)."""
        deadline = time.monotonic() + self.phase_timeout_s
        interval = 0.02
        while True:
            try:
                return self._call(stage, method, request)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                status = self._get_round(stage).status
                if status.phase in TERMINAL:
                    raise RoundAborted(status.phase, status.failure_reason) from None
                if time.monotonic() > deadline:
                    raise RoundError(f"round {self.round_id}: timed out waiting for {what}: {error.details()}") from None
            self.sleep(interval)
            interval = min(interval * 1.5, 0.25)

    # ------------------------------------------------------------------ join

    def join(self):
        """Enrol in the open round (retrying while the coordinator is unreachable) and wait for the roster."""
        request = pb.JoinFederationRequest(
            federation_id=self.federation_id, model_fingerprint=self.fingerprints["model"],
            hparams_fingerprint=self.fingerprints["hparams"], c0_fingerprint=self.fingerprints["c0"])
        deadline = time.monotonic() + self.join_deadline_s
        attempt = 0
        with _Timer(self.stats, "join"):
            while True:
                try:
                    response = self._call("join", "JoinFederation", request, retry=False)
                    break
                except grpc.RpcError as error:
                    if error.code() not in RETRYABLE or time.monotonic() > deadline:
                        if error.code() in RETRYABLE:
                            raise RoundError(f"coordinator unreachable for {self.join_deadline_s:.0f} s: "
                                             f"{error.details()}") from None
                        raise
                    self.sleep(min(self._backoff(attempt), max(0.0, deadline - time.monotonic())))
                    attempt += 1
        if response.party_id and response.party_id != self.me:
            raise RoundError(f"the coordinator knows this party as {response.party_id!r}, not {self.me!r}")
        self.params, self.status = response.parameters, response.status
        self.log.info("joined round %d (%s, %s)", self.round_id, cpb.PrivacyMode.Name(self.params.privacy_mode),
                      cpb.Schedule.Name(self.params.schedule))
        if self.params.privacy_mode == cpb.PRIVACY_MODE_PLAIN:
            self.log.warning("PLAIN MODE: this round sends this party's statistics UNPROTECTED; the coordinator "
                             "sees them. Debugging and benchmarks only.")
        return self.params

    def wait_roster(self):
        """Block until the round leaves WAITING_FOR_PARTIES; returns the final parameters."""
        self._wait(lambda s: s.phase != PHASE.ROUND_PHASE_WAITING_FOR_PARTIES, "join", "the roster",
                   timeout=self._deadline_s("join", self.join_deadline_s) + 30)
        self.params = self._get_round("join").parameters
        if self.me not in self.params.roster:
            raise RoundError(f"round {self.round_id} started without this party ({self.me!r} is not in the roster "
                             f"{list(self.params.roster)})")
        if self.params.privacy_mode not in (cpb.PRIVACY_MODE_MASK, cpb.PRIVACY_MODE_PLAIN, cpb.PRIVACY_MODE_HE):
            raise RoundError(f"privacy mode {cpb.PrivacyMode.Name(self.params.privacy_mode)} is not supported "
                             "by this party")
        return self.params

    def _deadline_s(self, name: str, default: float) -> float:
        deadline = getattr(self.params.deadlines, name)
        seconds = deadline.seconds + deadline.nanos / 1e9
        return seconds if seconds > 0 else default

    def steps(self) -> list[dict[int, str]]:
        """The schedule's steps: one with every layer (parallel) or one per layer (sequential)."""
        layers = {spec.layer: spec.module_name for spec in self.params.layers}
        if self.sequential:
            return [{layer: name} for layer, name in layers.items()]
        return [layers]

    # ------------------------------------------------------------------ keys and shares

    def setup_keys(self) -> None:
        """Mask mode: advertise signed keys, verify every peer's, exchange Shamir share boxes.
        HE mode: the same signed keys, then the dealer's secret CKKS context in a box for each peer."""
        if not (self.mask_mode or self.he_mode):
            return
        if self.identity is None:
            raise RoundError("mask and he modes need the party's certificate and key to sign its round keys")
        with _Timer(self.stats, "keys"):
            self.keys = RoundKeys.generate()
            mine = sign_advertisement(self.identity.private_key, self.identity.certificate_pem, self.federation_id,
                                      self.round_id, self.me, self.keys)
            self._call("keys", "AdvertiseKeys", pb.AdvertiseKeysRequest(
                round_id=self.round_id, mask_public_key=mine.mask_public_key,
                share_public_key=mine.share_public_key, certificate_pem=mine.certificate_pem.decode(),
                signature=mine.signature))
            listed = self._poll_precondition("keys", "ListKeyAdvertisements",
                                             pb.ListKeyAdvertisementsRequest(round_id=self.round_id),
                                             "every party's keys").advertisements
            self.params = self._get_round("keys").parameters  # the roster is final now (Shamir x)
            adverts = self._verify_advertisements(listed, mine)
            if self.mask_mode:
                self._share_secrets(adverts)
            else:
                self._share_he_context(adverts)

    def _verify_advertisements(self, listed, mine: KeyAdvertisement) -> dict[str, KeyAdvertisement]:
        adverts = {}
        try:
            for item in listed:
                adv = KeyAdvertisement(item.party_id, item.mask_public_key, item.share_public_key,
                                       item.certificate_pem.encode(), item.signature)
                verify_advertisement(adv, self.ca_pem, self.federation_id, self.round_id)
                if adv.party_id not in self.params.roster:
                    raise KeyAdvertisementError(f"advertisement of {adv.party_id!r}, who is not in the roster")
                adverts[adv.party_id] = adv
            check_unique_keys(adverts.values())
            own = adverts.get(self.me)
            if own is None or (own.mask_public_key, own.share_public_key) != (mine.mask_public_key,
                                                                               mine.share_public_key):
                raise KeyAdvertisementError(f"the coordinator lists keys for {self.me!r} that are not the ones this "
                                            "party advertised (substituted keys)")
        except KeyAdvertisementError as error:
            self.log.error("ABORTING round %d: %s", self.round_id, error)
            raise RoundError(f"round {self.round_id} aborted locally: {error}") from None
        return adverts

    def _share_secrets(self, adverts: dict[str, KeyAdvertisement]) -> None:
        roster = list(self.params.roster)
        my_x = share_index(roster, self.me)
        split = split_round_secrets(self.keys, roster, self.params.threshold)
        boxes = [pb.EncryptedShare(sender_party_id=self.me, recipient_party_id=peer, ciphertext=seal_shares(
                     self.federation_id, self.round_id, self.me, peer, self.keys.share_private_key,
                     adverts[peer].share_public_key, *split[peer]))
                 for peer in sorted(adverts) if peer != self.me]
        self._call("keys", "SubmitEncryptedShares", pb.SubmitEncryptedSharesRequest(round_id=self.round_id,
                                                                                    shares=boxes))
        received = self._poll_precondition("keys", "ListEncryptedShares",
                                           pb.ListEncryptedSharesRequest(round_id=self.round_id),
                                           "every party's share boxes").shares
        self.shares = {self.me: split[self.me]}
        for box in received:
            sender = box.sender_party_id
            if box.recipient_party_id != self.me or sender not in adverts or sender == self.me:
                raise RoundError(f"unexpected share box from {sender!r} to {box.recipient_party_id!r}")
            self.shares[sender] = open_shares(self.federation_id, self.round_id, sender, self.me,
                                              self.keys.share_private_key, adverts[sender].share_public_key,
                                              box.ciphertext, expected_x=my_x)
        # Masks pair us with every party that is still in after the share exchange (those we hold shares of).
        self.peer_mask_keys = {p: adverts[p].mask_public_key for p in self.shares if p != self.me}
        self.log.info("round %d: keys verified for %d parties, shares from %d", self.round_id, len(adverts),
                      len(received))

    def _share_he_context(self, adverts: dict[str, KeyAdvertisement]) -> None:
        """The dealer makes the CKKS context and seals it for each peer; everyone then fetches theirs."""
        params, dealer = self.he_params, sorted(self.params.roster)[0]
        if self.me == dealer:
            ctx, digest_key = new_secret_context(params), os.urandom(32)
            public, secret = public_context_bytes(ctx), secret_context_bytes(ctx)
            boxes = [pb.EncryptedShare(sender_party_id=self.me, recipient_party_id=peer, ciphertext=seal_secret_context(
                         self.federation_id, self.round_id, self.me, peer, self.keys.share_private_key,
                         adverts[peer].share_public_key, secret, digest_key, public))
                     for peer in sorted(adverts) if peer != self.me]
            self._call("keys", "PublishHeContext", pb.PublishHeContextRequest(
                round_id=self.round_id, public_context=public, secret_contexts=boxes))
        reply = self._poll_precondition("keys", "GetHeContext", pb.GetHeContextRequest(round_id=self.round_id),
                                        "the dealer's CKKS context")
        if reply.dealer_party_id != dealer:
            raise RoundError(f"the coordinator names {reply.dealer_party_id!r} as the dealer, expected {dealer!r}")
        try:
            if self.me == dealer:
                if reply.public_context != public:
                    raise HeError("the coordinator holds another public context than the one this party published")
            else:
                box = reply.secret_context
                if box.sender_party_id != dealer or box.recipient_party_id != self.me:
                    raise HeError(f"secret-context box from {box.sender_party_id!r} to {box.recipient_party_id!r}")
                secret, digest_key, public_sha = open_secret_context(
                    self.federation_id, self.round_id, dealer, self.me, self.keys.share_private_key,
                    adverts[dealer].share_public_key, box.ciphertext)
                if _sha(reply.public_context) != public_sha:
                    raise HeError("the coordinator's public context is not the one the dealer sealed with the key")
                ctx = load_secret_context(secret, params)
        except (HeError, ShareBoxError) as error:
            self.log.error("ABORTING round %d: %s", self.round_id, error)
            raise RoundError(f"round {self.round_id} aborted locally: {error}") from None
        self.he_ctx, self.he_digest_key = ctx, digest_key
        self.log.info("round %d: CKKS context from %s (N=%d, scale 2^%d, 128-bit security)", self.round_id, dealer,
                      params.poly_modulus_degree, params.scale_bits)

    # ------------------------------------------------------------------ one step

    def exchange_step(self, step_layers: dict[int, str], contributions: dict[int, tuple[np.ndarray, np.ndarray]],
                      solve: Callable[[int, str, np.ndarray, np.ndarray], np.ndarray] | None = None,
                      on_delta: Callable[[int, np.ndarray], object] | None = None) -> dict[int, object]:
        """Upload this step's statistics, take part in unmasking, download ΔW per layer.
        HE mode: download the encrypted sums instead and solve(layer, module, S_KK upper, S_RK) -> ΔW.

        Memory: every value of the step is checked first (nothing is sent if one would overflow),
        then each tensor is encoded, masked or encrypted a block at a time and streamed, so the
        party holds one block of it, not the step's payloads. Contributions may be memory-mapped
        (read-only np.memmap): their pages leave this process's resident set once read. Each ΔW
        is downloaded into an array of its size; with on_delta(layer, ΔW) it is handed over as soon
        as it is verified and the step returns {layer: what on_delta returned} instead of the arrays."""
        if set(contributions) != set(step_layers):
            raise ValueError(f"contributions for layers {sorted(contributions)}, the step has {sorted(step_layers)}")
        if self.he_mode and solve is None:
            raise ValueError("an HE round needs solve(): the coordinator never sees ΔW")
        specs = {spec.layer: spec for spec in self.params.layers}
        layer = next(iter(step_layers)) if self.sequential else None
        self._wait(lambda s: s.phase == PHASE.ROUND_PHASE_UPLOADING and (layer is None or s.current_layer == layer),
                   "wait", f"uploads of step {self.steps_done}")
        tensors = self._check_step(step_layers, contributions, specs)  # every value, before anything is sent
        self._maybe_stall("before_upload")
        encryptor = Encryptor(self.he_ctx, self.he_params, self.he_workers) if self.he_mode else None
        try:
            for lay, tensor, shape, values in tensors:
                self._send(lay, tensor, shape, values, encryptor)
        finally:
            if encryptor is not None:
                encryptor.close()
        self._maybe_stall("after_upload")
        if self.mask_mode and self.steps_done == 0:
            self._unmask(layer)
        self._wait(lambda s: s.phase in (PHASE.ROUND_PHASE_DOWNLOADING, PHASE.ROUND_PHASE_COMPLETED)
                   and (layer is None or s.current_layer == layer or layer in s.layers_completed),
                   "wait", f"the solve of step {self.steps_done}")
        deltas = {}
        for lay in step_layers:
            delta = self._solve_he(specs[lay], step_layers[lay], solve) if self.he_mode else self._download(specs[lay])
            deltas[lay] = delta if on_delta is None else on_delta(lay, delta)
            del delta
        self.steps_done += 1
        return deltas

    def _maybe_stall(self, point: str) -> None:
        if self.stall == f"{point}:{self.steps_done}":
            self.log.warning("TEST STALL at %s of step %d", point, self.steps_done)
            time.sleep(3600)

    def _numerics(self) -> RoundNumerics:
        return RoundNumerics(len(self.params.roster), self.params.scale_bits, self.params.per_party_bound)

    def _check_step(self, step_layers, contributions, specs) -> list[tuple]:
        """(layer, tensor, shape, float64 values) of the step once every value is known to encode
        (mask: the fixed-point bound; he: the CKKS bound): a refusal here has sent nothing."""
        tensors = list(self._checked_contributions(step_layers, contributions, specs))
        if self.mask_mode:
            numerics = self._numerics()
            stage, check = "mask", lambda lay, tensor, values: numerics.check_encodable(tensor, values)
        elif self.he_mode:
            bound = self.params.he.per_party_bound
            stage, check = "encrypt", lambda lay, tensor, values: check_encryptable(f"layer {lay} {tensor}", values,
                                                                                  bound)
        else:
            return tensors  # plain: the coordinator refuses non-finite values itself
        with _Timer(self.stats, stage):
            for lay, tensor, _, values in tensors:
                for _, block in _blocks(values.reshape(-1)):
                    try:
                        check(lay, tensor, block)
                    except FixedPointOverflowError:
                        check(lay, tensor, values)  # the same refusal, its index in the whole tensor
                        raise
        return tensors

    def _checked_contributions(self, step_layers, contributions, specs):
        """(layer, tensor, expected shape, float64 values) for every tensor of the step, shapes checked."""
        for lay in step_layers:
            spec = specs.get(lay)
            if spec is None:
                raise RoundError(f"layer {lay} is not in round {self.round_id}")
            want = {"TENSOR_S_KK_UPPER": (spec.d_in * (spec.d_in + 1) // 2,), "TENSOR_S_RK": (spec.d_out, spec.d_in)}
            for tensor, values in zip(TENSORS, contributions[lay]):
                values = _float64_values(values, keep_on_gpu=self.mask_mode)
                if tuple(values.shape) != want[tensor]:
                    raise ValueError(f"layer {lay} {tensor}: shape {values.shape}, the round expects {want[tensor]}")
                yield lay, tensor, want[tensor], values

    def _send(self, lay: int, tensor: str, shape, values: np.ndarray, encryptor) -> None:
        """Encodes one checked tensor a block at a time and uploads it. Masked words and ciphertexts
        go to a spool file first (the header carries the whole payload's sha256, and a retried
        upload resends the same bytes); plain values are read twice from the array instead."""
        flat = values.reshape(-1)
        if not (self.mask_mode or self.he_mode):
            with _Timer(self.stats, "mask"):  # plain mode's encoding: float64 bytes, hashed
                payload = _ArrayPayload(flat)
            self._upload(lay, tensor, shape, cpb.ENCODING_FLOAT64_LE, payload)
            return
        with _SpoolPayload(self.spool_dir) as payload:
            if self.mask_mode:
                with _Timer(self.stats, "mask"):
                    encoder = MaskedEncoder(self._numerics(), Binding(self.federation_id, self.round_id, lay, tensor,
                                                                      shape), self.me, self.keys, self.peer_mask_keys)
                    for offset, block in _blocks(flat):
                        payload.write(encoder.encode(block, offset).astype("<u8", copy=False))
                encoding = cpb.ENCODING_RING_U64_LE
            else:
                with _Timer(self.stats, "encrypt"):
                    encryptor.encrypt_to(flat, payload, done=drop_pages)
                encoding = cpb.ENCODING_CKKS
            payload.close_writing()
            self._upload(lay, tensor, shape, encoding, payload)

    def _upload(self, layer: int, tensor: str, shape, encoding: int, payload: "_Payload") -> None:
        total, digest, chunk = payload.total_bytes, payload.sha256, self.params.chunk_bytes or (1 << 20)
        header = cpb.PayloadHeader(round_id=self.round_id, layer=layer, tensor=cpb.Tensor.Value(tensor),
                                   shape=list(shape), encoding=encoding, total_bytes=total, sha256=digest)

        def messages() -> Iterator:
            yield pb.UploadContributionRequest(header=header)
            offset = 0
            for piece in payload.chunks(chunk):
                yield pb.UploadContributionRequest(chunk=cpb.PayloadChunk(offset=offset, data=piece, sha256=_sha(piece)))
                offset += len(piece)

        sent = header.ByteSize() + total + 48 * (total // chunk + 1)  # payload + framing, roughly
        with _Timer(self.stats, "upload"):
            for attempt in range(self.retries + 1):
                try:
                    response = self.stub.UploadContribution(messages(), timeout=self.phase_timeout_s,
                                                            metadata=self.metadata)
                    break
                except grpc.RpcError as error:  # a cut stream changed nothing durable: resend from the header
                    retry = error.code() in RETRYABLE or error.code() == grpc.StatusCode.DATA_LOSS
                    if not retry or attempt == self.retries:
                        raise
                    self.log.warning("upload of layer %d %s failed (%s); retrying", layer, tensor, error.code().name)
                    self.stats.add("upload", sent=sent)
                    self.sleep(self._backoff(attempt))
            self.stats.add("upload", sent=sent, received=response.ByteSize())
        if response.sha256 != digest:
            raise RoundError(f"the coordinator acknowledged layer {layer} {tensor} with another digest")

    def _unmask(self, layer: int | None) -> None:
        """Reveal self-mask shares of survivors and mask-key shares of dropped parties, never both.
        The coordinator goes on once t survivors revealed, so a late party may find it already solving."""
        request = pb.GetUnmaskingPlanRequest(round_id=self.round_id, layer=layer)
        with _Timer(self.stats, "unmask"):
            status = self._wait(lambda s: s.phase != PHASE.ROUND_PHASE_UPLOADING, "unmask", "the end of uploads")
            while status.phase == PHASE.ROUND_PHASE_UNMASKING:
                try:
                    plan = self._call("unmask", "GetUnmaskingPlan", request)
                    self._call("unmask", "SubmitUnmaskingShares", pb.SubmitUnmaskingSharesRequest(
                        round_id=self.round_id, layer=layer, shares=self.reveals_for(plan.survivors, plan.dropped)))
                    return
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                        raise
                status = self._get_round("unmask").status  # moved on without our reveals: fine
            if status.phase in TERMINAL and status.phase != PHASE.ROUND_PHASE_COMPLETED:
                raise RoundAborted(status.phase, status.failure_reason)

    def reveals_for(self, survivors, dropped) -> list:
        """The RevealedShares a plan asks for; RoundError for a plan that must be refused."""
        survivors, dropped = list(survivors), list(dropped)
        both = sorted(set(survivors) & set(dropped))
        if both:
            raise RoundError(f"REFUSED unmasking plan: it asks for both share kinds of {both}; that would unmask "
                             "their contributions")
        if self.me not in survivors:
            raise RoundError(f"unmasking plan does not list this party ({self.me!r}) as a survivor")
        x = share_index(list(self.params.roster), self.me)
        out = []
        for owners, kind, pick in ((survivors, cpb_share_kind("SELF_MASK_SEED"), 0),
                                   (dropped, cpb_share_kind("MASK_KEY"), 1)):
            for owner in owners:
                if owner not in self.shares:
                    raise RoundError(f"unmasking plan names {owner!r}, of whom this party holds no shares")
                if self.revealed.get(owner, kind) != kind:
                    raise RoundError(f"REFUSED unmasking plan: a share of the other kind was already revealed for "
                                     f"{owner!r} in this round")
                self.revealed[owner] = kind
                share = self.shares[owner][pick]
                out.append(pb.RevealedShare(owner_party_id=owner, kind=kind, x=x, y=share.y.to_bytes(Y_BYTES, "big")))
        return out

    def _stream(self, method: str, make_request: Callable[[int], object], what: str, open_sink: Callable) -> bytes:
        """A chunked download written, as it arrives, to open_sink(header) (called once, with the first
        header; .write(bytes) takes the payload in order); a cut stream resumes at the bytes already
        received. Returns the payload's sha256, checked against the header."""
        received, header, sink, hasher, attempt = 0, None, None, hashlib.sha256(), 0
        with _Timer(self.stats, "download"):
            while True:
                try:
                    stream = getattr(self.stub, method)(make_request(received), timeout=self.phase_timeout_s,
                                                        metadata=self.metadata)
                    for message in stream:
                        self.stats.add("download", received=message.ByteSize())
                        if message.HasField("header"):
                            if header is None:
                                header, sink = message.header, open_sink(message.header)
                            elif (message.header.sha256, message.header.total_bytes) != (header.sha256,
                                                                                          header.total_bytes):
                                raise RoundError(f"{what}: the payload changed while it was downloaded")
                            continue
                        chunk = message.chunk
                        if sink is None or chunk.offset != received or _sha(chunk.data) != chunk.sha256:
                            raise RoundError(f"{what}: bad chunk at offset {chunk.offset}")
                        if received + len(chunk.data) > header.total_bytes:
                            raise RoundError(f"{what}: more than the {header.total_bytes} bytes its header announced")
                        sink.write(chunk.data)
                        hasher.update(chunk.data)
                        received += len(chunk.data)
                    break
                except grpc.RpcError as error:
                    if error.code() not in RETRYABLE or attempt == self.retries:
                        raise
                    self.log.warning("download of %s cut at %d bytes (%s); resuming", what, received,
                                     error.code().name)
                    self.sleep(self._backoff(attempt))
                    attempt += 1
        if header is None:
            raise RoundError(f"{what}: the download has no header")
        if received != header.total_bytes or hasher.digest() != header.sha256:
            raise RoundError(f"{what}: payload is incomplete or its sha256 does not match")
        return header.sha256

    def _download(self, spec) -> np.ndarray:
        """ΔW of one layer (mask and plain modes), written straight into an array of its size."""
        shape = (spec.d_out, spec.d_in)
        delta = np.empty(shape, dtype=np.float64)
        what = f"ΔW of layer {spec.layer}"

        def open_sink(header):
            if tuple(header.shape) != shape or header.encoding != cpb.ENCODING_FLOAT64_LE \
                    or header.total_bytes != delta.nbytes:
                raise RoundError(f"layer {spec.layer}: ΔW header is not float64 {shape}")
            return _ArraySink(delta)

        self.digests[spec.layer] = self._stream("DownloadUpdate", lambda offset: pb.DownloadUpdateRequest(
            round_id=self.round_id, layer=spec.layer, start_offset=offset), what, open_sink)
        if sys.byteorder != "little":
            delta.byteswap(inplace=True)
        return delta

    def _solve_he(self, spec, module: str, solve) -> np.ndarray:
        """HE mode: download both encrypted sums (to a spool file, a ciphertext at a time), decrypt
        them into arrays of their size, and solve ΔW here."""
        sums = []
        for tensor, n_values in (("TENSOR_S_KK_UPPER", spec.d_in * (spec.d_in + 1) // 2),
                                 ("TENSOR_S_RK", spec.d_out * spec.d_in)):
            code = cpb.Tensor.Value(tensor)
            what = f"encrypted {tensor} of layer {spec.layer}"

            def open_sink(header, spool=None, tensor=tensor):
                if header.encoding != cpb.ENCODING_CKKS:
                    raise RoundError(f"layer {spec.layer} {tensor}: the encrypted sum is not ENCODING_CKKS")
                return spool

            with _SpoolPayload(self.spool_dir) as spool:
                self._stream("DownloadAggregate", lambda offset, code=code: pb.DownloadAggregateRequest(
                    round_id=self.round_id, layer=spec.layer, tensor=code, start_offset=offset), what,
                    lambda header: open_sink(header, spool))
                with _Timer(self.stats, "decrypt"):
                    try:
                        sums.append(decrypt_payload(self.he_ctx, self.he_params, spool.reader(), n_values,
                                                    out=np.empty(n_values, dtype=np.float64)))
                    except HeError as error:
                        raise RoundError(f"layer {spec.layer} {tensor}: {error}") from None
        s_kk, s_rk = sums[0], sums[1].reshape(spec.d_out, spec.d_in)
        self.aggregate_digests[spec.layer] = aggregate_digest(self.he_digest_key, spec.layer, (s_kk, s_rk))
        with _Timer(self.stats, "solve"):
            delta = np.ascontiguousarray(solve(spec.layer, module, s_kk, s_rk), dtype=np.float64)
        del sums, s_kk, s_rk
        self.digests[spec.layer] = _sha(delta.astype("<f8", copy=False))
        return delta

    # ------------------------------------------------------------------ after the step

    def report_applied(self, layer: int, delta_sha256: bytes | None = None):
        with _Timer(self.stats, "report"):
            return self._call("report", "ReportApplied", pb.ReportAppliedRequest(
                round_id=self.round_id, layer=layer, sha256=delta_sha256 or self.digests[layer],
                aggregate_digest=self.aggregate_digests.get(layer, b"")))

    def wait_finished(self):
        """COMPLETED status, else RoundAborted."""
        return self._wait(lambda s: s.phase == PHASE.ROUND_PHASE_COMPLETED, "wait", "the end of the round")


def cpb_share_kind(name: str) -> int:
    return pb.ShareKind.Value(f"SHARE_KIND_{name}")
