from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collabedit_secure.protocol.shamir import (
    PRIME,
    SHARE_BYTES,
    ShamirError,
    Share,
    combine,
    combine_int,
    secret_digest,
    split,
    split_int,
)


class SeededRng:
    """randbelow() from a seeded random.Random: reproducible shares for tests only."""

    def __init__(self, seed):
        self.random = random.Random(seed)

    def randbelow(self, n):
        return self.random.randrange(n)


def test_prime_is_mersenne_521():
    assert PRIME == 2**521 - 1 and PRIME > 2**256


@given(st.binary(min_size=32, max_size=32), st.data())
@settings(max_examples=60, deadline=None)
def test_any_t_of_n_reconstruct(secret, data):
    n = data.draw(st.integers(1, 7))
    t = data.draw(st.integers(1, n))
    shares = split(secret, n, t)
    chosen = data.draw(st.permutations(shares)).copy()[: data.draw(st.integers(t, n))]
    assert combine(chosen, t) == secret


@pytest.mark.parametrize("prime, t", [(7, 2), (7, 3), (5, 4)])
def test_t_minus_one_shares_reveal_nothing(prime, t):
    """Exhaustively over a small field, through split_int itself: for every secret, the t-1
    shares at x = 1..t-1 take every value tuple exactly once as the random coefficients range
    over the field, so their distribution is uniform whatever the secret is."""
    every_tuple = set(itertools.product(range(prime), repeat=t - 1))
    for secret in range(prime):
        counts = Counter()
        for coefficients in itertools.product(range(prime), repeat=t - 1):
            shares = split_int(secret, t, t, FixedCoefficients(coefficients), prime)
            counts[tuple(s.y for s in shares[: t - 1])] += 1
        assert set(counts) == every_tuple and set(counts.values()) == {1}


@pytest.mark.parametrize("prime, n, t", [(11, 4, 3), (13, 5, 2), (13, 5, 4)])
def test_every_candidate_secret_is_consistent_with_t_minus_one_shares(prime, n, t):
    """Whatever t-1 shares an observer holds, each candidate secret has a sharing that produced
    exactly those shares (so nothing rules any candidate out)."""
    known = split_int(3, n, t, SeededRng(1), prime)[: t - 1]
    for candidate in range(prime):
        # The unique polynomial of degree <= t-1 through (0, candidate) and the known shares:
        # its value at x = n (not among the known x) completes a valid t-share set.
        completed = known + [Share(n, _value_through(known, candidate, n, prime))]
        assert combine_int(completed, t, prime) == candidate


def _value_through(known, candidate, x, prime):
    """f(x) for the polynomial f of degree <= len(known) with f(0) = candidate through known."""
    total = 0
    nodes = [(0, candidate)] + [(s.x, s.y) for s in known]
    for i, (xi, yi) in enumerate(nodes):
        term = yi
        for j, (xj, _) in enumerate(nodes):
            if i != j:
                term = term * (x - xj) * pow(xi - xj, -1, prime) % prime
        total = (total + term) % prime
    return total


class FixedCoefficients:
    """An rng whose randbelow() returns the given coefficients in order."""

    def __init__(self, coefficients):
        self.values = iter(coefficients)

    def randbelow(self, n):
        value = next(self.values)
        assert 0 <= value < n
        return value


def test_split_matches_small_field_reference():
    shares = split_int(5, 3, 2, SeededRng(7), 11)
    slope = random.Random(7).randrange(11)
    assert shares == [Share(x, (5 + slope * x) % 11) for x in (1, 2, 3)]


def test_deterministic_with_seeded_rng():
    secret = bytes(range(32))
    assert split(secret, 5, 3, SeededRng(1)) == split(secret, 5, 3, SeededRng(1))
    assert split(secret, 5, 3, SeededRng(1)) != split(secret, 5, 3, SeededRng(2))


def test_too_few_shares():
    shares = split(bytes(32), 5, 3)
    with pytest.raises(ShamirError, match="at least 3"):
        combine(shares[:2], 3)


def test_duplicate_x_rejected():
    shares = split(bytes(range(32)), 5, 3)
    with pytest.raises(ShamirError, match="duplicate"):
        combine([shares[0], shares[1], shares[1]], 3)
    with pytest.raises(ShamirError, match="duplicate"):
        combine([shares[0], shares[1], Share(shares[1].x, shares[2].y)], 3)


@pytest.mark.parametrize(
    "bad", [Share(0, 1), Share(-1, 1), Share(2**32, 1), Share(1, PRIME), Share(1, -1), Share(True, 1)]
)
def test_out_of_range_shares_rejected(bad):
    shares = split(bytes(range(32)), 4, 2)
    with pytest.raises(ShamirError):
        combine([bad, shares[1]], 2)


def test_tampered_share_gives_wrong_secret_or_error():
    secret = bytes(range(32))
    shares = split(secret, 5, 3)
    # a chosen shift (Shamir is malleable): exactly t shares reconstruct a different, plausible secret
    shifted = [Share(shares[0].x, (shares[0].y + 1) % PRIME), *shares[1:3]]
    wrong = combine(shifted, 3)
    assert wrong != secret
    with pytest.raises(ShamirError, match="digest"):
        combine(shifted, 3, digest=secret_digest(secret))
    # random corruption lands outside [0, 2^256) (probability 1 - 2^-265)
    garbled = [Share(shares[0].x, random.Random(3).randrange(PRIME)), *shares[1:3]]
    with pytest.raises(ShamirError, match="not a 32-byte secret"):
        combine(garbled, 3)
    # more than t shares: the extra ones must lie on the polynomial
    with pytest.raises(ShamirError, match="inconsistent"):
        combine([*shares[1:], shifted[0]], 3)


def test_digest_layer():
    secret, other = bytes(range(32)), bytes(range(1, 33))
    shares, foreign = split(secret, 3, 2), split(other, 3, 2)
    assert combine(shares[:2], 2, digest=secret_digest(secret)) == secret
    with pytest.raises(ShamirError, match="digest"):
        # well-formed shares of another secret pass every other check; only the digest catches them
        combine(foreign[:2], 2, digest=secret_digest(secret))


def test_share_bytes():
    share = split(bytes(range(32)), 3, 2)[2]
    data = share.to_bytes()
    assert len(data) == SHARE_BYTES == 70
    assert data[:4] == (3).to_bytes(4, "big") and int.from_bytes(data[4:], "big") == share.y
    assert Share.from_bytes(data) == share
    for bad in (data[:-1], data + b"\x00", bytes(4) + data[4:], data[:4] + PRIME.to_bytes(66, "big")):
        with pytest.raises(ShamirError):
            Share.from_bytes(bad)


@pytest.mark.parametrize("secret, n, t", [(bytes(31), 3, 2), (bytes(33), 3, 2), (bytes(32), 3, 4),
                                          (bytes(32), 3, 0), (bytes(32), 0, 0), (bytes(32), 3.0, 2)])
def test_split_parameters(secret, n, t):
    with pytest.raises(ShamirError):
        split(secret, n, t)
