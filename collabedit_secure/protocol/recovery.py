"""Splitting a party's round secrets into Shamir shares, and recovering them after dropouts.

Share indices: the round's roster (every party that advertised keys) sorted by id in byte order;
the party at position i (0-based) holds the shares with x = i + 1 of every party, itself included
(Bonawitz et al.: a party keeps its own share, so t survivors suffice for any secret).

Each party shares two 32-byte secrets with threshold t:
- its self-mask secret (RoundKeys.self_secret), revealed for parties that uploaded (survivors);
- its raw X25519 mask private key, revealed for parties that dropped before uploading.
A party must never reveal both kinds of share for the same peer (that would unmask its upload);
the round logic enforces that, and masking.unmask_sum refuses a party in both sets.
"""

from __future__ import annotations

import secrets
from typing import Any, Iterable, Sequence

from .encoding import check_party_id
from .keys import RoundKeys, private_bytes, public_bytes, load_private_key
from .shamir import ShamirError, Share, combine, split


def share_index(roster: Iterable[str], party_id: str) -> int:
    """x coordinate (1-based) of party_id's shares: its position in the sorted roster, plus one."""
    ordered = sorted(check_party_id(p) for p in roster)
    if len(set(ordered)) != len(ordered):
        raise ValueError("roster has repeated party ids")
    if party_id not in ordered:
        raise ValueError(f"party {party_id!r} is not in the round's roster")
    return ordered.index(party_id) + 1


def split_round_secrets(
    keys: RoundKeys, roster: Sequence[str], threshold: int, rng: Any = secrets
) -> dict[str, tuple[Share, Share]]:
    """recipient id -> (its share of keys.self_secret, its share of the mask private key)."""
    n = len(roster)
    self_shares = split(keys.self_secret, n, threshold, rng)
    mask_shares = split(private_bytes(keys.mask_private_key), n, threshold, rng)
    result = {}
    for party in roster:
        i = share_index(roster, party) - 1
        result[party] = (self_shares[i], mask_shares[i])
    return result


def recover_self_secret(shares: Sequence[Share], threshold: int) -> bytes:
    """A survivor's 32-byte self-mask secret from at least `threshold` of its shares."""
    return combine(shares, threshold)


def recover_mask_private_key(shares: Sequence[Share], threshold: int, expected_public_key: bytes) -> bytes:
    """A dropped party's raw X25519 mask private key, checked against its advertised public key."""
    raw = combine(shares, threshold)
    if public_bytes(load_private_key(raw)) != expected_public_key:
        raise ShamirError("recovered mask private key does not match the advertised public key: a share is wrong")
    return raw
