"""The round state machine of docs/federation.md, independent of gRPC transport.

RPC handlers call the public methods with the caller's identity (its certificate CN); a background
thread calls tick() a few times a second for deadlines and the solve. One lock guards the state;
every change is saved to the Store before it is announced (log line + WatchRound notification).

Round of the parallel schedule:  WAITING -> ADVERTISING_KEYS -> SHARING_KEYS -> UPLOADING
    -> UNMASKING -> SOLVING -> DOWNLOADING -> COMPLETED   (plain mode skips keys and unmasking)
HE mode: SHARING_KEYS carries the dealer's CKKS context instead of Shamir shares, and UPLOADING
goes straight to DOWNLOADING: the coordinator adds ciphertexts, parties decrypt and solve.
Sequential: UPLOADING..DOWNLOADING once per layer ("step"); only step 0 unmasks: the survivors
and dropped parties it fixes hold for the round, and the secrets rebuilt then are kept (memory).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import sys
import threading
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from collabedit_secure.blockio import le_bytes, packed_blocks, release_free_memory
from collabedit_secure.kernels import ring_add, safe_bound
from collabedit_secure.merging.collabedit import merge_layer
from collabedit_secure.protocol.encoding import Binding
from collabedit_secure.protocol.fixedpoint import RoundNumerics
from collabedit_secure.protocol.he import HeError, load_public_context, summed_blocks
from collabedit_secure.protocol.keys import KeyAdvertisement, KeyAdvertisementError, verify_advertisement
from collabedit_secure.protocol.streaming import unmask_blocks
from collabedit_secure.protocol.recovery import recover_mask_private_key, recover_self_secret, share_index
from collabedit_secure.protocol.shamir import SHARE_BYTES, ShamirError, Share
from collabedit_secure.rpc.generated import common_pb2 as pb, coordinator_pb2 as cpb

from .config import CoordinatorConfig
from .store import Store, read_array

P = pb.RoundPhase
WAITING, ADVERTISING, SHARING = P.Value("ROUND_PHASE_WAITING_FOR_PARTIES"), P.Value("ROUND_PHASE_ADVERTISING_KEYS"), P.Value("ROUND_PHASE_SHARING_KEYS")
UPLOADING, UNMASKING, SOLVING = P.Value("ROUND_PHASE_UPLOADING"), P.Value("ROUND_PHASE_UNMASKING"), P.Value("ROUND_PHASE_SOLVING")
DOWNLOADING, COMPLETED = P.Value("ROUND_PHASE_DOWNLOADING"), P.Value("ROUND_PHASE_COMPLETED")
FAILED, ROLLED_BACK = P.Value("ROUND_PHASE_FAILED"), P.Value("ROUND_PHASE_ROLLED_BACK")
TERMINAL = (COMPLETED, FAILED, ROLLED_BACK)
S_KK, S_RK = pb.TENSOR_S_KK_UPPER, pb.TENSOR_S_RK
SELF_SEED, MASK_KEY = cpb.SHARE_KIND_SELF_MASK_SEED, cpb.SHARE_KIND_MASK_KEY
DEADLINE_OF = {WAITING: "join", ADVERTISING: "advertise_keys", SHARING: "share_keys", UPLOADING: "upload",
               UNMASKING: "unmask", DOWNLOADING: "download"}
BLOCK_WORDS = 1 << 17  # 1 MiB of 8-byte words per pass over a file: memory stays bounded


def phase_name(phase: int) -> str:
    return P.Name(phase).removeprefix("ROUND_PHASE_")


def tensor_name(tensor: int) -> str:
    return pb.Tensor.Name(tensor) if tensor in pb.Tensor.values() else f"TENSOR({tensor})"


# ---------------------------------------------------------------------------------- errors


class CoordinatorError(Exception):
    """A refused request; `code` is the gRPC status the service answers with."""

    code = grpc.StatusCode.INTERNAL


class FailedPrecondition(CoordinatorError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class InvalidArgument(CoordinatorError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class AlreadyExists(CoordinatorError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(CoordinatorError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(CoordinatorError):
    code = grpc.StatusCode.UNAUTHENTICATED


class NotFound(CoordinatorError):
    code = grpc.StatusCode.NOT_FOUND


class Aborted(CoordinatorError):
    code = grpc.StatusCode.ABORTED


class DataLoss(CoordinatorError):
    code = grpc.StatusCode.DATA_LOSS


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def log_event(event: str, **fields) -> None:
    """One JSON line per state change on stderr (what an operator greps and a collector parses)."""
    record = {"ts": round(time.time(), 3), "event": event, **{k: v for k, v in fields.items() if v is not None}}
    sys.stderr.write(json.dumps(record, default=str) + "\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------------- uploads


@dataclass
class UploadSession:
    """One UploadContribution stream being written to its staging file."""

    party: str
    round_id: int
    step: int
    layer: int
    tensor: int
    total_bytes: int
    sha256: bytes
    path: Path
    chunk_bytes: int
    replay: bool = False  # an identical payload was accepted before: verify, answer already_accepted
    received: int = 0
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._hasher = hashlib.sha256()
        self._handle = open(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")

    def add_chunk(self, offset: int, data: bytes, digest: bytes) -> None:
        where = f"chunk at offset {offset} of {tensor_name(self.tensor)} layer {self.layer}"
        if offset != self.received:
            raise InvalidArgument(f"{where}: expected offset {self.received}; chunks must follow each other "
                                  "contiguously from 0 (a replayed, overlapping or out-of-order chunk)")
        if not data:
            raise InvalidArgument(f"{where}: empty chunk")
        if len(data) > self.chunk_bytes:
            raise InvalidArgument(f"{where}: {len(data)} bytes, more than chunk_bytes {self.chunk_bytes}")
        if self.received + len(data) > self.total_bytes:
            raise InvalidArgument(f"{where}: {len(data)} bytes go past total_bytes {self.total_bytes}")
        if hashlib.sha256(data).digest() != digest:
            raise InvalidArgument(f"{where}: sha256 of the data does not match the chunk's sha256")
        self._handle.write(data)
        self._hasher.update(data)
        self.received += len(data)

    def finish(self) -> None:
        """Checks completeness and the whole digest; the staging file is then closed and synced."""
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        if self.received < self.total_bytes:
            raise DataLoss(f"the stream of {tensor_name(self.tensor)} layer {self.layer} ended after "
                           f"{self.received} of {self.total_bytes} bytes; resend it from the header")
        if self._hasher.digest() != self.sha256:
            raise DataLoss(f"sha256 of the {self.total_bytes} bytes received for {tensor_name(self.tensor)} "
                           f"layer {self.layer} is {self._hasher.hexdigest()}, the header says {self.sha256.hex()}")

    def discard(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        self.path.unlink(missing_ok=True)


def _file_sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK_WORDS * 8):
            digest.update(block)
    return digest.digest()


def _file_blocks(path: Path, dtype: str):
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK_WORDS * 8):
            yield np.frombuffer(block, dtype=dtype)


def _summed_blocks(old: Path | None, new: Path, dtype: str):
    """Blocks of old + new (ring addition for uint64, float addition for float64)."""
    olds = _file_blocks(old, dtype) if old else None
    for block in _file_blocks(new, dtype):
        if olds is not None:
            previous = next(olds)
            block = ring_add(previous, block) if dtype == "<u8" else previous + block
        yield block.tobytes()


# ---------------------------------------------------------------------------------- rounds


class Rounds:
    """The federation's rounds: the current one live, earlier ones in the store."""

    def __init__(self, config: CoordinatorConfig, clock=time.monotonic):
        self.config, self.clock = config, clock
        self.store = Store(config.state_dir)
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.version = 0
        self.closed = False
        self.mask, self.he = config.privacy == "mask", config.privacy == "he"
        self.keyed = self.mask or self.he  # rounds whose parties advertise signed keys
        self._he_ctx: tuple[int, object] | None = None  # (round, public context) once published
        self._digests: dict[str, bytes] = {}  # sha256 of encrypted-sum files, computed once per file
        self.spec = {layer.layer: layer for layer in config.layers}
        self.lam = dict(zip((layer.layer for layer in config.layers), config.lambdas))
        order = [layer.layer for layer in config.layers]
        self.steps = [order] if config.schedule == "parallel" else [[layer] for layer in order]
        self.params_json = json.dumps(config.public_parameters(), sort_keys=True)
        self.secrets: dict | None = None  # rebuilt during unmasking: {"self": {...}, "dropped": {...}}
        self.entered: float | None = None  # when the current phase began (monotonic); None = no deadline yet
        self._resume()

    # ------------------------------------------------------------------ lifecycle

    def _resume(self) -> None:
        known = self.store.meta("federation_id")
        if known is None:
            self.store.set_meta("federation_id", self.config.federation_id)
        elif known != self.config.federation_id:
            raise ValueError(f"state_dir {self.config.state_dir} belongs to federation {known!r}, "
                             f"not {self.config.federation_id!r}; use another state_dir")
        self.current = self.store.latest_round()
        if self.current is None:
            self.current = self._new_round(1)
            with self.store.transaction() as db:
                Store.save_round(db, self.current)
            log_event("round_opened", round=1, phase="WAITING_FOR_PARTIES")
            return
        round_id, phase = self.current["id"], self.current["phase"]
        if phase in TERMINAL:  # finishing and opening the next round is one transaction, so this
            self.current = self._new_round(round_id + 1)  # only happens to a hand-edited database
            with self.store.transaction() as db:
                Store.save_round(db, self.current)
        elif self.current["params"] != json.loads(self.params_json):
            self._finish(FAILED, "the coordinator's configuration changed while the round was in progress")
        else:
            # Deadlines restart from now: the parties could not reach us while we were down.
            self.entered = self.clock() if (phase != WAITING or self.current["joined"]) else None
            log_event("round_resumed", round=round_id, phase=phase_name(phase), step=self.current["step"])
            with self.lock:
                self._advance()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.changed.notify_all()
        self.store.close()

    def _new_round(self, round_id: int) -> dict:
        now = time.time()
        return {"id": round_id, "phase": WAITING, "step": 0, "joined": [], "participants": [], "survivors": None,
                "dropped": [], "layers_completed": [], "params": json.loads(self.params_json), "failure": "",
                "started_at": now, "updated_at": now}

    def _changed(self, event: str, **fields) -> None:
        self.version += 1
        self.changed.notify_all()
        record = self.current
        log_event(event, round=record["id"], phase=phase_name(record["phase"]), step=record["step"], **fields)

    def _set(self, phase: int, event: str, **changes) -> None:
        """Moves the current round to `phase` (durably), restarting its deadline."""
        self.current.update(phase=phase, **changes)
        with self.store.transaction() as db:
            Store.save_round(db, self.current)
        self.entered = self.clock()
        self._changed(event)

    def _finish(self, phase: int, reason: str = "") -> None:
        """Ends the current round and opens the next, in one transaction (plus C_acc on success)."""
        record = self.current
        c_acc_updates = self._c_acc_updates() if phase == COMPLETED else []
        old_acc = [r["path"] for r in self.store.query("SELECT path FROM accumulators WHERE round = ?", record["id"])]
        nxt = self._new_round(record["id"] + 1)
        record.update(phase=phase, failure=reason)
        with self.store.transaction() as db:
            for module, generation, path, _old in c_acc_updates:
                db.execute("INSERT OR REPLACE INTO c_acc VALUES (?, ?, ?, ?)", (module, generation, path, record["id"]))
            db.execute("DELETE FROM accumulators WHERE round = ?", (record["id"],))  # sums are not kept
            Store.save_round(db, record)
            Store.save_round(db, nxt)
        for path in [old for *_, old in c_acc_updates] + old_acc:
            self.store.delete_file(path)
        self._changed("round_" + phase_name(phase).lower(), reason=reason or None, peak_rss_bytes=peak_rss_bytes())
        self.current, self.secrets, self.entered = nxt, None, None
        self._changed("round_opened")

    def _c_acc_updates(self) -> list[tuple]:
        """C_acc[module] + lambda * S_KK of every layer, written as new generation files: packed upper
        triangles (what the solve reads), summed a block at a time (an earlier version's full d x d
        file is read as its upper triangle). HE mode: none here; only the parties ever see S_KK, and
        each keeps its own C_acc."""
        updates = []
        if self.he:
            return updates
        for layer in self.spec.values():
            row = self.store.query("SELECT s_kk_path FROM results WHERE round = ? AND layer = ?",
                                   self.current["id"], layer.layer)[0]
            old = self.store.query("SELECT generation, path FROM c_acc WHERE module = ?", layer.module_name)
            lam, d = self.lam[layer.layer], layer.d_in
            added = (lam * block for block in packed_blocks(self.store.path(row["s_kk_path"]), d))
            if old:
                added = (a + b for a, b in zip(packed_blocks(self.store.path(old[0]["path"]), d), added))
            generation = old[0]["generation"] + 1 if old else 1
            path = self.store.new_generation_file("c_acc", layer.module_name, generation, map(le_bytes, added))
            updates.append((layer.module_name, generation, path, old[0]["path"] if old else None))
        return updates

    # ------------------------------------------------------------------ checks shared by the RPCs

    def _member(self, party: str | None) -> str:
        if not party:
            raise Unauthenticated("no verified client certificate: connect with a certificate from the federation CA")
        if party not in self.config.roster:
            raise PermissionDenied(f"{party!r} is not a member of federation {self.config.federation_id!r} "
                                   f"(members: {', '.join(self.config.roster)})")
        return party

    def _where(self) -> str:
        return f"the current round is {self.current['id']} in phase {phase_name(self.current['phase'])}"

    def _check_round(self, round_id: int) -> dict:
        if round_id == 0:
            raise InvalidArgument(f"round_id is not set; {self._where()}")
        if round_id > self.current["id"]:
            raise NotFound(f"round {round_id} was never opened; {self._where()}")
        if round_id < self.current["id"]:
            raise FailedPrecondition(f"round {round_id} is over; {self._where()}")
        return self.current

    def _need_phase(self, what: str, *phases: int) -> None:
        if self.current["phase"] not in phases:
            names = " or ".join(phase_name(p) for p in phases)
            raise FailedPrecondition(f"{what} needs phase {names}; {self._where()}")

    def _participant(self, party: str) -> None:
        if party not in self.current["participants"]:
            raise PermissionDenied(f"{party!r} is not a participant of round {self.current['id']}")
        if party in self.current["dropped"]:
            raise PermissionDenied(f"{party!r} was dropped from round {self.current['id']}")

    def _alive(self) -> list[str]:
        record = self.current
        return [p for p in (record["participants"] or record["joined"]) if p not in record["dropped"]]

    def _uploaded(self, layers: list[int]) -> dict[str, int]:
        """party -> number of tensors it uploaded for these layers in the current round."""
        marks = ",".join("?" * len(layers))
        rows = self.store.query(f"SELECT party, COUNT(*) AS n FROM uploads WHERE round = ? AND layer IN ({marks}) "
                                "GROUP BY party", self.current["id"], *layers)
        return {r["party"]: r["n"] for r in rows}

    # ------------------------------------------------------------------ join, keys, shares

    def join(self, party: str | None, federation_id: str, model_fp: str, hparams_fp: str, c0_fp: str) -> int:
        """Enrols the party in the current round; returns the round id."""
        with self.lock:
            self._member(party)
            if federation_id != self.config.federation_id:
                raise NotFound(f"unknown federation {federation_id!r}; this coordinator runs {self.config.federation_id!r}")
            given = {"model": model_fp, "hparams": hparams_fp, "c0": c0_fp}
            for name, value in given.items():
                if not (isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
                    raise InvalidArgument(f"{name}_fingerprint must be 64 lowercase hex characters, got {value!r}")
            record = self.current
            if party in record["joined"]:
                raise AlreadyExists(f"{party!r} already joined round {record['id']}")
            self._need_phase("JoinFederation", WAITING)
            ours = {"model": self.config.model_fingerprint, "hparams": self.config.hparams_fingerprint,
                    "c0": self.config.c0_fingerprint}
            for name in ("model", "hparams", "c0"):
                if given[name] != ours[name]:
                    raise FailedPrecondition(f"{name}_fingerprint differs: the coordinator has {ours[name]}, "
                                             f"you sent {given[name]}; start from the federation's {name}")
            record["joined"] = sorted([*record["joined"], party])
            with self.store.transaction() as db:
                db.execute("INSERT INTO joins VALUES (?, ?, ?)", (record["id"], party, time.time()))
                Store.save_round(db, record)
            if self.entered is None:
                self.entered = self.clock()  # the join deadline runs from the first join
            self._changed("party_joined", party=party)
            self._advance()
            return record["id"]

    def advertise(self, party, round_id: int, mask_pk: bytes, share_pk: bytes, certificate_pem: str,
                  signature: bytes) -> bool:
        """Records a party's signed public keys (relayed unchecked: peers verify them); True if a retry."""
        with self.lock:
            self._member(party)
            record = self._check_round(round_id)
            if not self.keyed:
                raise FailedPrecondition(f"round {round_id} is in plain mode: there are no keys to advertise")
            for name, key in (("mask_public_key", mask_pk), ("share_public_key", share_pk)):
                if len(key) != 32:
                    raise InvalidArgument(f"{name} must be 32 raw bytes (X25519), got {len(key)}")
            if not certificate_pem or not signature:
                raise InvalidArgument("certificate_pem and signature are required (peers verify them)")
            self._verify_advertisement(party, round_id, mask_pk, share_pk, certificate_pem, signature)
            row = (mask_pk, share_pk, certificate_pem, signature)
            old = self.store.query("SELECT mask_pk, share_pk, certificate_pem, signature FROM adverts "
                                   "WHERE round = ? AND party = ?", record["id"], party)
            if old:
                if tuple(old[0]) == row:
                    return True
                raise AlreadyExists(f"{party!r} already advertised different keys for round {round_id}")
            self._need_phase("AdvertiseKeys", ADVERTISING)
            self._participant(party)
            with self.store.transaction() as db:
                db.execute("INSERT INTO adverts VALUES (?, ?, ?, ?, ?, ?)", (record["id"], party, *row))
            self._changed("keys_advertised", party=party)
            self._advance()
            return False

    def _verify_advertisement(self, party, round_id, mask_pk, share_pk, certificate_pem, signature) -> None:
        """Peers verify every advertisement themselves (the coordinator is not trusted with keys); the
        coordinator checks too, so that a bad one is refused at once rather than failing the round."""
        if self.config.tls is None:  # --insecure: no federation CA to check against
            return
        ca = self.config.tls.ca.read_bytes()
        advertisement = KeyAdvertisement(party, mask_pk, share_pk, certificate_pem.encode(), signature)
        try:
            verify_advertisement(advertisement, ca, self.config.federation_id, round_id)
        except KeyAdvertisementError as error:
            raise InvalidArgument(str(error)) from None

    def adverts(self) -> dict[str, dict]:
        rows = self.store.query("SELECT * FROM adverts WHERE round = ? ORDER BY party", self.current["id"])
        return {r["party"]: dict(r) for r in rows if r["party"] in self.current["participants"]}

    def list_advertisements(self, party, round_id: int) -> list[dict]:
        with self.lock:
            self._member(party)
            self._check_round(round_id)
            if self.current["phase"] in (WAITING, ADVERTISING):
                raise FailedPrecondition(f"not every participant has advertised keys yet; {self._where()}")
            self._participant(party)
            return list(self.adverts().values())

    def _check_boxes(self, party: str, record: dict, boxes: list[tuple[str, str, bytes]], what: str) -> None:
        """Party-to-party boxes: sent by the caller, exactly one to every other participant, well-sized."""
        for sender, _, _ in boxes:
            if sender != party:
                raise PermissionDenied(f"sender_party_id {sender!r} is not the caller {party!r}")
        others = sorted(p for p in record["participants"] if p != party)
        recipients = sorted(recipient for _, recipient, _ in boxes)
        if recipients != others:
            raise InvalidArgument(f"expected exactly one {what} for each of {others}, got recipients {recipients}")
        for _, recipient, box in boxes:
            if len(box) < 28:
                raise InvalidArgument(f"the {what} for {recipient!r} has {len(box)} bytes; a box has at least 28")

    def submit_shares(self, party, round_id: int, shares: list[tuple[str, str, bytes]]) -> tuple[int, bool]:
        """Records one encrypted share box per other participant; returns (count, was it a retry)."""
        with self.lock:
            self._member(party)
            record = self._check_round(round_id)
            if not self.mask:
                raise FailedPrecondition(f"round {round_id} is in {self.config.privacy} mode: there are no Shamir "
                                         "shares (HE rounds exchange a CKKS context: PublishHeContext)")
            self._check_boxes(party, record, shares, "share")
            old = self.store.query("SELECT recipient, ciphertext FROM shares WHERE round = ? AND sender = ?",
                                   record["id"], party)
            if old:
                if {r["recipient"]: r["ciphertext"] for r in old} == {r: b for _, r, b in shares}:
                    return len(old), True
                raise AlreadyExists(f"{party!r} already submitted different shares for round {round_id}")
            self._need_phase("SubmitEncryptedShares", SHARING)
            self._participant(party)
            with self.store.transaction() as db:
                db.executemany("INSERT INTO shares VALUES (?, ?, ?, ?)", [(record["id"], party, r, b) for _, r, b in shares])
            self._changed("shares_submitted", party=party)
            self._advance()
            return len(shares), False

    def list_shares(self, party, round_id: int) -> list[tuple[str, str, bytes]]:
        with self.lock:
            self._member(party)
            self._check_round(round_id)
            if self.current["phase"] in (WAITING, ADVERTISING, SHARING):
                raise FailedPrecondition(f"not every participant has submitted its shares yet; {self._where()}")
            self._participant(party)
            rows = self.store.query("SELECT sender, recipient, ciphertext FROM shares WHERE round = ? AND recipient = ? "
                                    "ORDER BY sender", round_id, party)
            return [tuple(r) for r in rows]

    # ------------------------------------------------------------------ HE context

    def dealer(self) -> str:
        """The party that makes the round's CKKS secret context: the first participant, sorted."""
        return sorted(self.current["participants"])[0]

    def publish_he_context(self, party, round_id: int, public_context: bytes,
                           boxes: list[tuple[str, str, bytes]]) -> bool:
        """Records the dealer's keyless public context and its sealed secret-context boxes; True if a retry."""
        with self.lock:
            self._member(party)
            record = self._check_round(round_id)
            if not self.he:
                raise FailedPrecondition(f"round {round_id} is in {self.config.privacy} mode, not he: no CKKS context")
            if record["phase"] in (WAITING, ADVERTISING):
                raise FailedPrecondition(f"PublishHeContext needs phase SHARING_KEYS; {self._where()}")
            self._participant(party)
            if party != self.dealer():
                raise PermissionDenied(f"{party!r} is not the dealer of round {round_id}; {self.dealer()!r} makes "
                                       "the CKKS context")
            old = self.store.query("SELECT public_context FROM he_contexts WHERE round = ?", round_id)
            if old:
                stored = {r["recipient"]: r["ciphertext"] for r in self.store.query(
                    "SELECT recipient, ciphertext FROM shares WHERE round = ?", round_id)}
                if old[0]["public_context"] == public_context and stored == {r: b for _, r, b in boxes}:
                    return True
                raise AlreadyExists(f"a different CKKS context was already published for round {round_id}")
            self._need_phase("PublishHeContext", SHARING)
            self._check_boxes(party, record, boxes, "secret-context box")
            try:
                ctx = load_public_context(public_context, self.config.he)
            except HeError as error:
                raise InvalidArgument(str(error)) from None
            with self.store.transaction() as db:
                db.execute("INSERT INTO he_contexts VALUES (?, ?, ?)", (round_id, party, public_context))
                db.executemany("INSERT INTO shares VALUES (?, ?, ?, ?)", [(round_id, party, r, b) for _, r, b in boxes])
            self._he_ctx = (round_id, ctx)
            self._changed("he_context_published", party=party, bytes=len(public_context))
            self._advance()
            return False

    def he_context(self, party, round_id: int) -> tuple[str, bytes, bytes | None]:
        """(dealer, public context, the caller's box or None for the dealer)."""
        with self.lock:
            self._member(party)
            self._check_round(round_id)
            if not self.he:
                raise FailedPrecondition(f"round {round_id} is in {self.config.privacy} mode, not he: no CKKS context")
            row = self.store.query("SELECT dealer, public_context FROM he_contexts WHERE round = ?", round_id)
            if not row:
                raise FailedPrecondition(f"the dealer has not published the CKKS context yet; {self._where()}")
            self._participant(party)
            box = self.store.query("SELECT ciphertext FROM shares WHERE round = ? AND recipient = ?", round_id, party)
            return row[0]["dealer"], row[0]["public_context"], box[0]["ciphertext"] if box else None

    def _public_context(self):
        """The current round's public context (parsed once; after a restart, from the store)."""
        round_id = self.current["id"]
        if self._he_ctx is None or self._he_ctx[0] != round_id:
            row = self.store.query("SELECT public_context FROM he_contexts WHERE round = ?", round_id)
            self._he_ctx = (round_id, load_public_context(row[0]["public_context"], self.config.he))
        return self._he_ctx[1]

    # ------------------------------------------------------------------ uploads

    def begin_upload(self, party, round_id: int, layer: int, tensor: int, shape: list[int], encoding: int,
                     total_bytes: int, sha256: bytes) -> UploadSession:
        """Checks a header against the round and opens a staging file for its chunks."""
        with self.lock:
            self._member(party)
            record = self._check_round(round_id)
            if tensor not in (S_KK, S_RK):
                raise InvalidArgument(f"tensor {tensor_name(tensor)} cannot be uploaded; "
                                      "send TENSOR_S_KK_UPPER or TENSOR_S_RK")
            if layer not in self.spec:
                raise InvalidArgument(f"layer {layer} is not edited in this round; layers are {sorted(self.spec)}")
            spec = self.spec[layer]
            want_encoding = (pb.ENCODING_RING_U64_LE if self.mask else
                             pb.ENCODING_CKKS if self.he else pb.ENCODING_FLOAT64_LE)
            if encoding != want_encoding:
                raise InvalidArgument(f"encoding {pb.Encoding.Name(encoding) if encoding in pb.Encoding.values() else encoding} "
                                      f"does not match privacy mode {self.config.privacy}: use {pb.Encoding.Name(want_encoding)}")
            want_shape = [spec.d_in * (spec.d_in + 1) // 2] if tensor == S_KK else [spec.d_out, spec.d_in]
            if list(shape) != want_shape:
                raise InvalidArgument(f"shape {list(shape)} of {tensor_name(tensor)} layer {layer}: expected {want_shape}")
            if self.he:
                most = self.config.he.max_payload_bytes(math.prod(want_shape))
                if not 0 < total_bytes <= most:
                    raise InvalidArgument(f"total_bytes {total_bytes}: {math.prod(want_shape)} values in CKKS "
                                          f"ciphertexts of these parameters take 1..{most} bytes")
            elif total_bytes != 8 * math.prod(want_shape):
                raise InvalidArgument(f"total_bytes {total_bytes}: shape {want_shape} of 8-byte words is "
                                      f"{8 * math.prod(want_shape)} bytes")
            if len(sha256) != 32:
                raise InvalidArgument(f"header sha256 must be 32 raw bytes, got {len(sha256)}")
            old = self.store.query("SELECT sha256 FROM uploads WHERE round = ? AND layer = ? AND tensor = ? AND party = ?",
                                   round_id, layer, tensor, party)
            if old and old[0]["sha256"] != sha256:
                raise AlreadyExists(f"a different payload of {tensor_name(tensor)} layer {layer} was already "
                                    f"accepted from {party!r} in round {round_id}")
            if not old:
                self._need_phase("UploadContribution", UPLOADING)
                self._participant(party)
                if layer not in self.steps[record["step"]]:
                    raise FailedPrecondition(f"layer {layer} is not being uploaded now: step {record['step']} "
                                             f"covers layers {self.steps[record['step']]}")
            path = self.store.path(f"staging/r{round_id}-l{layer}-t{tensor}-{party}-{uuid.uuid4().hex}.part")
            return UploadSession(party, round_id, record["step"], layer, tensor, total_bytes, bytes(sha256), path,
                                 self.config.chunk_bytes, replay=bool(old))

    def accept_upload(self, session: UploadSession) -> bool:
        """Verifies a complete stream and adds it into the ring sum; True if it was already accepted."""
        try:
            session.finish()
            if session.replay:
                return True
            if self.config.privacy == "plain":
                self._check_finite(session)
            with self.lock:
                return self._add_upload(session)
        finally:
            session.discard()
            release_free_memory()

    def _check_finite(self, session: UploadSession) -> None:
        seen = 0
        for block in _file_blocks(session.path, "<f8"):
            bad = np.flatnonzero(~np.isfinite(block))
            if bad.size:
                raise InvalidArgument(f"{tensor_name(session.tensor)} layer {session.layer} has a non-finite value "
                                      f"({block[bad[0]]}) at element {seen + int(bad[0])}")
            seen += block.size

    def _add_upload(self, session: UploadSession) -> bool:
        record = self._check_round(session.round_id)
        key = (session.round_id, session.layer, session.tensor)
        old = self.store.query("SELECT sha256 FROM uploads WHERE round = ? AND layer = ? AND tensor = ? AND party = ?",
                               *key, session.party)
        if old:  # a concurrent identical stream won the race
            if old[0]["sha256"] == session.sha256:
                return True
            raise AlreadyExists(f"a different payload of {tensor_name(session.tensor)} layer {session.layer} was "
                                f"already accepted from {session.party!r}")
        self._need_phase("UploadContribution", UPLOADING)
        self._participant(session.party)
        if record["step"] != session.step:
            raise FailedPrecondition(f"the upload step ended while layer {session.layer} was streaming; {self._where()}")
        acc = self.store.query("SELECT generation, path FROM accumulators WHERE round = ? AND layer = ? AND tensor = ?", *key)
        generation = acc[0]["generation"] + 1 if acc else 1
        old_path = acc[0]["path"] if acc else None
        stem = f"r{session.round_id}-l{session.layer}-t{session.tensor}"
        started = time.monotonic()
        if self.he:
            new_path = self._fold_ciphertexts(session, old_path, stem, generation)
        else:
            dtype = "<u8" if self.mask else "<f8"
            blocks = _summed_blocks(self.store.path(old_path) if old_path else None, session.path, dtype)
            new_path = self.store.new_generation_file("acc", stem, generation, blocks)
        add_seconds = time.monotonic() - started
        try:  # the upload row and the sum that includes it commit together: counted exactly once
            with self.store.transaction() as db:
                db.execute("INSERT OR REPLACE INTO accumulators VALUES (?, ?, ?, ?, ?)", (*key, generation, new_path))
                db.execute("INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (session.round_id, session.step, session.party, session.layer, session.tensor,
                            session.sha256, session.total_bytes))
        except BaseException:
            self.store.delete_file(new_path)
            raise
        self.store.delete_file(old_path)
        self._changed("upload_accepted", party=session.party, layer=session.layer,
                      tensor=tensor_name(session.tensor), bytes=session.total_bytes,
                      seconds=round(time.monotonic() - session.started, 3), add_seconds=round(add_seconds, 3))
        self._advance()
        return False

    def _fold_ciphertexts(self, session: UploadSession, old_path: str | None, stem: str, generation: int) -> str:
        """Running encrypted sum + this upload, block by block; every block checked before it counts."""
        spec = self.spec[session.layer]
        n_values = spec.d_in * (spec.d_in + 1) // 2 if session.tensor == S_KK else spec.d_out * spec.d_in
        what = f"{tensor_name(session.tensor)} layer {session.layer} from {session.party!r}"
        with open(session.path, "rb") as new, (open(self.store.path(old_path), "rb") if old_path else nullcontext()) as old:
            blocks = summed_blocks(self._public_context(), self.config.he, n_values, old, new, what)
            try:
                return self.store.new_generation_file("acc", stem, generation, blocks)
            except HeError as error:
                raise InvalidArgument(str(error)) from None

    # ------------------------------------------------------------------ unmasking

    def unmasking_plan(self, party, round_id: int, layer: int | None) -> tuple[list[str], list[str]]:
        with self.lock:
            self._member(party)
            self._check_round(round_id)
            self._check_unmask_layer(layer)
            self._need_phase("GetUnmaskingPlan", UNMASKING)
            if party not in self.current["survivors"]:
                raise PermissionDenied(f"{party!r} is not a survivor of round {round_id}: it has nothing to reveal")
            return list(self.current["survivors"]), self._dropped_participants()

    def _check_unmask_layer(self, layer: int | None) -> None:
        if self.config.schedule == "sequential" and layer is not None and layer != self.steps[0][0]:
            raise InvalidArgument(f"unmasking covers layer {self.steps[0][0]} (the first step), not layer {layer}")

    def _dropped_participants(self) -> list[str]:
        return [p for p in self.current["participants"] if p in self.current["dropped"]]

    def submit_reveals(self, party, round_id: int, layer: int | None,
                       shares: list[tuple[str, int, int, bytes]]) -> tuple[int, bool]:
        """Records a survivor's revealed Shamir shares: (owner, kind, x, y) per plan entry."""
        with self.lock:
            self._member(party)
            record = self._check_round(round_id)
            self._check_unmask_layer(layer)
            if not self.mask:
                raise FailedPrecondition(f"round {round_id} is in plain mode: nothing to unmask")
            old = self.store.query("SELECT owner, kind, x, y FROM reveals WHERE round = ? AND revealer = ?",
                                   round_id, party)
            rows = sorted((owner, kind, x, bytes(y)) for owner, kind, x, y in shares)
            if old:
                if sorted(tuple(r) for r in old) == rows:
                    return len(rows), record["phase"] != UNMASKING
                raise AlreadyExists(f"{party!r} already revealed different shares in round {round_id}")
            self._need_phase("SubmitUnmaskingShares", UNMASKING)
            if party not in record["survivors"]:
                raise PermissionDenied(f"{party!r} is not a survivor of round {round_id}")
            expected = {p: SELF_SEED for p in record["survivors"]} | {p: MASK_KEY for p in self._dropped_participants()}
            my_x = share_index(record["participants"], party)
            owners = [owner for owner, *_ in rows]
            if len(set(owners)) != len(owners):
                raise InvalidArgument(f"a party's share appears twice in {owners}")
            for owner, kind, x, y in rows:
                if owner not in expected:
                    raise InvalidArgument(f"{owner!r} is not in the unmasking plan")
                if kind != expected[owner]:
                    want = cpb.ShareKind.Name(expected[owner])
                    raise InvalidArgument(f"the share of {owner!r} must be {want} (nothing was kept)")
                if x != my_x:
                    raise InvalidArgument(f"share x {x} is not your share index {my_x}")
                if len(y) != SHARE_BYTES - 4:
                    raise InvalidArgument(f"share y of {owner!r} must be {SHARE_BYTES - 4} bytes, got {len(y)}")
                try:
                    Share.from_bytes(x.to_bytes(4, "big") + y)
                except ShamirError as err:
                    raise InvalidArgument(f"share of {owner!r}: {err}") from None
            if set(owners) != set(expected):
                raise InvalidArgument(f"missing shares for {sorted(set(expected) - set(owners))}")
            with self.store.transaction() as db:
                db.executemany("INSERT INTO reveals VALUES (?, ?, ?, ?, ?, ?)", [(round_id, party, *r) for r in rows])
            self._changed("shares_revealed", party=party)
            self._advance()
            return len(rows), self.current["id"] != round_id or self.current["phase"] != UNMASKING

    def _rebuild_secrets(self) -> None:
        """Self-mask secrets of the survivors and mask keys of the dropped, from the revealed shares."""
        record = self.current
        shares: dict[tuple[str, int], list[Share]] = {}
        for r in self.store.query("SELECT owner, kind, x, y FROM reveals WHERE round = ?", record["id"]):
            shares.setdefault((r["owner"], r["kind"]), []).append(Share(r["x"], int.from_bytes(r["y"], "big")))
        adverts = self.adverts()
        t = self.config.threshold
        self.secrets = {
            "self": {p: recover_self_secret(shares[(p, SELF_SEED)], t) for p in record["survivors"]},
            "dropped": {p: recover_mask_private_key(shares[(p, MASK_KEY)], t, adverts[p]["mask_pk"])
                        for p in self._dropped_participants()},
        }

    # ------------------------------------------------------------------ solve, download, apply

    def _solve_pending(self) -> None:
        """Solves every layer of the current step that has no result yet (tick thread only)."""
        with self.lock:
            record = dict(self.current)
            if record["phase"] != SOLVING:
                return
            if self.mask and self.secrets is None:
                try:
                    self._rebuild_secrets()  # after a restart: from the stored reveals
                except (ShamirError, KeyError, ValueError) as err:
                    self._finish(FAILED, f"unmasking failed: {err}")
                    return
            secrets = self.secrets
            done = {r["layer"] for r in self.store.query("SELECT layer FROM results WHERE round = ?", record["id"])}
            sums = {(r["layer"], r["tensor"]): r["path"]
                    for r in self.store.query("SELECT * FROM accumulators WHERE round = ?", record["id"])}
            adverts = self.adverts() if self.mask else {}
        try:
            for layer in self.steps[record["step"]]:
                if layer not in done:
                    self._solve_layer(record, layer, sums, secrets, adverts)
        except Exception as err:  # noqa: BLE001 - a solve that fails fails the round, with the reason
            with self.lock:
                if self.current["id"] == record["id"]:
                    self._finish(FAILED, f"solve failed: {err}")
            return
        with self.lock:
            if self.current["id"] == record["id"] and self.current["phase"] == SOLVING:
                self._set(DOWNLOADING, "step_solved")

    def _decoded_sum(self, record: dict, layer: int, tensor: int, path: str, secrets, adverts) -> np.ndarray:
        """The decoded sum of a tensor, read (and, in mask mode, unmasked) a block at a time into one
        float64 array of its size."""
        spec = self.spec[layer]
        shape = (spec.d_in * (spec.d_in + 1) // 2,) if tensor == S_KK else (spec.d_out, spec.d_in)
        if not self.mask:
            return read_array(self.store.path(path), "<f8").reshape(shape)
        participants = record["participants"]
        binding = Binding(self.config.federation_id, record["id"], layer, tensor_name(tensor), shape)
        numerics = RoundNumerics(len(participants), self.config.scale_bits, safe_bound(len(participants)))
        keys = {p: adverts[p]["mask_pk"] for p in participants}
        return unmask_blocks(_file_blocks(self.store.path(path), "<u8"), secrets["self"], secrets["dropped"], keys,
                             binding, numerics)

    def _solve_layer(self, record: dict, layer: int, sums: dict, secrets, adverts) -> None:
        """ΔW of one layer. CPU memory: the d x d system (C0 read into it, then lambda C0 + C_acc +
        S_KK assembled and factored in place), the packed S_KK sum and S_RK (solved into ΔW)."""
        spec, started = self.spec[layer], time.monotonic()
        if (layer, S_KK) not in sums or (layer, S_RK) not in sums:
            raise ValueError(f"no uploads of layer {layer}")
        acc = self.store.query("SELECT path FROM c_acc WHERE module = ?", spec.module_name)
        c_acc_path = self.store.path(acc[0]["path"]) if acc else None
        s_kk = self._decoded_sum(record, layer, S_KK, sums[(layer, S_KK)], secrets, adverts)
        s_rk = np.ascontiguousarray(self._decoded_sum(record, layer, S_RK, sums[(layer, S_RK)], secrets, adverts))
        unmasked = time.monotonic()
        delta = merge_layer(self.config.c0, spec.module_name, self.lam[layer], s_kk, s_rk, c_acc_path,
                            self.config.device)
        del s_rk
        stem = f"r{record['id']}-l{layer}"
        kk_path = self.store.new_generation_file("results", stem + "-s_kk", 0, [le_bytes(s_kk)])
        del s_kk
        payload = le_bytes(delta)
        dw_path = self.store.new_generation_file("results", stem + "-delta_w", 0, [payload])
        dw_bytes = payload.nbytes
        with self.store.transaction() as db:
            db.execute("INSERT INTO results VALUES (?, ?, ?, ?, ?)",
                       (record["id"], layer, dw_path, hashlib.sha256(payload).digest(), kk_path))
        del payload, delta
        release_free_memory()
        log_event("layer_solved", round=record["id"], layer=layer, bytes=dw_bytes,
                  seconds=round(time.monotonic() - started, 3), unmask_seconds=round(unmasked - started, 3),
                  solve_seconds=round(time.monotonic() - unmasked, 3))

    def result(self, party, round_id: int, layer: int) -> tuple[Path, bytes, list[int]]:
        """(file, sha256, shape) of a solved layer's Delta W (float64 little-endian, d_out x d_in)."""
        with self.lock:
            self._member(party)
            if round_id == 0 or round_id > self.current["id"]:
                raise NotFound(f"round {round_id} was never opened; {self._where()}")
            if layer not in self.spec:
                raise InvalidArgument(f"layer {layer} is not edited in this federation; layers are {sorted(self.spec)}")
            if self.he:
                raise FailedPrecondition(f"round {round_id} is in HE mode: the coordinator never sees Delta W; "
                                         "download the encrypted sums (DownloadAggregate) and solve")
            rows = self.store.query("SELECT path, sha256 FROM results WHERE round = ? AND layer = ?", round_id, layer)
            if not rows:
                raise FailedPrecondition(f"layer {layer} of round {round_id} is not solved (yet); {self._where()}")
            spec = self.spec[layer]
            return self.store.path(rows[0]["path"]), rows[0]["sha256"], [spec.d_out, spec.d_in]

    def aggregate(self, party, round_id: int, layer: int, tensor: int) -> tuple[Path, bytes, list[int]]:
        """(file, sha256, shape) of one encrypted sum of the current step (HE mode)."""
        with self.lock:
            self._member(party)
            record = self._check_round(round_id)
            if not self.he:
                raise FailedPrecondition(f"round {round_id} is in {self.config.privacy} mode: DownloadAggregate serves "
                                         "HE rounds; use DownloadUpdate")
            if layer not in self.spec:
                raise InvalidArgument(f"layer {layer} is not edited in this federation; layers are {sorted(self.spec)}")
            if tensor not in (S_KK, S_RK):
                raise InvalidArgument(f"tensor {tensor_name(tensor)}: an encrypted sum is TENSOR_S_KK_UPPER or TENSOR_S_RK")
            self._need_phase("DownloadAggregate", DOWNLOADING)
            if layer not in self.steps[record["step"]]:
                raise FailedPrecondition(f"layer {layer} is not being downloaded now; {self._where()}")
            if party not in (record["survivors"] or []) or party in record["dropped"]:
                raise PermissionDenied(f"{party!r} did not contribute to the sums of round {round_id}")
            row = self.store.query("SELECT path FROM accumulators WHERE round = ? AND layer = ? AND tensor = ?",
                                   round_id, layer, tensor)[0]
            path = self.store.path(row["path"])
            if row["path"] not in self._digests:
                self._digests[row["path"]] = _file_sha256(path)
            spec = self.spec[layer]
            shape = [spec.d_in * (spec.d_in + 1) // 2] if tensor == S_KK else [spec.d_out, spec.d_in]
            return path, self._digests[row["path"]], shape

    def _compare_he_digest(self, party, round_id: int, layer: int, digest: bytes) -> None:
        """Every party must have decrypted the same sums: a differing digest rolls the round back."""
        others = self.store.query("SELECT party FROM he_digests WHERE round = ? AND layer = ? AND digest != ?",
                                  round_id, layer, digest)
        if others:
            reason = (f"the decrypted sums of layer {layer} differ between parties ({party} and {others[0]['party']} "
                      "report different digests); every party must restore its model")
            self._finish(ROLLED_BACK, reason)
            raise Aborted(reason)

    def report_applied(self, party, round_id: int, layer: int, sha256: bytes,
                       aggregate_digest: bytes = b"") -> tuple[bool, list[str]]:
        with self.lock:
            self._member(party)
            if self.he:
                if layer not in self.spec:
                    raise InvalidArgument(f"layer {layer} is not edited in this federation; layers are {sorted(self.spec)}")
                if len(sha256) != 32:
                    raise InvalidArgument(f"sha256 must be the 32-byte digest of the Delta W applied, got {len(sha256)}")
                if len(aggregate_digest) != 32:
                    raise InvalidArgument("aggregate_digest must be 32 bytes (HMAC-SHA256 of the decrypted sums) in an "
                                          f"HE round, got {len(aggregate_digest)}")
            else:
                _, digest, _ = self.result(party, round_id, layer)
                if sha256 != digest:
                    raise InvalidArgument(f"sha256 {sha256.hex()} is not the digest of the update served for layer "
                                          f"{layer}: {digest.hex()}")
            old = self.store.query("SELECT sha256 FROM applied WHERE round = ? AND layer = ? AND party = ?",
                                   round_id, layer, party)
            if old and self.he:
                mine = self.store.query("SELECT digest FROM he_digests WHERE round = ? AND layer = ? AND party = ?",
                                        round_id, layer, party)
                if (old[0]["sha256"], mine[0]["digest"]) != (sha256, aggregate_digest):
                    raise AlreadyExists(f"{party!r} already reported layer {layer} applied with other digests")
            if not old:
                self._check_round(round_id)
                self._need_phase("ReportApplied", DOWNLOADING)
                self._participant(party)
                if layer not in self.steps[self.current["step"]]:
                    raise FailedPrecondition(f"layer {layer} is not being downloaded now; {self._where()}")
                if self.he:
                    self._compare_he_digest(party, round_id, layer, aggregate_digest)
                with self.store.transaction() as db:
                    db.execute("INSERT INTO applied VALUES (?, ?, ?, ?)", (round_id, layer, party, sha256))
                    if self.he:
                        db.execute("INSERT INTO he_digests VALUES (?, ?, ?, ?)", (round_id, layer, party, aggregate_digest))
                self._changed("update_applied", party=party, layer=layer)
            reported = {r["party"] for r in self.store.query("SELECT party FROM applied WHERE round = ? AND layer = ?",
                                                            round_id, layer)}
            record = self.current if self.current["id"] == round_id else self.store.round(round_id)
            alive = [p for p in (record["survivors"] or []) if p not in record["dropped"]]
            pending = sorted(set(alive) - reported)
            if self.current["id"] == round_id:
                self._advance()
            return not pending, pending

    # ------------------------------------------------------------------ status and deadlines

    def deadline(self) -> float | None:
        """Monotonic time at which the current phase times out, or None."""
        name = DEADLINE_OF.get(self.current["phase"])
        if name is None or self.entered is None:
            return None
        return self.entered + self.config.deadlines[name]

    def status(self, round_id: int = 0) -> dict:
        with self.lock:
            record = self.current if round_id in (0, self.current["id"]) else self.store.round(round_id)
            if record is None:
                raise NotFound(f"round {round_id} was never opened; {self._where()}")
            live = record is self.current
            deadline = self.deadline() if live else None
            sequential_step = self.config.schedule == "sequential" and record["phase"] in (UPLOADING, UNMASKING, SOLVING, DOWNLOADING)
            alive = [p for p in (record["participants"] or record["joined"]) if p not in record["dropped"]]
            return {"round_id": record["id"], "phase": record["phase"],
                    "current_layer": self.steps[record["step"]][0] if sequential_step else None,
                    "parties_alive": alive, "parties_dropped": sorted(record["dropped"]),
                    "layers_completed": list(record["layers_completed"]), "failure_reason": record["failure"],
                    "started_at": record["started_at"], "updated_at": record["updated_at"],
                    "phase_deadline": None if deadline is None else time.time() + deadline - self.clock()}

    def parameters(self, round_id: int = 0) -> dict:
        with self.lock:
            record = self.current if round_id in (0, self.current["id"]) else self.store.round(round_id)
            if record is None:
                raise NotFound(f"round {round_id} was never opened; {self._where()}")
            roster = record["participants"] or record["joined"]
            n = len(roster) or len(self.config.roster)
            he = self.config.he
            return {"round_id": record["id"], "roster": list(roster), "threshold": self.config.threshold if self.mask else 0,
                    "per_party_bound": safe_bound(n) if self.mask else 0,
                    "scale_bits": self.config.scale_bits if self.keyed else 0,
                    "he": {**he.as_dict(), "per_party_bound": he.per_party_bound(n), "slots": he.slots} if he else None}

    def wait_for_change(self, version: int, timeout: float) -> int:
        with self.changed:
            if self.version == version and not self.closed:
                self.changed.wait(timeout)
            return self.version

    def tick(self, now: float | None = None) -> None:
        """Deadlines, then any pending solve. Called by the server's ticker thread (~5 times a second)."""
        with self.lock:
            if self.closed:
                return
            self._advance(now)
        self._solve_pending()

    def _advance(self, now: float | None = None) -> None:
        """Takes every transition the current state allows (idempotent: also re-run after a restart)."""
        while self._advance_once(self.clock() if now is None else now):
            pass

    def _advance_once(self, now: float) -> bool:
        record, cfg = self.current, self.config
        phase, deadline = record["phase"], self.deadline()
        late = deadline is not None and now >= deadline
        if phase == WAITING:
            joined = record["joined"]
            if len(joined) == len(cfg.roster) or (late and len(joined) >= cfg.min_parties):
                self._set(ADVERTISING if self.keyed else UPLOADING, "round_started", participants=list(joined))
            elif late:
                self._finish(FAILED, f"only {len(joined)} of {len(cfg.roster)} parties joined before the join "
                                     f"deadline; at least min_parties = {cfg.min_parties} are needed")
            else:
                return False
        elif phase == ADVERTISING:
            advertised = [p for p in record["participants"] if p in self.adverts()]
            if len(advertised) == len(record["participants"]):
                self._set(SHARING, "keys_complete")
            elif late and len(advertised) >= cfg.min_parties:
                gone = sorted(set(record["participants"]) - set(advertised))
                self._set(SHARING, "keys_complete", participants=advertised, dropped=gone)
            elif late:
                self._finish(FAILED, f"only {len(advertised)} parties advertised keys before the deadline; "
                                     f"at least min_parties = {cfg.min_parties} are needed")
            else:
                return False
        elif phase == SHARING and self.he:
            if self.store.query("SELECT 1 FROM he_contexts WHERE round = ?", record["id"]):
                self._set(UPLOADING, "he_context_complete")
            elif late:
                self._finish(FAILED, f"the dealer {self.dealer()} did not publish the CKKS context before the deadline")
            else:
                return False
        elif phase == SHARING:
            senders = {r["sender"] for r in self.store.query("SELECT DISTINCT sender FROM shares WHERE round = ?", record["id"])}
            missing = sorted(set(record["participants"]) - senders)
            if not missing:
                self._set(UPLOADING, "shares_complete")
            elif late:
                # Without a party's shares its keys cannot be recovered if it drops later: start over.
                self._finish(FAILED, f"{', '.join(missing)} did not submit encrypted shares before the deadline")
            else:
                return False
        elif phase == UPLOADING:
            return self._advance_uploads(record, late)
        elif phase == UNMASKING:
            revealers = self.store.query("SELECT COUNT(DISTINCT revealer) AS n FROM reveals WHERE round = ?", record["id"])[0]["n"]
            if revealers >= cfg.threshold:
                try:
                    self._rebuild_secrets()
                except (ShamirError, KeyError, ValueError) as err:
                    self._finish(FAILED, f"unmasking failed: {err}")
                    return True
                self._set(SOLVING, "unmasked")
            elif late:
                self._finish(FAILED, f"only {revealers} survivors revealed their shares before the deadline; "
                                     f"threshold {cfg.threshold} are needed")
            else:
                return False
        elif phase == DOWNLOADING:
            layers = self.steps[record["step"]]
            marks = ",".join("?" * len(layers))
            rows = self.store.query(f"SELECT party, COUNT(*) AS n FROM applied WHERE round = ? AND layer IN ({marks}) "
                                    "GROUP BY party", record["id"], *layers)
            applied = {r["party"] for r in rows if r["n"] == len(layers)}
            if set(self._alive()) <= applied:
                done = sorted(record["layers_completed"] + layers)
                if record["step"] + 1 < len(self.steps):
                    self._set(UPLOADING, "step_completed", step=record["step"] + 1, layers_completed=done)
                else:
                    record["layers_completed"] = done
                    self._finish(COMPLETED)
            elif late:
                late_parties = sorted(set(self._alive()) - applied)
                self._finish(ROLLED_BACK, f"{', '.join(late_parties)} did not report layers {layers} applied before "
                                          "the download deadline; every party must restore its model")
            else:
                return False
        else:
            return False  # SOLVING is the tick thread's; terminal rounds were replaced already
        return True

    def _advance_uploads(self, record: dict, late: bool) -> bool:
        cfg, layers = self.config, self.steps[record["step"]]
        counts = self._uploaded(layers)
        alive = self._alive()
        complete = [p for p in alive if counts.get(p, 0) == 2 * len(layers)]
        if len(complete) < len(alive) and not late:
            return False
        if record["step"] > 0:  # a later step cannot drop anyone: its self masks are already revealed
            if len(complete) < len(alive):
                missing = sorted(set(alive) - set(complete))
                self._finish(ROLLED_BACK, f"{', '.join(missing)} did not upload layer(s) {layers} before the deadline; "
                                          "every party must restore its model")
                return True
            self._set(DOWNLOADING if self.he else SOLVING, "uploads_complete")
            return True
        partial = sorted(p for p in alive if 0 < counts.get(p, 0) < 2 * len(layers))
        if partial:
            self._finish(FAILED, f"{', '.join(partial)} uploaded only part of step 0 before the deadline")
            return True
        if len(complete) < cfg.min_parties:
            self._finish(FAILED, f"only {len(complete)} of {len(record['participants'])} participants uploaded before "
                                 f"the upload deadline; at least {cfg.min_parties} are needed "
                                 f"(threshold {cfg.threshold}, min_parties {cfg.min_parties})")
            return True
        dropped = sorted(set(record["dropped"]) | (set(alive) - set(complete)))
        after = UNMASKING if self.mask else DOWNLOADING if self.he else SOLVING  # HE: nothing to solve here
        self._set(after, "uploads_complete", survivors=complete, dropped=dropped)
        return True
