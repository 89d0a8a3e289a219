"""Test harness: a tiny synthetic federation and an in-test party client built from protocol/ primitives.

Layers 0 and 1 with d_in = 8, d_out = 4; C0 from MEMIT-layout npz files; no model anywhere.
"""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import grpc
import numpy as np
import torch
import yaml

from collabedit_secure.coordinator.config import load_config
from collabedit_secure.coordinator.server import serve
from collabedit_secure.kernels import pack_upper
from collabedit_secure.merging.collabedit import collabedit_merge
from collabedit_secure.protocol.encoding import Binding
from collabedit_secure.protocol.fixedpoint import RoundNumerics
from collabedit_secure.protocol import he
from collabedit_secure.protocol.keys import KeyAdvertisement, RoundKeys, sign_advertisement, verify_advertisement
from collabedit_secure.protocol.masking import masked_upload
from collabedit_secure.protocol.recovery import share_index, split_round_secrets
from collabedit_secure.protocol.sharebox import open_shares, seal_shares
from collabedit_secure.rpc.channels import GRPC_OPTIONS
from collabedit_secure.rpc.generated import common_pb2 as pb, coordinator_pb2 as cpb, coordinator_pb2_grpc
from collabedit_secure.rpc.tls import channel_credentials

D_IN, D_OUT, LAYERS = 8, 4, (0, 1)
FEDERATION = "test-federation"
CHUNK = 64  # bytes: every upload spans several chunks
TIMEOUT = 15.0  # seconds any wait in these tests may take
MODULE = "transformer.h.{}.mlp.c_proj"
PHASE = pb.RoundPhase.Value


def write_statistics(folder: Path) -> None:
    """C0 files (MEMIT layout) and an hparams file with one lambda per layer."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for layer in LAYERS:
        keys = rng.normal(size=(D_IN, 200))
        np.savez(folder / f"{MODULE.format(layer)}_float32_mom2_1000.npz",
                 **{"mom2.mom2": keys @ keys.T, "mom2.count": np.array(200)})
    hparams = {"base": "default-world", "layers": list(LAYERS), "mom2_update_weight": [2.0, 3.0],
               "mom2_n_samples": 1000}
    (folder / "hparams.yaml").write_text(yaml.safe_dump(hparams))


def write_config(folder: Path, stats: Path, pki, privacy="mask", schedule="parallel", threshold=2,
                 min_parties=2, deadlines=None, state_dir=None, chunk_bytes=CHUNK) -> Path:
    config = {
        "federation_id": FEDERATION, "listen": "127.0.0.1:0", "port_file": str(folder / "port"),
        "state_dir": str(state_dir or folder / "state"), "roster": ["a", "b", "c"], "threshold": threshold,
        "min_parties": min_parties, "schedule": schedule, "privacy": privacy,
        "hparams": str(stats / "hparams.yaml"), "c0": str(stats), "layer_shapes": {l: D_OUT for l in LAYERS},
        "model_fingerprint": "ab" * 32, "chunk_bytes": chunk_bytes,
        "deadlines": {"join": 60, "keys": 60, "upload": 60, "unmask": 60, "download": 60, **(deadlines or {})},
        "tls": {"ca": str(pki.ca_cert), "cert": str(pki.certs["coordinator"]), "key": str(pki.keys["coordinator"])},
    }
    path = folder / "coordinator.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(config_path: Path):
    return serve(load_config(config_path))


def party_statistics(seed: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """layer -> (S_KK full, S_RK) of one party's synthetic edits."""
    rng = np.random.default_rng(seed)
    stats = {}
    for layer in LAYERS:
        keys, residuals = rng.normal(size=(D_IN, 5)), rng.normal(size=(D_OUT, 5))
        stats[layer] = (keys @ keys.T, residuals @ keys.T)
    return stats


def expected_delta(config, parties: list[dict]) -> dict[int, torch.Tensor]:
    """The in-process global solve on the plain sums (what the federation must reproduce)."""
    result = {}
    for index, layer in enumerate(LAYERS):
        s_kk = torch.from_numpy(sum(p[layer][0] for p in parties))
        s_rk = torch.from_numpy(sum(p[layer][1] for p in parties))
        result[layer] = collabedit_merge(config.c0[MODULE.format(layer)], config.lambdas[index], s_kk, s_rk)
    return result


