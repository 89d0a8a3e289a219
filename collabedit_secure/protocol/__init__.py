"""What parties and the coordinator share and must agree on byte for byte (mostly `mask` mode).

- encoding.py    canonical field encoding (`encode_fields`), the `Binding` of every tensor, party ids
- fixedpoint.py  public round numerics: scale, per-party bound, overflow refusal, error budget
- seeds.py       the ONLY derivation of mask seeds (HKDF bound to a Binding) and the pair sign
- keys.py        per-round X25519 key pairs, signed key advertisements and their verification
- shamir.py      Shamir secret sharing over GF(2^521 - 1) for 32-byte secrets
- sharebox.py    AES-256-GCM boxes that carry Shamir shares party to party via the coordinator
- recovery.py    splitting a party's round secrets into shares and recovering them after dropouts
- masking.py     masked uploads and the coordinator's unmasking of the sum (incl. dropped parties)
- fingerprints.py  model / hparams / C0 fingerprints compared before a round (not mask-specific)

The byte-level definitions live in each module's docstrings; a second implementation (e.g. the
Node.js client) must reproduce them exactly.
"""
