"""protocol/he.py: parameters and their security, the stated precision, bounds, boxes, payload checks."""

from __future__ import annotations

import io

import numpy as np
import pytest

from collabedit_secure.protocol import he
from collabedit_secure.protocol.fixedpoint import FixedPointOverflowError
from collabedit_secure.protocol.keys import RoundKeys
from collabedit_secure.protocol.sharebox import ShareBoxError, open_shares

PARAMS = he.HeParameters()


@pytest.fixture(scope="module")
def ctx():
    return he.new_secret_context(PARAMS)


def encrypt(ctx, values, params=PARAMS) -> bytes:
    return he.Encryptor(ctx, params).encrypt(np.asarray(values, dtype=np.float64))


def test_default_parameters_are_128_bit_and_sum_only():
    assert PARAMS.poly_modulus_degree == 8192 and PARAMS.slots == 4096
    assert sum(PARAMS.coeff_mod_bit_sizes) <= he.MAX_COEFF_BITS_128[8192] and len(PARAMS.coeff_mod_bit_sizes) == 2
    assert PARAMS.per_party_bound(4) * 4 * 2.0 ** PARAMS.scale_bits == 2.0 ** 57


@pytest.mark.parametrize("kwargs, words", [
    (dict(poly_modulus_degree=4096, coeff_mod_bit_sizes=(60, 60)), "128-bit security"),
    (dict(poly_modulus_degree=1000), "poly_modulus_degree"),
    (dict(coeff_mod_bit_sizes=(60, 40, 60)), "one level"),
    (dict(scale_bits=57), "scale_bits"),
    (dict(scale_bits=10), "scale_bits"),
])
def test_parameters_outside_the_rules_are_refused(kwargs, words):
    with pytest.raises(he.HeError, match=words):
        he.HeParameters(**kwargs)


def test_sum_of_parties_at_the_bound_decrypts_within_the_stated_error(ctx):
    """n parties each at +-bound: no wrap-around, and |error| <= 1e3 * n / 2^scale_bits per element."""
    n, size = 4, PARAMS.slots + 17  # two blocks, the second partial
    bound = PARAMS.per_party_bound(n)
    rng = np.random.default_rng(0)
    parties = [rng.uniform(-bound, bound, size) for _ in range(n)]
    parties[0][:8] = bound  # every party at the very bound on a few entries
    for p in parties[1:]:
        p[:8] = bound
    pub = he.load_public_context(he.public_context_bytes(ctx), PARAMS)
    total = None
    for values in parties:
        blocks = he.summed_blocks(pub, PARAMS, size, None if total is None else io.BytesIO(total),
                                  io.BytesIO(encrypt(ctx, values)), "upload")
        total = b"".join(blocks)
    got = he.decrypt_payload(ctx, PARAMS, io.BytesIO(total), size)
    want = np.sum(parties, axis=0)
    assert np.max(np.abs(got - want)) <= 1e3 * n / 2.0 ** PARAMS.scale_bits
    assert np.allclose(got[:8], n * bound)


def test_encryptable_check_names_the_first_bad_element():
    values = np.zeros((3, 4))
    values[1, 2] = 1e9
    with pytest.raises(FixedPointOverflowError, match=r"S_RK\[1, 2\] = 1000000000.0"):
        he.check_encryptable("S_RK", values, 10.0)
    for bad in (np.nan, np.inf, -np.inf):
        values[1, 2] = bad
        with pytest.raises(FixedPointOverflowError, match="not finite"):
            he.check_encryptable("S_RK", values, 10.0)
    he.check_encryptable("S_RK", np.full((3, 4), 10.0), 10.0)


def test_encryptor_processes_give_the_same_values(ctx):
    values = np.random.default_rng(1).standard_normal(9 * PARAMS.slots)
    encryptor = he.Encryptor(ctx, PARAMS, workers=2)
    try:
        payload = encryptor.encrypt(values)
    finally:
        encryptor.close()
    got = he.decrypt_payload(ctx, PARAMS, io.BytesIO(payload), values.size)
    assert np.max(np.abs(got - values)) <= 1e3 / 2.0 ** PARAMS.scale_bits