def wait_phase(party: "Party", *phases: str, round_id: int = 0) -> cpb.GetRoundResponse:
    wanted = {PHASE("ROUND_PHASE_" + p) for p in phases}
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        response = party.stub.GetRound(cpb.GetRoundRequest(round_id=round_id), timeout=5)
        if response.status.phase in wanted:
            return response
        time.sleep(0.02)
    raise AssertionError(f"round {round_id} never reached {phases}; it is in {pb.RoundPhase.Name(response.status.phase)}")


def chunks_of(payload: bytes, size: int = CHUNK):
    for offset in range(0, len(payload), size):
        data = payload[offset:offset + size]
        yield pb.PayloadChunk(offset=offset, data=data, sha256=hashlib.sha256(data).digest())


def header(round_id, layer, tensor, payload, shape, encoding, override=None):
    fields = dict(round_id=round_id, layer=layer, tensor=tensor, shape=shape, encoding=encoding,
                  total_bytes=len(payload), sha256=hashlib.sha256(payload).digest())
    fields.update(override or {})
    return pb.PayloadHeader(**fields)


def stream(head: pb.PayloadHeader, chunks):
    yield cpb.UploadContributionRequest(header=head)
    for chunk in chunks:
        yield cpb.UploadContributionRequest(chunk=chunk)


def send_upload(party: "Party", head: pb.PayloadHeader, chunks):
    return party.stub.UploadContribution(stream(head, chunks), timeout=10)


