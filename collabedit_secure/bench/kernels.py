"""Kernel benchmark: each compiled kernel against its torch/numpy baseline in the same run.

    python -m collabedit_secure.bench.kernels [--quick] [--json OUT]

The "kernel" timings are of whichever backend the kernels select (COLLABEDIT_KERNELS=reference
times the reference): every row records it as "backend", and the repeats it used as "repeats".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from collabedit_secure import kernels
from collabedit_secure.cli import output_file, positive_int
from collabedit_secure.kernels import reference

PEERS = 5
SIZES = (1024, 4096, 6400)
QUICK_SIZES = (1024, 4096)
LARGE_D = 4096  # from this d on, each measurement takes seconds: half the repeats


def repeats_for(d: int, repeats: int) -> int:
    return max(1, repeats // 2) if d >= LARGE_D else repeats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="d in {1024, 4096} only, fewer repeats")
    parser.add_argument("--json", metavar="OUT", type=output_file, help="write the results as JSON to OUT")
    parser.add_argument("--repeats", type=positive_int, default=None, help="timed repeats per measurement")


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: page faults, thread pools, BLAS buffers
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine_info() -> dict:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": sys.version.split()[0], "backends": kernels.available_backends()}


def bench_covariance(d: int, repeats: int) -> list[dict]:
    """Both precisions of the kernel against torch float32 and float64 GEMM updates."""
    n = 4096
    gen = torch.Generator().manual_seed(d)
    keys = torch.randn(n, d, generator=gen)
    acc = torch.zeros(d, d, dtype=torch.float64)
    acc32, keys64 = torch.zeros(d, d), keys.double()
    ours = {precision: median_time(lambda p=precision: kernels.covariance_accumulate(acc, keys, precision=p), repeats)
            for precision in ("float64", "mixed")}
    rows = []
    for name, ref_acc, ref_keys in (("float32", acc32, keys), ("float64", acc, keys64)):
        def torch_update(a=ref_acc, k=ref_keys):
            a.add_(k.T @ k)
        base = median_time(torch_update, repeats)
        for precision, t in ours.items():
            rows.append({"kernel": f"covariance_accumulate[{precision}]", "backend": kernels.backend_for(acc, keys),
                         "repeats": repeats, "d": d, "n": n,
                         "baseline": f"torch acc += keys.T @ keys ({name})",
                         "kernel_s": t, "baseline_s": base, "speedup": base / t})
    return rows


def bench_solve(d: int, repeats: int) -> list[dict]:
    """The kernel (assembly from C0 and packed S_KK included) against two library solves of the
    assembled system: LU (torch.linalg.solve) and the library's own Cholesky (torch.linalg.cholesky
    + torch.cholesky_solve), the obvious call for a symmetric positive definite system."""
    d_out = d // 4
    gen = torch.Generator().manual_seed(d)
    a = torch.randn(d, d + 8, generator=gen, dtype=torch.float64)
    c0 = a @ a.T / d
    s_kk = kernels.pack_upper(torch.eye(d, dtype=torch.float64))
    s_rk = torch.randn(d_out, d, generator=gen, dtype=torch.float64)
    system = c0 + torch.eye(d, dtype=torch.float64)
    result: dict[str, Any] = {}
    ours = median_time(lambda: result.__setitem__("ours", kernels.regularized_solve(c0, 1.0, s_kk, s_rk)), repeats)
    references = {
        "torch.linalg.solve (LU) on the assembled system":
            lambda: torch.linalg.solve(system, s_rk.T).T,
        "torch.linalg.cholesky + cholesky_solve (assembled)":
            lambda: torch.cholesky_solve(s_rk.T, torch.linalg.cholesky(system)).T,
    }

    def residual(delta):
        return float(torch.linalg.norm(system @ delta.T - s_rk.T) / (torch.linalg.norm(system) * torch.linalg.norm(delta)))

    rows = []
    for name, solve in references.items():
        base = median_time(lambda: result.__setitem__(name, solve()), repeats)
        rows.append({"kernel": "regularized_solve", "backend": kernels.backend_for(c0, s_kk, s_rk), "repeats": repeats,
                     "d": d, "rhs": d_out, "threading": os.environ.get("COLLABEDIT_SOLVE_THREADING") or "split",
                     "baseline": name, "kernel_s": ours, "baseline_s": base, "speedup": base / ours,
                     "kernel_residual": residual(result["ours"]), "baseline_residual": residual(result[name])})
    return rows


def numpy_crypto_masking(values: np.ndarray, scale_bits: int, seeds: list[bytes], signs: list[int],
                         out: np.ndarray | None = None) -> np.ndarray:
    """The fastest numpy + cryptography pipeline: chunked update_into and in-place ring adds."""
    return reference.mask_encode(values, scale_bits, None, seeds, signs, out=out)


def bench_masking(d: int, repeats: int) -> dict:
    n = d * (d + 1) // 2  # a packed S_KK upload
    rng = np.random.default_rng(d)
    values = rng.standard_normal(n)
    seeds = [rng.bytes(32) for _ in range(PEERS + 1)]
    signs = [1] + [1 if p % 2 else -1 for p in range(PEERS)]
    # Both pipelines write into a buffer reused across calls, as a party masking upload after upload
    # does: a fresh n-word array costs a page fault per 4 KiB on first touch, which is the kernel's
    # (OS's) cost, not masking's; the time with a fresh array per call is reported beside it.
    out = np.empty(n, np.uint64)
    ours = median_time(lambda: kernels.mask_encode(values, 24, seeds[0], seeds[1:], signs[1:], out=out), repeats)
    ours_fresh = median_time(lambda: kernels.mask_encode(values, 24, seeds[0], seeds[1:], signs[1:]), repeats)
    base = median_time(lambda: numpy_crypto_masking(values, 24, seeds, signs, out=out), repeats)
    bound_s = aes_bound_time(b"".join(seeds), n, repeats)
    single = Cipher(algorithms.AES(seeds[0][:16]), modes.CTR(seeds[0][16:])).encryptor()
    zeros = np.zeros(8 * min(n, 1 << 17), np.uint8)
    chunk = np.empty(zeros.size, np.uint8)
    one_thread = median_time(lambda: [single.update_into(zeros, chunk) for _ in range(max(1, n // (1 << 17)))], repeats)
    one_thread_rate = 8 * (1 << 17) * max(1, n // (1 << 17)) / one_thread
    return {"kernel": "mask_encode", "backend": kernels.backend_for(values, out), "repeats": repeats,
            "d": d, "elements": n, "peers": PEERS,
            "baseline": "numpy + cryptography (chunked update_into, in-place adds)",
            "kernel_s": ours, "baseline_s": base, "speedup": base / ours, "kernel_fresh_out_s": ours_fresh,
            "keystream_GBps_all_threads": None if bound_s is None else 8 * n * (PEERS + 1) / bound_s / 1e9,
            "keystream_GBps_one_thread_cryptography": one_thread_rate / 1e9,
            "aes_bound_s": bound_s, "fraction_of_aes_bound": None if bound_s is None else bound_s / ours}


def aes_bound_time(seeds: bytes, n: int, repeats: int) -> float | None:
    """The AES bound: the same OpenSSL AES-CTR calls, chunking and threads as the kernel producing
    the keystreams of n words each, with nothing else (no values read, no output written). It is
    C++ code: None when the extension is not built (the table says so)."""
    module = kernels._backends.cpu_module
    if module is None:
        return None
    return median_time(lambda: module.keystream_bound(seeds, n), repeats)


def format_table(rows: list[dict]) -> str:
    lines = [f"{'kernel':<32} {'backend':<9} {'d':>5} {'baseline':<52} {'kernel s':>9} {'base s':>9} {'x':>6}  notes",
             "-" * 140]
    for r in rows:
        lines.append(f"{r['kernel']:<32} {r['backend']:<9} {r['d']:>5} {r['baseline']:<52} {r['kernel_s']:>9.4f} "
                     f"{r['baseline_s']:>9.4f} {r['speedup']:>6.2f}  {row_notes(r)}")
    return "\n".join(lines)


def row_notes(r: dict) -> str:
    if "kernel_residual" in r:
        return f"resid {r['kernel_residual']:.1e} vs {r['baseline_residual']:.1e} ({r['threading']} threading)"
    if "fraction_of_aes_bound" not in r:
        return ""
    fresh = f"fresh out {r['kernel_fresh_out_s']:.4f} s"
    if r["fraction_of_aes_bound"] is None:
        return f"AES bound not measured (C++ extension not built); {fresh}"
    return (f"{100 * r['fraction_of_aes_bound']:.0f}% of AES bound ({r['keystream_GBps_all_threads']:.1f} GB/s "
            f"keystream); {fresh}")


def run(args: argparse.Namespace) -> dict:
    sizes = QUICK_SIZES if args.quick else SIZES
    repeats = args.repeats or (3 if args.quick else 5)
    rows: list[dict] = []
    for d in sizes:
        few = repeats_for(d, repeats)
        rows += bench_covariance(d, few)
        rows += bench_solve(d, few)
        rows.append(bench_masking(d, few))
        print(format_table(rows[-7:]).split("\n", 2)[-1], flush=True)
    # Each row records the repeats it used and the backend it timed ("kernel" may be the reference).
    report = {"machine": machine_info(), "quick": bool(args.quick), "repeats_requested": repeats,
              "large_d_repeats": repeats_for(LARGE_D, repeats), "backends_timed": sorted({r["backend"] for r in rows}),
              "results": rows}
    print()
    print(format_table(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)  # output_file checked it can be made
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
