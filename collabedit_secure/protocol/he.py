"""CKKS (TenSEAL) for the `he` privacy mode: parties hold the secret key, the coordinator adds blind.

Parameters (HeParameters). The coordinator only ever adds ciphertexts, so one data prime is
enough: ring dimension N = 8192 (4096 slots), coefficient modulus [60, 60] bits (one 60-bit data
prime plus the prime SEAL sets aside for key generation), 120 bits in all, inside the 218 bits the
HomomorphicEncryption.org standard allows N = 8192 at 128-bit classical security. Encryption is
symmetric (every party holds the secret key): smaller noise and faster than public-key
encryption, and no public key to ship. No relinearisation or Galois keys exist anywhere.

Precision. A value x is encoded at scale 2^scale_bits. The sum of n parties decrypts correctly while
|sum| * 2^scale_bits < q/2, q > 2^59 the data prime; parties refuse, before sending, any value above
the public per-party bound B = 2^(57 - scale_bits) / n. Decryption adds an absolute error of about
1e3 / 2^scale_bits per summand (fresh symmetric encryption noise; measured in tests/protocol/test_he.py).

Wire format of an ENCODING_CKKS payload (one tensor, flattened row-major; S_KK as its packed upper
triangle): the values are cut into blocks of `slots` values (the last block holds the rest), each
block one ciphertext, and the payload is

    for each block:  length (4 bytes, unsigned big-endian) || TenSEAL CKKSVector serialization

The coordinator adds block i of every upload to block i of its running sum, so all parties must
cut identically; it checks every block's scale, size and parameters before adding.

The secret context travels from the dealer (the first participant in sorted order) to every other
participant in an AES-256-GCM box keyed like the Shamir share boxes (sharebox.py) but with salt
"collabedit.v1/he-secret-box":

    plaintext = encode_fields(dealer, recipient, secret_context, digest_key (32 bytes),
                              sha256(public_context))

`public_context` is what the coordinator receives: parameters only (no key of any kind).
`digest_key` keys the HMAC-SHA256 digest of each layer's decrypted sums that parties report, so
the coordinator can compare digests across parties without being able to test guesses of the sums.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import math
import os
import struct
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np

from .encoding import EncodingError, decode_fields, encode_fields
from .fixedpoint import FixedPointOverflowError
from .sharebox import NONCE_BYTES, TAG_BYTES, ShareBoxError, box_aead, box_context

HE_BOX_SALT = b"collabedit.v1/he-secret-box"
DIGEST_KEY_BYTES = 32
LENGTH_PREFIX = struct.Struct(">I")
# Largest coefficient-modulus total for 128-bit classical security (HomomorphicEncryption.org standard).
MAX_COEFF_BITS_128 = {4096: 109, 8192: 218, 16384: 438, 32768: 881}
NOISE_HEADROOM_BITS = 2  # |sum| * scale stays below 2^(q_bits - 1 - 2): room for rounding and noise


class HeError(ValueError):
    """A context, ciphertext or payload that does not fit the round's HE parameters."""


def _tenseal():
    import tenseal  # imported on use: mask and plain parties never load it

    return tenseal


@dataclass(frozen=True)
class HeParameters:
    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 60)
    scale_bits: int = 40

    def __post_init__(self) -> None:
        limit = MAX_COEFF_BITS_128.get(self.poly_modulus_degree)
        if limit is None:
            raise HeError(f"poly_modulus_degree must be one of {sorted(MAX_COEFF_BITS_128)}, "
                          f"got {self.poly_modulus_degree}")
        if len(self.coeff_mod_bit_sizes) != 2:
            raise HeError(f"coeff_mod_bit_sizes must be [data prime, key prime] (sums need one level), "
                          f"got {list(self.coeff_mod_bit_sizes)}")
        if sum(self.coeff_mod_bit_sizes) > limit:
            raise HeError(f"coeff_mod_bit_sizes {list(self.coeff_mod_bit_sizes)} total {sum(self.coeff_mod_bit_sizes)} "
                          f"bits, more than the {limit} bits N={self.poly_modulus_degree} allows at 128-bit security")
        if not 20 <= self.scale_bits <= self.data_bits - NOISE_HEADROOM_BITS - 2:
            raise HeError(f"scale_bits {self.scale_bits} must be in [20, {self.data_bits - NOISE_HEADROOM_BITS - 2}] "
                          f"for a {self.data_bits}-bit data prime")

    @property
    def data_bits(self) -> int:
        return self.coeff_mod_bit_sizes[0]

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def security_bits(self) -> int:
        return 128

    def per_party_bound(self, n_parties: int) -> float:
        """Largest |value| a party may encrypt so that the sum of n parties still decrypts."""
        return 2.0 ** (self.data_bits - 1 - NOISE_HEADROOM_BITS - self.scale_bits) / n_parties

    def block_count(self, n_values: int) -> int:
        return math.ceil(n_values / self.slots)

    def block_sizes(self, n_values: int) -> list[int]:
        full, rest = divmod(n_values, self.slots)
        return [self.slots] * full + ([rest] if rest else [])

    @property
    def max_block_bytes(self) -> int:
        """Upper bound of one serialized ciphertext: 2 polynomials of N 8-byte words, plus headers."""
        return 2 * self.poly_modulus_degree * 8 * (len(self.coeff_mod_bit_sizes) - 1) + 4096

    def max_payload_bytes(self, n_values: int) -> int:
        return self.block_count(n_values) * (LENGTH_PREFIX.size + self.max_block_bytes)

    def as_dict(self) -> dict:
        return {"poly_modulus_degree": self.poly_modulus_degree,
                "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes), "scale_bits": self.scale_bits,
                "security_bits": self.security_bits}


