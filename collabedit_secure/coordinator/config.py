"""The coordinator's configuration: one YAML or TOML file, checked field by field at load time.

Every error names the file and the field, so that a typo fails at start and not mid-round.
Paths inside the file are relative to the file's own folder. See parties/coordinator.yaml.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from collabedit_secure.blockio import LazyC0
from collabedit_secure.editing.hparams import HparamsError, MemitHparams
from collabedit_secure.protocol import fingerprints
from collabedit_secure.protocol.encoding import check_party_id
from collabedit_secure.protocol.fixedpoint import DEFAULT_SCALE_BITS, MAX_SCALE_BITS
from collabedit_secure.devices import DeviceError, resolve_device
from collabedit_secure.protocol.he import HeError, HeParameters
from collabedit_secure.configfile import ConfigError, read_config_file  # noqa: F401 (re-export)

DEFAULT_DEADLINES = {"join": 120.0, "advertise_keys": 60.0, "share_keys": 60.0, "upload": 300.0,
                     "unmask": 60.0, "download": 300.0}
DEFAULT_CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 4 << 20  # rpc/channels.py leaves room for chunks up to 4 MiB
EMBEDDED_ROOT = Path(__file__).resolve().parents[1] / "world" / "reference"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KNOWN = {"federation_id", "listen", "port_file", "state_dir", "roster", "threshold", "min_parties",
          "schedule", "privacy", "hparams", "c0", "layer_shapes", "model", "model_fingerprint",
          "deadlines", "chunk_bytes", "scale_bits", "he", "tls", "device"}


@dataclass(frozen=True)
class Layer:
    """One edited layer as the round parameters describe it (common.proto LayerSpec)."""

    layer: int
    module_name: str
    d_out: int
    d_in: int


@dataclass(frozen=True)
class TLSPaths:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True, eq=False)
class CoordinatorConfig:
    source: Path
    federation_id: str
    host: str
    port: int
    port_file: Path | None
    state_dir: Path
    roster: tuple[str, ...]
    threshold: int
    min_parties: int
    schedule: str  # "sequential" | "parallel"
    privacy: str  # "mask" | "plain" | "he"
    hparams: MemitHparams
    layers: tuple[Layer, ...]
    lambdas: tuple[float, ...]  # lambda per layer, in the order of `layers`
    c0: Mapping[str, torch.Tensor]  # module name -> C0 = E[k k^T] (float64; LazyC0: read per solve)
    model_fingerprint: str
    hparams_fingerprint: str
    c0_fingerprint: str
    deadlines: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_DEADLINES))
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    scale_bits: int = DEFAULT_SCALE_BITS
    tls: TLSPaths | None = None
    he: HeParameters | None = None  # privacy "he" only
    device: str = "cpu"  # where C0, C_acc and the solve live (devices.py)

    def public_parameters(self) -> dict:
        """What a round's parameters are made of (besides its roster): a restart compares these."""
        return {"federation_id": self.federation_id, "schedule": self.schedule, "privacy": self.privacy,
                "threshold": self.threshold, "min_parties": self.min_parties,
                "layers": [[l.layer, l.module_name, l.d_out, l.d_in] for l in self.layers],
                "lambdas": list(self.lambdas), "scale_bits": self.scale_bits, "chunk_bytes": self.chunk_bytes,
                "model": self.model_fingerprint, "hparams": self.hparams_fingerprint, "c0": self.c0_fingerprint,
                **({"he": self.he.as_dict()} if self.he else {})}