class Party:
    """One party's side of a round, as the party daemon would run it (without a model)."""

    def __init__(self, name: str, pki, port: int, config):
        self.name, self.pki, self.config = name, pki, config
        self.identity = pki.identity(name)
        self.connect(port)

    def connect(self, port: int) -> None:
        if getattr(self, "channel", None) is not None:
            self.channel.close()
        self.channel = grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(self.identity),
                                           options=list(GRPC_OPTIONS))
        self.stub = coordinator_pb2_grpc.CoordinatorServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def join(self, **override):
        cfg = self.config
        fields = dict(federation_id=cfg.federation_id, model_fingerprint=cfg.model_fingerprint,
                      hparams_fingerprint=cfg.hparams_fingerprint, c0_fingerprint=cfg.c0_fingerprint)
        fields.update(override)
        response = self.stub.JoinFederation(cpb.JoinFederationRequest(**fields), timeout=5)
        self.round_id = response.parameters.round_id
        return response

    def advertise(self) -> None:
        self.keys = RoundKeys.generate()
        adv = sign_advertisement(self.identity.private_key, self.identity.certificate_pem, FEDERATION,
                                 self.round_id, self.name, self.keys)
        self.stub.AdvertiseKeys(cpb.AdvertiseKeysRequest(
            round_id=self.round_id, mask_public_key=adv.mask_public_key, share_public_key=adv.share_public_key,
            certificate_pem=adv.certificate_pem.decode(), signature=adv.signature), timeout=5)

    def share(self) -> None:
        response = self.stub.ListKeyAdvertisements(cpb.ListKeyAdvertisementsRequest(round_id=self.round_id), timeout=5)
        self.peers = {}
        for a in response.advertisements:  # the parties' own check: the coordinator only relays
            adv = KeyAdvertisement(a.party_id, a.mask_public_key, a.share_public_key, a.certificate_pem.encode(), a.signature)
            verify_advertisement(adv, self.identity.ca_pem, FEDERATION, self.round_id)
            self.peers[a.party_id] = adv
        self.roster = sorted(self.peers)
        params = self.stub.GetRound(cpb.GetRoundRequest(round_id=self.round_id), timeout=5).parameters
        self.params = params
        mine = split_round_secrets(self.keys, self.roster, params.threshold)
        self.received = {self.name: mine[self.name]}
        boxes = [cpb.EncryptedShare(sender_party_id=self.name, recipient_party_id=peer, ciphertext=seal_shares(
                    FEDERATION, self.round_id, self.name, peer, self.keys.share_private_key,
                    self.peers[peer].share_public_key, *mine[peer]))
                 for peer in self.roster if peer != self.name]
        self.stub.SubmitEncryptedShares(cpb.SubmitEncryptedSharesRequest(round_id=self.round_id, shares=boxes), timeout=5)

    def open_boxes(self) -> None:
        response = self.stub.ListEncryptedShares(cpb.ListEncryptedSharesRequest(round_id=self.round_id), timeout=5)
        x = share_index(self.roster, self.name)
        for box in response.shares:
            self.received[box.sender_party_id] = open_shares(
                FEDERATION, self.round_id, box.sender_party_id, self.name, self.keys.share_private_key,
                self.peers[box.sender_party_id].share_public_key, box.ciphertext, expected_x=x)

    def verify_peers(self) -> None:
        response = self.stub.ListKeyAdvertisements(cpb.ListKeyAdvertisementsRequest(round_id=self.round_id), timeout=5)
        self.peers = {}
        for a in response.advertisements:
            adv = KeyAdvertisement(a.party_id, a.mask_public_key, a.share_public_key, a.certificate_pem.encode(), a.signature)
            verify_advertisement(adv, self.identity.ca_pem, FEDERATION, self.round_id)
            self.peers[a.party_id] = adv
        self.roster = sorted(self.peers)
        self.params = self.stub.GetRound(cpb.GetRoundRequest(round_id=self.round_id), timeout=5).parameters
        self.he_params = he.HeParameters(self.params.he.poly_modulus_degree,
                                         tuple(self.params.he.coeff_mod_bit_sizes), self.params.he.scale_bits)

    def he_publish(self) -> cpb.PublishHeContextRequest:
        """As the dealer: a fresh secret context, sealed for every peer, published."""
        self.he_ctx, self.digest_key = he.new_secret_context(self.he_params), b"k" * 32
        public, secret = he.public_context_bytes(self.he_ctx), he.secret_context_bytes(self.he_ctx)
        boxes = [cpb.EncryptedShare(sender_party_id=self.name, recipient_party_id=peer, ciphertext=he.seal_secret_context(
                    FEDERATION, self.round_id, self.name, peer, self.keys.share_private_key,
                    self.peers[peer].share_public_key, secret, self.digest_key, public))
                 for peer in self.roster if peer != self.name]
        request = cpb.PublishHeContextRequest(round_id=self.round_id, public_context=public, secret_contexts=boxes)
        self.stub.PublishHeContext(request, timeout=10)
        return request

    def he_fetch(self) -> None:
        reply = self.stub.GetHeContext(cpb.GetHeContextRequest(round_id=self.round_id), timeout=10)
        box = reply.secret_context
        secret, self.digest_key, public_sha = he.open_secret_context(
            FEDERATION, self.round_id, reply.dealer_party_id, self.name, self.keys.share_private_key,
            self.peers[reply.dealer_party_id].share_public_key, box.ciphertext)
        assert hashlib.sha256(reply.public_context).digest() == public_sha
        self.he_ctx = he.load_secret_context(secret, self.he_params)

    def payload(self, layer: int, tensor: int, values: np.ndarray) -> tuple[bytes, list[int], int]:
        """Encoded bytes, shape and encoding of one contribution (masked in mask mode, encrypted in he)."""
        if tensor == pb.TENSOR_S_KK_UPPER:
            values = pack_upper(values)
        shape = list(values.shape)
        if self.config.privacy == "plain":
            return np.ascontiguousarray(values, "<f8").tobytes(), shape, pb.ENCODING_FLOAT64_LE
        if self.config.privacy == "he":
            payload = he.Encryptor(self.he_ctx, self.he_params).encrypt(np.asarray(values, np.float64))
            return payload, shape, pb.ENCODING_CKKS
        binding = Binding(FEDERATION, self.round_id, layer, pb.Tensor.Name(tensor), tuple(shape))
        numerics = RoundNumerics(len(self.roster), self.params.scale_bits, self.params.per_party_bound)
        peers = {p: a.mask_public_key for p, a in self.peers.items() if p != self.name}
        words = masked_upload(np.ascontiguousarray(values, np.float64), numerics, binding, self.name, self.keys, peers)
        return words.astype("<u8").tobytes(), shape, pb.ENCODING_RING_U64_LE

    def upload(self, layer: int, tensor: int, values: np.ndarray):
        payload, shape, encoding = self.payload(layer, tensor, values)
        head = header(self.round_id, layer, tensor, payload, shape, encoding)
        return self.stub.UploadContribution(stream(head, chunks_of(payload, self.config.chunk_bytes)), timeout=10)

    def upload_step(self, stats: dict, layers) -> None:
        for layer in layers:
            self.upload(layer, pb.TENSOR_S_KK_UPPER, stats[layer][0])
            self.upload(layer, pb.TENSOR_S_RK, stats[layer][1])

    def reveal(self, layer: int | None = None):
        request = cpb.GetUnmaskingPlanRequest(round_id=self.round_id)
        if layer is not None:
            request.layer = layer
        plan = self.stub.GetUnmaskingPlan(request, timeout=5)
        assert not set(plan.survivors) & set(plan.dropped)  # never both kinds for one owner
        shares = [cpb.RevealedShare(owner_party_id=p, kind=cpb.SHARE_KIND_SELF_MASK_SEED, x=self.received[p][0].x,
                                    y=self.received[p][0].y.to_bytes(66, "big")) for p in plan.survivors]
        shares += [cpb.RevealedShare(owner_party_id=p, kind=cpb.SHARE_KIND_MASK_KEY, x=self.received[p][1].x,
                                     y=self.received[p][1].y.to_bytes(66, "big")) for p in plan.dropped]
        submit = cpb.SubmitUnmaskingSharesRequest(round_id=self.round_id, shares=shares)
        if layer is not None:
            submit.layer = layer
        return self.stub.SubmitUnmaskingShares(submit, timeout=5)

    def download(self, layer: int, round_id: int | None = None) -> tuple[np.ndarray, bytes]:
        responses = list(self.stub.DownloadUpdate(cpb.DownloadUpdateRequest(
            round_id=round_id or self.round_id, layer=layer), timeout=10))
        head, data = responses[0].header, b"".join(r.chunk.data for r in responses[1:])
        assert head.tensor == pb.TENSOR_DELTA_W and head.encoding == pb.ENCODING_FLOAT64_LE
        assert hashlib.sha256(data).digest() == head.sha256 and len(data) == head.total_bytes
        return np.frombuffer(data, "<f8").reshape(tuple(head.shape)), head.sha256

    def download_sums(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """HE mode: both encrypted sums of a layer, decrypted (S_KK packed upper, S_RK)."""
        sums = []
        for tensor, n in ((pb.TENSOR_S_KK_UPPER, D_IN * (D_IN + 1) // 2), (pb.TENSOR_S_RK, D_OUT * D_IN)):
            responses = list(self.stub.DownloadAggregate(cpb.DownloadAggregateRequest(
                round_id=self.round_id, layer=layer, tensor=tensor), timeout=10))
            head, data = responses[0].header, b"".join(r.chunk.data for r in responses[1:])
            assert head.encoding == pb.ENCODING_CKKS and hashlib.sha256(data).digest() == head.sha256
            sums.append(he.decrypt_payload(self.he_ctx, self.he_params, io.BytesIO(data), n))
        return sums[0], sums[1].reshape(D_OUT, D_IN)

    def report(self, layer: int, digest: bytes, aggregate_digest: bytes = b""):
        return self.stub.ReportApplied(cpb.ReportAppliedRequest(round_id=self.round_id, layer=layer, sha256=digest,
                                                                aggregate_digest=aggregate_digest), timeout=5)


def prepare(parties: list[Party]) -> None:
    """Join, and in mask mode exchange keys and shares, until the round is UPLOADING."""
    for p in parties:
        p.join()
    if parties[0].config.privacy == "mask":
        for p in parties:
            p.advertise()
        for p in parties:
            p.share()
        for p in parties:
            p.open_boxes()
    elif parties[0].config.privacy == "he":
        for p in parties:
            p.advertise()
        for p in parties:
            p.verify_peers()
        parties[0].he_publish()  # a is the dealer: first in sorted order
        for p in parties[1:]:
            p.he_fetch()
    else:
        for p in parties:
            p.roster = sorted(x.name for x in parties)
    wait_phase(parties[0], "UPLOADING")


def finish_step(parties: list[Party], layers, reveal_layer=None, unmask=True) -> dict[int, np.ndarray]:
    """Unmask (first step of a mask round), download and report every layer of a step."""
    if unmask and parties[0].config.privacy == "mask":
        wait_phase(parties[0], "UNMASKING")
        for p in parties:
            try:
                p.reveal(reveal_layer)
            except grpc.RpcError as err:  # t reveals end the phase: a later survivor finds it closed
                assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
    wait_phase(parties[0], "DOWNLOADING", "COMPLETED")
    deltas = {}
    for layer in layers:
        for p in parties:
            delta, digest = p.download(layer)
            deltas.setdefault(layer, delta)
            assert np.array_equal(delta, deltas[layer])
        for p in parties:
            p.report(layer, digest)
    return deltas


def relative_error(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))
