"""Privacy-overhead benchmark: what masking (and HE) cost a real federation round, against plain mode.

    collabedit bench privacy [--parties 2,4,8] [--dim 1024,4096] [--modes plain,mask,he]
                             [--schedule parallel] [--layers 1] [--timeout S] [--json OUT] [--plot OUT.png]

Every configuration (mode x parties x width d) is one round of a fresh federation on this machine:
a coordinator and n party daemons as separate processes over loopback gRPC with mutual TLS
(party/local.py), the parties reading synthetic statistics (SyntheticEngine) of width d: per layer
S_KK = K Kᵀ (d x d, K of rank RANK) and S_RK = R Kᵀ (d/4 x d, GPT-2 XL's d_out : d_in), C0 a
positive-definite d x d. Configurations run one after another, so all of them share the same cores.

What is measured, and where each number comes from (also written into the JSON, "definitions"):
- round_seconds: this process's clock from the first StartRound call until every party's
  GetRoundResult answers (polled every POLL_S seconds).
- phases: encode = the parties' "mask" (fixed-point encode + mask; plain: encode) or "encrypt" stage,
  upload / download = the parties' stages (means over parties); aggregate = the coordinator's
  upload_accepted add_seconds summed; unmask and solve = the coordinator's layer_solved
  unmask_seconds / solve_seconds summed (he mode: the parties' "decrypt" and "solve" stages).
  A field the processes do not report yet is null (the table prints "-").
- bytes: what each party daemon counted as sent and received (gRPC message bytes, every RPC of
  the round); the coordinator received the sum of the parties' bytes_sent. The payload bytes of
  the accepted uploads (upload_accepted) and of the served updates are in the JSON too.
- peak RSS: each process's own peak_rss_bytes (ru_maxrss) from its round result / round-end event,
  else VmHWM from /proc read before the process is stopped (the JSON says which).
- he mode: NAIVE = the serialized size of TenSEAL CKKS ciphertexts (poly_modulus_degree 8192,
  coeff_mod_bit_sizes [60, 40, 40, 60], scale 2^40) holding the full d x d S_KK, 4096 values a
  ciphertext; all of them are encrypted up to NAIVE_FULL_LIMIT ciphertexts, beyond that an evenly
  spread sample, scaled to the full count (the output says which).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from collabedit_secure.cli import output_file, positive_int

from .common import MODES, events as _events, int_list as _int_list, log_tail as _log_tail, machine_info, mean as _mean
from .common import modes as _modes, run_round, sum_field as _sum_field, synthetic_federation, threshold_for
from .common import write_report

__all__ = ["MODES", "machine_info", "threshold_for", "run", "run_configuration", "write_data", "add_ratios",
           "format_table", "naive_he"]
DEFAULT_PARTIES = (2, 4, 8)
DEFAULT_DIMS = (1024, 4096)
RANK = 32  # keys (and residuals) behind each party's synthetic statistics
POLL_S = 0.1
MB = 1e6
NAIVE_POLY_DEGREE = 8192
NAIVE_COEFF_BITS = (60, 40, 40, 60)
NAIVE_SCALE_BITS = 40
NAIVE_FULL_LIMIT = 256  # ciphertexts: d = 1024's full matrix is measured whole
NAIVE_SAMPLE = 64
FEDERATION_ID = "bench-privacy"


# ------------------------------------------------------------------------------------ arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parties", type=_int_list(2, "party count"), default=list(DEFAULT_PARTIES),
                        metavar="N,N,...", help="party counts (default 2,4,8)")
    parser.add_argument("--dim", type=_int_list(4, "width"), default=list(DEFAULT_DIMS), metavar="D,D,...",
                        help="layer widths d: S_KK is d x d, S_RK d/4 x d (default 1024,4096)")
    parser.add_argument("--modes", type=_modes, default=list(MODES), metavar="M,M,...",
                        help="privacy modes, of plain,mask,he (default all three)")
    parser.add_argument("--schedule", choices=("parallel", "sequential"), default="parallel",
                        help="the round's layer schedule (default parallel)")
    parser.add_argument("--layers", type=positive_int, default=1, help="edited layers per round (default 1)")
    parser.add_argument("--timeout", type=positive_int, default=1200, metavar="S",
                        help="seconds one configuration's round may take before it is recorded as failed "
                             "(default 1200); also every coordinator deadline and party phase timeout")
    parser.add_argument("--naive-sample", type=positive_int, default=NAIVE_SAMPLE, metavar="N",
                        help=f"he mode's naive figure: ciphertexts encrypted when the full d x d S_KK needs "
                             f"more than {NAIVE_FULL_LIMIT} (default {NAIVE_SAMPLE}); the total is scaled up")
    parser.add_argument("--workdir", metavar="DIR",
                        help="where the federations run (kept afterwards); default a temporary folder, removed")
    parser.add_argument("--keep", action="store_true", help="keep every configuration's folder (logs, state)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any configuration failed")
    parser.add_argument("--json", metavar="OUT", type=output_file, help="write every number as JSON to OUT")
    parser.add_argument("--plot", metavar="OUT.png", type=output_file,
                        help="write a 2x2 PNG: round time and MB sent per party, against parties and against d")


def _progress(message: str) -> None:
    print(f"bench privacy: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ machine


# ------------------------------------------------------------------------------------ synthetic data


def d_out_for(d: int) -> int:
    return max(1, d // 4)


def party_statistics(d: int, party: int, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Party `party`'s full (S_KK, S_RK) of one layer at width d (deterministic)."""
    from collabedit_secure.party.synthetic import low_rank_statistics

    return low_rank_statistics(d, d_out_for(d), np.random.default_rng([d, party, layer]), RANK)


