"""Fixtures for the protocol tests: an in-memory federation CA and party certificates."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from collabedit_secure.rpc import tls

PARTIES = ("alice", "bob", "carol", "dave")


@dataclass
class Federation:
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    certs: dict[str, bytes]  # party -> certificate PEM
    keys: dict[str, ec.EllipticCurvePrivateKey]

    @property
    def ca_pem(self) -> bytes:
        return tls.certificate_pem(self.ca_cert)


@pytest.fixture(scope="session")
def federation() -> Federation:
    ca_cert, ca_key = tls.create_ca()
    certs, keys = {}, {}
    for party in PARTIES:
        cert, key = tls.issue_certificate(party, ca_cert, ca_key)
        certs[party], keys[party] = tls.certificate_pem(cert), key
    return Federation(ca_cert, ca_key, certs, keys)


@pytest.fixture(scope="session")
def other_federation() -> Federation:
    """A second, unrelated CA issuing certificates with the same names."""
    ca_cert, ca_key = tls.create_ca()
    certs, keys = {}, {}
    for party in PARTIES:
        cert, key = tls.issue_certificate(party, ca_cert, ca_key)
        certs[party], keys[party] = tls.certificate_pem(cert), key
    return Federation(ca_cert, ca_key, certs, keys)
