"""HE mode at the coordinator: it adds ciphertexts it cannot read, never holds a secret key, and
refuses every bad ciphertext upload or context with its exact status and no durable change."""

from __future__ import annotations

import hashlib
import struct

import grpc
import numpy as np
import pytest

from collabedit_secure.coordinator.config import load_config
from collabedit_secure.kernels import pack_upper
from collabedit_secure.party.local_solve import LocalSolver
from collabedit_secure.protocol import he
from collabedit_secure.rpc.generated import common_pb2 as pb, coordinator_pb2 as cpb

from .harness import (MODULE, LAYERS, Party, chunks_of, expected_delta, header, party_statistics, prepare,
                      relative_error, send_upload, start, wait_phase, write_config)

pytestmark = pytest.mark.timeout(90)
CODE = grpc.StatusCode
NAMES = ("a", "b", "c")
HE_CHUNK = 1 << 15  # a ciphertext is 128 KiB: a few chunks each


def federation(tmp_path, pki, stats, schedule="parallel"):
    config_path = write_config(tmp_path, stats, pki, privacy="he", schedule=schedule, chunk_bytes=HE_CHUNK)
    config = load_config(config_path)
    running = start(config_path)
    return config_path, config, running, {n: Party(n, pki, running.port, config) for n in NAMES}


def close(running, parties):
    for p in parties.values():
        p.close()
    running.stop(0)


def durable(running) -> tuple:
    """Rows plus the names and sizes of every accumulator file: what a refused call must not change."""
    files = sorted((p.name, p.stat().st_size) for p in running.rounds.store.path("acc").glob("*"))
    return running.rounds.store.snapshot(), files


def refused(running, code, call) -> str:
    before = durable(running)
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, err.value.details()
    assert durable(running) == before
    assert not list(running.rounds.store.path("staging").iterdir())
    return err.value.details()


def solve_and_report(parties, config, layers, solvers) -> dict[int, np.ndarray]:
    """Every party decrypts the sums, solves ΔW itself (LocalSolver) and reports both digests."""
    deltas = {}
    for layer in layers:
        for name, p in parties.items():
            s_kk, s_rk = p.download_sums(layer)
            delta = solvers[name].solve(layer, MODULE.format(layer), s_kk, s_rk)
            deltas.setdefault(layer, delta)
            assert np.array_equal(delta, deltas[layer])  # every party decrypted the very same sums
            digest = he.aggregate_digest(p.digest_key, layer, (s_kk, s_rk))
            p.report(layer, hashlib.sha256(delta.tobytes()).digest(), digest)
    return deltas