def write_data(folder: Path, d: int, parties: int, layers: list[int]) -> dict:
    """hparams, C0 and `parties` statistics files of width d, shared by every configuration of that d."""
    from collabedit_secure.kernels.reference import pack_upper
    from collabedit_secure.party.engine import write_synthetic_stats
    from collabedit_secure.party.synthetic import MODEL_FINGERPRINT, positive_definite_c0, write_c0, write_hparams

    folder.mkdir(parents=True, exist_ok=True)
    hparams = write_hparams(folder, layers)
    c0 = write_c0(folder, {layer: positive_definite_c0(d, np.random.default_rng([d, 1_000_000, layer]))
                           for layer in layers})
    stats = []
    for party in range(parties):
        by_layer = {}
        for layer in layers:
            s_kk, s_rk = party_statistics(d, party, layer)
            by_layer[layer] = (pack_upper(s_kk), s_rk)  # the engine accepts the packed triangle: half the file
        stats.append(write_synthetic_stats(folder / f"stats-{party}.npz", MODEL_FINGERPRINT, by_layer))
    return {"hparams": hparams, "c0": c0, "stats": stats}


# ------------------------------------------------------------------------------------ one configuration


def run_configuration(mode: str, parties: int, d: int, data: dict, root: Path, args) -> dict:
    """One round of a fresh federation; every number of it, or the error that stopped it."""
    import grpc

    layers = list(range(args.layers))
    names = [f"p{i:02d}" for i in range(parties)]
    timeout = float(args.timeout)
    row: dict = {"mode": mode, "parties": parties, "d": d, "d_out": d_out_for(d), "layers": args.layers,
                 "schedule": args.schedule, "threshold": threshold_for(parties), "status": "failed", "error": None}
    fed = synthetic_federation(root, names, mode, args.schedule, {layer: d_out_for(d) for layer in layers}, data,
                               timeout, FEDERATION_ID)
    state: dict = {"round_id": None, "results": {}, "hwm": {}}
    try:
        with fed:
            run_round(fed, names, timeout, POLL_S, state)
            row["round_seconds"] = state["round_seconds"]
    except (grpc.RpcError, TimeoutError, RuntimeError, OSError) as error:  # ProcessFailed is a RuntimeError
        detail = error.details() if isinstance(error, grpc.RpcError) else str(error)
        tail = _log_tail(fed.log_path("coordinator"))
        row["error"] = f"{type(error).__name__}: {detail}" + (f" [coordinator log: {tail}]" if tail else "")
    round_id, results, hwm = state["round_id"], state["results"], state["hwm"]
    events = _events(fed.log_path("coordinator"), round_id) if round_id is not None else []
    row["round_id"] = round_id
    if results:
        _fill_measurements(row, mode, results, events, hwm)
        phases = {r.get("phase") for r in results.values()}
        if phases == {"COMPLETED"}:
            row["status"] = "ok"
        else:
            ended = next((e for e in events if e.get("event") in ("round_failed", "round_rolled_back")), {})
            errors = sorted({f"{p}: {r.get('error')}" for p, r in results.items() if r.get("error")})
            row["error"] = (f"round ended {'/'.join(sorted(str(p) for p in phases))}"
                            + (f"; coordinator: {ended['reason']}" if ended.get("reason") else "")
                            + (f"; {errors[0]}" if errors else ""))
    return row


