"""`collabedit`: MEMIT editing and CollabEdit merging from the command line.

    collabedit world build [--train [--out DIR] [--threads N]]
    collabedit stats --model M --layers 1 2 3 [--corpus world|PATH] [--samples N] [--hparams FILE] --out DIR
    collabedit edit --model M --requests FILE [--schedule S] [--hparams FILE] [--corpus PATH | --stats DIR] --out DIR
    collabedit apply --model BASE --delta DIR --out DIR
    collabedit revert --model EDITED [--delta DIR] --out DIR
    collabedit simulate [--parties N] [--edits-per-party M] [--rounds R] [--schedule S] [--methods ...] [--json OUT]
    collabedit eval --model M --dataset PATH [--base M] [--round-prompts FILE] [--no-fluency | --fluency-tokens N]
                    [--consistency DIR|world] --json OUT
    collabedit bench kernels [--quick] [--repeats N] [--json OUT]
    collabedit bench privacy [--parties 2,4,8] [--dim 1024,4096] [--modes plain,mask,he] [--json OUT] [--plot OUT.png]
    collabedit bench memory --shape gpt2-xl|gpt-j|llama-7b [--modes plain,mask,he] [--parties 2] [--layers 1] [--json OUT]
    collabedit certs init --parties a,b,c --out DIR
    collabedit coordinator serve --config FILE [--insecure]
    collabedit party run --config FILE [--insecure]
    collabedit demo [--json OUT] ...
    collabedit conformance write|check [DIR]

M is a local HF model directory, a hub name, or `default` (the embedded world model).
Heavy imports happen inside each command so that `--help` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
from pathlib import Path

from . import __version__
from .diagnostics import add_verbosity_arguments, reporting
from .files import json_safe


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def existing_file(value: str) -> str:
    """argparse type: fail before any model loads when an input file is missing."""
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a directory, not a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value}")
    return value


def hparams_file(value: str) -> str:
    """argparse type: a MEMIT hparams YAML that parses and validates, checked before any model loads."""
    from .editing.hparams import HparamsError, MemitHparams

    try:
        MemitHparams.from_yaml(existing_file(value))
    except HparamsError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def output_file(value: str) -> str:
    """argparse type for results files: prove the file can be written before minutes of work fill it."""
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a directory; give a file name")
    _check_writable(path.parent, value)
    return value


def new_dir(value: str) -> str:
    """argparse type for outputs that replace a model: never write over what is already there."""
    path = Path(value)
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        raise argparse.ArgumentTypeError(f"{value} already exists and is not an empty directory; "
                                         "pick a new one")
    _check_writable(path, value)
    return value


def output_dir(value: str) -> str:
    """argparse type for a folder that new files go into (made if missing)."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a file, not a directory")
    _check_writable(path, value)
    return value


def _check_writable(folder: Path, value: str) -> None:
    """Prove `folder` (or, where it does not exist yet, its nearest ancestor) takes new files."""
    ancestor = folder  # missing folders are made when the results are written, not now
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {value}: {ancestor} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot write {value}: {err.strerror or err}") from None


