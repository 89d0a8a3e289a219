"""A party daemon's configuration: one YAML or TOML file (see parties/a.yaml), checked at load time.

Every error names the file and the field. Paths are relative to the file's folder.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from collabedit_secure.devices import DeviceError, resolve_device
from collabedit_secure.protocol.encoding import check_party_id
from collabedit_secure.configfile import ConfigError, read_config_file  # noqa: F401 (re-export)

_KNOWN = {"party_id", "federation_id", "coordinator", "listen", "port_file", "model", "hparams", "c0", "state_dir",
          "tls", "auto_start", "min_batch", "max_batch", "statistics", "evaluate", "timeouts",
          "he_workers", "device"}
_TIMEOUTS = {"join": 120.0, "phase": 900.0, "rpc": 30.0}
SYNTHETIC_PREFIX = "synthetic:"


@dataclass(frozen=True)
class TLSPaths:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class PartyConfig:
    source: Path
    party_id: str
    federation_id: str
    coordinator: str
    listen_host: str
    listen_port: int
    port_file: Path | None
    model: str  # "default" or a local HF model directory
    hparams: str  # a shipped hparams name or a YAML path
    c0: str  # "embedded" or a directory of MEMIT statistics
    state_dir: Path
    tls: TLSPaths | None
    auto_start: bool = False
    min_batch: int = 1
    max_batch: int | None = None
    synthetic: Path | None = None  # statistics from an npz instead of a model (protocol tests, benchmarks)
    evaluate: bool = True
    timeouts: dict | None = None
    he_workers: int = 1  # processes that encrypt in HE rounds (TenSEAL holds the GIL: threads would not help)
    device: str = "cpu"  # where the model, its statistics and (HE) the solve live: devices.py

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"

    def timeout(self, name: str) -> float:
        return (self.timeouts or _TIMEOUTS)[name]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_config(path: str | Path, insecure: bool = False, check_identity: bool = True) -> PartyConfig:
    """Reads and checks a party configuration; with TLS, the certificate's CN must be party_id."""
    path = Path(path).resolve()
    data = read_config_file(path)
    base = path.parent

    def fail(name: str, message: str):
        raise ConfigError(f"{path}: field {name!r}: {message}")

    def need(name: str):
        if data.get(name) is None:
            fail(name, "is required")
        return data[name]

    def text(name: str, default=None) -> str:
        value = data.get(name, default) if default is not None else need(name)
        if not isinstance(value, str) or not value.strip():
            fail(name, f"must be a non-empty string, got {value!r}")
        return value

    def a_path(name: str, value) -> Path:
        if not isinstance(value, str) or not value:
            fail(name, f"must be a path, got {value!r}")
        return (base / value).expanduser()

    unknown = sorted(set(data) - _KNOWN)
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}")
    party_id = text("party_id")
    try:
        check_party_id(party_id)
    except ValueError as err:
        fail("party_id", str(err))
    coordinator = text("coordinator")
    if ":" not in coordinator:
        fail("coordinator", f"must be host:port, got {coordinator!r}")

    listen = text("listen", "127.0.0.1:0")
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or int(port) > 65535:
        fail("listen", f"must be host:port on loopback (port 0 picks a free one), got {listen!r}")
    if not _is_loopback(host):
        fail("listen", f"{host!r} is not a loopback address: the local API has no authentication, so it is "
                       "served only on 127.0.0.1, ::1 or localhost")

    model = text("model", "default")
    if model != "default" and not (base / model).expanduser().is_dir():
        fail("model", f"must be 'default' or a local HF model directory; {base / model} is not a directory")
    if model != "default":
        model = str((base / model).expanduser().resolve())
    hparams = text("hparams", "default-world")
    if hparams.endswith((".yaml", ".yml")):
        if not (base / hparams).is_file():
            fail("hparams", f"no such file: {base / hparams}")
        hparams = str((base / hparams).resolve())
    c0 = text("c0", "embedded")
    if c0 != "embedded":
        if not (base / c0).is_dir():
            fail("c0", f"must be 'embedded' or a directory of MEMIT statistics; {base / c0} is not a directory")
        c0 = str((base / c0).resolve())
    if c0 == "embedded" and model != "default":
        fail("c0", "'embedded' belongs to model: default; give a directory of MEMIT statistics")

    synthetic = None
    statistics = data.get("statistics", "model")
    if statistics != "model":
        if not isinstance(statistics, str) or not statistics.startswith(SYNTHETIC_PREFIX):
            fail("statistics", f"must be 'model' or 'synthetic:<npz path>', got {statistics!r}")
        synthetic = a_path("statistics", statistics[len(SYNTHETIC_PREFIX):])
        if not synthetic.is_file():
            fail("statistics", f"no such file: {synthetic}")

    tls = None
    if data.get("tls") is not None:
        spec = data["tls"]
        if not isinstance(spec, dict) or set(spec) != {"ca", "cert", "key"}:
            fail("tls", "must be a mapping with exactly ca, cert and key paths")
        tls = TLSPaths(*(a_path(f"tls.{k}", spec[k]) for k in ("ca", "cert", "key")))
    elif not insecure:
        fail("tls", "is required (ca, cert, key); only --insecure runs without it")
    if tls is not None and check_identity:
        from collabedit_secure.rpc.tls import TLSConfigError, load_identity

        try:
            identity = load_identity(tls.cert, tls.key, tls.ca)
        except (OSError, TLSConfigError) as err:
            fail("tls", str(err))
        if identity.common_name != party_id:
            fail("party_id", f"{party_id!r} differs from the certificate's common name {identity.common_name!r} "
                             f"({tls.cert}); a party's id is its certificate name")

    flags = {}
    for name in ("auto_start", "evaluate"):
        value = data.get(name, name == "evaluate")
        if not isinstance(value, bool):
            fail(name, f"must be true or false, got {value!r}")
        flags[name] = value
    counts = {}
    for name, default in (("min_batch", 1), ("max_batch", None), ("he_workers", 1)):
        value = data.get(name, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            fail(name, f"must be a positive integer, got {value!r}")
        counts[name] = value
    if counts["max_batch"] is not None and counts["max_batch"] < counts["min_batch"]:
        fail("max_batch", f"{counts['max_batch']} is below min_batch {counts['min_batch']}")
    timeouts = dict(_TIMEOUTS)
    given = data.get("timeouts") or {}
    if not isinstance(given, dict):
        fail("timeouts", "must be a mapping of join / phase / rpc -> seconds")
    for name, seconds in given.items():
        if name not in _TIMEOUTS:
            fail(f"timeouts.{name}", f"unknown; known: {', '.join(_TIMEOUTS)}")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            fail(f"timeouts.{name}", f"must be a positive number of seconds, got {seconds!r}")
        timeouts[name] = float(seconds)

    try:
        device = resolve_device(data.get("device", "cpu"))
    except DeviceError as error:
        fail("device", str(error))

    return PartyConfig(
        source=path, party_id=party_id, federation_id=text("federation_id"), coordinator=coordinator,
        listen_host=host, listen_port=int(port), port_file=a_path("port_file", data["port_file"])
        if data.get("port_file") else None, model=model, hparams=hparams, c0=c0,
        state_dir=a_path("state_dir", need("state_dir")), tls=tls, auto_start=flags["auto_start"],
        min_batch=counts["min_batch"], max_batch=counts["max_batch"], synthetic=synthetic,
        evaluate=flags["evaluate"], timeouts=timeouts, he_workers=counts["he_workers"], device=device)