def load_config(path: str | Path) -> CoordinatorConfig:
    """Reads and checks a coordinator configuration (YAML, or TOML if the name ends in .toml)."""
    path = Path(path).resolve()
    data = read_config_file(path)
    base = path.parent

    def fail(name: str, message: str):
        raise ConfigError(f"{path}: field {name!r}: {message}")

    def need(name: str):
        if name not in data or data[name] is None:
            fail(name, "is required")
        return data[name]

    def integer(name: str, value, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            fail(name, f"must be an integer in [{low}, {high}], got {value!r}")
        return value

    def a_path(name: str, value) -> Path:
        if not isinstance(value, str) or not value:
            fail(name, f"must be a path, got {value!r}")
        return (base / value).expanduser()

    unknown = sorted(set(data) - _KNOWN)
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}")

    federation_id = need("federation_id")
    if not isinstance(federation_id, str) or not federation_id.strip():
        fail("federation_id", f"must be a non-empty string, got {federation_id!r}")

    listen = need("listen")
    host, _, port_text = str(listen).rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        fail("listen", f"must be host:port (port 0 picks a free one), got {listen!r}")
    host = host.strip("[]")  # [::1]:7443
    port_file = a_path("port_file", data["port_file"]) if data.get("port_file") else None
    state_dir = a_path("state_dir", need("state_dir"))

    roster = need("roster")
    if not isinstance(roster, list) or not roster:
        fail("roster", "must be a non-empty list of party ids")
    try:
        roster = tuple(sorted(check_party_id(p) for p in roster))
    except ValueError as err:
        fail("roster", str(err))
    if len(set(roster)) != len(roster):
        fail("roster", f"lists a party twice: {list(roster)}")

    threshold = integer("threshold", need("threshold"), 2, len(roster)) if len(roster) >= 2 else None
    if threshold is None:
        fail("roster", "a federation needs at least 2 parties (threshold t >= 2)")
    min_parties = integer("min_parties", data.get("min_parties", len(roster)), threshold, len(roster))

    schedule = data.get("schedule", "sequential")
    if schedule not in ("sequential", "parallel"):
        fail("schedule", f"must be 'sequential' or 'parallel', got {schedule!r}")
    privacy = data.get("privacy", "mask")
    if privacy not in ("mask", "plain", "he"):
        fail("privacy", f"must be 'mask', 'he' or 'plain', got {privacy!r}")

    hparams_spec = need("hparams")
    try:
        if isinstance(hparams_spec, str) and hparams_spec.endswith((".yaml", ".yml")):
            hparams = MemitHparams.from_yaml(a_path("hparams", hparams_spec))
        else:
            hparams = MemitHparams.builtin(str(hparams_spec))
    except (HparamsError, OSError) as err:
        fail("hparams", str(err))
    lambdas = tuple(hparams.layer_lambdas())

    c0_spec = need("c0")
    if c0_spec == "embedded":
        c0, d_outs = _embedded_c0(hparams, lambda message: fail("c0", message))
    else:
        c0, d_outs = _directory_c0(hparams, a_path("c0", c0_spec), lambda message: fail("c0", message)), {}
    d_outs.update(_layer_shapes(data.get("layer_shapes"), c0, hparams, lambda m: fail("layer_shapes", m)))
    layers = []
    for layer in hparams.layers:
        module = _module(hparams, layer)
        if layer not in d_outs:
            fail("layer_shapes", f"no d_out for layer {layer} ({module}); give layer_shapes: {{{layer}: D_OUT}}")
        layers.append(Layer(layer, module, d_outs[layer], _c0_dim(c0, module)))
    try:
        c0_fingerprint = fingerprints.c0_fingerprint(c0)  # reads every C0 file once: a corrupt one fails here
    except (OSError, ValueError) as err:
        fail("c0", str(err))
    if isinstance(c0, LazyC0):
        c0.release()  # read again one layer at a time, into each solve's own buffer

    if "model_fingerprint" in data:
        model_fp = data["model_fingerprint"]
        if not isinstance(model_fp, str) or not _HEX64.fullmatch(model_fp):
            fail("model_fingerprint", "must be 64 lowercase hex characters (protocol/fingerprints.py)")
    elif data.get("model") == "default":
        model_fp = _default_model_fingerprint(lambda message: fail("model", message))
    else:
        fail("model_fingerprint", "is required (or give model: default for the embedded world model)")

    deadlines = dict(DEFAULT_DEADLINES)
    given = data.get("deadlines") or {}
    if not isinstance(given, dict):
        fail("deadlines", "must be a mapping of phase -> seconds")
    aliases = {"keys": ("advertise_keys", "share_keys")}
    for name, seconds in given.items():
        if name not in DEFAULT_DEADLINES and name not in aliases:
            fail(f"deadlines.{name}", f"unknown phase; known: {', '.join([*DEFAULT_DEADLINES, *aliases])}")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < math.inf:
            fail(f"deadlines.{name}", f"must be a positive number of seconds, got {seconds!r}")
        for key in aliases.get(name, (name,)):
            deadlines[key] = float(seconds)

    chunk_bytes = integer("chunk_bytes", data.get("chunk_bytes", DEFAULT_CHUNK_BYTES), 1, MAX_CHUNK_BYTES)
    scale_bits = integer("scale_bits", data.get("scale_bits", DEFAULT_SCALE_BITS), 0, MAX_SCALE_BITS)
    he = _he_parameters(data.get("he"), scale_bits, fail) if privacy == "he" else None
    try:
        device = resolve_device(data.get("device", "cpu"))
    except DeviceError as error:
        fail("device", str(error))
    if device == "auto":
        fail("device", "the coordinator holds no model: give cpu, cuda or cuda:N for its solve")
    if privacy != "he" and data.get("he") is not None:
        fail("he", f"CKKS parameters apply to privacy: he only (this federation is {privacy!r})")

    tls = None
    if data.get("tls") is not None:
        spec = data["tls"]
        if not isinstance(spec, dict) or set(spec) != {"ca", "cert", "key"}:
            fail("tls", "must be a mapping with exactly ca, cert and key paths")
        tls = TLSPaths(*(a_path(f"tls.{k}", spec[k]) for k in ("ca", "cert", "key")))

    return CoordinatorConfig(
        source=path, federation_id=federation_id, host=host, port=int(port_text), port_file=port_file,
        state_dir=state_dir, roster=roster, threshold=threshold, min_parties=min_parties, schedule=schedule,
        privacy=privacy, hparams=hparams, layers=tuple(layers), lambdas=lambdas, c0=c0,
        model_fingerprint=model_fp, hparams_fingerprint=fingerprints.hparams_fingerprint(hparams),
        c0_fingerprint=c0_fingerprint, deadlines=deadlines, chunk_bytes=chunk_bytes,
        scale_bits=scale_bits, tls=tls, he=he, device=device,
    )


