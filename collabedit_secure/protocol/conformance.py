"""Conformance vectors: the byte-level rules of the protocol as JSON another implementation checks.

    python -m collabedit_secure.protocol.conformance write [DIR]    # (re)generate proto/conformance/
    python -m collabedit_secure.protocol.conformance check [DIR]    # exit 1 if the code disagrees
    (also `collabedit conformance write|check`)

Every vector is computed by the same functions the parties and the coordinator run. Most are
deterministic from the fixed inputs written beside them, so `check` recomputes them and compares
byte for byte; the ECDSA signature and the certificates are random once, so `check` verifies them.
A change to any byte-level rule that is not also written into the vectors fails `check` (and CI).

JSON conventions: bytes are lowercase hex; 64-bit words and other integers that may exceed 2^53 are
decimal strings; float64 values are JSON numbers (shortest round-trip repr) plus `*_hex`, their 8
little-endian bytes, to leave no doubt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "proto" / "conformance"
FEDERATION, ROUND = "conformance-federation", 7


def _hex(data: bytes) -> str:
    return bytes(data).hex()


def _f64(value: float) -> dict:
    return {"value": float(value), "value_hex": struct.pack("<d", value).hex()}


def _derived(label: str, length: int = 32) -> bytes:
    """Fixed 'random' inputs: SHA-256 of a label (so the vectors need no RNG)."""
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(f"collabedit.v1/conformance/{label}/{counter}".encode()).digest()
        counter += 1
    return out[:length]


class _FixedRng:
    """randbelow() from SHA-256 of a label and a counter: Shamir coefficients for the vectors."""

    def __init__(self, label: str):
        self.label, self.drawn = label, []

    def randbelow(self, bound: int) -> int:
        value = int.from_bytes(_derived(f"{self.label}/{len(self.drawn)}", 80), "big") % bound
        self.drawn.append(value)
        return value


def _round_keys(party: str):
    from cryptography.hazmat.primitives.asymmetric import x25519

    from .keys import RoundKeys

    return RoundKeys(x25519.X25519PrivateKey.from_private_bytes(_derived(f"{party}/mask-key")),
                     x25519.X25519PrivateKey.from_private_bytes(_derived(f"{party}/share-key")),
                     _derived(f"{party}/self-secret"))


# ------------------------------------------------------------------------------------ vectors


def encoding_vectors() -> dict:
    from .encoding import Binding, encode_fields

    fields = [["str", "a"], ["str", "ü-ß"], ["int", "0"], ["int", str(2**64 - 1)], ["bytes", ""], ["bytes", "00ff"]]
    values = [int(v) if kind == "int" else bytes.fromhex(v) if kind == "bytes" else v for kind, v in fields]
    binding = Binding(FEDERATION, ROUND, 3, "TENSOR_S_RK", (4, 6))
    return {
        "rule": "tag (1 byte: 0x01 bytes, 0x02 UTF-8 str, 0x03 u64) || length (u32 big-endian) || payload; "
                "a Binding is encode_fields(federation_id, round_id, layer, tensor, rank, *shape)",
        "fields": [{"type": kind, "value": value, "encoding": _hex(encode_fields(v))}
                   for (kind, value), v in zip(fields, values)],
        "concatenation": {"fields": fields[:3], "encoding": _hex(encode_fields(*values[:3]))},
        "binding": {"federation_id": FEDERATION, "round_id": ROUND, "layer": 3, "tensor": "TENSOR_S_RK",
                    "shape": [4, 6], "encoding": _hex(encode_fields(*binding.fields()))},
    }


def fixed_point_vectors() -> dict:
    from collabedit_secure.kernels import reference, safe_bound

    scale_bits, n = 40, 3
    bound = safe_bound(n)
    unit = 2.0 ** -scale_bits
    edge = float(np.nextafter(bound * unit, 0))  # the largest float whose encoding is within the bound
    values = [0.0, -0.0, 1.0, -1.0, 0.5 * unit, 1.5 * unit, 2.5 * unit, -2.5 * unit, 1e-3, -123.456, edge, -edge]
    cases = []
    for v in values:
        word = int(reference.fixed_point_encode(np.array([v]), scale_bits, bound)[0])
        cases.append({**_f64(v), "word": str(word)})
    refused = [v for v in (bound * unit * 1.000001, -bound * unit * 1.000001, float("nan"), float("inf"))]
    total = sum(int(np.int64(np.uint64(int(c["word"])))) for c in cases[8:10])  # 1e-3 - 123.456
    return {
        "rule": "word = round_half_even(v * 2^scale_bits) as two's-complement u64; refused if NaN, Inf or "
                "|round(v * 2^scale_bits)| > bound; bound = floor((2^63 - 1) / n_parties); "
                "decode(sum) = int64(sum) / 2^scale_bits",
        "scale_bits": scale_bits, "n_parties": n, "bound": str(bound), "cases": cases,
        "refused": [{"value_hex": struct.pack("<d", v).hex(), "why": "non-finite" if not np.isfinite(v)
                     else "above the bound"} for v in refused],
        "decode_example": {"words_summed": [cases[8]["word"], cases[9]["word"]], "sum": str(total % 2**64),
                           "decoded": total / 2.0 ** scale_bits},
    }


def seed_vectors() -> dict:
    from .encoding import Binding, encode_fields
    from .seeds import MASK_SEED_SALT, mask_seed, pair_sign

    binding = Binding(FEDERATION, ROUND, 0, "TENSOR_S_KK_UPPER", (6,))
    secret = _derived("seed-secret")
    return {
        "rule": "HKDF-SHA256(ikm = secret, salt, info, length 32); info = encode_fields('self', *binding) or "
                "encode_fields('pairwise', *binding, low_id, high_id); pair_sign(me, peer) = +1 if me < peer",
        "salt": _hex(MASK_SEED_SALT), "binding": binding.fields(), "secret": _hex(secret),
        "self": {"info": _hex(encode_fields("self", *binding.fields())), "seed": _hex(mask_seed(secret, binding, None))},
        "pairwise": {"pair": ["b", "a"], "info": _hex(encode_fields("pairwise", *binding.fields(), "a", "b")),
                     "seed": _hex(mask_seed(secret, binding, ("b", "a")))},
        "pair_sign": [{"me": "a", "peer": "b", "sign": pair_sign("a", "b")},
                      {"me": "b", "peer": "a", "sign": pair_sign("b", "a")}],
    }


def prg_vectors() -> dict:
    from collabedit_secure.kernels import reference

    seeds = {"plain": _derived("prg-seed"),
             "counter wraps past 2^128 - 1": _derived("prg-key")[:16] + b"\xff" * 15 + b"\xfe"}
    return {
        "rule": "AES-128-CTR, key = seed[0:16], initial counter block = seed[16:32] as a 128-bit big-endian "
                "integer incremented per 16-byte block mod 2^128, encrypting zeros; mask word i = keystream "
                "bytes 8i..8i+8 read as a little-endian u64",
        "cases": [{"name": name, "seed": _hex(seed), "words": [str(int(w)) for w in reference.prg_mask(seed, 9)]}
                  for name, seed in seeds.items()],
    }


def advertisement_vectors(folder: Path | None = None) -> dict:
    """A signed key advertisement with a throw-away CA (random once; `check` verifies it)."""
    from .keys import advertisement_message, sign_advertisement
    from collabedit_secure.rpc.tls import init_federation_pki, load_identity
    import tempfile

    keys = _round_keys("a")
    with tempfile.TemporaryDirectory() as tmp:
        pki = init_federation_pki(Path(tmp) / "pki", ["a"], validity_days=36500)  # vectors outlive a year
        identity = load_identity(pki.certs["a"], pki.keys["a"], pki.ca_cert)
        advert = sign_advertisement(identity.private_key, identity.certificate_pem, FEDERATION, ROUND, "a", keys)
        ca_pem = Path(pki.ca_cert).read_text()
    message = advertisement_message(FEDERATION, ROUND, "a", keys.mask_public_key, keys.share_public_key)
    return {
        "rule": "ECDSA P-256 / SHA-256, DER signature, over encode_fields('collabedit.v1/key-advertisement', "
                "federation_id, round_id, party_id, mask_public_key, share_public_key); the certificate must "
                "chain to the federation CA and its CN must be party_id",
        "federation_id": FEDERATION, "round_id": ROUND, "party_id": "a",
        "mask_private_key": _hex(_derived("a/mask-key")), "mask_public_key": _hex(keys.mask_public_key),
        "share_private_key": _hex(_derived("a/share-key")), "share_public_key": _hex(keys.share_public_key),
        "message": _hex(message), "signature": _hex(advert.signature),
        "certificate_pem": advert.certificate_pem.decode(), "ca_pem": ca_pem,
    }


def shamir_vectors() -> dict:
    from .shamir import PRIME, combine, split

    secret = _derived("shamir-secret")
    rng = _FixedRng("shamir")
    shares = split(secret, 3, 2, rng)
    return {
        "rule": "f(x) = secret + c1 x + ... over GF(2^521 - 1), share i = (i, f(i)), i = 1..n; share bytes = "
                "x as u32 big-endian || y as 66 bytes big-endian; combine = Lagrange interpolation at 0; "
                "coefficients[0] is the secret as a big-endian integer",
        "prime": str(PRIME), "secret": _hex(secret), "n": 3, "t": 2,
        "coefficients": [str(int.from_bytes(secret, "big"))] + [str(c) for c in rng.drawn],
        "shares": [{"x": s.x, "y": str(s.y), "bytes": _hex(s.to_bytes())} for s in shares],
        "combine": [{"xs": [1, 3], "secret": _hex(combine([shares[0], shares[2]], 2))},
                    {"xs": [2, 3], "secret": _hex(combine([shares[1], shares[2]], 2))}],
    }


def share_box_vectors() -> dict:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from .encoding import encode_fields
    from .sharebox import SHARE_BOX_SALT, box_context, box_key
    from .shamir import split

    sender, recipient = _round_keys("a"), _round_keys("b")
    context = box_context(FEDERATION, ROUND, "a", "b")
    key = box_key(sender.share_private_key, recipient.share_public_key, context)
    self_share = split(sender.self_secret, 3, 2, _FixedRng("box-self"))[1]
    mask_share = split(_derived("a/mask-key"), 3, 2, _FixedRng("box-mask"))[1]
    plaintext = encode_fields("a", "b", self_share.to_bytes(), mask_share.to_bytes())
    nonce = _derived("box-nonce", 12)
    return {
        "rule": "key = HKDF-SHA256(X25519(sender share sk, recipient share pk), salt, info = context, 32); "
                "context = encode_fields(federation_id, round_id, sender, recipient); box = nonce (12) || "
                "AES-256-GCM(key, nonce, plaintext, aad = context); plaintext = encode_fields(sender, "
                "recipient, self-secret share (70 bytes), mask-key share (70 bytes))",
        "salt": _hex(SHARE_BOX_SALT), "he_secret_box_salt": _hex(b"collabedit.v1/he-secret-box"),
        "federation_id": FEDERATION, "round_id": ROUND, "sender": "a", "recipient": "b",
        "sender_share_private_key": _hex(_derived("a/share-key")),
        "recipient_share_private_key": _hex(_derived("b/share-key")),
        "sender_share_public_key": _hex(sender.share_public_key),
        "recipient_share_public_key": _hex(recipient.share_public_key),
        "context": _hex(context), "key": _hex(key), "nonce": _hex(nonce), "plaintext": _hex(plaintext),
        "box": _hex(nonce + AESGCM(key).encrypt(nonce, plaintext, context)),
    }


def chunking_vectors() -> dict:
    values = np.arange(10, dtype="<f8") / 8
    payload = values.tobytes()
    chunk = 24
    return {
        "rule": "a header (shape, encoding, total_bytes, sha256 of the whole payload), then chunks of at most "
                "chunk_bytes, contiguous from offset 0, each with the sha256 of its data",
        "encoding": "ENCODING_FLOAT64_LE", "shape": [10], "chunk_bytes": chunk, "payload": _hex(payload),
        "total_bytes": len(payload), "sha256": _hex(hashlib.sha256(payload).digest()),
        "chunks": [{"offset": o, "data": _hex(payload[o:o + chunk]), "sha256": _hex(hashlib.sha256(payload[o:o + chunk]).digest())}
                   for o in range(0, len(payload), chunk)],
    }


def masked_round_vectors() -> dict:
    """Three parties a, b, c mask one S_RK (2 x 3) each; the ring sum unmasks to the sum of values."""
    from collabedit_secure.kernels import ring_add, safe_bound

    from .encoding import Binding
    from .fixedpoint import RoundNumerics
    from .keys import x25519_shared_secret
    from .masking import masked_upload, unmask_sum
    from .seeds import mask_seed, pair_sign

    parties = ["a", "b", "c"]
    numerics = RoundNumerics(3, 40, safe_bound(3))
    binding = Binding(FEDERATION, ROUND, 1, "TENSOR_S_RK", (2, 3))
    keys = {p: _round_keys(p) for p in parties}
    values = {p: np.array([[1.0, -2.5, 0.125], [3e-3, 7.0, -1e-6]]) * (i + 1) for i, p in enumerate(parties)}
    uploads, described = {}, []
    for p in parties:
        peers = {q: keys[q].mask_public_key for q in parties if q != p}
        uploads[p] = masked_upload(values[p], numerics, binding, p, keys[p], peers)
        described.append({
            "party": p, "mask_private_key": _hex(_derived(f"{p}/mask-key")), "mask_public_key": _hex(keys[p].mask_public_key),
            "self_secret": _hex(keys[p].self_secret), "self_seed": _hex(mask_seed(keys[p].self_secret, binding, None)),
            "pairwise": [{"peer": q, "sign": pair_sign(p, q), "seed": _hex(mask_seed(
                x25519_shared_secret(keys[p].mask_private_key, keys[q].mask_public_key), binding, (p, q)))}
                for q in parties if q != p],
            "values": [_f64(v) for v in values[p].ravel()],
            "upload": [str(int(w)) for w in uploads[p].ravel()]})
    total = uploads["a"].copy()
    for p in ("b", "c"):
        ring_add(total, uploads[p], out=total)
    decoded = unmask_sum(total, {p: keys[p].self_secret for p in parties}, {},
                         {p: keys[p].mask_public_key for p in parties}, binding, numerics)
    return {
        "rule": "upload_p = encode(values_p) + PRG(self seed) + sum over peers q of pair_sign(p, q) * "
                "PRG(pairwise seed of X25519(mask sk_p, mask pk_q)), mod 2^64; the coordinator subtracts every "
                "survivor's PRG(self seed) from the ring sum and decodes",
        "federation_id": FEDERATION, "round_id": ROUND, "binding": binding.fields(),
        "scale_bits": numerics.scale_bits, "bound": str(numerics.bound), "parties": described,
        "ring_sum": [str(int(w)) for w in total.ravel()],
        "decoded_sum": [_f64(v) for v in np.asarray(decoded).ravel()],
    }


VECTORS = {"encoding": encoding_vectors, "fixed_point": fixed_point_vectors, "mask_seeds": seed_vectors,
           "prg": prg_vectors, "key_advertisement": advertisement_vectors, "shamir": shamir_vectors,
           "share_box": share_box_vectors, "chunking": chunking_vectors, "masked_round": masked_round_vectors}
RANDOM_ONCE = {"key_advertisement"}  # regenerated vectors differ: checked by verification instead


# ------------------------------------------------------------------------------------ write / check


def _dump(data: dict) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def write(folder: Path = DEFAULT_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in VECTORS.items():
        path = folder / f"{name}.json"
        path.write_text(_dump({"name": name, **make()}))
        written.append(path)
    return written


def _verify_advertisement(data: dict) -> None:
    from .keys import KeyAdvertisement, advertisement_message, verify_advertisement

    message = advertisement_message(data["federation_id"], data["round_id"], data["party_id"],
                                    bytes.fromhex(data["mask_public_key"]), bytes.fromhex(data["share_public_key"]))
    if message.hex() != data["message"]:
        raise ValueError("the advertisement message encoding changed")
    keys = _round_keys(data["party_id"])
    if (keys.mask_public_key.hex(), keys.share_public_key.hex()) != (data["mask_public_key"], data["share_public_key"]):
        raise ValueError("X25519 public keys of the fixed private keys changed")
    verify_advertisement(KeyAdvertisement(data["party_id"], keys.mask_public_key, keys.share_public_key,
                                          data["certificate_pem"].encode(), bytes.fromhex(data["signature"])),
                         data["ca_pem"].encode(), data["federation_id"], data["round_id"])


def check(folder: Path = DEFAULT_DIR) -> list[str]:
    """Problems found (empty = the code and the checked-in vectors agree)."""
    problems = []
    for name, make in VECTORS.items():
        path = folder / f"{name}.json"
        if not path.is_file():
            problems.append(f"{path} is missing: run `collabedit conformance write`")
            continue
        stored = json.loads(path.read_text())
        try:
            if name in RANDOM_ONCE:
                _verify_advertisement(stored)
            elif path.read_text() != _dump({"name": name, **make()}):
                problems.append(f"{path}: the code now computes other bytes than the vectors say; if the rule "
                                "changed on purpose, run `collabedit conformance write` and say so in the protocol guide")
        except Exception as error:  # noqa: BLE001 - any failure of a vector is a finding, named
            problems.append(f"{path}: {type(error).__name__}: {error}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="collabedit conformance", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["write", "check"])
    parser.add_argument("folder", nargs="?", default=str(DEFAULT_DIR))
    args = parser.parse_args(argv)
    return run(args.action, Path(args.folder))


def run(action: str, folder: Path) -> int:
    if action == "write":
        for path in write(folder):
            print(f"wrote {path}")
        return 0
    problems = check(folder)
    for problem in problems:
        print(f"collabedit conformance: {problem}", file=sys.stderr)
    print(f"{len(VECTORS) - len(problems)} of {len(VECTORS)} vector files agree with the code")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