@pytest.mark.parametrize("schedule", ["parallel", "sequential"])
def test_round_equals_global_solve_and_the_coordinator_holds_no_secret(tmp_path, pki, stats, schedule):
    config_path, config, running, parties = federation(tmp_path, pki, stats, schedule)
    try:
        prepare(list(parties.values()))
        statistics = {n: party_statistics(i) for i, n in enumerate(NAMES)}
        lambdas = dict(zip((MODULE.format(layer) for layer in LAYERS), config.lambdas))
        solvers = {n: LocalSolver(config.c0, lambdas, tmp_path / f"solver-{n}") for n in NAMES}
        steps = [list(LAYERS)] if schedule == "parallel" else [[layer] for layer in LAYERS]
        deltas = {}
        for index, layers in enumerate(steps):
            for n, p in parties.items():
                p.upload_step(statistics[n], layers)
                if index == 0 and n == "a":  # a coordinator restarted mid-upload keeps the encrypted sums
                    running.stop(0)
                    running = start(config_path)
                    for q in parties.values():
                        q.connect(running.port)
            wait_phase(parties["a"], "DOWNLOADING")
            deltas.update(solve_and_report(parties, config, layers, solvers))
        wait_phase(parties["a"], "COMPLETED", round_id=parties["a"].round_id)
        want = expected_delta(config, list(statistics.values()))
        for layer in LAYERS:
            assert relative_error(deltas[layer], want[layer].numpy()) <= 1e-9
        # The coordinator's context has no secret key, and no byte of the secret reached its state.
        assert not running.rounds._he_ctx[1].is_private()  # the context it added round 1 with
        secret = he.secret_context_bytes(parties["a"].he_ctx)
        windows = [secret[i:i + 48] for i in range(len(secret) // 4, len(secret) - 48, len(secret) // 8)]
        for path in running.rounds.store.root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not any(w in data for w in windows), path
        for row in running.rounds.store.query("SELECT public_context FROM he_contexts"):
            assert not he.load_public_context(row["public_context"], config.he).is_private()
        # A round-1 upload replayed into round 2 is refused.
        a = parties["a"]
        payload, shape, encoding = a.payload(0, pb.TENSOR_S_RK, statistics["a"][0][1])
        head = header(a.round_id, 0, pb.TENSOR_S_RK, payload, shape, encoding)
        assert "is over" in refused(running, CODE.FAILED_PRECONDITION, lambda: send_upload(a, head, chunks_of(payload, HE_CHUNK)))
    finally:
        close(running, parties)


@pytest.fixture(scope="module")
def uploading(tmp_path_factory, pki, stats):
    _, config, running, parties = federation(tmp_path_factory.mktemp("he"), pki, stats)
    prepare(list(parties.values()))
    yield running, parties, config
    close(running, parties)


def framed(blobs) -> bytes:
    return b"".join(struct.pack(">I", len(b)) + b for b in blobs)


def foreign_ciphertexts(params: he.HeParameters, values, n=4096, scale_bits=None) -> bytes:
    other = he.HeParameters(n, (60, 49) if n == 4096 else params.coeff_mod_bit_sizes, scale_bits or params.scale_bits)
    ctx = he.new_secret_context(other)
    return he.Encryptor(ctx, other).encrypt(values)


@pytest.mark.parametrize("case", ["wrong context", "wrong scale", "too few values", "extra block", "garbage bytes",
                                  "truncated block", "oversized total_bytes", "wrong encoding", "empty payload"])
def test_bad_ciphertext_uploads(uploading, case):
    running, parties, config = uploading
    a = parties["a"]
    values = party_statistics(0)[0][1]
    good, shape, _ = a.payload(0, pb.TENSOR_S_RK, values)
    flat = values.ravel()
    payloads = {
        "wrong context": foreign_ciphertexts(a.he_params, flat),
        "wrong scale": foreign_ciphertexts(a.he_params, flat, n=a.he_params.poly_modulus_degree, scale_bits=30),
        "too few values": he.Encryptor(a.he_ctx, a.he_params).encrypt(flat[:-1]),
        "extra block": good + good,
        "garbage bytes": framed([np.random.default_rng(0).bytes(len(good) - 4)]),
        "truncated block": good[:-10],
        "oversized total_bytes": good,
        "wrong encoding": good,
        "empty payload": b"",
    }
    payload = payloads[case]
    override = {"oversized total_bytes": {"total_bytes": config.he.max_payload_bytes(values.size) + 1},
                "wrong encoding": {"encoding": pb.ENCODING_FLOAT64_LE}}.get(case, {})
    head = header(a.round_id, 0, pb.TENSOR_S_RK, payload, shape, pb.ENCODING_CKKS, override)
    details = refused(running, CODE.INVALID_ARGUMENT, lambda: send_upload(a, head, chunks_of(payload, HE_CHUNK)))
    assert details


def test_replayed_upload_is_idempotent_and_a_different_one_refused(uploading):
    running, parties, _ = uploading
    b = parties["b"]
    payload, shape, encoding = b.payload(1, pb.TENSOR_S_RK, party_statistics(1)[1][1])
    head = header(b.round_id, 1, pb.TENSOR_S_RK, payload, shape, encoding)
    assert not send_upload(b, head, chunks_of(payload, HE_CHUNK)).already_accepted
    before = durable(running)
    assert send_upload(b, head, chunks_of(payload, HE_CHUNK)).already_accepted
    assert durable(running) == before
    other, _, _ = b.payload(1, pb.TENSOR_S_RK, party_statistics(1)[1][1])  # fresh randomness: other bytes
    other_head = header(b.round_id, 1, pb.TENSOR_S_RK, other, shape, encoding)
    refused(running, CODE.ALREADY_EXISTS, lambda: send_upload(b, other_head, chunks_of(other, HE_CHUNK)))


def test_calls_of_other_modes_and_phases_are_refused(uploading):
    running, parties, _ = uploading
    a, b = parties["a"], parties["b"]
    request = cpb.DownloadAggregateRequest(round_id=a.round_id, layer=0, tensor=pb.TENSOR_S_KK_UPPER)
    refused(running, CODE.FAILED_PRECONDITION, lambda: list(a.stub.DownloadAggregate(request, timeout=5)))
    update = cpb.DownloadUpdateRequest(round_id=a.round_id, layer=0)
    assert "HE mode" in refused(running, CODE.FAILED_PRECONDITION, lambda: list(a.stub.DownloadUpdate(update, timeout=5)))
    shares = cpb.SubmitEncryptedSharesRequest(round_id=a.round_id)
    refused(running, CODE.FAILED_PRECONDITION, lambda: a.stub.SubmitEncryptedShares(shares, timeout=5))
    public = he.public_context_bytes(a.he_ctx)
    publish = cpb.PublishHeContextRequest(round_id=a.round_id, public_context=public)
    refused(running, CODE.PERMISSION_DENIED, lambda: b.stub.PublishHeContext(publish, timeout=5))
    refused(running, CODE.ALREADY_EXISTS, lambda: a.stub.PublishHeContext(publish, timeout=5))  # not the original
    report = cpb.ReportAppliedRequest(round_id=a.round_id, layer=0, sha256=b"\0" * 32, aggregate_digest=b"\0" * 32)
    refused(running, CODE.FAILED_PRECONDITION, lambda: a.stub.ReportApplied(report, timeout=5))
    report.aggregate_digest = b"short"
    refused(running, CODE.INVALID_ARGUMENT, lambda: a.stub.ReportApplied(report, timeout=5))


def test_context_checks_while_sharing(tmp_path, pki, stats):
    _, config, running, parties = federation(tmp_path, pki, stats)
    try:
        for p in parties.values():
            p.join()
        for p in parties.values():
            p.advertise()
        for p in parties.values():
            p.verify_peers()
        a, b = parties["a"], parties["b"]
        get = cpb.GetHeContextRequest(round_id=a.round_id)
        refused(running, CODE.FAILED_PRECONDITION, lambda: b.stub.GetHeContext(get, timeout=5))
        ctx = he.new_secret_context(a.he_params)
        box = cpb.EncryptedShare(sender_party_id="a", recipient_party_id="b", ciphertext=b"\1" * 40)
        boxes = [box, cpb.EncryptedShare(sender_party_id="a", recipient_party_id="c", ciphertext=b"\2" * 40)]
        bad_contexts = {
            "carries a secret key": he.secret_context_bytes(ctx),
            "N=4096": he.public_context_bytes(he.new_secret_context(he.HeParameters(4096, (60, 49), 40))),
            "garbage": b"\x00not a context",
        }
        for name, data in bad_contexts.items():
            request = cpb.PublishHeContextRequest(round_id=a.round_id, public_context=data, secret_contexts=boxes)
            assert refused(running, CODE.INVALID_ARGUMENT, lambda: a.stub.PublishHeContext(request, timeout=5)), name
        good = he.public_context_bytes(ctx)
        missing = cpb.PublishHeContextRequest(round_id=a.round_id, public_context=good, secret_contexts=boxes[:1])
        assert "exactly one" in refused(running, CODE.INVALID_ARGUMENT, lambda: a.stub.PublishHeContext(missing, timeout=5))
        as_b = cpb.PublishHeContextRequest(round_id=a.round_id, public_context=good, secret_contexts=boxes)
        refused(running, CODE.PERMISSION_DENIED, lambda: b.stub.PublishHeContext(as_b, timeout=5))
        request = a.he_publish()
        before = durable(running)
        assert a.stub.PublishHeContext(request, timeout=5).already_published
        assert durable(running) == before
    finally:
        close(running, parties)


def test_parties_whose_decrypted_sums_differ_roll_the_round_back(tmp_path, pki, stats):
    _, config, running, parties = federation(tmp_path, pki, stats)
    try:
        prepare(list(parties.values()))
        for i, (n, p) in enumerate(parties.items()):
            p.upload_step(party_statistics(i), LAYERS)
        wait_phase(parties["a"], "DOWNLOADING")
        a, b = parties["a"], parties["b"]
        s_kk, s_rk = a.download_sums(0)
        a.report(0, b"\1" * 32, he.aggregate_digest(a.digest_key, 0, (s_kk, s_rk)))
        with pytest.raises(grpc.RpcError) as err:
            b.report(0, b"\1" * 32, he.aggregate_digest(b.digest_key, 0, (s_kk + 1e-6, s_rk)))
        assert err.value.code() == CODE.ABORTED and "differ" in err.value.details()
        status = a.stub.GetRound(cpb.GetRoundRequest(round_id=a.round_id), timeout=5).status
        assert status.phase == pb.ROUND_PHASE_ROLLED_BACK
    finally:
        close(running, parties)


def test_coordinator_sum_decrypts_to_the_plain_sum(uploading):
    """The sums the coordinator adds blind decrypt to the plain sums within the stated bound."""
    running, parties, config = uploading
    bound = 1e4 / 2 ** config.he.scale_bits  # per summand, measured noise is ~1e3 units of the scale
    stats = [party_statistics(i) for i in range(3)]
    for i, p in enumerate(parties.values()):
        p.upload(0, pb.TENSOR_S_KK_UPPER, stats[i][0][0])
    sums = running.rounds.store.query("SELECT path FROM accumulators WHERE layer = 0 AND tensor = ?",
                                      pb.TENSOR_S_KK_UPPER)
    with open(running.rounds.store.path(sums[0]["path"]), "rb") as handle:
        got = he.decrypt_payload(parties["a"].he_ctx, parties["a"].he_params, handle, len(pack_upper(stats[0][0][0])))
    want = sum(pack_upper(s[0][0]) for s in stats)
    assert np.max(np.abs(got - want)) <= 3 * bound
