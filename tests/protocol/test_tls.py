from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from concurrent import futures

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from collabedit_secure.rpc import tls

PARTIES = ("alice", "bob")
CALL_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return tls.init_federation_pki(tmp_path_factory.mktemp("pki"), PARTIES)


def test_files_modes_and_names(pki):
    directory = pki.ca_cert.parent
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        f"{n}.{e}" for n in ("ca", "coordinator", *PARTIES) for e in ("pem", "key")
    )
    for name in ("ca", "coordinator", *PARTIES):
        assert stat.S_IMODE(os.stat(directory / f"{name}.key").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(directory / f"{name}.pem").st_mode) == 0o644


def test_certificate_contents(pki):
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert = x509.load_pem_x509_certificate(pki.certs["alice"].read_bytes())
    assert tls.common_name_of(cert) == "alice"
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=365) <= lifetime <= dt.timedelta(days=366)


def test_refuses_to_overwrite(pki):
    directory = pki.ca_cert.parent
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    with pytest.raises(FileExistsError, match="ca.pem"):
        tls.init_federation_pki(directory, PARTIES)
    with pytest.raises(FileExistsError, match="alice.key"):  # even when only one file collides
        tls.init_federation_pki(directory, ["alice"], coordinator_name="other")
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before


@pytest.mark.parametrize(
    "parties, coordinator, match",
    [
        (["al ice"], "coordinator", "invalid"),
        (["a" * 65], "coordinator", "invalid"),
        ([""], "coordinator", "invalid"),
        (["alice", "alice"], "coordinator", "repeated: alice"),
        (["coordinator"], "coordinator", "repeated: coordinator"),
        (["ca"], "coordinator", "reserved"),
        ([], "coordinator", "at least one"),
        (["alice"], "../x", "invalid"),
    ],
)
def test_invalid_names(tmp_path, parties, coordinator, match):
    with pytest.raises(ValueError, match=match):
        tls.init_federation_pki(tmp_path / "pki", parties, coordinator_name=coordinator)
    assert not (tmp_path / "pki").exists()


def test_load_identity(pki):
    identity = pki.identity("alice")
    assert identity.common_name == "alice"
    assert identity.certificate_pem == pki.certs["alice"].read_bytes()
    assert identity.ca_pem == pki.ca_cert.read_bytes()


def test_load_identity_errors(pki, tmp_path):
    with pytest.raises(FileNotFoundError, match="certificate file not found: .*nope.pem"):
        tls.load_identity(tmp_path / "nope.pem", pki.keys["alice"], pki.ca_cert)
    with pytest.raises(FileNotFoundError, match="private key file not found"):
        tls.load_identity(pki.certs["alice"], tmp_path / "nope.key", pki.ca_cert)
    with pytest.raises(FileNotFoundError, match="CA certificate file not found"):
        tls.load_identity(pki.certs["alice"], pki.keys["alice"], tmp_path / "ca.pem")
    with pytest.raises(tls.TLSConfigError, match="does not match certificate"):
        tls.load_identity(pki.certs["alice"], pki.keys["bob"], pki.ca_cert)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate")
    with pytest.raises(tls.TLSConfigError, match="exactly one PEM certificate"):
        tls.load_identity(garbage, pki.keys["alice"], pki.ca_cert)
    with pytest.raises(tls.TLSConfigError, match="not an unencrypted PEM private key"):
        tls.load_identity(pki.certs["alice"], garbage, pki.ca_cert)
    other = tls.init_federation_pki(tmp_path / "other", ["alice"])
    with pytest.raises(tls.TLSConfigError, match="not issued by the CA"):
        tls.load_identity(other.certs["alice"], other.keys["alice"], pki.ca_cert)


def test_load_identity_refuses_expired(tmp_path):
    ca_cert, ca_key = tls.create_ca()
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    cert, key = tls.issue_certificate("alice", ca_cert, ca_key, not_before=past - dt.timedelta(days=1), not_after=past)
    for name, data in (("ca.pem", tls.certificate_pem(ca_cert)), ("a.pem", tls.certificate_pem(cert)),
                       ("a.key", tls.private_key_pem(key))):
        (tmp_path / name).write_bytes(data)
    with pytest.raises(tls.TLSConfigError, match="is valid from"):
        tls.load_identity(tmp_path / "a.pem", tmp_path / "a.key", tmp_path / "ca.pem")


def identity_from(cert, key, ca_cert) -> tls.Identity:
    """An Identity without load_identity's checks (to present bad certificates on purpose)."""
    return tls.Identity(tls.certificate_pem(cert), tls.private_key_pem(key), tls.certificate_pem(ca_cert),
                        tls.common_name_of(cert), key, cert)


# ---------------------------------------------------------------------------- real gRPC over mTLS


@pytest.fixture(scope="module")
def server(pki):
    def who_am_i(request, context):
        return (tls.peer_common_name(context) or "<none>").encode()

    handler = grpc.method_handlers_generic_handler(
        "collabedit.test.Identity", {"WhoAmI": grpc.unary_unary_rpc_method_handler(who_am_i)}
    )
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = grpc_server.add_secure_port("127.0.0.1:0", tls.server_credentials(pki.identity("coordinator")))
    grpc_server.start()
    try:
        yield port
    finally:
        grpc_server.stop(0)


def call(port, credentials) -> bytes:
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        return channel.unary_unary("/collabedit.test.Identity/WhoAmI")(b"", timeout=CALL_TIMEOUT_S)


@pytest.mark.parametrize("party", PARTIES)
def test_server_sees_client_common_name(pki, server, party):
    assert call(server, tls.channel_credentials(pki.identity(party))) == party.encode()


def test_client_without_certificate_fails(pki, server):
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca_cert.read_bytes())
    with pytest.raises(grpc.RpcError) as caught:
        call(server, credentials)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_from_other_ca_fails(pki, server, tmp_path):
    other = tls.init_federation_pki(tmp_path / "other", ["alice"])
    foreign = other.identity("alice")
    # trusts our CA (so the server is accepted) but presents a certificate from the other CA
    credentials = grpc.ssl_channel_credentials(
        pki.ca_cert.read_bytes(), foreign.private_key_pem, foreign.certificate_pem
    )
    with pytest.raises(grpc.RpcError) as caught:
        call(server, credentials)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_with_expired_certificate_fails(pki, server):
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    cert, key = tls.issue_certificate("alice", ca_cert, ca_key, not_before=past - dt.timedelta(days=1), not_after=past)
    with pytest.raises(grpc.RpcError) as caught:
        call(server, tls.channel_credentials(identity_from(cert, key, ca_cert)))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_rejects_server_from_other_ca(server, tmp_path):
    other = tls.init_federation_pki(tmp_path / "other", ["alice"])
    with pytest.raises(grpc.RpcError) as caught:
        call(server, tls.channel_credentials(other.identity("alice")))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_peer_common_name_absent():
    class Context:
        def __init__(self, auth):
            self.auth = auth

        def auth_context(self):
            return self.auth

    assert tls.peer_common_name(Context({})) is None
    assert tls.peer_common_name(Context({"x509_common_name": []})) is None
    assert tls.peer_common_name(Context({"x509_common_name": [b"alice"]})) == "alice"