def _fill_measurements(row: dict, mode: str, results: dict, events: list[dict], hwm: dict) -> None:
    names = sorted(results)
    stages = {p: {k: float(v) for k, v in (results[p].get("stage_seconds") or {}).items()} for p in names}

    def party_mean(*stage_names: str) -> float | None:
        per = [sum(stages[p][s] for s in stage_names if s in stages[p]) for p in names
               if any(s in stages[p] for s in stage_names)]
        return _mean(per)

    he = mode == "he"
    row["phase_seconds"] = {
        "encode": party_mean("encrypt") if he else party_mean("mask"),
        "upload": party_mean("upload"),
        "aggregate": _sum_field(events, "upload_accepted", "add_seconds"),
        "unmask": party_mean("decrypt") if he else _sum_field(events, "layer_solved", "unmask_seconds"),
        "solve": party_mean("solve") if he else _sum_field(events, "layer_solved", "solve_seconds"),
        "download": party_mean("download"),
    }
    # layer_solved's "seconds" is unmask + decode + solve + storing ΔW, whichever fields exist besides
    row["coordinator_layer_solved_seconds"] = _sum_field(events, "layer_solved", "seconds")
    row["coordinator_upload_seconds"] = _sum_field(events, "upload_accepted", "seconds")
    row["party_stage_seconds"] = stages
    every = sorted({s for p in names for s in stages[p]})
    row["party_stage_seconds_mean"] = {s: party_mean(s) for s in every}
    row["party_wall_seconds_max"] = max((float(results[p]["wall_seconds"]) for p in names
                                         if results[p].get("wall_seconds") is not None), default=None)

    sent = {p: int(results[p].get("bytes_sent") or 0) for p in names}
    received = {p: int(results[p].get("bytes_received") or 0) for p in names}
    row["bytes_sent_by_party"], row["bytes_received_by_party"] = sent, received
    row["bytes_sent_per_party"] = _mean(sent.values())
    row["bytes_received_per_party"] = _mean(received.values())
    row["bytes_sent_by_stage"] = {p: results[p].get("bytes_sent_by_stage") for p in names}
    row["bytes_received_by_stage"] = {p: results[p].get("bytes_received_by_stage") for p in names}
    row["coordinator_bytes_received"] = sum(sent.values())
    row["coordinator_upload_payload_bytes"] = _sum_field(events, "upload_accepted", "bytes")
    row["upload_payload_bytes_per_party_by_tensor"] = {
        tensor: _mean([e["bytes"] for e in events if e.get("event") == "upload_accepted" and e.get("tensor") == tensor]
                      or [None])
        for tensor in ("TENSOR_S_KK_UPPER", "TENSOR_S_RK")}
    served = [_sum_field(events, name, "bytes") for name in ("update_served", "aggregate_served")]
    row["coordinator_payload_bytes_served"] = (None if all(v is None for v in served)
                                               else sum(v for v in served if v is not None))

    own = {p: results[p].get("peak_rss_bytes") for p in names}
    party_rss = {p: int(own[p]) if own[p] else hwm.get(p) for p in names}
    end = next((e for e in events if e.get("event") in ("round_completed", "round_failed", "round_rolled_back")), {})
    coordinator_rss = end.get("peak_rss_bytes") or hwm.get("coordinator")
    row["peak_rss_bytes"] = {"party_max": max((v for v in party_rss.values() if v), default=None),
                             "party_mean": _mean(party_rss.values()), "by_party": party_rss,
                             "coordinator": coordinator_rss}
    row["peak_rss_source"] = {
        "party": "round result peak_rss_bytes" if all(own.values()) else "VmHWM from /proc before stopping",
        "coordinator": ("round-end event peak_rss_bytes" if end.get("peak_rss_bytes")
                        else "VmHWM from /proc before stopping")}


