"""Memory benchmark: what each process of a federation round holds, against the size of one layer.

    collabedit bench memory --shape gpt2-xl|gpt-j|llama-7b [--modes plain,mask,he] [--parties 2]
                            [--layers 1] [--schedule parallel] [--timeout S] [--json OUT]

One round of a fresh federation per privacy mode: a coordinator and n party daemons as separate
processes over loopback gRPC with mutual TLS (party/local.py), the parties reading synthetic
statistics of the shape of the layer MEMIT edits in that model, the MLP's output projection:
d_in = the MLP's intermediate size, d_out = the hidden size (GPT-2 XL 6400 x 1600, GPT-J
16384 x 4096, Llama-7B 11008 x 4096). No weights are involved. The statistics are written before
the first round a block of rows at a time (S_KK = K Kᵀ of rank RANK, packed upper triangle; S_RK =
R Kᵀ; C0 in MEMIT's float32 layout), so this process never holds a d_in x d_in matrix.

What is measured, per process (also written into the JSON, "definitions"):
- peak_rss_bytes: the process's own peak resident set over its life, startup included; the headline
  figure. The largest of: the peak before the round (VmHWM read before the reset below), the round's
  peak, and the peak the process reported (ru_maxrss: the party's round result, the coordinator's
  round-end event; Linux restarts it at the reset too).
- round_peak_rss_bytes: the peak from the round's start (StartRound) to every party's result
  (VmHWM, reset through /proc/<pid>/clear_refs just before the round); startup_rss_bytes: VmHWM
  and VmRSS just before that reset (what loading the configuration, C0 and the statistics cost).
- samples: VmRSS (and its anonymous and file-backed parts) every SAMPLE_S seconds during the
  round; the phase the coordinator announced last before a process's largest sample says where
  its peak was (stored downsampled in the JSON).
Each is compared with one float64 S_KK of the layer, d_in x d_in x 8 bytes (the target: 3 times).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from collabedit_secure.cli import output_file, positive_int

from .common import (MODES, events, int_list, log_tail, modes, proc_status, reset_peak, run_round,
                     synthetic_federation, threshold_for, write_report)

SHAPES = {"gpt2-xl": (6400, 1600), "gpt-j": (16384, 4096), "llama-7b": (11008, 4096)}  # (d_in, d_out)
RANK = 32  # keys (and residuals) behind each party's synthetic statistics
C0_RANK = 16
C0_COUNT = 10
TARGET = 3.0  # peak resident set / one float64 S_KK
POLL_S = 0.1
SAMPLE_S = 0.05
TIMELINE_POINTS = 60
BLOCK_ELEMENTS = 1 << 22  # 32 MiB of float64 per generated block
MB = 1e6
FEDERATION_ID = "bench-memory"


# ------------------------------------------------------------------------------------ arguments


def _dims(value: str) -> tuple[int, int]:
    parsed = int_list(1, "dimension")(value)
    if len(parsed) != 2:
        raise argparse.ArgumentTypeError(f"--dims is D_IN,D_OUT, got {value!r}")
    return parsed[0], parsed[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    shape = parser.add_mutually_exclusive_group(required=True)
    shape.add_argument("--shape", choices=sorted(SHAPES),
                       help="the edited layer's shape: " + ", ".join(f"{k} {a} x {b}" for k, (a, b) in SHAPES.items())
                            + " (d_in = MLP intermediate size, d_out = hidden size)")
    shape.add_argument("--dims", type=_dims, metavar="D_IN,D_OUT", help=argparse.SUPPRESS)  # tests: a tiny layer
    parser.add_argument("--modes", type=modes, default=list(MODES), metavar="M,M,...",
                        help="privacy modes, of plain,mask,he (default all three)")
    parser.add_argument("--parties", type=int_list(2, "party count"), default=[2], metavar="N",
                        help="parties in the federation (default 2)")
    parser.add_argument("--layers", type=positive_int, default=1, help="edited layers (default 1)")
    parser.add_argument("--schedule", choices=("parallel", "sequential"), default="parallel",
                        help="the round's layer schedule (default parallel)")
    parser.add_argument("--timeout", type=positive_int, default=3600, metavar="S",
                        help="seconds a round may take before it is recorded as failed (default 3600); also every "
                             "coordinator deadline and party phase timeout")
    parser.add_argument("--workdir", metavar="DIR",
                        help="where the statistics and federations go (kept afterwards); default a temporary "
                             "folder, removed (gpt-j's statistics take 1.6 GB per party and layer)")
    parser.add_argument("--keep", action="store_true", help="keep every federation's folder (logs, state)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 if any round failed or a process exceeded the target")
    parser.add_argument("--json", metavar="OUT", type=output_file, help="write every number as JSON to OUT")


def _progress(message: str) -> None:
    print(f"bench memory: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ synthetic data


def s_kk_bytes(d_in: int) -> int:
    """One float64 S_KK: the yardstick of every figure here."""
    return d_in * d_in * 8


def _rows_per_block(width: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(1, width))


def _keys(d_in: int, d_out: int, party: int, layer: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([d_in, d_out, party, layer])
    return rng.standard_normal((d_in, RANK)) / np.sqrt(RANK), rng.standard_normal((d_out, RANK)) / np.sqrt(RANK)


def packed_gram_blocks(k: np.ndarray):
    """The packed upper triangle of K Kᵀ (row-major), in blocks of about BLOCK_ELEMENTS values."""
    d = k.shape[0]
    first = 0
    while first < d:
        last = min(d, first + _rows_per_block(d - first))
        product = k[first:last] @ k[first:].T  # rows first..last-1, columns first..d-1
        yield np.concatenate([product[i, i:] for i in range(last - first)])
        first = last


def product_blocks(r: np.ndarray, k: np.ndarray):
    """R Kᵀ, a block of rows at a time."""
    rows = _rows_per_block(k.shape[0])
    for first in range(0, r.shape[0], rows):
        yield r[first:first + rows] @ k.T


def c0_blocks(d: int, layer: int, dtype=np.float32):
    """count x C0 with C0 = diag(u) + B Bᵀ, u in [0.5, 1.5], B of rank C0_RANK: positive definite in float32."""
    rng = np.random.default_rng([d, 1_000_000, layer])
    b = rng.standard_normal((d, C0_RANK)) / np.sqrt(C0_RANK)
    diagonal = rng.uniform(0.5, 1.5, d)
    rows = _rows_per_block(d)
    for first in range(0, d, rows):
        block = b[first:first + rows] @ b.T
        block[np.arange(block.shape[0]), np.arange(first, first + block.shape[0])] += diagonal[first:first + rows]
        yield (block * C0_COUNT).astype(dtype)


def write_data(folder: Path, d_in: int, d_out: int, parties: int, layers: list[int]) -> dict:
    """hparams, C0 (MEMIT's float32 layout) and one statistics npz per party, written a block at a time."""
    from collabedit_secure.editing.covariance import MEMIT_CONSTRUCTOR
    from collabedit_secure.blockio import BlockArray, write_npz
    from collabedit_secure.party.synthetic import MODEL_FINGERPRINT, MODULE, write_hparams

    folder.mkdir(parents=True, exist_ok=True)
    hparams = write_hparams(folder, layers)
    c0 = folder / "c0"
    c0.mkdir(exist_ok=True)
    for layer in layers:
        write_npz(c0 / f"{MODULE.format(layer)}_float32_mom2_100000.npz", {
            "mom2.constructor": np.array(MEMIT_CONSTRUCTOR), "mom2.count": np.array(C0_COUNT),
            "mom2.mom2": BlockArray((d_in, d_in), np.float32, c0_blocks(d_in, layer))})
    stats = []
    for party in range(parties):
        arrays: dict = {"model_fingerprint": np.array(MODEL_FINGERPRINT)}
        for layer in layers:
            k, r = _keys(d_in, d_out, party, layer)
            arrays[f"s_kk_{layer}"] = BlockArray((d_in * (d_in + 1) // 2,), np.float64, packed_gram_blocks(k))
            arrays[f"s_rk_{layer}"] = BlockArray((d_out, d_in), np.float64, product_blocks(r, k))
        stats.append(write_npz(folder / f"stats-{party}.npz", arrays))
    return {"hparams": hparams, "c0": c0, "stats": stats}


# ------------------------------------------------------------------------------------ sampling


class Sampler:
    """VmRSS, RssAnon and RssFile of some processes every `interval` seconds, in a thread."""

    FIELDS = ("VmRSS", "RssAnon", "RssFile")

    def __init__(self, pids: dict[str, int], interval: float = SAMPLE_S):
        self.pids, self.interval = pids, interval
        self.samples: dict[str, list[tuple[float, int, int, int]]] = {name: [] for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            now = time.time()
            for name, pid in self.pids.items():
                values = [proc_status(pid, field) for field in self.FIELDS]
                if values[0] is not None:
                    self.samples[name].append((now, *(v or 0 for v in values)))
            if self._stop.wait(self.interval):
                return

    def summary(self, name: str, phases: list[tuple[float, str]], origin: float | None = None) -> dict:
        """The largest sample, what was anonymous and file-backed in it, the phase it fell in, and
        the timeline (at most TIMELINE_POINTS samples, the largest always kept)."""
        series = self.samples.get(name) or []
        if not series:
            return {"samples": 0}
        top = max(range(len(series)), key=lambda i: series[i][1])
        t, rss, anon, file_backed = series[top]
        phase = next((label for at, label in reversed(phases) if at <= t), None)
        keep = sorted(set(np.linspace(0, len(series) - 1, min(TIMELINE_POINTS, len(series))).astype(int)) | {top})
        start = series[0][0] if origin is None else origin
        return {"samples": len(series), "max_rss_bytes": rss, "anon_bytes_at_max": anon,
                "file_bytes_at_max": file_backed, "max_anon_bytes": max(s[2] for s in series),
                "max_file_bytes": max(s[3] for s in series), "phase_at_max": phase,
                "seconds_into_round_at_max": t - start,
                "timeline": [[round(series[i][0] - start, 3), series[i][1], series[i][2], series[i][3]] for i in keep]}


def _phases(found: list[dict]) -> list[tuple[float, str]]:
    """(time, 'PHASE event') of every coordinator event of the round, in order; an event that names no
    phase (update_served, ...) is labelled with the last phase announced before it."""
    labelled, phase = [], "?"
    for e in found:
        if isinstance(e.get("ts"), (int, float)):
            phase = e.get("phase", phase)
            labelled.append((float(e["ts"]), f"{phase} {e['event']}"))
    return labelled


# ------------------------------------------------------------------------------------ one round


def run_mode(mode: str, parties: int, d_in: int, d_out: int, data: dict, root: Path, args) -> dict:
    """One round of a fresh federation in `mode`: every process's memory, or the error that stopped it."""
    import grpc

    layers = list(range(args.layers))
    names = [f"p{i:02d}" for i in range(parties)]
    yardstick = s_kk_bytes(d_in)
    row: dict = {"mode": mode, "parties": parties, "layers": args.layers, "schedule": args.schedule,
                 "d_in": d_in, "d_out": d_out, "s_kk_bytes": yardstick, "threshold": threshold_for(parties),
                 "status": "failed", "error": None}
    fed = synthetic_federation(root, names, mode, args.schedule, {layer: d_out for layer in layers}, data,
                               float(args.timeout), FEDERATION_ID)
    state: dict = {"round_id": None, "results": {}, "hwm": {}}
    startup: dict = {}
    sampler: list[Sampler] = []

    def before_start() -> None:
        state["origin"] = time.time()
        pids = {name: proc.pid for name, proc in fed.procs.items()}
        for name, pid in pids.items():
            startup[name] = {"hwm": proc_status(pid, "VmHWM"), "rss": proc_status(pid, "VmRSS"),
                             "reset": reset_peak(pid)}
        sampler.append(Sampler(pids).start())

    def after_results() -> None:
        sampler[0].stop()

    try:
        with fed:
            run_round(fed, names, float(args.timeout), POLL_S, state, before_start, after_results)
            row["round_seconds"] = state["round_seconds"]
    except (grpc.RpcError, TimeoutError, RuntimeError, OSError) as error:  # ProcessFailed is a RuntimeError
        detail = error.details() if isinstance(error, grpc.RpcError) else str(error)
        tail = log_tail(fed.log_path("coordinator"))
        row["error"] = f"{type(error).__name__}: {detail}" + (f" [coordinator log: {tail}]" if tail else "")
    finally:
        if sampler:
            sampler[0].stop()
    round_id, results = state["round_id"], state["results"]
    found = events(fed.log_path("coordinator"), round_id) if round_id is not None else []
    row["round_id"] = round_id
    processes = ["coordinator", *names]
    reported = {name: results.get(name, {}).get("peak_rss_bytes") for name in names}
    end = next((e for e in found if e.get("event") in ("round_completed", "round_failed", "round_rolled_back")), {})
    reported["coordinator"] = end.get("peak_rss_bytes")
    reset = all(startup.get(name, {}).get("reset") for name in processes)
    round_peak = {name: state["hwm"].get(name) if reset else None for name in processes}
    # ru_maxrss counts from the reset on too (Linux resets the high-water mark it reads), so the
    # life's peak is the larger of the startup peak read just before the reset and what came after.
    lifetime = {name: max((v for v in (reported.get(name), startup.get(name, {}).get("hwm"), round_peak.get(name))
                           if v), default=None) for name in processes}
    phases = _phases(found)
    row["processes"] = {name: {
        "peak_rss_bytes": lifetime.get(name), "reported_peak_rss_bytes": reported.get(name),
        "round_peak_rss_bytes": round_peak.get(name),
        "startup_peak_rss_bytes": startup.get(name, {}).get("hwm"), "startup_rss_bytes": startup.get(name, {}).get("rss"),
        "sampled": sampler[0].summary(name, phases, state.get("origin")) if sampler else {"samples": 0}}
        for name in processes}
    origin = state.get("origin")
    row["coordinator_events"] = ([[round(t - origin, 3), label] for t, label in phases if t >= origin]
                                 if origin is not None else [])
    row["peak_rss_bytes"] = _party_and_coordinator(lifetime, names)
    row["round_peak_rss_bytes"] = _party_and_coordinator(round_peak, names)
    row["ratio_to_s_kk"] = {key: _ratio(value, yardstick) for key, value in row["peak_rss_bytes"].items()}
    row["round_ratio_to_s_kk"] = {key: _ratio(value, yardstick) for key, value in row["round_peak_rss_bytes"].items()}
    row["within_target"] = {key: (None if value is None else value <= TARGET) for key, value in row["ratio_to_s_kk"].items()}
    row["party_bytes_sent"] = _mean([results[p].get("bytes_sent") for p in names if p in results])
    row["party_stage_seconds"] = {p: results[p].get("stage_seconds") for p in names if p in results}
    if results:
        phases_done = {r.get("phase") for r in results.values()}
        if phases_done == {"COMPLETED"}:
            row["status"] = "ok"
        else:
            errors = sorted({f"{p}: {r.get('error')}" for p, r in results.items() if r.get("error")})
            reason = end.get("reason")
            row["error"] = (f"round ended {'/'.join(sorted(str(p) for p in phases_done))}"
                            + (f"; coordinator: {reason}" if reason else "") + (f"; {errors[0]}" if errors else ""))
    return row


def _party_and_coordinator(values: dict, names: list[str]) -> dict:
    party = [values.get(p) for p in names if values.get(p)]
    return {"party_max": max(party) if len(party) == len(names) else None, "coordinator": values.get("coordinator")}


def _ratio(value, yardstick: int) -> float | None:
    return None if value is None else value / yardstick


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# ------------------------------------------------------------------------------------ output


def _mb(value) -> str:
    return "-" if value is None else f"{value / MB:.0f}"


def _x(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(rows: list[dict]) -> str:
    head = (f"{'mode':<6}{'n':>3}{'L':>3}{'d_in':>7}{'d_out':>7}{'S_KK MB':>9}{'party MB':>10}{'x S_KK':>9}"
            f"{'coord MB':>10}{'x S_KK':>9}{'round: party':>14}{'coord':>9}{'round s':>9}  party peak in / coordinator peak in")
    lines = [head]
    for r in rows:
        start = f"{r['mode']:<6}{r['parties']:>3}{r['layers']:>3}{r['d_in']:>7}{r['d_out']:>7}{_mb(r['s_kk_bytes']):>9}"
        if "peak_rss_bytes" not in r:
            lines.append(f"{start}   FAILED: {r['error']}")
            continue
        peak, ratio, rnd = r["peak_rss_bytes"], r["ratio_to_s_kk"], r["round_ratio_to_s_kk"]
        procs = r["processes"]
        party_name = max((n for n in procs if n != "coordinator"),
                         key=lambda n: procs[n]["peak_rss_bytes"] or 0, default=None)
        where = (f"{(procs[party_name]['sampled'].get('phase_at_max') or '-') if party_name else '-'} / "
                 f"{procs['coordinator']['sampled'].get('phase_at_max') or '-'}")
        round_s = "-" if r.get("round_seconds") is None else f"{r['round_seconds']:.1f}"
        lines.append(start + f"{_mb(peak['party_max']):>10}{_x(ratio['party_max']):>9}{_mb(peak['coordinator']):>10}"
                     f"{_x(ratio['coordinator']):>9}{_x(rnd['party_max']):>14}{_x(rnd['coordinator']):>9}"
                     f"{round_s:>9}  {where}")
        if r["status"] != "ok":
            lines.append(f"{'':<6}FAILED: {r['error']}")
    lines.append(f"MB = 1e6 bytes of peak resident set (the process's life; party: the largest); x S_KK = over one "
                 f"float64 S_KK (d_in^2 x 8 bytes), target <= {TARGET:g}; round: the same ratio from StartRound on "
                 "(startup excluded); 'peak in': the coordinator's phase and event before the largest sample")
    return "\n".join(lines)


DEFINITIONS = {
    "s_kk_bytes": "one float64 S_KK of the layer: d_in * d_in * 8",
    "peak_rss_bytes": "per process, peak resident set over its life: the largest of its startup peak (VmHWM before "
                      "the reset), its round peak and the peak it reported (ru_maxrss: party round result, "
                      "coordinator round-end event; after the reset Linux counts it from there); party_max = the "
                      "largest party",
    "round_peak_rss_bytes": "VmHWM from just before StartRound (reset by /proc/<pid>/clear_refs 5) to every party's "
                            "result; null if the reset was not allowed",
    "ratio_to_s_kk": "peak_rss_bytes / s_kk_bytes; within_target: <= 3",
    "round_ratio_to_s_kk": "round_peak_rss_bytes / s_kk_bytes",
    "processes.*.startup_peak_rss_bytes": "VmHWM just before the reset: what starting (configuration, C0, statistics) cost",
    "processes.*.sampled": f"VmRSS / RssAnon / RssFile every {SAMPLE_S} s during the round; phase_at_max: the "
                           "coordinator's last event before the largest sample; timeline: [s into the round, VmRSS, "
                           "RssAnon, RssFile], downsampled",
    "coordinator_events": "[s into the round, 'PHASE event'] of every coordinator event, on the timelines' clock",
}


# ------------------------------------------------------------------------------------ driver


def run(args: argparse.Namespace) -> dict:
    from collabedit_secure.party.local import SINGLE_THREADED

    os.environ.update(SINGLE_THREADED)  # every process this starts (one math thread each, as bench privacy)
    d_in, d_out = args.dims if args.dims else SHAPES[args.shape]
    shape = args.shape or f"{d_in}x{d_out}"
    keep_work = bool(args.workdir)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="collabedit-bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    layers = list(range(args.layers))
    rows: list[dict] = []
    started = time.perf_counter()
    try:
        for parties in args.parties:
            t0 = time.perf_counter()
            _progress(f"writing synthetic statistics {d_in} x {d_out} ({shape}), {len(layers)} layer(s), "
                      f"{parties} parties")
            data = write_data(work / "data" / f"{shape}-n{parties}", d_in, d_out, parties, layers)
            _progress(f"statistics written in {time.perf_counter() - t0:.1f} s")
            for mode in args.modes:
                label = f"{mode} n={parties} {shape}"
                _progress(f"{label}: starting")
                t1 = time.perf_counter()
                root = work / f"{mode}-n{parties}"
                try:
                    row = run_mode(mode, parties, d_in, d_out, data, root, args)
                except Exception as error:  # noqa: BLE001 - one mode's failure is a result
                    row = {"mode": mode, "parties": parties, "layers": args.layers, "schedule": args.schedule,
                           "d_in": d_in, "d_out": d_out, "s_kk_bytes": s_kk_bytes(d_in), "status": "failed",
                           "error": f"{type(error).__name__}: {error}"}
                row["shape"] = shape
                row["configuration_seconds"] = time.perf_counter() - t1
                rows.append(row)
                if row["status"] == "ok":
                    ratio = row["ratio_to_s_kk"]
                    _progress(f"{label}: done in {row['configuration_seconds']:.1f} s (party {_x(ratio['party_max'])}"
                              f" x S_KK, coordinator {_x(ratio['coordinator'])} x S_KK)")
                else:
                    _progress(f"{label}: FAILED after {row['configuration_seconds']:.1f} s: {row['error']}")
                if not args.keep:
                    shutil.rmtree(root, ignore_errors=True)
            if not args.keep:
                shutil.rmtree(work / "data" / f"{shape}-n{parties}", ignore_errors=True)
    finally:
        if not keep_work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    from .common import machine_info  # imports torch: only now, so no process started above inherits its size

    report = {"benchmark": "memory", "machine": machine_info(),
              "settings": {"shape": shape, "d_in": d_in, "d_out": d_out, "modes": args.modes, "parties": args.parties,
                           "layers": args.layers, "schedule": args.schedule, "timeout_s": args.timeout, "rank": RANK,
                           "target_ratio": TARGET, "sample_s": SAMPLE_S, "single_threaded": SINGLE_THREADED},
              "definitions": DEFINITIONS, "configurations": rows,
              "failed": [f"{r['mode']} n={r['parties']}" for r in rows if r["status"] != "ok"],
              "over_target": [f"{r['mode']} n={r['parties']} {who}" for r in rows
                              for who, ok in (r.get("within_target") or {}).items() if ok is False],
              "bench_process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "total_seconds": time.perf_counter() - started}
    print(format_table(rows))
    if keep_work or args.keep:
        print(f"\nfolders kept in {work}")
    if args.json:
        write_report(args.json, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    report = run(args)
    return 1 if args.strict and (report["failed"] or report["over_target"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
