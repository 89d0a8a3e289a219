"""Refused requests: each gets its exact status code and leaves the durable state unchanged."""

from __future__ import annotations

import hashlib

import grpc
import numpy as np
import pytest

from collabedit_secure.coordinator.config import load_config
from collabedit_secure.rpc.generated import common_pb2 as pb, coordinator_pb2 as cpb, coordinator_pb2_grpc
from collabedit_secure.rpc.channels import GRPC_OPTIONS
from collabedit_secure.rpc.tls import channel_credentials

from .harness import (CHUNK, D_IN, D_OUT, Party, chunks_of, header, party_statistics, prepare, start, stream,
                      wait_phase, write_config)

pytestmark = pytest.mark.timeout(60)
CODE = grpc.StatusCode


@pytest.fixture(scope="module")
def uploading(request, tmp_path_factory, pki, stats):
    """A mask round (and a plain one) in UPLOADING with parties a, b, c; nothing uploaded yet."""
    federations = {}
    for privacy in ("mask", "plain"):
        folder = tmp_path_factory.mktemp(privacy)
        config_path = write_config(folder, stats, pki, privacy=privacy)
        config = load_config(config_path)
        running = start(config_path)
        parties = {n: Party(n, pki, running.port, config) for n in ("a", "b", "c")}
        prepare(list(parties.values()))
        federations[privacy] = (running, parties)
    yield federations
    for running, parties in federations.values():
        for p in parties.values():
            p.close()
        running.stop(0)


def refused(running, code, call):
    """Runs call(); asserts it fails with `code` and that no durable row changed."""
    before = running.rounds.store.snapshot()
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, err.value.details()
    assert running.rounds.store.snapshot() == before
    return err.value.details()


def s_rk_upload(party, values=None, **override):
    """(header, chunks) of a valid S_RK layer-0 upload, with header fields overridden."""
    values = party_statistics(0)[0][1] if values is None else values
    payload, shape, encoding = party.payload(0, pb.TENSOR_S_RK, values)
    return header(party.round_id, 0, pb.TENSOR_S_RK, payload, shape, encoding, override), list(chunks_of(payload))


def send(party, head, chunks):
    return party.stub.UploadContribution(stream(head, chunks), timeout=10)


@pytest.mark.parametrize("case, code", [
    ("wrong shape", CODE.INVALID_ARGUMENT),
    ("wrong encoding", CODE.INVALID_ARGUMENT),
    ("wrong total_bytes", CODE.INVALID_ARGUMENT),
    ("replayed chunk", CODE.INVALID_ARGUMENT),
    ("out-of-order chunk", CODE.INVALID_ARGUMENT),
    ("chunk digest mismatch", CODE.INVALID_ARGUMENT),
    ("chunk larger than chunk_bytes", CODE.INVALID_ARGUMENT),
    ("oversized stream", CODE.INVALID_ARGUMENT),
    ("truncated stream", CODE.DATA_LOSS),
    ("whole digest mismatch", CODE.DATA_LOSS),
    ("second header", CODE.INVALID_ARGUMENT),
    ("future round", CODE.NOT_FOUND),
    ("wrong layer", CODE.INVALID_ARGUMENT),
    ("wrong tensor", CODE.INVALID_ARGUMENT),
])
def test_bad_uploads(uploading, case, code):
    running, parties = uploading["mask"]
    a = parties["a"]
    head, chunks = s_rk_upload(a)
    extra = pb.PayloadChunk(offset=head.total_bytes, data=b"x" * 8, sha256=hashlib.sha256(b"x" * 8).digest())
    big = b"y" * (CHUNK + 8)
    variants = {
        "wrong shape": lambda: send(a, s_rk_upload(a, shape=[D_OUT, D_IN + 1])[0], chunks),
        "wrong encoding": lambda: send(a, s_rk_upload(a, encoding=pb.ENCODING_FLOAT64_LE)[0], chunks),
        "wrong total_bytes": lambda: send(a, s_rk_upload(a, total_bytes=head.total_bytes + 8)[0], chunks),
        "replayed chunk": lambda: send(a, head, [chunks[0], chunks[0], *chunks[1:]]),
        "out-of-order chunk": lambda: send(a, head, [chunks[1], chunks[0], *chunks[2:]]),
        "chunk digest mismatch": lambda: send(a, head, [pb.PayloadChunk(offset=0, data=chunks[0].data,
                                                                        sha256=chunks[1].sha256), *chunks[1:]]),
        "chunk larger than chunk_bytes": lambda: send(a, head, [pb.PayloadChunk(
            offset=0, data=big, sha256=hashlib.sha256(big).digest())]),
        "oversized stream": lambda: send(a, head, [*chunks, extra]),
        "truncated stream": lambda: send(a, head, chunks[:-1]),
        "whole digest mismatch": lambda: send(a, s_rk_upload(a, sha256=b"\0" * 32)[0], chunks),
        "second header": lambda: a.stub.UploadContribution(iter([
            cpb.UploadContributionRequest(header=head), cpb.UploadContributionRequest(header=head)]), timeout=10),
        "future round": lambda: send(a, s_rk_upload(a, round_id=a.round_id + 1)[0], chunks),
        "wrong layer": lambda: send(a, s_rk_upload(a, layer=7)[0], chunks),
        "wrong tensor": lambda: send(a, s_rk_upload(a, tensor=pb.TENSOR_DELTA_W)[0], chunks),
    }
    refused(running, code, variants[case])
    assert not list(running.rounds.store.path("staging").iterdir())  # no staging file left behind


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_plain_upload_refuses_non_finite_values(uploading, bad):
    running, parties = uploading["plain"]
    values = party_statistics(0)[0][1].copy()
    values[1, 2] = bad
    head, chunks = s_rk_upload(parties["a"], values=values)
    details = refused(running, CODE.INVALID_ARGUMENT, lambda: send(parties["a"], head, chunks))
    assert "non-finite" in details