def positive_int(value: str) -> int:
    number = _whole_number(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _whole_number(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None


def seed(value: str) -> int:
    """argparse type: what torch.manual_seed and random.Random both take."""
    number = _whole_number(value)
    if not 0 <= number < 2**63:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**63 - 1, got {number}")
    return number


def refuse_overwriting_inputs(output: str | None, **inputs: str | None) -> None:
    """A results file must be neither one of the command's input files nor a file already inside an
    input directory (a model's config.json, say): writing it would replace what the command reads.
    A new file there (an eval report beside the edited model) is fine."""
    if output is None:
        return
    target = Path(output).resolve()
    for flag, value in inputs.items():
        if value is None or not Path(value).exists():  # "world", "default", a hub name: nothing on disk
            continue
        source = Path(value).resolve()
        option = f"--{flag.replace('_', '-')}"
        if target == source:
            raise CliError(f"--json {output} is the {option} file; writing the results would replace it")
        if source.is_dir() and source in target.parents and target.exists():
            raise CliError(f"--json {output} is a file of the {option} directory {value}; writing the results "
                           "would replace it")


def corpus_name(value: str) -> str:
    return value if value == "world" else existing_file(value)


def existing_dir(value: str) -> str:
    if not Path(value).is_dir():
        raise argparse.ArgumentTypeError(f"no such directory: {value}")
    return value


def _world_build(args: argparse.Namespace) -> None:
    from .world import WorldConfig, load_default, open_or_build
    from .world.reference import provenance

    if not args.train and (args.out or args.threads):
        raise CliError("--out and --threads apply to training: add --train (the shipped world needs no build)")
    if args.train:
        config = WorldConfig(threads=args.threads) if args.threads else WorldConfig()
        bundle = open_or_build(Path(args.out), config) if args.out else load_default(progress=True, config=config)
        state = "built now" if bundle.built_now else "reused"
    else:
        bundle = load_default()
        made = provenance(bundle.root)
        state = f"shipped reference build, every file checked; trained {made.get('date', '?')} on {made.get('cpu', '?')}"
    print(f"embedded default world: {bundle.root} ({state})")
    print(f"model directory:        {bundle.model_dir}")
    print(f"edit cases:             {len(bundle.records)}")
    k = bundle.knowledge  # the per-epoch history stays in knowledge.json
    print(f"knowledge check:        rewrite {k['rewrite']:.1%}, paraphrase {k['paraphrase']:.1%}, "
          f"neighbourhood {k['neighborhood']:.1%} of {k['records_checked']} records")
    print(f"training:               {k['epochs']} epochs in {k['train_s'] / 60:.1f} min, "
          f"{bundle.config.train_dtype} matmuls, {k['n_params'] / 1e6:.1f}M parameters")


def device_name(value: str) -> str:
    """argparse type: a device this machine has (devices.py), refused before anything loads."""
    from .devices import DeviceError, resolve_device

    try:
        return resolve_device(value)
    except DeviceError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    from .devices import CHOICES_HELP

    # No default here: a device from an hparams file (EasyEdit's device, model_parallel) applies only
    # when the command line names none; otherwise cpu.
    parser.add_argument("--device", type=device_name, help=f"where the model runs: {CHOICES_HELP}; overrides "
                                                           "the hparams' EasyEdit device and model_parallel")


def _stats(args: argparse.Namespace) -> None:
    from .pipeline import compute_stats

    for path in compute_stats(args.model, args.layers, args.corpus, Path(args.out), args.samples, args.hparams,
                              device=args.device):
        print(f"wrote {path}")


def _edit(args: argparse.Namespace) -> None:
    from .pipeline import run_edit

    out = run_edit(args.model, Path(args.requests), args.schedule, Path(args.out), args.hparams, args.stats,
                   args.corpus, device=args.device)
    print(f"edited model written to {out}")


def _apply(args: argparse.Namespace) -> None:
    from .delta_commands import run_apply

    print(f"edited model written to {run_apply(args.model, Path(args.delta), Path(args.out), args.device)}")


def _revert(args: argparse.Namespace) -> None:
    from .delta_commands import run_revert

    delta = Path(args.delta) if args.delta else None
    print(f"reverted model written to {run_revert(args.model, delta, Path(args.out), args.device)}")


def add_delta_commands(commands) -> None:
    """`apply` and `revert`: a delta saved by `edit` (EDITED/delta) onto its base, or off its edited model."""
    apply = commands.add_parser("apply", help="apply a saved delta (an edit's delta/ folder) to the model it was "
                                              "computed on")
    apply.add_argument("--model", required=True, help="the base: HF directory, hub name, or 'default'")
    apply.add_argument("--delta", required=True, type=existing_dir, help="a delta folder, e.g. EDITED/delta")
    apply.add_argument("--out", required=True, type=new_dir,
                       help="new or empty output directory (HF model + delta + edit_meta.json)")
    add_device_argument(apply)
    add_verbosity_arguments(apply)
    apply.set_defaults(handler=_apply)
    revert = commands.add_parser("revert", help="take a saved delta off the model it was applied to")
    revert.add_argument("--model", required=True, help="the edited model: an HF directory")
    revert.add_argument("--delta", type=existing_dir, help="the delta folder (default: MODEL/delta)")
    revert.add_argument("--out", required=True, type=new_dir, help="new or empty output directory (HF model)")
    add_device_argument(revert)
    add_verbosity_arguments(revert)
    revert.set_defaults(handler=_revert)


def _simulate(args: argparse.Namespace) -> None:
    from .simulate import SimulationConfig, run_simulation

    refuse_overwriting_inputs(args.json, dataset=args.dataset, hparams=args.hparams, corpus=args.corpus,
                              stats=args.stats, consistency=args.consistency, model=args.model)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    config = SimulationConfig(
        parties=args.parties,
        edits_per_party=args.edits_per_party,
        rounds=args.rounds,
        schedule=args.schedule,
        methods=methods,
        dataset=Path(args.dataset) if args.dataset else None,
        model=args.model,
        hparams=Path(args.hparams) if args.hparams else None,
        corpus=args.corpus,
        stats=Path(args.stats) if args.stats else None,
        seed=args.seed,
        fluency=not args.no_fluency,
        fluency_max_len=args.fluency_tokens,
        float64_weights=args.float64_weights,
        consistency=args.consistency,
        device=args.device,
    )
    run_simulation(config, json_out=Path(args.json) if args.json else None)


def _eval(args: argparse.Namespace) -> None:
    from .eval.table import eval_table, footer
    from .pipeline import check_model_path, run_eval

    if args.base is not None:  # both before either is evaluated
        check_model_path(args.model)
        try:
            check_model_path(args.base)
        except (OSError, ValueError) as err:  # its messages name the option --model
            raise CliError(str(err).replace("--model", "--base", 1)) from None
    refuse_overwriting_inputs(args.json, dataset=args.dataset, round_prompts=args.round_prompts,
                              consistency=args.consistency, model=args.model, base=args.base)
    settings = dict(fluency=not args.no_fluency, round_prompts=Path(args.round_prompts) if args.round_prompts else None,
                    max_out_len=args.fluency_tokens, consistency=args.consistency, device=args.device)
    base, extra = None, None
    if args.base is not None:  # first, so that a base that cannot be evaluated costs no report
        base = run_eval(args.base, Path(args.dataset), None, **settings)
        extra = {"base": {"model": args.base, "summary": json_safe(base)}}
    summary = run_eval(args.model, Path(args.dataset), Path(args.json), extra_meta=extra, **settings)
    print(eval_table(summary, base))
    print(footer(args.model, summary, args.base, base))


def _bench_kernels(args: argparse.Namespace) -> None:
    from .bench import kernels as bench_kernels

    bench_kernels.run(args)


def _bench_privacy(args: argparse.Namespace) -> None:
    from .bench import privacy as bench_privacy

    report = bench_privacy.run(args)
    if args.strict and report["failed"]:
        raise SystemExit(1)


def _bench_memory(args: argparse.Namespace) -> None:
    from .bench import memory as bench_memory

    report = bench_memory.run(args)
    if args.strict and (report["failed"] or report["over_target"]):
        raise SystemExit(1)


def consistency_source(value: str) -> str:
    """argparse type: 'world' or a directory (its files are checked when read, before any model loads)."""
    if value != "world" and not Path(value).is_dir():
        raise argparse.ArgumentTypeError(f"{value} is neither 'world' nor a directory")
    return value


def add_c0_arguments(parser: argparse.ArgumentParser) -> None:
    """Where C0 comes from, for the commands that edit: one source or the other, never both."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--stats", type=existing_dir,
                        help="directory with MEMIT-layout covariance npz files, in it or in MEMIT's and "
                             "EasyEdit's <model>/<mom2_dataset>_stats/ (default: the hparams' stats_dir, else "
                             "computed from --corpus and cached)")
    source.add_argument("--corpus", default="world", type=corpus_name,
                        help="C0's corpus when --stats is not given: 'world' (default; --model default only) "
                             "or a text file, one document per line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="collabedit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    world = commands.add_parser("world", help="the embedded default world and model")
    world_cmds = world.add_subparsers(dest="world_command", required=True)
    build = world_cmds.add_parser("build", help="check the shipped default world and print where it is; "
                                                 "--train trains one from scratch")
    build.add_argument("--train", action="store_true",
                       help="train the world from scratch (minutes; cached, or into --out) instead of using the "
                            "reference build shipped in the package. Another CPU trains slightly other weights")
    build.add_argument("--out", help="with --train: build into this directory instead of the cache (reused if it "
                                     "holds one)")
    build.add_argument("--threads", type=positive_int, metavar="N",
                       help="with --train: CPU threads (default: 2). Not part of the cache key: other counts "
                            "change the weights' last bits, not what the model knows")
    build.set_defaults(handler=_world_build)

    stats = commands.add_parser("stats", help="covariance statistics C0 of edited layers over a corpus")
    stats.add_argument("--model", required=True, help="HF directory, hub name, or 'default'")
    stats.add_argument("--layers", required=True, type=int, nargs="+", help="layer indices")
    stats.add_argument("--corpus", default="world", type=corpus_name,
                       help="'world' or a text file (one document per line)")
    stats.add_argument("--samples", type=positive_int, default=None,
                       help="number of documents, drawn at random with a fixed seed as MEMIT does "
                            "(default: the hparams' mom2_n_samples; all of them if fewer)")
    stats.add_argument("--hparams", type=hparams_file,
                       help="MEMIT hparams YAML for mom2_n_samples, mom2_max_length, mom2_batch_size "
                            "(default: chosen from the model family)")
    stats.add_argument("--out", required=True, type=output_dir,
                       help="directory for the npz files (MEMIT layout; made if missing, files there are kept)")
    add_device_argument(stats)
    add_verbosity_arguments(stats)
    stats.set_defaults(handler=_stats)

    edit = commands.add_parser("edit", help="MEMIT edit of a model with a request file")
    edit.add_argument("--model", required=True, help="HF directory, hub name, or 'default'")
    edit.add_argument("--requests", required=True, type=existing_file,
                      help="CounterFact, zsRE or conflict JSON, or a JSON list of plain requests "
                           '({"prompt": "{} is a citizen of", "subject": ..., "target_new": ...})')
    edit.add_argument("--schedule", choices=["parallel", "sequential"], default="sequential",
                      help="sequential: true MEMIT (default); parallel: the CollabEdit code's variant")
    edit.add_argument("--hparams", type=hparams_file,
                      help="MEMIT or EasyEdit hparams YAML (default: the model family's shipped file at the "
                           "model's depth; the layers chosen are printed)")
    add_c0_arguments(edit)
    edit.add_argument("--out", required=True, type=new_dir,
                      help="new or empty output directory (HF model + delta + edit_meta.json)")
    add_device_argument(edit)
    add_verbosity_arguments(edit)
    edit.set_defaults(handler=_edit)

    add_delta_commands(commands)

    sim = commands.add_parser("simulate", help="in-process collaborative editing experiment")
    sim.add_argument("--parties", type=positive_int, default=10, help="number of parties (default: 10)")
    sim.add_argument("--edits-per-party", type=positive_int, default=20,
                     help="edits each party makes per round (default: 20)")
    sim.add_argument("--rounds", type=positive_int, default=1,
                     help="editing rounds; later rounds edit the merged model (default: 1)")
    sim.add_argument("--schedule", choices=["parallel", "sequential"], default="sequential",
                     help="sequential: true MEMIT, layer-synchronous (default); "
                          "parallel: the CollabEdit code's variant")
    sim.add_argument("--methods", default="collabedit,global,ta,sa,ties",
                     help="comma-separated, from: collabedit, global, ta, sa, ties, none (the unedited model); "
                          "default: collabedit,global,ta,sa,ties")
    sim.add_argument("--dataset", type=existing_file,
                     help="CounterFact-format file (default: the embedded world)")
    sim.add_argument("--model", default="default",
                     help="HF directory, hub name, or 'default' (others need --dataset and --corpus or --stats)")
    sim.add_argument("--hparams", type=hparams_file,
                     help="MEMIT hparams YAML (default: the shipped file for the model and schedule)")
    add_c0_arguments(sim)
    sim.add_argument("--seed", type=seed, default=0,
                     help="seed of the draw of edits for the parties and of fluency sampling (default: 0)")
    sim_fluency = sim.add_mutually_exclusive_group()
    sim_fluency.add_argument("--no-fluency", action="store_true", help="skip generation-based fluency")
    sim_fluency.add_argument("--fluency-tokens", type=positive_int, metavar="N",
                     help="length of each fluency sample in tokens, prompt included (default: MEMIT's 100; "
                          "40 on the embedded world, as its recorded results)")
    sim.add_argument("--consistency", type=consistency_source, metavar="DIR|world",
                     help="reference of the consistency metric: a directory with MEMIT's attribute_snippets.json, "
                          "idf.npy and tfidf_vocab.json, or 'world' (default: the world's own on the embedded "
                          "world, none with --dataset)")
    sim.add_argument("--float64-weights", action="store_true",
                     help="hold the model in float64 between rounds, so each round builds on the earlier "
                          "updates unrounded (evaluation runs in float64 too, slower)")
    sim.add_argument("--json", type=output_file, help="write the results JSON here")
    add_device_argument(sim)
    sim.set_defaults(handler=_simulate)

    ev = commands.add_parser("eval", help="evaluate a model on a CounterFact, zsRE or conflict file")
    ev.add_argument("--model", required=True, help="HF directory, hub name, or 'default'")
    ev.add_argument("--dataset", required=True, type=existing_file,
                    help="CounterFact, MultiCounterFact, zsRE or conflict JSON (format detected from the records)")
    ev.add_argument("--round-prompts", type=existing_file,
                    help="conflict datasets only: round_prompts.json, the relation probes of the conflict "
                         "metrics (p_conf vs p_obj on each relation's prompts)")
    ev_fluency = ev.add_mutually_exclusive_group()
    ev_fluency.add_argument("--no-fluency", action="store_true", help="skip generation-based fluency (CounterFact)")
    ev_fluency.add_argument("--fluency-tokens", type=positive_int, default=100, metavar="N",
                    help="length of each fluency sample in tokens, prompt included (default: MEMIT's 100)")
    ev.add_argument("--consistency", type=consistency_source, metavar="DIR|world",
                    help="CounterFact only: score consistency (MEMIT's reference score of the fluency generations) "
                         "against a directory with MEMIT's attribute_snippets.json, idf.npy and tfidf_vocab.json, "
                         "or 'world', the embedded world's facts")
    ev.add_argument("--base", metavar="MODEL",
                    help="also evaluate this model (the unedited base) on the same dataset and print both side by "
                         "side with the change; its summary goes into the report's meta.base")
    ev.add_argument("--json", required=True, type=output_file, help="write the per-case report here")
    add_device_argument(ev)
    add_verbosity_arguments(ev)
    ev.set_defaults(handler=_eval)

    bench = commands.add_parser("bench", help="benchmarks")
    bench_cmds = bench.add_subparsers(dest="bench_command", required=True)
    bench_kernels = bench_cmds.add_parser("kernels", help="compiled kernels vs their references")
    from .bench import kernels as bench_kernels_module

    bench_kernels_module.add_arguments(bench_kernels)
    bench_kernels.set_defaults(handler=_bench_kernels)
    bench_privacy = bench_cmds.add_parser("privacy", help="one federation round per privacy mode, party count and "
                                                          "width: time, bytes and memory against plain mode")
    from .bench import privacy as bench_privacy_module

    bench_privacy_module.add_arguments(bench_privacy)
    bench_privacy.set_defaults(handler=_bench_privacy)
    bench_memory = bench_cmds.add_parser("memory", help="one federation round per privacy mode at a real model's "
                                                        "layer shape: each process's peak memory against one S_KK")
    from .bench import memory as bench_memory_module

    bench_memory_module.add_arguments(bench_memory)
    bench_memory.set_defaults(handler=_bench_memory)

    from .coordinator.cli import add_commands as add_coordinator_commands
    from .party.cli import add_commands as add_party_commands

    add_coordinator_commands(commands)  # coordinator serve, certs init
    add_party_commands(commands)  # party run
    from . import demo as demo_module

    demo = commands.add_parser("demo", help="a federation of three party daemons and a coordinator on this "
                                            "machine, compared with global MEMIT (scripts/dev.sh demo)")
    demo_module.add_arguments(demo)
    demo.set_defaults(handler=_demo)

    vectors = commands.add_parser("conformance", help="write or check the protocol's conformance vectors "
                                                      "(proto/conformance/*.json)")
    vectors.add_argument("action", choices=["write", "check"])
    vectors.add_argument("folder", nargs="?", help="default: proto/conformance of this checkout")
    vectors.set_defaults(handler=_conformance)
    return parser


def _conformance(args: argparse.Namespace) -> None:
    from .protocol import conformance

    code = conformance.run(args.action, Path(args.folder) if args.folder else conformance.DEFAULT_DIR)
    if code:
        raise SystemExit(code)


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    code = run_demo(args)
    if code:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # Only the commands with --verbose/--quiet: the daemons configure logging their own way.
        with reporting(args.verbosity) if hasattr(args, "verbosity") else contextlib.nullcontext():
            args.handler(args)
    except (CliError, OSError, ValueError) as err:  # e.g. a read-only cache: the message names the path
        print(f"collabedit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # not a crash: no traceback
        return _stopped(args.command, "interrupted", 128 + signal.SIGINT)
    except Terminated:
        return _stopped(args.command, "terminated", 128 + signal.SIGTERM)
    return 0


class Terminated(BaseException):
    """SIGTERM, raised where the program is: a BaseException like KeyboardInterrupt, so `finally`
    blocks and `except BaseException` clean-ups run as for Ctrl-C, and `except Exception` does not
    swallow it."""


def _stopped(command: str, how: str, status: int) -> int:
    print(f"collabedit {command}: {how} (C0 statistics checkpointed so far resume on the next run)",
          file=sys.stderr)
    return status


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def console_main() -> int:
    """The installed `collabedit`: SIGTERM (kill, a job scheduler's stop) unwinds like Ctrl-C, so a
    world build removes its temporary folder and C0 keeps its checkpoint, and ends with one line."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    return main()


if __name__ == "__main__":
    sys.exit(console_main())