# ------------------------------------------------------------------------------------------ contexts


def new_secret_context(params: HeParameters):
    """The dealer's context: secret key only (symmetric encryption), no relin/Galois keys."""
    ts = _tenseal()
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=params.poly_modulus_degree,
                     coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
                     encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)
    ctx.global_scale = 2.0 ** params.scale_bits
    return ctx


def secret_context_bytes(ctx) -> bytes:
    return ctx.serialize(save_secret_key=True, save_galois_keys=False, save_relin_keys=False)


def public_context_bytes(ctx) -> bytes:
    """Parameters only: what the coordinator needs to parse and add ciphertexts, and nothing else."""
    return ctx.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False,
                         save_relin_keys=False)


def _check_parameters(ctx, params: HeParameters, what: str) -> None:
    data = ctx.seal_context().data
    first, key = data.first_context_data(), data.key_context_data()
    got = (first.parms().poly_modulus_degree(), first.total_coeff_modulus_bit_count(),
           key.total_coeff_modulus_bit_count())
    want = (params.poly_modulus_degree, params.data_bits, sum(params.coeff_mod_bit_sizes))
    if got != want:
        raise HeError(f"{what} has N={got[0]}, data/total modulus bits {got[1]}/{got[2]}; the round's parameters "
                      f"are N={want[0]}, {want[1]}/{want[2]}")


def load_public_context(data: bytes, params: HeParameters):
    """The coordinator's context; refuses one that carries a secret key or other parameters."""
    ts = _tenseal()
    try:
        ctx = ts.context_from(bytes(data))
    except Exception as error:  # noqa: BLE001 - TenSEAL raises assorted types for bad bytes
        raise HeError(f"public context does not parse: {error}") from None
    if ctx.is_private():
        raise HeError("the public context carries a secret key; send it without (save_secret_key=False)")
    if ctx.has_galois_keys() or ctx.has_relin_keys():
        raise HeError("the public context carries Galois or relinearisation keys; sums need neither")
    _check_parameters(ctx, params, "public context")
    ctx.global_scale = 2.0 ** params.scale_bits
    return ctx


def load_secret_context(data: bytes, params: HeParameters):
    ts = _tenseal()
    try:
        ctx = ts.context_from(bytes(data))
    except Exception as error:  # noqa: BLE001
        raise HeError(f"secret context does not parse: {error}") from None
    if not ctx.is_private():
        raise HeError("the secret context has no secret key")
    _check_parameters(ctx, params, "secret context")
    ctx.global_scale = 2.0 ** params.scale_bits
    return ctx


# ------------------------------------------------------------------------------------------ boxes


def seal_secret_context(federation_id: str, round_id: int, dealer: str, recipient: str, dealer_share_private_key,
                        recipient_share_public_key: bytes, secret_context: bytes, digest_key: bytes,
                        public_context: bytes) -> bytes:
    context = box_context(federation_id, round_id, dealer, recipient)
    plaintext = encode_fields(dealer, recipient, secret_context, digest_key, hashlib.sha256(public_context).digest())
    nonce = os.urandom(NONCE_BYTES)
    return nonce + box_aead(dealer_share_private_key, recipient_share_public_key, context, HE_BOX_SALT).encrypt(
        nonce, plaintext, context)