def add_ratios(rows: list[dict]) -> None:
    """Each configuration against plain mode's at the same parties and d, in this run."""
    plain = {(r["parties"], r["d"]): r for r in rows if r["mode"] == "plain" and r["status"] == "ok"}
    for row in rows:
        base = plain.get((row["parties"], row["d"]))
        ratios = {}
        for key in ("round_seconds", "bytes_sent_per_party", "coordinator_bytes_received"):
            ours, theirs = row.get(key), base.get(key) if base else None
            ratios[key] = ours / theirs if row["status"] == "ok" and ours is not None and theirs else None
        row["ratios_to_plain"] = ratios


# ------------------------------------------------------------------------------------ naive HE


def naive_he(d: int, sample: int = NAIVE_SAMPLE) -> dict:
    """TenSEAL CKKS ciphertexts of party 0's full d x d S_KK (layer 0): their serialized bytes."""
    import tenseal as ts

    context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=NAIVE_POLY_DEGREE,
                         coeff_mod_bit_sizes=list(NAIVE_COEFF_BITS))
    context.global_scale = 2.0 ** NAIVE_SCALE_BITS
    slots = NAIVE_POLY_DEGREE // 2
    flat = party_statistics(d, 0, 0)[0].reshape(-1)
    count = math.ceil(flat.size / slots)
    full = count <= NAIVE_FULL_LIMIT
    which = range(count) if full else sorted({int(i) for i in np.linspace(0, count - 1, min(sample, count))})
    sizes, started = [], time.perf_counter()
    for i in which:
        vector = ts.ckks_vector(context, flat[i * slots:(i + 1) * slots].tolist())
        sizes.append(len(vector.serialize()))
    seconds = time.perf_counter() - started
    per = sum(sizes) / len(sizes)
    # S_RK (d/4 x d) in the same parameters: every ciphertext of them serializes to the same size.
    s_rk_count = math.ceil((d // 4) * d / slots)
    return {"d": d, "s_rk_ciphertexts": s_rk_count, "s_rk_bytes": per * s_rk_count, "poly_modulus_degree": NAIVE_POLY_DEGREE, "coeff_mod_bit_sizes": list(NAIVE_COEFF_BITS),
            "scale_bits": NAIVE_SCALE_BITS, "slots_per_ciphertext": slots, "values": int(flat.size),
            "ciphertexts": count, "measured_ciphertexts": len(sizes), "extrapolated": not full,
            "bytes_per_ciphertext_mean": per, "bytes_measured": sum(sizes),
            "bytes": sum(sizes) if full else per * count,
            "encrypt_serialize_seconds_measured": seconds,
            "encrypt_serialize_seconds": seconds if full else seconds / len(sizes) * count}


# ------------------------------------------------------------------------------------ output


def _fmt(value, spec: str = ".2f", scale: float = 1.0) -> str:
    return "-" if value is None else format(value / scale, spec)


PHASES = ("encode", "upload", "aggregate", "unmask", "solve", "download")


def format_table(rows: list[dict]) -> str:
    head = (f"{'mode':<6}{'n':>3}{'d':>6}{'round s':>9}{'encode':>8}{'upload':>8}{'aggr':>7}{'unmask':>8}"
            f"{'solve':>7}{'downl':>7}{'MB/party':>10}{'MB coord':>10}{'RSS party':>10}{'RSS coord':>10}"
            f"{'t/plain':>8}{'B/plain':>8}")
    lines = [head]
    for r in rows:
        start = f"{r['mode']:<6}{r['parties']:>3}{r['d']:>6}"
        if r["status"] != "ok" and "phase_seconds" not in r:
            lines.append(f"{start}   FAILED: {r['error']}")
            continue
        p = r["phase_seconds"]
        ratios = r.get("ratios_to_plain") or {}
        lines.append(start + f"{_fmt(r.get('round_seconds')):>9}" + "".join(
            f"{_fmt(p[k]):>{w}}" for k, w in zip(PHASES, (8, 8, 7, 8, 7, 7)))
            + f"{_fmt(r['bytes_sent_per_party'], '.3f', MB):>10}{_fmt(r['coordinator_bytes_received'], '.3f', MB):>10}"
            + f"{_fmt(r['peak_rss_bytes']['party_max'], '.0f', MB):>10}"
            + f"{_fmt(r['peak_rss_bytes']['coordinator'], '.0f', MB):>10}"
            + f"{_fmt(ratios.get('round_seconds')):>8}{_fmt(ratios.get('bytes_sent_per_party')):>8}")
        if r["status"] != "ok":
            lines.append(f"{'':<15}FAILED: {r['error']}")
    lines.append("seconds: encode/upload/download = party means; aggr/unmask/solve = coordinator sums "
                 "(he: unmask = decrypt, solve at the parties); MB = 1e6 bytes of gRPC messages, "
                 "MB coord = sum of the parties' bytes sent; RSS = peak MB (party: the largest); "
                 "ratios to plain at the same n and d")
    return "\n".join(lines)


def format_naive(naive: list[dict], rows: list[dict]) -> str:
    lines = [f"{'d':>6}{'ciphertexts':>13}{'measured':>10}{'naive MB':>11}{'encrypt s':>11}   he MB/party (n) vs naive"]
    for item in naive:
        if item.get("error"):
            lines.append(f"{item['d']:>6}   FAILED: {item['error']}")
            continue
        he = [r for r in rows if r["mode"] == "he" and r["d"] == item["d"]]
        cells = ", ".join(f"{_fmt(r.get('bytes_sent_per_party'), '.3f', MB)} (n={r['parties']})"
                          + (f" = {r['bytes_sent_per_party'] / item['bytes']:.4f}x" if r.get("bytes_sent_per_party")
                             else f" {r['status']}") for r in he)
        fewer = [r for r in he if r.get("naive_over_he_s_kk")]
        if fewer:
            cells += (f"; naive/he: S_KK {fewer[0]['naive_over_he_s_kk']:.2f}x, S_KK+S_RK upload "
                      f"{fewer[0]['naive_over_he_upload']:.2f}x")
        note = "" if not item["extrapolated"] else " (sample, scaled)"
        lines.append(f"{item['d']:>6}{item['ciphertexts']:>13}{item['measured_ciphertexts']:>10}"
                     f"{item['bytes'] / MB:>11.1f}{item['encrypt_serialize_seconds']:>11.2f}   {cells or '-'}{note}")
    lines.append(f"naive: TenSEAL CKKS (N={NAIVE_POLY_DEGREE}, coeff bits {list(NAIVE_COEFF_BITS)}, scale "
                 f"2^{NAIVE_SCALE_BITS}) of the full d x d S_KK, serialized; 'sample, scaled': the mean size of the "
                 f"measured ciphertexts times the number needed")
    return "\n".join(lines)


def write_plot(path: str | Path, rows: list[dict], naive: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ok = [r for r in rows if r["status"] == "ok"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9), squeeze=False)
    colors = {"plain": "tab:blue", "mask": "tab:orange", "he": "tab:green"}
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D"]
    panels = (("parties", "d", "round_seconds", 1.0, "round wall time (s)", axes[0][0]),
              ("parties", "d", "bytes_sent_per_party", MB, "MB sent per party", axes[0][1]),
              ("d", "parties", "round_seconds", 1.0, "round wall time (s)", axes[1][0]),
              ("d", "parties", "bytes_sent_per_party", MB, "MB sent per party", axes[1][1]))
    for x_key, group_key, y_key, scale, ylabel, ax in panels:
        groups = sorted({r[group_key] for r in ok})
        for mode in MODES:
            for i, group in enumerate(groups):
                points = sorted((r[x_key], r[y_key] / scale) for r in ok
                                if r["mode"] == mode and r[group_key] == group and r.get(y_key) is not None)
                if points:
                    ax.plot(*zip(*points), styles[i % len(styles)], marker=markers[i % len(markers)], color=colors[mode],
                            label=f"{mode}, {'d' if group_key == 'd' else 'n'}={group}")
        if y_key == "bytes_sent_per_party" and naive:
            if x_key == "d":
                points = sorted((n["d"], n["bytes"] / MB) for n in naive)
                ax.plot(*zip(*points), ":", marker="x", color="tab:red", label="naive HE (full S_KK)")
            else:
                for n in naive:
                    ax.axhline(n["bytes"] / MB, color="tab:red", linestyle=":", linewidth=1,
                               label=f"naive HE, d={n['d']}")
        ax.set_xlabel("parties" if x_key == "parties" else "width d")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} against {'parties' if x_key == 'parties' else 'width d'}")
        if x_key == "d":
            ax.set_xscale("log", base=2)
        ticks = sorted({r[x_key] for r in ok})
        if ticks:  # the measured values, not matplotlib's 1.925, 1.950, ...
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        values = [float(y) for line in ax.get_lines() for y in line.get_ydata() if float(y) > 0]
        if values:
            if max(values) / min(values) > 20:  # e.g. HE against plain: a log axis keeps both readable
                ax.set_yscale("log")
            else:  # a linear axis from 0 shows a 1.0003x difference as the nothing it is
                ax.set_ylim(bottom=0, top=max(values) * 1.1)
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no successful configuration", ha="center", va="center", transform=ax.transAxes)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("collabedit bench privacy: one round over loopback mTLS gRPC")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


DEFINITIONS = {
    "round_seconds": "bench clock, first StartRound call until every party's GetRoundResult answered",
    "phase_seconds.encode": "mean over parties of stage 'mask' (fixed-point encode + mask; plain: encode) or 'encrypt' (he)",
    "phase_seconds.upload": "mean over parties of stage 'upload'",
    "phase_seconds.aggregate": "coordinator: sum of upload_accepted add_seconds (null if not logged)",
    "phase_seconds.unmask": "coordinator: sum of layer_solved unmask_seconds; he: mean over parties of stage 'decrypt'",
    "phase_seconds.solve": "coordinator: sum of layer_solved solve_seconds; he: mean over parties of stage 'solve'",
    "phase_seconds.download": "mean over parties of stage 'download'",
    "bytes_sent_per_party": "mean over parties of bytes_sent: gRPC message bytes of every RPC of the round",
    "coordinator_bytes_received": "sum of the parties' bytes_sent (what the coordinator received)",
    "coordinator_upload_payload_bytes": "sum of upload_accepted bytes (payload of accepted uploads, no framing)",
    "peak_rss_bytes": "per process, peak resident set over its life (startup included); source in peak_rss_source",
    "ratios_to_plain": "this configuration's value over plain mode's at the same parties and d, same run",
    "ratio_to_naive_he": "he: bytes_sent_per_party over the naive bytes of the full d x d S_KK alone",
    "naive_over_he_s_kk": "he: naive bytes of the full S_KK over this party's S_KK upload payload (packed upper triangle)",
    "naive_over_he_upload": "he: naive bytes of full S_KK + S_RK over this party's S_KK + S_RK upload payload",
}


# ------------------------------------------------------------------------------------ driver


def configurations(args) -> list[tuple[str, int, int]]:
    return [(mode, n, d) for d in args.dim for n in args.parties for mode in args.modes]


def run(args: argparse.Namespace) -> dict:
    from collabedit_secure.party.local import SINGLE_THREADED

    os.environ.update(SINGLE_THREADED)  # this process (statistics, naive HE) and every process it starts
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:  # noqa: BLE001 - torch refuses once its pool started; the env still covers children
        pass
    keep_work = bool(args.workdir)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="collabedit-bench-privacy-"))
    work.mkdir(parents=True, exist_ok=True)
    layers = list(range(args.layers))
    plan = configurations(args)
    rows: list[dict] = []
    naive: list[dict] = []
    started = time.perf_counter()
    try:
        for d in args.dim:
            t0 = time.perf_counter()
            _progress(f"writing synthetic statistics d={d} for {max(args.parties)} parties")
            data = write_data(work / "data" / f"d{d}", d, max(args.parties), layers)
            _progress(f"statistics d={d} written in {time.perf_counter() - t0:.1f} s")
            for mode, n, dd in plan:
                if dd != d:
                    continue
                index = plan.index((mode, n, d)) + 1
                label = f"[{index}/{len(plan)}] {mode} n={n} d={d}"
                _progress(f"{label}: starting")
                t1 = time.perf_counter()
                root = work / f"{mode}-n{n}-d{d}"
                try:
                    row = run_configuration(mode, n, d, data, root, args)
                except Exception as error:  # noqa: BLE001 - one configuration's failure is a result
                    row = {"mode": mode, "parties": n, "d": d, "d_out": d_out_for(d), "layers": args.layers,
                           "schedule": args.schedule, "threshold": threshold_for(n), "status": "failed",
                           "error": f"{type(error).__name__}: {error}"}
                row["configuration_seconds"] = time.perf_counter() - t1
                rows.append(row)
                if row["status"] == "ok":
                    _progress(f"{label}: done in {row['configuration_seconds']:.1f} s "
                              f"(round {row['round_seconds']:.2f} s)")
                else:
                    _progress(f"{label}: FAILED after {row['configuration_seconds']:.1f} s: {row['error']}")
                if not args.keep:
                    shutil.rmtree(root, ignore_errors=True)
            if "he" in args.modes:
                _progress(f"naive HE d={d}: encrypting the full {d} x {d} S_KK with TenSEAL CKKS")
                t2 = time.perf_counter()
                try:
                    naive.append(naive_he(d, args.naive_sample))
                    item = naive[-1]
                    _progress(f"naive HE d={d}: {item['bytes'] / MB:.1f} MB "
                              f"({item['measured_ciphertexts']} of {item['ciphertexts']} ciphertexts measured) "
                              f"in {time.perf_counter() - t2:.1f} s")
                except Exception as error:  # noqa: BLE001
                    naive.append({"d": d, "error": f"{type(error).__name__}: {error}", "bytes": None,
                                  "extrapolated": None})
                    _progress(f"naive HE d={d}: FAILED: {error}")
            if not args.keep:
                shutil.rmtree(work / "data" / f"d{d}", ignore_errors=True)
    finally:
        if not keep_work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    add_ratios(rows)
    measured_naive = [n for n in naive if n.get("bytes")]
    for row in rows:
        if row["mode"] == "he":
            item = next((n for n in measured_naive if n["d"] == row["d"]), None)
            row["naive_he_bytes"] = item["bytes"] if item else None
            row["ratio_to_naive_he"] = (row["bytes_sent_per_party"] / item["bytes"]
                                        if item and row.get("bytes_sent_per_party") else None)
            # How many times fewer bytes than the naive encoding: S_KK alone (full matrix against the
            # packed upper triangle in sum-only parameters), and the whole upload (S_KK + S_RK both ways).
            ours = row.get("upload_payload_bytes_per_party_by_tensor") or {}
            s_kk, s_rk = ours.get("TENSOR_S_KK_UPPER"), ours.get("TENSOR_S_RK")
            row["naive_over_he_s_kk"] = item["bytes"] / s_kk if item and s_kk else None
            row["naive_over_he_upload"] = ((item["bytes"] + item["s_rk_bytes"]) / (s_kk + s_rk)
                                           if item and s_kk and s_rk else None)
    report = {"benchmark": "privacy", "machine": machine_info(),
              "settings": {"parties": args.parties, "dims": args.dim, "modes": args.modes, "schedule": args.schedule,
                           "layers": args.layers, "timeout_s": args.timeout, "rank": RANK,
                           "d_out": "d // 4", "threshold": "max(2, n // 2 + 1)", "poll_s": POLL_S,
                           "naive_sample": args.naive_sample, "naive_full_limit": NAIVE_FULL_LIMIT,
                           "single_threaded": SINGLE_THREADED,
                           "note": "every process of a configuration shares this machine's cores"},
              "definitions": DEFINITIONS, "configurations": rows, "naive_he": naive,
              "failed": [f"{r['mode']} n={r['parties']} d={r['d']}" for r in rows if r["status"] != "ok"],
              "total_seconds": time.perf_counter() - started}
    print(format_table(rows))
    if naive:
        print()
        print(format_naive(naive, rows))
    if keep_work or args.keep:
        print(f"\nfederation folders kept in {work}")
    if args.json:
        write_report(args.json, report)
    if args.plot:
        write_plot(args.plot, rows, measured_naive)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    report = run(args)
    return 1 if args.strict and report["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
