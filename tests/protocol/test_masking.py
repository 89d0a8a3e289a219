from __future__ import annotations

import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from scipy import stats

from collabedit_secure.kernels import mask_decode, prg_mask
from collabedit_secure.kernels.reference import fixed_point_encode
from collabedit_secure.protocol.encoding import Binding
from collabedit_secure.protocol.fixedpoint import FixedPointOverflowError, RoundNumerics
from collabedit_secure.protocol.keys import (
    RoundKeys,
    check_unique_keys,
    private_bytes,
    sign_advertisement,
    verify_advertisement,
)
from collabedit_secure.protocol.masking import (
    masked_upload,
    pairwise_mask_for_dropped,
    self_mask,
    sum_uploads,
    unmask_sum,
)
from collabedit_secure.protocol.recovery import (
    recover_mask_private_key,
    recover_self_secret,
    share_index,
    split_round_secrets,
)
from collabedit_secure.protocol.seeds import mask_seed
from collabedit_secure.protocol.shamir import PRIME, ShamirError, Share
from collabedit_secure.protocol.sharebox import open_shares, seal_shares
from collabedit_secure.rpc import tls

FED, ROUND = "fed-1", 3


def fixed_keys(i: int) -> RoundKeys:
    """Deterministic keys, so the statistical tests below give the same verdict on every run."""
    return RoundKeys(
        x25519.X25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32),
        x25519.X25519PrivateKey.from_private_bytes(bytes([i + 101]) * 32),
        bytes([i + 201]) * 32,
    )


def peers_of(me, public_keys):
    return {p: k for p, k in public_keys.items() if p != me}


def exact_sum(arrays):
    """Correctly rounded elementwise sum (math.fsum) and its magnitude."""
    stacked = np.stack(arrays).reshape(len(arrays), -1)
    return np.array([math.fsum(column) for column in stacked.T]).reshape(arrays[0].shape)


@pytest.mark.parametrize(
    "roster, dropped, threshold",
    [
        (("alice", "bob", "carol", "dave"), ("dave",), 3),   # the brief's case: one drops after key exchange
        (("alice", "bob", "carol", "dave"), ("bob",), 3),    # a middle id: both pair signs exercised
        (("alice", "bob", "carol", "dave", "erin"), ("bob", "erin"), 3),  # two dropped: their pair needs nothing
        (("alice", "bob", "carol"), (), 2),                  # nobody drops
    ],
)
def test_round_survives_dropouts(federation, roster, dropped, threshold):
    certs, cert_keys = dict(federation.certs), dict(federation.keys)
    if "erin" in roster:  # a fifth certificate from the same CA
        cert, key = tls.issue_certificate("erin", federation.ca_cert, federation.ca_key)
        certs["erin"], cert_keys["erin"] = tls.certificate_pem(cert), key
    binding = Binding(FED, ROUND, 7, "S_RK", (5, 6))
    numerics = RoundNumerics.for_parties(len(roster))
    keys = {p: RoundKeys.generate() for p in roster}

    # Key advertisement: signed by each party, verified by its peers.
    ads = {p: sign_advertisement(cert_keys[p], certs[p], FED, ROUND, p, keys[p]) for p in roster}
    for ad in ads.values():
        verify_advertisement(ad, federation.ca_cert, FED, ROUND)
    check_unique_keys(ads.values())
    mask_pks = {p: ad.mask_public_key for p, ad in ads.items()}
    share_pks = {p: ad.share_public_key for p, ad in ads.items()}

    # Share keys: every party splits its secrets and boxes each peer's shares; it keeps its own.
    held = {p: {} for p in roster}  # holder -> owner -> (self-secret share, mask-key share)
    for owner in roster:
        for holder, pair in split_round_secrets(keys[owner], roster, threshold).items():
            if holder == owner:
                held[holder][owner] = pair
                continue
            box = seal_shares(FED, ROUND, owner, holder, keys[owner].share_private_key, share_pks[holder], *pair)
            held[holder][owner] = open_shares(FED, ROUND, owner, holder, keys[holder].share_private_key,
                                              share_pks[owner], box, expected_x=share_index(roster, holder))

    # Dropped parties vanish now: they never upload.
    survivors = [p for p in roster if p not in dropped]
    rng = np.random.default_rng(len(roster) + len(dropped))
    values = {p: rng.normal(scale=100.0, size=binding.shape) for p in survivors}
    uploads = [masked_upload(values[p], numerics, binding, p, keys[p], peers_of(p, mask_pks)) for p in survivors]
    ring_sum = sum_uploads(uploads)

    # Unmasking: survivors hand over self-secret shares of survivors and mask-key shares of the dropped.
    self_secrets = {s: recover_self_secret([held[h][s][0] for h in survivors], threshold) for s in survivors}
    dropped_keys = {
        d: recover_mask_private_key([held[h][d][1] for h in survivors], threshold, mask_pks[d]) for d in dropped
    }
    assert self_secrets == {s: keys[s].self_secret for s in survivors}
    result = unmask_sum(ring_sum, self_secrets, dropped_keys, mask_pks, binding, numerics)

    expected = exact_sum([values[p] for p in survivors])
    budget = np.vectorize(numerics.sum_error_bound)(np.abs(expected)) + np.abs(expected) * 2.0**-53
    assert result.shape == binding.shape and result.dtype == np.float64
    assert np.all(np.abs(result - expected) <= budget)

    if dropped:  # and the dropped parties' pairwise masks really had to be cancelled
        partial = ring_sum.reshape(-1).copy()
        for s in survivors:
            partial -= self_mask(self_secrets[s], binding)
        garbage = mask_decode(partial, numerics.scale_bits, numerics.n_parties).reshape(binding.shape)
        assert np.mean(np.abs(garbage - expected) > 1.0) > 0.9