def open_secret_context(federation_id: str, round_id: int, dealer: str, recipient: str,
                        recipient_share_private_key, dealer_share_public_key: bytes,
                        box: bytes) -> tuple[bytes, bytes, bytes]:
    """(secret_context, digest_key, sha256 of the public context); ShareBoxError if anything is off."""
    from cryptography.exceptions import InvalidTag

    context = box_context(federation_id, round_id, dealer, recipient)
    if len(box) < NONCE_BYTES + TAG_BYTES:
        raise ShareBoxError(f"secret-context box from {dealer!r} is too short to be a box")
    try:
        plaintext = box_aead(recipient_share_private_key, dealer_share_public_key, context, HE_BOX_SALT).decrypt(
            bytes(box[:NONCE_BYTES]), bytes(box[NONCE_BYTES:]), context)
    except InvalidTag:
        raise ShareBoxError(f"secret-context box from {dealer!r} to {recipient!r} for round {round_id} does not "
                            "authenticate (tampered, or meant for another party, round or federation)") from None
    try:
        fields = decode_fields(plaintext)
    except EncodingError as error:
        raise ShareBoxError(f"secret-context box from {dealer!r} is malformed: {error}") from None
    if len(fields) != 5 or fields[:2] != [dealer, recipient] or len(fields[3]) != DIGEST_KEY_BYTES \
            or len(fields[4]) != 32:
        raise ShareBoxError(f"secret-context box from {dealer!r} does not hold (dealer, recipient, context, "
                            "digest key, public-context digest)")
    return fields[2], fields[3], fields[4]


def aggregate_digest(digest_key: bytes, layer: int, sums: Iterable[np.ndarray]) -> bytes:
    """HMAC-SHA256 over (layer, each decrypted sum as float64 little-endian): compared across parties.
    Fed a block at a time: no copy of a sum is made."""
    mac = hmac.new(digest_key, encode_fields(layer), hashlib.sha256)
    for values in sums:
        flat = np.ravel(values)
        for start in range(0, flat.size, _CHECK_BLOCK):
            mac.update(np.ascontiguousarray(flat[start:start + _CHECK_BLOCK], dtype="<f8"))
    return mac.digest()


# ------------------------------------------------------------------------------------------ payloads


_CHECK_BLOCK = 1 << 17  # values per pass of check_encryptable and aggregate_digest: bounded extra memory


def check_encryptable(name: str, values: np.ndarray, bound: float) -> None:
    """Refuses NaN/Inf and values above the per-party bound before anything is encrypted or sent.
    Reads a block at a time, so checking a tensor costs no memory of the tensor's size."""
    flat = np.ravel(values)
    for start in range(0, flat.size, _CHECK_BLOCK):
        block = flat[start:start + _CHECK_BLOCK]
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~(np.abs(block) <= bound))  # NaN compares False: caught too
        if bad.size:
            _refuse_value(name, values, flat, start + int(bad[0]), bound)


def _refuse_value(name: str, values: np.ndarray, flat: np.ndarray, position: int, bound: float) -> None:
    index = tuple(int(i) for i in np.unravel_index(position, np.shape(values)))
    value = float(flat[position])
    raise FixedPointOverflowError(
        f"{name}[{', '.join(map(str, index))}] = {value!r} is not finite or above the HE round's per-party "
        f"bound {bound:g} (the sum must stay decryptable at its scale); nothing was sent",
        name, index, value, int(bound))


_worker_ctx = None


def _init_worker(secret_context: bytes, scale_bits: int) -> None:
    global _worker_ctx
    _worker_ctx = _tenseal().context_from(secret_context)
    _worker_ctx.global_scale = 2.0 ** scale_bits


def _encrypt_span(values: np.ndarray, slots: int, ctx=None) -> bytes:
    ts, ctx = _tenseal(), ctx or _worker_ctx
    out = bytearray()
    for start in range(0, values.size, slots):
        blob = ts.ckks_vector(ctx, values[start:start + slots].tolist()).serialize()
        out += LENGTH_PREFIX.pack(len(blob)) + blob
    return bytes(out)


