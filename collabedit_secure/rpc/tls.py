"""Mutual-TLS material for a federation: a development PKI, identity loading, gRPC credentials.

A federation CA issues every certificate; a party's identity is its certificate's common name
(CN), which the coordinator reads from the TLS session (`peer_common_name`) and which key
advertisements are checked against (protocol/keys.py). All keys are ECDSA P-256.

`init_federation_pki(out_dir, party_ids)` writes, refusing to overwrite anything:

    ca.pem, ca.key                    the CA (CN "collabedit federation CA", BasicConstraints CA)
    coordinator.pem, coordinator.key  the coordinator (name configurable)
    <party>.pem, <party>.key          one per party id

Leaf certificates: CN = the id, SAN = the hosts (DNS names or IP addresses), ExtendedKeyUsage
serverAuth + clientAuth (every process both serves and calls), KeyUsage digitalSignature, not a CA,
valid for `validity_days` (default 365). Private keys are unencrypted PKCS#8 PEM created with mode
0600 (O_CREAT | O_EXCL); certificates are 0644. This is a development PKI: a real deployment keeps
ca.key offline and issues each party's certificate from a CSR, so the private key never moves.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collabedit_secure.protocol.encoding import check_party_id

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
DEFAULT_VALIDITY_DAYS = 365
CA_COMMON_NAME = "collabedit federation CA"
# Backdate notBefore a little so that a peer whose clock runs slightly behind still accepts a fresh cert.
_CLOCK_SKEW = dt.timedelta(minutes=5)


class TLSConfigError(ValueError):
    """Certificate, key or CA files that are unreadable, malformed or do not belong together."""


# ------------------------------------------------------------------------------------ issuing


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _general_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        if not isinstance(host, str) or not host:
            raise ValueError(f"host {host!r} must be a non-empty DNS name or IP address")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _validity(not_before, not_after, validity_days) -> tuple[dt.datetime, dt.datetime]:
    start = not_before if not_before is not None else _now() - _CLOCK_SKEW
    end = not_after if not_after is not None else start + dt.timedelta(days=validity_days)
    if end <= start:
        raise ValueError(f"certificate validity ends ({end}) before it starts ({start})")
    return start, end


def create_ca(
    common_name: str = CA_COMMON_NAME,
    validity_days: int = DEFAULT_VALIDITY_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed P-256 CA that may sign leaf certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start, end = _validity(not_before, not_after, validity_days)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_certificate(
    common_name: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hosts: Iterable[str] = DEFAULT_HOSTS,
    validity_days: int = DEFAULT_VALIDITY_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new P-256 key and its leaf certificate (CN = common_name, serverAuth + clientAuth)."""
    check_party_id(common_name, "certificate name")
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(not_before, not_after, validity_days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(_general_names(hosts)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM (what gRPC's BoringSSL reads)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never follow or truncate an existing file (or a planted symlink); fchmod because the
    # creation mode is filtered by the umask.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; refusing to overwrite PKI material") from None
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


@dataclass(frozen=True)
class FederationPKI:
    """Paths written by init_federation_pki; `identity(name)` loads one for gRPC."""

    ca_cert: Path
    ca_key: Path
    certs: dict[str, Path] = field(default_factory=dict)
    keys: dict[str, Path] = field(default_factory=dict)

    def identity(self, name: str) -> "Identity":
        if name not in self.certs:
            raise KeyError(f"no certificate for {name!r}; known: {', '.join(sorted(self.certs))}")
        return load_identity(self.certs[name], self.keys[name], self.ca_cert)


def init_federation_pki(
    out_dir: str | os.PathLike,
    party_ids: Iterable[str],
    coordinator_name: str = "coordinator",
    hosts: Iterable[str] = DEFAULT_HOSTS,
    validity_days: int = DEFAULT_VALIDITY_DAYS,
) -> FederationPKI:
    """Creates a CA and one certificate per party plus the coordinator under out_dir."""
    out = Path(out_dir)
    parties = [check_party_id(p) for p in party_ids]
    names = [check_party_id(coordinator_name, "coordinator name"), *parties]
    if not parties:
        raise ValueError("a federation needs at least one party id")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"names must be unique (the coordinator's too); repeated: {', '.join(duplicates)}")
    if "ca" in names:
        raise ValueError("'ca' is reserved for the CA's own files (ca.pem, ca.key)")
    hosts = tuple(hosts)
    _general_names(hosts)  # validate before anything is written

    targets = [out / f"{name}.{ext}" for name in ("ca", *names) for ext in ("pem", "key")]
    existing = [str(p) for p in targets if os.path.lexists(p)]
    if existing:
        raise FileExistsError(f"refusing to overwrite existing PKI files: {', '.join(existing)}")
    out.mkdir(parents=True, exist_ok=True)

    ca_cert, ca_key = create_ca(validity_days=validity_days)
    _write_new(out / "ca.key", private_key_pem(ca_key), 0o600)
    _write_new(out / "ca.pem", certificate_pem(ca_cert), 0o644)
    certs, keys = {}, {}
    for name in names:
        cert, key = issue_certificate(name, ca_cert, ca_key, hosts, validity_days)
        keys[name], certs[name] = out / f"{name}.key", out / f"{name}.pem"
        _write_new(keys[name], private_key_pem(key), 0o600)
        _write_new(certs[name], certificate_pem(cert), 0o644)
    return FederationPKI(out / "ca.pem", out / "ca.key", certs, keys)


# ------------------------------------------------------------------------------------ loading


@dataclass(frozen=True)
class Identity:
    """One process's TLS identity: its certificate, private key (also for signing) and the CA."""

    certificate_pem: bytes
    private_key_pem: bytes
    ca_pem: bytes
    common_name: str
    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


def _read(path: str | os.PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise TLSConfigError(f"{what} path is a directory, not a file: {path}") from None


def _load_cert(data: bytes, path, what: str) -> x509.Certificate:
    certs = []
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        pass
    if len(certs) != 1:
        raise TLSConfigError(f"{what} {path} must hold exactly one PEM certificate, found {len(certs)}")
    return certs[0]


def common_name_of(cert: x509.Certificate) -> str | None:
    """The single subject CN of a certificate, or None if it has none (or several)."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if len(names) == 1 else None


def _public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_identity(
    cert_path: str | os.PathLike, key_path: str | os.PathLike, ca_path: str | os.PathLike
) -> Identity:
    """Reads and cross-checks a certificate, its private key and the federation CA."""
    cert_pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "private key")
    ca_pem = _read(ca_path, "CA certificate")
    cert = _load_cert(cert_pem, cert_path, "certificate file")
    ca = _load_cert(ca_pem, ca_path, "CA certificate file")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:  # TypeError: the key is password-protected
        raise TLSConfigError(f"private key file {key_path} is not an unencrypted PEM private key: {error}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise TLSConfigError(f"private key {key_path} is not an ECDSA P-256 key")
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        raise TLSConfigError(f"private key {key_path} does not match certificate {cert_path}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise TLSConfigError(f"certificate {cert_path} was not issued by the CA in {ca_path}") from None
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise TLSConfigError(
            f"certificate {cert_path} is valid from {cert.not_valid_before_utc} to "
            f"{cert.not_valid_after_utc}, not now ({now:%Y-%m-%d %H:%M:%S} UTC)"
        )
    name = common_name_of(cert)
    if name is None:
        raise TLSConfigError(f"certificate {cert_path} has no single subject common name")
    return Identity(cert_pem, key_pem, ca_pem, name, key, cert)


# ------------------------------------------------------------------------------------ gRPC


def server_credentials(identity: Identity) -> grpc.ServerCredentials:
    """Server side of mutual TLS: clients must present a certificate from the federation CA."""
    return grpc.ssl_server_credentials(
        [(identity.private_key_pem, identity.certificate_pem)],
        root_certificates=identity.ca_pem,
        require_client_auth=True,
    )


def channel_credentials(identity: Identity) -> grpc.ChannelCredentials:
    """Client side of mutual TLS: trust only the federation CA and present our certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=identity.ca_pem,
        private_key=identity.private_key_pem,
        certificate_chain=identity.certificate_pem,
    )


def peer_common_name(context: grpc.ServicerContext) -> str | None:
    """The CN of the authenticated client certificate of this call, or None if there is none."""
    values = context.auth_context().get("x509_common_name") or []
    if len(values) != 1:
        return None
    value = values[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