def _he_parameters(spec, scale_bits: int, fail) -> HeParameters:
    spec = {} if spec is None else spec
    if not isinstance(spec, dict) or set(spec) - {"poly_modulus_degree", "coeff_mod_bit_sizes"}:
        fail("he", "must be a mapping with at most poly_modulus_degree and coeff_mod_bit_sizes")
    defaults = HeParameters()
    try:
        return HeParameters(int(spec.get("poly_modulus_degree", defaults.poly_modulus_degree)),
                            tuple(int(b) for b in spec.get("coeff_mod_bit_sizes", defaults.coeff_mod_bit_sizes)),
                            scale_bits)
    except (HeError, TypeError, ValueError) as error:
        fail("he" if "scale_bits" not in str(error) else "scale_bits", str(error))


def _module(hparams: MemitHparams, layer: int) -> str:
    # GPT-2's projection is the default: the embedded world model is a GPT-2.
    return (hparams.rewrite_module_tmp or "transformer.h.{}.mlp.c_proj").format(layer)


def _embedded_c0(hparams: MemitHparams, fail) -> tuple[dict[str, torch.Tensor], dict[int, int]]:
    """C0 from the statistics shipped with the embedded world, d_out from its GPT-2 config."""
    from collabedit_secure.editing.covariance import read_shipped_stat

    files = {p.name.split("_mom2_")[0]: p for p in sorted((EMBEDDED_ROOT / "c0").glob("*_mom2_*.npz"))}
    c0 = {}
    for layer in hparams.layers:
        module = _module(hparams, layer)
        if module not in files:
            fail(f"no shipped statistics for {module} in {EMBEDDED_ROOT / 'c0'}; is the package complete?")
        c0[module] = read_shipped_stat(files[module]).moment().to(torch.float64)
    try:
        config = json.loads((EMBEDDED_ROOT / "model" / "config.json").read_text())
    except (OSError, ValueError) as err:
        fail(f"cannot read the embedded model's config.json ({err})")
    d_out = int(config["n_embd"])
    d_in = int(config.get("n_inner") or 4 * d_out)  # GPT-2: n_inner null means 4 x n_embd
    for module, matrix in c0.items():
        if matrix.shape[0] != d_in:
            fail(f"shipped C0 of {module} is {tuple(matrix.shape)}, the model's n_inner is {d_in}")
    return c0, {layer: d_out for layer in hparams.layers}


def _directory_c0(hparams: MemitHparams, directory: Path, fail) -> LazyC0:
    """C0 from MEMIT-layout npz files (`{module}_{dtype}_mom2_{n}.npz`) in a directory, read when a
    layer is solved (LazyC0): the coordinator holds no C0 between solves, however many layers."""
    from collabedit_secure.editing.covariance import CorruptStatsError
    from collabedit_secure.pipeline import stats_file

    if not directory.is_dir():
        fail(f"must be 'embedded' or a directory of MEMIT statistics; {directory} is not a directory")
    files = {}
    for layer in hparams.layers:
        module = _module(hparams, layer)
        try:
            files[module] = stats_file(directory, module, hparams)
        except (OSError, ValueError, CorruptStatsError) as err:
            fail(str(err))
    c0 = LazyC0(files)
    for module in files:
        try:
            c0.dim(module)  # the file's header: its shape and count
        except (OSError, ValueError) as err:
            fail(str(err))
    return c0


def _c0_dim(c0, module: str) -> int:
    return c0.dim(module) if isinstance(c0, LazyC0) else int(c0[module].shape[0])


def _layer_shapes(spec, c0, hparams: MemitHparams, fail) -> dict[int, int]:
    """layer_shapes: {layer: d_out} or {layer: {d_out: N, d_in: M}} (d_in must match C0)."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        fail("must map layer -> d_out (or -> {d_out, d_in})")
    d_outs = {}
    for key, value in spec.items():
        layer = int(key) if str(key).isdigit() else None
        if layer not in hparams.layers:
            fail(f"layer {key!r} is not one of the edited layers {hparams.layers}")
        if isinstance(value, dict):
            d_in = value.get("d_in")
            expected = _c0_dim(c0, _module(hparams, layer))
            if d_in is not None and d_in != expected:
                fail(f"layer {layer}: d_in {d_in} differs from C0's {expected}")
            value = value.get("d_out")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fail(f"layer {layer}: d_out must be a positive integer, got {value!r}")
        d_outs[layer] = value
    return d_outs


def _default_model_fingerprint(fail) -> str:
    try:
        from collabedit_secure.world import load_default

        return fingerprints.model_fingerprint(load_default(progress=False).load_model()[0])
    except Exception as err:  # noqa: BLE001 - any failure to load is a configuration problem here
        fail(f"cannot load the embedded default model to fingerprint it ({err}); give model_fingerprint")