class Encryptor:
    """Encrypts flat float64 arrays into framed payloads; `workers` > 1 uses that many processes
    (TenSEAL holds the GIL while it encrypts, so threads would not run in parallel).

    `encrypt_to` streams the payload into a binary file object a few ciphertexts at a time, so a
    tensor's ciphertexts (4 times its float64 bytes) are never held together; `encrypt` returns it."""

    SPAN_BLOCKS = 8  # ciphertexts encrypted per task (about 1 MB of payload at N = 8192)

    def __init__(self, ctx, params: HeParameters, workers: int = 1):
        self.ctx, self.params, self.workers = ctx, params, max(1, int(workers))
        self._pool = None

    def encrypt(self, values: np.ndarray) -> bytes:
        out = io.BytesIO()
        self.encrypt_to(values, out)
        return out.getvalue()

    def encrypt_to(self, values: np.ndarray, handle: BinaryIO,
                   done: Callable[[np.ndarray], None] | None = None) -> int:
        """Writes the framed payload of values (flattened) to handle; returns its length in bytes.
        Blocks are cut at the same places as in one pass, whatever the workers and spans; done(span)
        is called with each span of values once its ciphertexts are written."""
        flat = np.ravel(values)
        per = self.SPAN_BLOCKS * self.params.slots
        spans = (flat[start:start + per] for start in range(0, flat.size, per))
        written = 0
        if self.workers == 1 or self.params.block_count(flat.size) < 4 * self.workers:
            for span in spans:
                written += handle.write(_encrypt_span(np.ascontiguousarray(span, dtype=np.float64),
                                                      self.params.slots, self.ctx))
                if done is not None:
                    done(span)
            return written
        if self._pool is None:  # spawn: a forked copy of a gRPC process is not safe
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                             initargs=(secret_context_bytes(self.ctx), self.params.scale_bits))
        pending: deque = deque()  # at most 2 spans per worker in flight: bounded memory, busy workers

        def write_oldest() -> int:
            future, span = pending.popleft()
            count = handle.write(future.result())
            if done is not None:
                done(span)
            return count

        for span in spans:
            pending.append((self._pool.submit(_encrypt_span, np.ascontiguousarray(span, dtype=np.float64),
                                              self.params.slots), span))
            if len(pending) >= 2 * self.workers:
                written += write_oldest()
        while pending:
            written += write_oldest()
        return written

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def iter_blocks(handle: BinaryIO) -> Iterator[bytes]:
    """The serialized ciphertexts of a framed payload, read from a binary file object."""
    while head := handle.read(LENGTH_PREFIX.size):
        if len(head) < LENGTH_PREFIX.size:
            raise HeError("payload ends inside a block length prefix")
        (size,) = LENGTH_PREFIX.unpack(head)
        blob = handle.read(size)
        if len(blob) < size:
            raise HeError(f"payload ends inside a block: {len(blob)} of {size} bytes")
        yield blob


def load_block(ctx, blob: bytes, params: HeParameters, expected_size: int, where: str):
    """A ciphertext checked against the round: parses under ctx, right size, scale, level, 2 polys."""
    ts = _tenseal()
    if len(blob) > params.max_block_bytes:
        raise HeError(f"{where}: {len(blob)} bytes, more than a ciphertext of these parameters can be "
                      f"({params.max_block_bytes})")
    try:
        vector = ts.ckks_vector_from(ctx, blob)
        (cipher,) = vector.ciphertext()
    except Exception as error:  # noqa: BLE001 - parse errors, foreign parameters, multi-ciphertext vectors
        raise HeError(f"{where}: not a ciphertext of this round's context ({error})") from None
    if vector.size() != expected_size:
        raise HeError(f"{where}: holds {vector.size()} values, expected {expected_size}")
    if cipher.scale != 2.0 ** params.scale_bits:
        raise HeError(f"{where}: scale {cipher.scale!r}, expected 2^{params.scale_bits}")
    if cipher.size() != 2 or cipher.coeff_modulus_size() != 1 or not cipher.is_ntt_form() or cipher.is_transparent():
        raise HeError(f"{where}: not a fresh two-polynomial ciphertext at the data level")
    return vector


def summed_blocks(ctx, params: HeParameters, n_values: int, old: BinaryIO | None, new: BinaryIO, what: str):
    """Framed blocks of old + new, each block of `new` checked; yields bytes (bounded memory)."""
    sizes = params.block_sizes(n_values)
    olds = iter_blocks(old) if old is not None else None
    count = 0
    for index, blob in enumerate(iter_blocks(new)):
        if index >= len(sizes):
            raise HeError(f"{what}: more than the {len(sizes)} blocks {n_values} values need")
        vector = load_block(ctx, blob, params, sizes[index], f"{what} block {index}")
        if olds is not None:
            vector.add_(load_block(ctx, next(olds), params, sizes[index], f"running sum block {index}"))
        out = vector.serialize()
        yield LENGTH_PREFIX.pack(len(out)) + out
        count += 1
    if count != len(sizes):
        raise HeError(f"{what}: {count} blocks, {n_values} values need {len(sizes)}")


def decrypt_payload(ctx, params: HeParameters, handle: BinaryIO, n_values: int,
                    out: np.ndarray | None = None) -> np.ndarray:
    """The n_values decrypted from a framed payload, read a ciphertext at a time from handle (into
    `out`, a preallocated flat float64 array of n_values, if given)."""
    sizes = params.block_sizes(n_values)
    if out is None:
        out = np.empty(n_values, dtype=np.float64)
    elif out.shape != (n_values,) or out.dtype != np.float64:
        raise ValueError(f"out must be a flat float64 array of {n_values} values, got {out.dtype} {out.shape}")
    position = 0
    for index, blob in enumerate(iter_blocks(handle)):
        if index >= len(sizes):
            raise HeError(f"encrypted sum has more than the {len(sizes)} blocks of {n_values} values")
        vector = load_block(ctx, blob, params, sizes[index], f"encrypted sum block {index}")
        out[position:position + sizes[index]] = vector.decrypt()
        position += sizes[index]
    if position != n_values:
        raise HeError(f"encrypted sum holds {position} values, expected {n_values}")
    return out