def test_sign_convention_of_dropped_correction():
    """Adding pairwise_mask_for_dropped to a survivor's upload (self mask removed) leaves exactly
    its fixed-point encoding, whichever of the two ids is lower."""
    binding = Binding(FED, ROUND, 0, "S_KK", (64,))
    numerics = RoundNumerics.for_parties(2)
    values = np.linspace(-3, 3, 64)
    for survivor, gone in (("alice", "bob"), ("bob", "alice")):
        k_s, k_g = fixed_keys(0), fixed_keys(1)
        upload = masked_upload(values, numerics, binding, survivor, k_s, {gone: k_g.mask_public_key})
        rest = upload - self_mask(k_s.self_secret, binding, 64)
        rest += pairwise_mask_for_dropped(private_bytes(k_g.mask_private_key), gone, survivor,
                                          k_s.mask_public_key, binding, 64)
        assert np.array_equal(rest, fixed_point_encode(values, numerics.scale_bits))


def test_single_upload_looks_uniform_and_sum_is_exact():
    """One masked upload of highly structured data is indistinguishable from uniform bytes
    (chi-square on byte values, 255 dof, and per-bit balance, each at significance 1e-6);
    the unmasked encoding fails the same test; the sum of all uploads decodes exactly."""
    n_words = 1 << 14
    binding = Binding(FED, ROUND, 2, "S_KK", (n_words,))
    numerics = RoundNumerics.for_parties(3, scale_bits=20)
    parties = ("alice", "bob", "carol")
    keys = {p: fixed_keys(i) for i, p in enumerate(parties)}
    mask_pks = {p: k.mask_public_key for p, k in keys.items()}
    # multiples of 2^-20: encoded exactly, so the decoded sum must be exact
    values = {p: (np.arange(n_words) % 97 - 48 + i).astype(np.float64) / 1024 for i, p in enumerate(parties)}
    uploads = {p: masked_upload(values[p], numerics, binding, p, keys[p], peers_of(p, mask_pks)) for p in parties}

    critical = stats.chi2.isf(1e-6, 255)

    def chi_square(words):
        counts = np.bincount(words.view(np.uint8), minlength=256)
        expected = words.size * 8 / 256
        return float(((counts - expected) ** 2 / expected).sum())

    def worst_bit_z(words):
        bits = (words[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
        ones = bits.sum(axis=0).astype(np.float64)
        return float(np.max(np.abs(ones - words.size / 2) / math.sqrt(words.size / 4)))

    z_critical = stats.norm.isf(1e-6 / 2 / 64)  # two-sided, Bonferroni over 64 positions
    upload = uploads["alice"]
    assert chi_square(upload) < critical
    assert worst_bit_z(upload) < z_critical
    plain = fixed_point_encode(values["alice"], numerics.scale_bits)
    assert chi_square(plain) > critical and worst_bit_z(plain) > z_critical  # the test has teeth

    result = unmask_sum(sum_uploads(list(uploads.values())), {p: keys[p].self_secret for p in parties}, {},
                        mask_pks, binding, numerics)
    assert np.array_equal(result, values["alice"] + values["bob"] + values["carol"])


def test_masks_never_repeat_across_bindings():
    numerics = RoundNumerics.for_parties(2)
    values = np.zeros(256)
    a, b = fixed_keys(0), fixed_keys(1)
    uploads = [
        masked_upload(values, numerics, Binding(FED, r, layer, t, (256,)), "alice", a, {"bob": b.mask_public_key})
        for r, layer, t in ((1, 0, "S_KK"), (2, 0, "S_KK"), (1, 1, "S_KK"), (1, 0, "S_RK"))
    ]
    for i in range(len(uploads)):
        for j in range(i + 1, len(uploads)):
            assert np.mean(uploads[i] == uploads[j]) < 0.01


def test_overflow_refused_before_masking():
    numerics = RoundNumerics.for_parties(3)
    values = np.zeros((2, 3))
    values[1, 2] = 1e30
    k = fixed_keys(0)
    with pytest.raises(FixedPointOverflowError, match="'layer4/S_KK'") as caught:
        masked_upload(values, numerics, Binding(FED, ROUND, 4, "layer4/S_KK", (2, 3)), "alice", k,
                      {"bob": fixed_keys(1).mask_public_key})
    assert caught.value.index == (1, 2)


def test_masked_upload_argument_checks():
    numerics = RoundNumerics.for_parties(2)
    binding = Binding(FED, ROUND, 0, "S_KK", (4,))
    a, b, c = fixed_keys(0), fixed_keys(1), fixed_keys(2)
    peers = {"bob": b.mask_public_key}
    with pytest.raises(ValueError, match="shape"):
        masked_upload(np.zeros(5), numerics, binding, "alice", a, peers)
    with pytest.raises(TypeError):
        masked_upload(np.zeros(4, np.int64), numerics, binding, "alice", a, peers)
    with pytest.raises(ValueError, match="must not include"):
        masked_upload(np.zeros(4), numerics, binding, "alice", a, {"alice": a.mask_public_key})
    with pytest.raises(ValueError, match="allow 2"):
        masked_upload(np.zeros(4), numerics, binding, "alice", a, {**peers, "carol": c.mask_public_key})
    with pytest.raises(ValueError, match="32 raw bytes"):
        masked_upload(np.zeros(4), numerics, binding, "alice", a, {"bob": b.mask_public_key[:16]})
    with pytest.raises(ValueError, match="n = 5"):
        self_mask(a.self_secret, binding, 5)
    assert np.array_equal(self_mask(a.self_secret, binding), prg_mask(mask_seed(a.self_secret, binding, None), 4))


def test_unmask_sum_argument_checks():
    numerics = RoundNumerics.for_parties(3)
    binding = Binding(FED, ROUND, 0, "S_KK", (4,))
    k = {p: fixed_keys(i) for i, p in enumerate(("alice", "bob", "carol"))}
    pks = {p: v.mask_public_key for p, v in k.items()}
    ring = np.zeros(4, np.uint64)
    secrets_ = {p: k[p].self_secret for p in ("alice", "bob")}
    carol_key = private_bytes(k["carol"].mask_private_key)
    unmask_sum(ring, secrets_, {"carol": carol_key}, pks, binding, numerics)  # well-formed
    with pytest.raises(ValueError, match="both survivors and dropped"):
        unmask_sum(ring, {**secrets_, "carol": k["carol"].self_secret}, {"carol": carol_key}, pks, binding, numerics)
    with pytest.raises(ValueError, match="roster"):
        unmask_sum(ring, secrets_, {}, pks, binding, numerics)
    with pytest.raises(ValueError, match="does not match its advertised key"):
        unmask_sum(ring, secrets_, {"carol": private_bytes(k["bob"].mask_private_key)}, pks, binding, numerics)
    with pytest.raises(ValueError, match="uint64 words"):
        unmask_sum(np.zeros(5, np.uint64), secrets_, {"carol": carol_key}, pks, binding, numerics)
    with pytest.raises(ValueError, match="no survivors"):
        unmask_sum(ring, {}, {p: private_bytes(k[p].mask_private_key) for p in k}, pks, binding, numerics)


def test_recovery_checks():
    roster = ("carol", "alice", "bob")
    assert [share_index(roster, p) for p in ("alice", "bob", "carol")] == [1, 2, 3]
    with pytest.raises(ValueError, match="not in the round"):
        share_index(roster, "dave")
    keys, other = RoundKeys.generate(), RoundKeys.generate()
    shares = split_round_secrets(keys, roster, 2)
    assert {p: s[0].x for p, s in shares.items()} == {"alice": 1, "bob": 2, "carol": 3}
    mask_shares = [shares["alice"][1], shares["bob"][1]]
    assert recover_mask_private_key(mask_shares, 2, keys.mask_public_key) == private_bytes(keys.mask_private_key)
    foreign = split_round_secrets(other, roster, 2)
    with pytest.raises(ShamirError):  # a share of another secret: random field element, out of range
        recover_mask_private_key([shares["alice"][1], foreign["bob"][1]], 2, keys.mask_public_key)
    shifted = Share(mask_shares[1].x, (mask_shares[1].y + 1) % PRIME)  # chosen shift: a plausible key
    with pytest.raises(ShamirError, match="does not match the advertised"):
        recover_mask_private_key([mask_shares[0], shifted], 2, keys.mask_public_key)
