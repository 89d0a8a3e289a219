"""What `collabedit bench privacy` and `collabedit bench memory` share: argument types, the machine's
description, one round of a synthetic federation (party/local.py) and reading its processes' logs,
results and memory."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from collabedit_secure.files import json_safe

MODES = ("plain", "mask", "he")


# ------------------------------------------------------------------------------------ arguments


def int_list(minimum: int, what: str):
    """argparse type: comma-separated whole numbers, each >= minimum, duplicates dropped."""
    def parse(value: str) -> list[int]:
        try:
            items = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {value!r}") from None
        if not items:
            raise argparse.ArgumentTypeError(f"give at least one {what}")
        low = [v for v in items if v < minimum]
        if low:
            raise argparse.ArgumentTypeError(f"every {what} must be >= {minimum}, got {low[0]}")
        return list(dict.fromkeys(items))
    return parse


def modes(value: str) -> list[str]:
    """argparse type: a comma-separated subset of MODES."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in MODES]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"modes are a comma-separated subset of {','.join(MODES)}, got {value!r}")
    return list(dict.fromkeys(items))


# ------------------------------------------------------------------------------------ machine


def machine_info() -> dict:
    import grpc
    import torch

    info: dict = {"cpu": platform.processor() or None, "cores": os.cpu_count(), "platform": platform.platform(),
                  "python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
                  "grpcio": grpc.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/meminfo") as f:
            info["memory_bytes"] = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        pass
    for name in ("tenseal", "matplotlib"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is a fact to record, not an error
            info[name] = None
    info.update(git_commit())
    return info


def git_commit() -> dict:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(dirty)}


# ------------------------------------------------------------------------------------ processes


def events(log_path: Path, round_id: int | None) -> list[dict]:
    """The coordinator's JSON event lines (of one round, if round_id is given); other lines are skipped."""
    found = []
    if not log_path.is_file():
        return found
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "event" in event and (round_id is None or event.get("round") == round_id):
            found.append(event)
    return found


def log_tail(path: Path, lines: int = 3) -> str:
    """The last lines of a process log that say what went wrong (errors first), for an error message."""
    if not path.is_file():
        return ""
    text = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    wrong = [line for line in text if any(w in line.lower() for w in ("error", "fail", "refus", "traceback"))]
    return " | ".join((wrong or text)[-lines:])[-600:]


def proc_status(pid: int, field: str) -> int | None:
    """A memory field of /proc/<pid>/status (VmHWM: peak resident set, VmRSS: now), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def vm_hwm(pid: int) -> int | None:
    """Peak resident set of a live process (VmHWM), in bytes."""
    return proc_status(pid, "VmHWM")


def reset_peak(pid: int) -> bool:
    """Restarts a live process's VmHWM from its current resident set (Linux: clear_refs 5)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def sum_field(found: list[dict], name: str, field: str) -> float | None:
    values = [e[field] for e in found if e.get("event") == name and isinstance(e.get(field), (int, float))]
    return float(sum(values)) if values else None


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(sum(values) / len(values)) if values else None


def party_result(fed, party: str, round_id: int, reply) -> dict:
    """The party's round result: its result.json (every field) where the round wrote one, else the reply's."""
    path = fed.root / f"{party}-state" / "rounds" / str(round_id) / "result.json"
    if path.is_file():
        return json.loads(path.read_text())
    from collabedit_secure.party.round_client import phase_name

    return {"phase": phase_name(reply.phase), "stage_seconds": dict(reply.stage_seconds),
            "bytes_sent": reply.bytes_sent, "bytes_received": reply.bytes_received, "error": ""}


def threshold_for(parties: int) -> int:
    """A majority, at least 2 (the coordinator's minimum)."""
    return max(2, parties // 2 + 1)


def synthetic_federation(root: Path, names: list[str], mode: str, schedule: str, layer_shapes: dict[int, int],
                         data: dict, timeout: float, federation_id: str):
    """A LocalFederation (not started) of synthetic parties: data = {"hparams", "c0", "stats": [npz per party]}."""
    from collabedit_secure.party.local import LocalFederation
    from collabedit_secure.party.synthetic import MODEL_FINGERPRINT

    parties = len(names)
    coordinator = {"schedule": schedule, "privacy": mode, "threshold": threshold_for(parties),
                   "min_parties": parties, "hparams": str(data["hparams"]), "c0": str(data["c0"]),
                   "layer_shapes": dict(layer_shapes), "model_fingerprint": MODEL_FINGERPRINT,
                   "deadlines": {"join": timeout, "keys": timeout, "upload": timeout, "unmask": timeout,
                                 "download": timeout}}
    party = {"hparams": str(data["hparams"]), "c0": str(data["c0"]),
             "timeouts": {"join": timeout, "phase": timeout, "rpc": 120}}
    per_party = {name: {"statistics": f"synthetic:{data['stats'][i]}"} for i, name in enumerate(names)}
    return LocalFederation(root, names, coordinator, party, per_party, federation_id=federation_id)


def run_round(fed, names: list[str], timeout: float, poll: float, state: dict,
              before_start: Callable[[], None] | None = None, after_results: Callable[[], None] | None = None) -> None:
    """In a started federation: one edit per party, StartRound at every party, until every party's
    GetRoundResult answers. Fills `state` as it goes (so a failure still leaves what was known):
    round_id, round_seconds, replies, hwm (each process's VmHWM once the round ended), results."""
    from collabedit_secure.party.local import wait_results
    from collabedit_secure.rpc.generated import party_pb2 as ppb

    stubs = {name: fed.party_stub(name) for name in names}
    for i, name in enumerate(names):
        stubs[name].SubmitEditRequests(ppb.SubmitEditRequestsRequest(requests=[ppb.EditRequest(
            case_id=f"{name}-1", prompt="{} is located in", subject=f"Subject {i}", target_new="X")]), timeout=30)
    if before_start is not None:
        before_start()
    started = time.perf_counter()
    rounds = {stubs[name].StartRound(ppb.StartRoundRequest(), timeout=120).round_id for name in names}
    if len(rounds) != 1:
        raise RuntimeError(f"the parties joined different rounds: {sorted(rounds)}")
    state["round_id"] = rounds.pop()
    replies = wait_results(stubs, state["round_id"], timeout=timeout, poll=poll)
    state["round_seconds"] = time.perf_counter() - started
    state["hwm"] = {name: vm_hwm(proc.pid) for name, proc in fed.procs.items()}
    if after_results is not None:
        after_results()
    state["results"] = {name: party_result(fed, name, state["round_id"], replies[name]) for name in names}


_FLAT_LIST = re.compile(r"\[\s+((?:[-+0-9.eE]+|null|true|false|\"[^\"\n]*\")(?:,\s+(?:[-+0-9.eE]+|null|true|false|\"[^\"\n]*\"))*)\s+\]")


def dump_json(report) -> str:
    """JSON indented for reading, with each innermost list of plain values on one line (a sampled
    timeline would otherwise take a line per number)."""
    text = json.dumps(json_safe(report), indent=2, allow_nan=False)
    return _FLAT_LIST.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text) + "\n"


def write_report(path: str | Path, report) -> None:
    """The report as dump_json writes it, its folder made (output_file checked it can be)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(dump_json(report))