def test_public_context_carries_no_key_and_is_checked(ctx):
    public = he.public_context_bytes(ctx)
    loaded = he.load_public_context(public, PARAMS)
    assert not loaded.is_private() and len(public) < 1024  # parameters only
    with pytest.raises(he.HeError, match="secret key"):
        he.load_public_context(he.secret_context_bytes(ctx), PARAMS)
    with_relin = he.new_secret_context(PARAMS)
    with_relin.generate_relin_keys()
    with pytest.raises(he.HeError, match="relinearisation"):
        he.load_public_context(with_relin.serialize(save_secret_key=False, save_relin_keys=True), PARAMS)
    with pytest.raises(he.HeError, match="N=8192"):
        he.load_public_context(public, he.HeParameters(16384, (60, 60), 40))
    with pytest.raises(he.HeError, match="does not parse"):
        he.load_public_context(b"garbage", PARAMS)
    with pytest.raises(he.HeError, match="no secret key"):
        he.load_secret_context(public, PARAMS)


def test_blocks_are_checked_before_they_are_added(ctx):
    pub = he.load_public_context(he.public_context_bytes(ctx), PARAMS)
    good = encrypt(ctx, np.ones(10))

    def fold(payload, n=10):
        return b"".join(he.summed_blocks(pub, PARAMS, n, None, io.BytesIO(payload), "upload"))

    assert fold(good)
    other = he.HeParameters(8192, (60, 60), 30)
    cases = {
        "holds 9 values": encrypt(ctx, np.ones(9)),
        "scale": encrypt(he.new_secret_context(other), np.ones(10), other),
        "more than": good + good,
        "ends inside": good[:-1],
        "not a ciphertext": good[:4] + bytes(len(good) - 4),
    }
    for words, payload in cases.items():
        with pytest.raises(he.HeError, match=words):
            fold(payload)
    with pytest.raises(he.HeError, match="0 blocks"):
        fold(b"")


def test_secret_context_box_round_trip_and_tampering(ctx):
    dealer, recipient = RoundKeys.generate(), RoundKeys.generate()
    secret, public = he.secret_context_bytes(ctx), he.public_context_bytes(ctx)
    args = ("fed", 3, "a", "b")
    box = he.seal_secret_context(*args, dealer.share_private_key, recipient.share_public_key, secret, b"k" * 32, public)
    got, key, public_sha = he.open_secret_context(*args, recipient.share_private_key, dealer.share_public_key, box)
    assert (got, key) == (secret, b"k" * 32) and len(public_sha) == 32
    assert he.load_secret_context(got, PARAMS).is_private()
    tampered = box[:40] + bytes([box[40] ^ 1]) + box[41:]
    for wrong in (("fed", 4, "a", "b"), ("other", 3, "a", "b"), ("fed", 3, "c", "b")):
        with pytest.raises(ShareBoxError):
            he.open_secret_context(*wrong, recipient.share_private_key, dealer.share_public_key, box)
    with pytest.raises(ShareBoxError, match="authenticate"):
        he.open_secret_context(*args, recipient.share_private_key, dealer.share_public_key, tampered)
    with pytest.raises(ShareBoxError):  # its own salt: never opens as a Shamir share box
        open_shares(*args, recipient.share_private_key, dealer.share_public_key, box)


def test_aggregate_digest_depends_on_key_layer_and_every_value():
    s_kk, s_rk = np.arange(6.0), np.arange(8.0).reshape(2, 4)
    base = he.aggregate_digest(b"k" * 32, 0, (s_kk, s_rk))
    assert base == he.aggregate_digest(b"k" * 32, 0, (s_kk.copy(), s_rk.copy()))
    changed = s_rk.copy()
    changed[1, 3] = np.nextafter(changed[1, 3], 10)
    assert len({base, he.aggregate_digest(b"j" * 32, 0, (s_kk, s_rk)), he.aggregate_digest(b"k" * 32, 1, (s_kk, s_rk)),
                he.aggregate_digest(b"k" * 32, 0, (s_kk, changed))}) == 4
