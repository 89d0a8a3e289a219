"""Fixtures: one federation PKI (parties a, b, c plus mallory, a valid certificate outside the roster),
a second CA (an unknown certificate), and the synthetic statistics."""

from __future__ import annotations

import pytest

from collabedit_secure.rpc.tls import init_federation_pki

from .harness import write_statistics


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return init_federation_pki(tmp_path_factory.mktemp("pki"), ["a", "b", "c", "mallory"])


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory):
    return init_federation_pki(tmp_path_factory.mktemp("foreign-pki"), ["a"])


@pytest.fixture(scope="session")
def stats(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stats")
    write_statistics(folder)
    return folder
