"""`collabedit demo`: a real federation on this machine, checked against global MEMIT.

A coordinator and three party daemons run as separate processes on 127.0.0.1 over mutual TLS
(mask mode, t = 2, sequential schedule by default). Each party queues its own edits from the embedded
world through its local API; one round edits all of them. Then, in this process, global MEMIT on all
edits gives the reference: the federation's ΔW must equal it (delta_rel_err_vs_global <= 1e-9), and
the edited models are compared on efficacy / generalization / specificity. Costs per process and
stage come from GetRoundResult and the coordinator's event log.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

TOLERANCE = {"mask": 1e-9, "plain": 1e-9, "he": 1e-5}  # HE: CKKS noise (docs/federation.md, precision)
DEFAULT_SCALE_BITS = {"mask": 50, "plain": 50, "he": 45}
PARTIES = ("party-a", "party-b", "party-c")


def _say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="collabedit demo", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser.parse_args(argv)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--edits-per-party", type=int, default=10)
    p.add_argument("--schedule", choices=["sequential", "parallel"], default="sequential")
    p.add_argument("--privacy", choices=["mask", "he", "plain"], default="mask")
    p.add_argument("--threshold", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the split of edits between parties")
    # The embedded world's S_KK and S_RK have entries up to ~100 for 6 edits but a median near 1e-3:
    # at 2^-40 the rounding of those small entries, amplified by the solve and the three sequential
    # layers, reached 7e-9 of ΔW; at 2^-50 each party may still send entries up to 2^63 / (3·2^50) = 2730.
    # HE has a 60-bit prime, not a 64-bit ring: 2^-45 leaves 2^57 / (3·2^45) = 1365 per party.
    p.add_argument("--scale-bits", type=int, default=None,
                   help="scale of the masked or encrypted sums (default: 50 for mask, 45 for he: sized for the "
                        "embedded world)")
    p.add_argument("--json", default="results/demo.json", help="write the results here")
    p.add_argument("--workdir", help="keep certificates, configs, state and logs here (default: a temp folder)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds the round may take")
    # Another model than the embedded default (tests use a tiny one): all four go together.
    p.add_argument("--model", default="default", help=argparse.SUPPRESS)
    p.add_argument("--hparams", help=argparse.SUPPRESS)
    p.add_argument("--c0", default="embedded", help=argparse.SUPPRESS)
    p.add_argument("--records", help=argparse.SUPPRESS)


def _edit_proto(record: dict):
    from collabedit_secure.rpc.generated import party_pb2 as ppb

    rw = record["requested_rewrite"]
    target = lambda v: v["str"] if isinstance(v, dict) else v  # noqa: E731
    return ppb.EditRequest(case_id=str(record["case_id"]), prompt=rw["prompt"], subject=rw["subject"],
                           target_new=target(rw["target_new"]), target_true=target(rw["target_true"]),
                           relation_id=rw.get("relation_id"), paraphrase_prompts=record["paraphrase_prompts"],
                           neighborhood_prompts=record["neighborhood_prompts"])


def _coordinator_phase_seconds(log_path: Path, round_id: int) -> dict[str, float]:
    """Seconds the coordinator spent in each phase of the round, from its JSON event lines."""
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("round") == round_id and "phase" in event:
            if event["phase"] == "WAITING_FOR_PARTIES" and event.get("event") != "party_joined":
                continue  # the wait for parties counts from the first join, not from the coordinator's start
            if not events or events[-1][1] != event["phase"]:
                events.append((event["ts"], event["phase"]))
    seconds: dict[str, float] = {}
    for (ts, phase), (next_ts, _) in zip(events, events[1:]):
        seconds[phase.lower()] = seconds.get(phase.lower(), 0.0) + next_ts - ts
    return seconds


def _coordinator_payload_bytes(log_path: Path, round_id: int) -> dict[str, int]:
    """Payload bytes the coordinator itself logged: accepted uploads in, served updates out."""
    received = sent = 0
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("round") == round_id:
            received += event.get("bytes", 0) if event.get("event") == "upload_accepted" else 0
            sent += event.get("bytes", 0) if event.get("event") in ("update_served", "aggregate_served") else 0
    return {"bytes_received": received, "bytes_sent": sent}


def _rel_err(fed: dict, ref: dict) -> dict[str, float]:
    import torch

    return {name: float(torch.linalg.norm(fed[name].double() - want.double()) / torch.linalg.norm(want.double()))
            for name, want in ref.items()}


def _table(report: dict) -> str:
    lines = [f"{'method':<12}{'efficacy':>10}{'general.':>10}{'specif.':>10}{'rel.err vs global':>20}"]
    for method in ("federated", "global"):
        m = report["metrics"][method]
        err = f"{report['delta_rel_err_vs_global']:.2e}" if method == "federated" else "-"
        cells = "".join(f"{m[k]:>10.1f}" if m[k] is not None else f"{'-':>10}"
                        for k in ("efficacy", "generalization", "specificity"))
        lines.append(f"{method:<12}{cells}{err:>20}")
    stages = sorted({s for p in report["processes"].values() for s in p["stage_seconds"]})
    lines.append("")
    lines.append(f"{'process':<13}{'total s':>8}{'sent MB':>9}{'recv MB':>9}  seconds per stage")
    for name, p in report["processes"].items():
        per = " ".join(f"{s}={p['stage_seconds'][s]:.2f}" for s in stages if p["stage_seconds"].get(s))
        lines.append(f"{name:<13}{p['wall_seconds']:>8.1f}{p['bytes_sent'] / 1e6:>9.3f}"
                     f"{p['bytes_received'] / 1e6:>9.3f}  {per}")
    return "\n".join(lines)


def run_demo(args) -> int:
    import torch

    from .editing.adapters import ModelAdapter
    from .editing.context import generate_context_templates
    from .editing.delta import EditDelta
    from .editing.memit import edit
    from .editing.requests import EditRequest
    from .eval.report import evaluate_dataset
    from .party.engine import load_c0_dir, load_hparams
    from .party.local import LocalFederation, wait_results
    from .pipeline import covariances, load_model
    from .protocol.fingerprints import model_fingerprint
    from .rpc.generated import common_pb2 as cpb
    from .rpc.generated import coordinator_pb2 as pb
    from .rpc.generated import party_pb2 as ppb
    from .simulate import SimulationConfig, split_cases

    _say(f"loading model {args.model} (for the fingerprint and the global reference)")
    loaded = load_model(args.model)
    hparams_spec = args.hparams or ("default-world-parallel" if args.schedule == "parallel" else "default-world")
    hparams = load_hparams(hparams_spec)
    records = loaded.records if args.records is None else json.loads(Path(args.records).read_text())
    split = split_cases(records, SimulationConfig(parties=len(PARTIES), edits_per_party=args.edits_per_party,
                                                  rounds=1, seed=args.seed))[0]
    all_records = [r for party in split for r in party]
    fingerprint = model_fingerprint(loaded.model)
    adapter = ModelAdapter.from_model(loaded.model, hparams)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="collabedit-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    coordinator = {"schedule": args.schedule, "privacy": args.privacy, "threshold": args.threshold,
                   "scale_bits": args.scale_bits or DEFAULT_SCALE_BITS[args.privacy],
                   "min_parties": len(PARTIES), "hparams": hparams_spec, "c0": args.c0,
                   "model_fingerprint": fingerprint,
                   # The coordinator never loads the model: it learns each layer's d_out from here.
                   "layer_shapes": {layer: int(adapter.weight_out_in(loaded.model, layer).shape[0])
                                    for layer in hparams.layers},
                   "deadlines": {"join": 600, "keys": 300, "upload": 1200, "unmask": 300, "download": 600}}
    party = {"model": args.model, "hparams": hparams_spec, "c0": args.c0,
             "timeouts": {"join": 120, "phase": args.timeout, "rpc": 60}}
    fed = LocalFederation(work / "federation", list(PARTIES), coordinator, party, federation_id="demo")
    report, failed = None, []
    try:
        _say(f"starting coordinator and {len(PARTIES)} party daemons in {fed.root} (real processes, mTLS)")
        fed.start(timeout=600)
        _say(f"all SERVING: coordinator on port {fed.ports['coordinator']}, parties on "
             + ", ".join(f"{p}:{fed.ports[p]}" for p in PARTIES))
        stubs = {p: fed.party_stub(p) for p in PARTIES}
        for name, records_of in zip(PARTIES, split):
            reply = stubs[name].SubmitEditRequests(ppb.SubmitEditRequestsRequest(
                requests=[_edit_proto(r) for r in records_of]), timeout=30)
            if reply.rejected:
                raise RuntimeError(f"{name} rejected {[(r.case_id, r.reason) for r in reply.rejected]}")
            _say(f"{name}: queued {len(reply.accepted_case_ids)} private edits")
        round_ids = {stubs[p].StartRound(ppb.StartRoundRequest(), timeout=180).round_id for p in PARTIES}
        (round_id,) = round_ids
        _say(f"round {round_id} started ({args.privacy}, {args.schedule}, t={args.threshold})")
        started, seen, coordinator_stub = time.monotonic(), None, fed.coordinator_stub()
        while True:  # progress lines while the round runs
            status = coordinator_stub.GetRound(pb.GetRoundRequest(round_id=round_id), timeout=30).status
            where = (status.phase, status.current_layer if status.HasField("current_layer") else None)
            if where != seen:
                layer = f" layer {where[1]}" if where[1] is not None else ""
                _say(f"round {round_id}: {cpb.RoundPhase.Name(status.phase).removeprefix('ROUND_PHASE_')}{layer}")
                seen = where
            if status.phase in (cpb.ROUND_PHASE_COMPLETED, cpb.ROUND_PHASE_FAILED, cpb.ROUND_PHASE_ROLLED_BACK):
                break
            if time.monotonic() - started > args.timeout:
                raise TimeoutError(f"round {round_id} did not finish within {args.timeout:.0f} s")
            time.sleep(0.5)
        if status.phase != cpb.ROUND_PHASE_COMPLETED:
            raise RuntimeError(f"round {round_id} ended {cpb.RoundPhase.Name(status.phase)}: {status.failure_reason}")
        results = wait_results(stubs, round_id, timeout=600)
        wall = time.monotonic() - started
        _say(f"round {round_id} COMPLETED in {wall:.1f} s; every party saved a checkpoint and evaluated its edits")

        _say(f"global MEMIT on all {len(all_records)} edits in this process (the reference)")
        torch.set_num_threads(1)  # as the parties ran (party/local.py): the same kernels, the same arithmetic
        c0 = covariances(loaded, hparams, progress=False)[0] if args.c0 == "embedded" else load_c0_dir(args.c0, hparams)
        templates = generate_context_templates(loaded.model, loaded.tok, hparams.context_template_seed,
                                               hparams.context_template_length_params)
        requests = [EditRequest.from_record(r) for r in all_records]
        reference = edit(loaded.model, loaded.tok, [requests], hparams, c0, schedule=args.schedule,
                         templates=templates).delta
        errors = {p: _rel_err(EditDelta.load(results[p].delta_path).weights, reference.weights) for p in PARTIES}
        worst = max(max(e.values()) for e in errors.values())

        _say("evaluating the federation's model (party-a's checkpoint) and the global edit on all edits")
        from transformers import AutoModelForCausalLM

        federated_model = AutoModelForCausalLM.from_pretrained(results[PARTIES[0]].checkpoint_path,
                                                               dtype=torch.float32).eval()
        metrics = {"federated": evaluate_dataset(federated_model, loaded.tok, all_records, fluency=False)[1]}
        reference.apply(loaded.model)
        metrics["global"] = evaluate_dataset(loaded.model, loaded.tok, all_records, fluency=False)[1]
        metrics = {k: {m: v[m] for m in ("efficacy", "generalization", "specificity")} for k, v in metrics.items()}

        processes = {"coordinator": {"wall_seconds": wall,
                                     "stage_seconds": _coordinator_phase_seconds(fed.log_path("coordinator"), round_id),
                                     **_coordinator_payload_bytes(fed.log_path("coordinator"), round_id)}}
        for p in PARTIES:
            detail = json.loads((fed.root / f"{p}-state" / "rounds" / str(round_id) / "result.json").read_text())
            processes[p] = {"wall_seconds": detail["wall_seconds"], "stage_seconds": dict(results[p].stage_seconds),
                            "bytes_sent": results[p].bytes_sent, "bytes_received": results[p].bytes_received,
                            "bytes_sent_by_stage": detail["bytes_sent_by_stage"],
                            "bytes_received_by_stage": detail["bytes_received_by_stage"],
                            "own_edit_metrics": detail["metrics"]}
        report = {"model": loaded.name, "parties": list(PARTIES), "edits_per_party": args.edits_per_party,
                  "schedule": args.schedule, "privacy": args.privacy, "threshold": args.threshold,
                  "scale_bits": args.scale_bits or DEFAULT_SCALE_BITS[args.privacy], "round_id": round_id, "delta_rel_err_vs_global": worst,
                  "delta_rel_err_vs_global_by_party_and_layer": errors, "tolerance": TOLERANCE[args.privacy],
                  "metrics": metrics, "processes": processes, "workdir": str(fed.root)}
    except Exception as error:  # noqa: BLE001 - report, point at the logs, exit non-zero
        print(f"collabedit demo: FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        print(f"collabedit demo: {fed.describe_logs()}", file=sys.stderr)
        return 1
    finally:
        failed = fed.close()
    print()
    print(_table(report))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**report, "failed_processes": failed}, indent=2, default=str))
    print(f"\nresults written to {out}; logs and checkpoints in {fed.root}")
    if failed:
        print(f"collabedit demo: processes that did not exit cleanly: {failed}; {fed.describe_logs()}", file=sys.stderr)
        return 1
    if not worst <= TOLERANCE[args.privacy]:
        print(f"collabedit demo: delta_rel_err_vs_global {worst:.3e} exceeds {TOLERANCE[args.privacy]:g}",
              file=sys.stderr)
        return 1
    return 0


def demo_main(argv: list[str] | None = None) -> int:
    return run_demo(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(demo_main())