def test_identical_reupload_is_idempotent_and_a_different_one_is_refused(uploading):
    running, parties = uploading["mask"]
    b = parties["b"]
    head, chunks = s_rk_upload(b)
    assert not send(b, head, chunks).already_accepted
    before = running.rounds.store.snapshot()
    assert send(b, head, chunks).already_accepted
    assert running.rounds.store.snapshot() == before
    other, other_chunks = s_rk_upload(b, values=party_statistics(5)[0][1])
    refused(running, CODE.ALREADY_EXISTS, lambda: send(b, other, other_chunks))


def test_identity_is_the_certificate(uploading, pki):
    running, parties = uploading["mask"]
    a = parties["a"]
    share = cpb.EncryptedShare(sender_party_id="b", recipient_party_id="c", ciphertext=b"\0" * 40)
    refused(running, CODE.PERMISSION_DENIED, lambda: a.stub.SubmitEncryptedShares(
        cpb.SubmitEncryptedSharesRequest(round_id=a.round_id, shares=[share]), timeout=5))
    mallory = Party("mallory", pki, running.port, a.config)  # a valid certificate, not a member
    try:
        refused(running, CODE.PERMISSION_DENIED, lambda: mallory.stub.GetRound(cpb.GetRoundRequest(), timeout=5))
        mallory.round_id = a.round_id
        mallory.roster, mallory.params, mallory.peers, mallory.keys = a.roster, a.params, a.peers, a.keys
        refused(running, CODE.PERMISSION_DENIED, lambda: send(mallory, *s_rk_upload(a)))
    finally:
        mallory.close()


def test_advertisement_with_wrong_key_length(uploading):
    running, parties = uploading["mask"]
    a = parties["a"]
    request = cpb.AdvertiseKeysRequest(round_id=a.round_id, mask_public_key=b"k" * 31, share_public_key=b"s" * 32,
                                       certificate_pem="pem", signature=b"sig")
    refused(running, CODE.INVALID_ARGUMENT, lambda: a.stub.AdvertiseKeys(request, timeout=5))


def test_advertisement_with_a_bad_signature(uploading):
    """Signed by a's certificate key over other keys: the coordinator refuses it, as every peer would."""
    running, parties = uploading["mask"]
    a = parties["a"]
    advertised = a.stub.ListKeyAdvertisements(cpb.ListKeyAdvertisementsRequest(round_id=a.round_id), timeout=5)
    own = next(adv for adv in advertised.advertisements if adv.party_id == "a")
    forged = cpb.AdvertiseKeysRequest(round_id=a.round_id, mask_public_key=bytes(range(1, 33)),
                                      share_public_key=own.share_public_key, certificate_pem=own.certificate_pem,
                                      signature=own.signature)
    details = refused(running, CODE.INVALID_ARGUMENT, lambda: a.stub.AdvertiseKeys(forged, timeout=5))
    assert "signature does not verify" in details


@pytest.mark.parametrize("who", ["foreign CA", "no client certificate"])
def test_unverified_clients_are_refused_at_the_handshake(uploading, pki, foreign_pki, who):
    """The server requires a client certificate from the federation CA (rpc/tls.server_credentials),
    so these never reach a handler: the TLS handshake fails and gRPC reports UNAVAILABLE."""
    running, _ = uploading["mask"]
    if who == "foreign CA":
        identity = foreign_pki.identity("a")
        credentials = grpc.ssl_channel_credentials(pki.ca_cert.read_bytes(), identity.private_key_pem,
                                                   identity.certificate_pem)
    else:
        credentials = grpc.ssl_channel_credentials(pki.ca_cert.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{running.port}", credentials, options=list(GRPC_OPTIONS)) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        refused(running, CODE.UNAVAILABLE, lambda: stub.GetRound(cpb.GetRoundRequest(), timeout=5))


def test_join_checks(tmp_path, pki, stats):
    config_path = write_config(tmp_path, stats, pki)
    config = load_config(config_path)
    running = start(config_path)
    a, b = Party("a", pki, running.port, config), Party("b", pki, running.port, config)
    try:
        a.join()
        refused(running, CODE.ALREADY_EXISTS, a.join)
        details = refused(running, CODE.FAILED_PRECONDITION, lambda: b.join(model_fingerprint="cd" * 32))
        assert "model_fingerprint" in details
        refused(running, CODE.INVALID_ARGUMENT, lambda: b.join(c0_fingerprint="XYZ"))
        refused(running, CODE.NOT_FOUND, lambda: b.join(federation_id="another"))
        assert wait_phase(a, "WAITING_FOR_PARTIES").status.parties_alive == ["a"]
    finally:
        a.close()
        b.close()
        running.stop(0)


def test_insecure_mode_identity_comes_from_metadata(tmp_path, pki, stats):
    from collabedit_secure.coordinator.server import serve

    running = serve(load_config(write_config(tmp_path, stats, pki)), insecure=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            assert stub.GetRound(cpb.GetRoundRequest(), metadata=[("x-collabedit-party", "a")], timeout=5).status.round_id == 1
            refused(running, CODE.UNAUTHENTICATED, lambda: stub.GetRound(cpb.GetRoundRequest(), timeout=5))
        assert (tmp_path / "port").read_text().strip() == str(running.port)
    finally:
        running.stop(0)
