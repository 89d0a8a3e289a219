"""Glue shared by the CLI commands: load a model, pick hparams, get C0, run an edit, evaluate."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .devices import DeviceError, compute_device, resolve_device
from .editing.adapters import HPARAMS_FIELD, ModelAdapter
from .editing.covariance import (
    SecondMoment, check_stats_identity, corpus_sample, export_memit_stats, import_memit_stats, layer_stats,
)
from .editing.hparams import MemitHparams
from .editing.requests import RequestError
from .files import share_as_umask_allows
from .progress import note
from .editing.tokens import check_tokenizer, context_limit

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"


@dataclass
class LoadedModel:
    """A model ready to edit, with the corpus its C0 should come from (if it has a natural one)."""

    model: torch.nn.Module
    tok: object
    name: str
    corpus: Callable[[], list[str]] | None = None  # the embedded world's own corpus
    records: list[dict] | None = None  # the embedded world's edit cases
    stored_dtype: torch.dtype = torch.float32  # what the checkpoint holds (it is edited in float32)
    embedded: bool = False  # the embedded default world model
    tok_as_stored: object = None  # the tokenizer before MEMIT's padding convention: what an edit saves
    shipped_stats: Path | None = None  # C0 statistics shipped with the model (the embedded world's)


def load_model(spec: str, device: str = "cpu") -> LoadedModel:
    """`default` (the embedded world model), a local HF directory, or a hub name already on disk,
    on `device` (devices.py: cpu, cuda, cuda:N, auto), which is checked before anything loads."""
    device = resolve_device(device)
    if spec == DEFAULT_MODEL:
        from .world import load_default

        bundle = load_default(progress=True)
        model, tok = bundle.load_model(device=str(compute_device(device)))
        return LoadedModel(model, tok, f"default ({bundle.model_dir})", bundle.corpus_texts, bundle.records,
                           embedded=True, shipped_stats=bundle.root / "c0")
    from transformers import AutoConfig, AutoTokenizer

    check_model_path(spec)
    local_only = Path(spec).is_dir()
    try:  # the config first: a broken config.json would otherwise surface as a tokenizer error
        config = AutoConfig.from_pretrained(spec, local_files_only=not local_only or None)
    except ValueError as err:  # e.g. no model_type
        raise ValueError(f"--model {spec}: config.json does not describe a model transformers knows ({err})") from None
    except OSError as err:
        raise FileNotFoundError(f"cannot load model {spec!r}: {err}") from None
    try:
        tok = AutoTokenizer.from_pretrained(spec, local_files_only=not local_only or None)
        stored = config.dtype
        placement = {"device_map": "auto"} if device == "auto" else {}
        model = load_weights(spec, local_only, placement)
    except OSError as err:
        if local_only:  # a directory with a config.json but no weights (or tokenizer) files
            raise FileNotFoundError(f"--model {spec}: cannot load it ({err})") from None
        raise FileNotFoundError(
            f"cannot load model {spec!r}: not a local HF directory, and not in the local hub cache "
            f"(this machine cannot download weights) ({err})"
        ) from None
    check_tokenizer(tok, f"the tokenizer of {spec!r}")
    as_stored = copy.deepcopy(tok)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # MEMIT's convention: pad with EOS, right padding
    tok.padding_side = "right"
    stored = stored if isinstance(stored, torch.dtype) and stored.is_floating_point else torch.float32
    name = str(Path(spec).resolve()) if local_only else spec  # results name the model wherever they are read
    model = model if device == "auto" else model.to(device)  # a device map has placed every layer already
    return LoadedModel(model.eval(), tok, name, stored_dtype=stored, tok_as_stored=as_stored)


def load_weights(spec: str, local_only: bool, placement: dict) -> torch.nn.Module:
    """The model in float32, all of its weights from the checkpoint, or one line saying why not.

    transformers re-initialises at random what the checkpoint lacks (a config.json with more layers
    than the weights) and prints a many-line report on sizes that differ; an edit of such a model
    would be an edit of noise, so both are refused, named by their first parameter.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report: the error below says what matters in one line
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            spec, local_files_only=not local_only or None, dtype=torch.float32, ignore_mismatched_sizes=True,
            output_loading_info=True, **placement)
    except (SafetensorError, RuntimeError, ValueError) as err:  # e.g. a truncated safetensors file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"--model {spec}: the weights do not load ({first})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    mismatched, missing = sorted(info["mismatched_keys"], key=lambda m: m[0]), sorted(info["missing_keys"])
    if mismatched:
        name, stored, wanted = mismatched[0]
        raise ValueError(f"--model {spec}: config.json and the weights differ in size ({len(mismatched)} "
                         f"tensor(s); {name} is {tuple(stored)} in the checkpoint, {tuple(wanted)} by config.json)")
    if missing:
        raise ValueError(f"--model {spec}: the checkpoint lacks {len(missing)} tensor(s) that config.json "
                         f"describes (first: {missing[0]}); does config.json belong to these weights?")
    return model


def check_model_path(spec: str) -> None:
    """A --model that names something on disk must be an HF model directory; anything else must be a hub
    name in the local hub cache, the only place one is read from (weights are never downloaded)."""
    path = Path(spec)
    if spec == DEFAULT_MODEL:
        return
    if not path.exists():
        if path.is_absolute() or spec.startswith((".", "~")) or spec.count("/") > 1:
            raise FileNotFoundError(f"--model {spec}: no such model directory")
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(spec, "config.json")
        except ValueError:  # not a valid hub name either
            cached = None
        if not isinstance(cached, str):
            raise FileNotFoundError(f"--model {spec}: no such directory, and no model of that name in the local "
                                    "hub cache (weights are never downloaded; give a local HF model directory)")
        return
    if not path.is_dir():
        raise ValueError(f"--model {spec}: a file, not a model directory")
    if not (path / "config.json").is_file():
        raise ValueError(f"--model {spec}: not an HF model directory (no config.json)")


def default_hparams(loaded: LoadedModel, path: str | Path | None = None,
                    schedule: str = "sequential") -> MemitHparams:
    """The given YAML (its notices printed), else the shipped file for the embedded default (per
    schedule), else the model family's shipped file scaled to the model's depth (the choice printed)."""
    if path is not None:
        hparams = MemitHparams.from_yaml(path)
        for line in hparams.notices:
            note(f"collabedit: note: {line}")
        return hparams
    name = shipped_hparams(loaded, schedule)
    if loaded.embedded:
        return MemitHparams.builtin(name)
    shipped, adapter = MemitHparams.builtin(name), ModelAdapter.from_model(loaded.model)
    hparams = scale_to_depth(shipped, adapter.n_layer)
    own = "" if adapter.family in FAMILY_HPARAMS else f" (the {adapter.family} family has no file of its own)"
    note(f"collabedit: note: no --hparams: the shipped {name} hparams{own}, made for {shipped.v_loss_layer + 1} "
         f"layers, at this model's {adapter.n_layer}: layers {hparams.layers}, v_loss_layer {hparams.v_loss_layer}")
    return hparams


# The shipped file each family's defaults come from; any other family gets MEMIT's GPT-2 XL values.
FAMILY_HPARAMS = {"gpt2": "gpt2-xl", "gptj": "gpt-j-6b", "llama": "llama", "mistral": "llama",
                  "qwen2": "qwen2-7b", "gemma": "llama", "phi3": "llama"}


def shipped_hparams(loaded: LoadedModel, schedule: str = "sequential") -> str:
    if loaded.embedded:
        return "default-world-parallel" if schedule == "parallel" else "default-world"
    return FAMILY_HPARAMS.get(ModelAdapter.from_model(loaded.model).family, "gpt2-xl")


def scale_to_depth(shipped: MemitHparams, n_layer: int) -> MemitHparams:
    """A shipped file at another depth: MEMIT's layer band at the same relative depth, the loss at the
    last block, and the model family's own module names.

    A shipped file's depth is its v_loss_layer + 1 (MEMIT puts the loss at the last block). Each end
    of the band maps to floor(l * n_layer / depth): GPT-2 XL's 13-17 of 48 is 3-4 of 12 and 1 of 4.
    """
    depth = shipped.v_loss_layer + 1
    first, last = (layer * n_layer // depth for layer in (shipped.layers[0], shipped.layers[-1]))
    templates = {field: None for field in HPARAMS_FIELD.values()}  # the family's own, from adapters.py
    return dataclasses.replace(shipped, layers=list(range(first, last + 1)), v_loss_layer=n_layer - 1, **templates)


def stats_device(hparams_path: str | Path | None, device: str | None) -> str:
    """`collabedit stats` runs where the command line or the hparams say; it writes to --out, never to
    the hparams' stats_dir (a notice says so)."""
    settings = MemitHparams.from_yaml(hparams_path).run_settings if hparams_path is not None else {}
    if "stats_dir" in settings:
        note(f"collabedit: note: {hparams_path}'s stats_dir {settings['stats_dir']} is not read by stats, "
             "which writes to --out")
    return _device_setting(hparams_path, settings, device)


def run_settings(hparams_path: str | Path | None, device: str | None, stats_dir: str | None = None,
                 corpus: str = "world") -> tuple[str, str | None]:
    """The device and the statistics folder of a run: the command line's, else EasyEdit's `device`,
    `model_parallel` and `stats_dir` from the hparams file. Where both give one, the command line wins
    and a notice says so. Checked before any model loads."""
    settings = MemitHparams.from_yaml(hparams_path).run_settings if hparams_path is not None else {}
    return _device_setting(hparams_path, settings, device), _stats_setting(hparams_path, settings, stats_dir, corpus)


def _device_setting(source, settings: dict, device: str | None) -> str:
    """EasyEdit's `device: 0` is GPU 0 and `model_parallel: true` every GPU (our 'auto')."""
    if settings.get("model_parallel"):
        given, field = "auto", "model_parallel: true"
    elif "device" in settings:
        value = settings["device"]
        given, field = (f"cuda:{value}" if isinstance(value, int) else value), f"device: {value}"
    else:
        return resolve_device(device)
    if device is not None:
        if resolve_device(device) != given:
            note(f"collabedit: note: --device {device} overrides {source}'s {field}")
        return resolve_device(device)
    try:
        return resolve_device(given)
    except DeviceError as err:
        raise DeviceError(f"{source}: {field}: {err}") from None


def _stats_setting(source, settings: dict, stats_dir: str | None, corpus: str) -> str | None:
    """EasyEdit's and MEMIT's `stats_dir` is read as --stats is, unless --stats or --corpus FILE is given."""
    wanted = settings.get("stats_dir")
    if wanted is None or stats_dir is not None or corpus != "world":
        if wanted is not None:
            option = f"--stats {stats_dir}" if stats_dir is not None else f"--corpus {corpus}"
            note(f"collabedit: note: {option} overrides {source}'s stats_dir {wanted}")
        return stats_dir
    if not Path(wanted).is_dir():
        raise FileNotFoundError(f"{source}: stats_dir {wanted}: no such directory (read from the current "
                                f"directory, {Path.cwd()}); fix it, or give --stats DIR or --corpus FILE")
    return wanted


def check_c0_source(model: str, corpus: str, stats_dir: str | Path | None, stats_option: bool = True) -> None:
    """Only the embedded default has a corpus of its own: other models need one, or MEMIT npz files.

    A corpus file is read through once here, so that a bad one fails before any model loads.
    """
    if model != DEFAULT_MODEL and corpus == "world" and stats_dir is None:
        other = (" or --stats DIR (MEMIT-layout npz files, e.g. from `collabedit stats`)" if stats_option else "")
        raise ValueError(f"C0 for {model!r} needs --corpus FILE (one document per line){other}; the world "
                         "corpus belongs to --model default")
    if corpus != "world" and stats_dir is None:
        read_corpus_file(Path(corpus))


def read_corpus(corpus: str, loaded: LoadedModel) -> list[str]:
    """'world' (the embedded world's corpus) or a text file with one document per line."""
    if corpus == "world":
        if loaded.corpus is None:
            raise ValueError(f"--corpus world belongs to --model default; give {loaded.name!r} a text file "
                             "(one document per line)")
        return loaded.corpus()
    return read_corpus_file(Path(corpus))


def read_corpus_file(path: Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file, one document each."""
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"corpus file {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    # Only line ends separate documents (str.splitlines would also split at form feeds and U+2028);
    # read_text already turns \r\n into \n.
    texts = [line for line in text.split("\n") if line.strip()]
    if not texts:
        raise ValueError(f"corpus file {path} has no text (one document per line)")
    return texts


def covariances(loaded: LoadedModel, hparams: MemitHparams, corpus: str = "world",
                stats_dir: str | Path | None = None, n_samples: int | None = None,
                progress: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """C0 = E[k kᵀ] per edited layer: imported from MEMIT-layout npz files, else computed (cached)."""
    adapter = ModelAdapter.from_model(loaded.model, hparams)
    # Before asking for the statistics of a layer the model lacks.
    hparams.validate_for(adapter.n_layer, context_limit(loaded.model))
    c0, sources = {}, {}
    texts = None
    for layer in hparams.layers:
        name = adapter.rewrite_name(layer)
        if stats_dir is not None:
            folder = stats_folder(Path(stats_dir), name, hparams, loaded)
            path = stats_file(folder, name, hparams)
            stat = import_memit_stats(path)
            notes = [check_stats_identity(stat, path, name, loaded.model), sample_count_note(path, hparams)]
            notes = [n for n in notes if n]
            sources[name] = str(path.resolve()) + (f" ({'; '.join(notes)})" if notes else "")
        else:
            texts = texts if texts is not None else read_corpus(corpus, loaded)
            stat = layer_stats(loaded.model, loaded.tok, name, texts,
                               n_samples=n_samples or hparams.mom2_n_samples,
                               max_length=hparams.mom2_max_length, batch_size=hparams.mom2_batch_size,
                               progress=progress, shipped_dir=loaded.shipped_stats)
            where = corpus if corpus == "world" else str(Path(corpus).resolve())
            sources[name] = f"computed: {where} corpus, {stat.count} tokens"
        # On the edited layer's device, where its keys are: the solve then never crosses the host.
        c0[name] = stat.moment().to(adapter.rewrite_module(loaded.model, layer).weight.device)
    return c0, sources


def stats_folder(directory: Path, module_name: str, hparams: MemitHparams, loaded: LoadedModel) -> Path:
    """Where a model's statistics are under a statistics folder: the folder itself (what `collabedit
    stats` writes), else MEMIT's and EasyEdit's nested `<folder>/<model>/<mom2_dataset>_stats/`, the
    model named as they name it (its path or hub name with "/" as "_"), by the hparams' `model_name`,
    or by the model directory's name; else the only `*/<mom2_dataset>_stats/` there is."""
    subfolder = f"{hparams.mom2_dataset}_stats"
    names = [hparams.run_settings.get("model_name"), getattr(loaded.model.config, "_name_or_path", None),
             loaded.name]
    candidates = [directory]
    for name in filter(None, names):
        candidates += [directory / str(name).replace("/", "_") / subfolder, directory / Path(name).name / subfolder]
    nested = sorted(p for p in directory.glob(f"*/{subfolder}") if p.is_dir())
    candidates += nested if len(nested) == 1 else []
    for folder in candidates:
        if any(folder.glob(f"{module_name}_*_mom2_*.npz")):
            return folder
    raise FileNotFoundError(f"no statistics for {module_name} in {directory} nor in {directory}/<model>/"
                            f"{subfolder}/ (MEMIT's and EasyEdit's layout; found for: "
                            f"{', '.join(p.parent.name for p in nested) or 'no model'}); expected "
                            f"{module_name}_float32_mom2_{hparams.mom2_n_samples}.npz")


def sample_count_note(path: Path, hparams: MemitHparams) -> str | None:
    """A file of another sample count than mom2_n_samples is used, and said so with both counts."""
    count = path.stem.rsplit("_mom2_", 1)[-1]
    if not count.isdigit() or int(count) == hparams.mom2_n_samples:
        return None
    line = f"statistics of {int(count)} samples; the hparams' mom2_n_samples is {hparams.mom2_n_samples}"
    note(f"collabedit: note: {path}: {line}")
    return line


def stats_file(directory: Path, module_name: str, hparams: MemitHparams) -> Path:
    """A layer's statistics in `directory`, by MEMIT's file name `{module}_{dtype}_mom2_{n}.npz`.

    The file for hparams.mom2_n_samples documents if present, else the only one there is; several
    other candidates are an error rather than a guess.
    """
    matches = sorted(directory.glob(f"{module_name}_*_mom2_*.npz"))
    expected = f"{module_name}_float32_mom2_{hparams.mom2_n_samples}.npz"
    if not matches:
        raise FileNotFoundError(f"no statistics for {module_name} in {directory} (expected {expected})")
    exact = [m for m in matches if m.name.endswith(f"_mom2_{hparams.mom2_n_samples}.npz")]
    if len(exact) == 1 or len(matches) == 1:
        return (exact or matches)[0]
    raise ValueError(f"several statistics for {module_name} in {directory}: "
                     f"{', '.join(m.name for m in matches)}; keep one, or name it {expected}")


def compute_stats(model: str, layers: list[int], corpus: str, out: Path, n_samples: int | None,
                  hparams_path: str | Path | None = None, device: str | None = None) -> list[Path]:
    """`collabedit stats`: compute C0 for the given layers and export MEMIT-layout npz files.

    Files already in `out` are never replaced, and `out` is made only when the first file is ready.
    """
    device = stats_device(hparams_path, device)
    repeated = sorted({layer for layer in layers if layers.count(layer) > 1})
    if repeated:
        raise ValueError(f"--layers lists {repeated} more than once")
    check_model_path(model)
    check_c0_source(model, corpus, None, stats_option=False)
    loaded = load_model(model, device)
    if hparams_path is None:
        # Statistics read only the mom2_* settings and the module names: the family's shipped values,
        # with the family's own module names (the layers come from --layers, so nothing is scaled).
        shipped = MemitHparams.builtin(shipped_hparams(loaded))
        hparams = scale_to_depth(shipped, shipped.v_loss_layer + 1)
    else:
        hparams = default_hparams(loaded, hparams_path)
    adapter = ModelAdapter.from_model(loaded.model, hparams)
    bad = [layer for layer in layers if not 0 <= layer < adapter.n_layer]
    if bad:
        raise ValueError(f"layers {bad} out of range: {model} has {adapter.n_layer} layers "
                         f"(0-{adapter.n_layer - 1})")
    documents = corpus_sample(read_corpus(corpus, loaded), n_samples or hparams.mom2_n_samples)
    # Named by the documents actually used, as MEMIT names its files by sample size.
    targets = {layer: out / f"{adapter.rewrite_name(layer)}_float32_mom2_{len(documents)}.npz" for layer in layers}
    present = [str(path) for path in targets.values() if path.exists()]
    if present:
        raise ValueError(f"{', '.join(present)} already exist(s); remove them or choose another --out")
    written = []
    for layer, path in targets.items():
        stat: SecondMoment = layer_stats(loaded.model, loaded.tok, adapter.rewrite_name(layer), documents,
                                         max_length=hparams.mom2_max_length, batch_size=hparams.mom2_batch_size)
        out.mkdir(parents=True, exist_ok=True)
        written.append(export_memit_stats(stat, path, sample_size=len(documents)))
    return written


PLAIN_REQUEST_KEYS = frozenset({"case_id", "prompt", "subject", "target_new", "target_true", "relation_id"})


def _plain_requests(path: Path) -> list | None:
    """A JSON list of plain requests (`prompt`, `subject`, targets) as EditRequests, else None."""
    from .editing.requests import EditRequest, check_unique_ids
    from .eval.datasets import read_json_list

    data = read_json_list(path)
    if not (isinstance(data[0], dict) and "prompt" in data[0]):
        return None
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise RequestError(f"{path}: edit request {index}: expected a JSON object, got {type(item).__name__}")
        unknown = sorted(set(item) - PLAIN_REQUEST_KEYS)
        missing = [key for key in ("prompt", "subject", "target_new") if key not in item]
        if unknown or missing:  # a misspelt "target_true" would otherwise be dropped without a word
            problem = f"unknown field(s) {', '.join(map(repr, unknown))}" if unknown else f"no {missing[0]!r}"
            raise RequestError(f"{path}: edit request {item.get('case_id', index)!r}: {problem}; a plain request "
                               f"has {', '.join(sorted(PLAIN_REQUEST_KEYS))} (prompt, subject and target_new "
                               "required)")
    try:
        requests = [EditRequest.from_record({"case_id": r.get("case_id", i), "requested_rewrite": r})
                    for i, r in enumerate(data)]
        check_unique_ids(requests)  # before any model loads
        return requests
    except RequestError as err:  # name the file, as the dataset loaders do
        raise RequestError(f"{path}: {err}") from None


def check_requests(path: Path) -> None:
    """Validate a request file before any model loads (a bad file must not cost a model load)."""
    from .editing.requests import requests_from_records
    from .eval.datasets import check_dataset, load_dataset

    if _plain_requests(path) is None and check_dataset(path) != "zsre":  # zsRE needs the tokenizer
        requests_from_records(load_dataset(path)[1])


def read_requests(path: Path, loaded: LoadedModel) -> list:
    """Edit requests from a CounterFact/zsRE/conflict file, or a JSON list of plain requests."""
    from .editing.requests import requests_from_records
    from .eval.datasets import load_dataset

    plain = _plain_requests(path)
    if plain is not None:
        return plain
    _, records = load_dataset(path, loaded.tok)
    return requests_from_records(records)


def run_edit(model: str, requests_path: Path, schedule: str, out: Path, hparams_path: str | None,
             stats_dir: str | None, corpus: str = "world", device: str | None = None) -> Path:
    """`collabedit edit`: global MEMIT, written as an HF model dir plus the delta and edit_meta.json."""
    device, stats_dir = run_settings(hparams_path, device, stats_dir, corpus)
    from .diagnostics import StageClock, edit_summary_line
    from .editing.memit import edit

    check_model_path(model)
    check_c0_source(model, corpus, stats_dir)
    check_requests(requests_path)
    clock = StageClock()
    loaded = load_model(model, device)
    hparams = default_hparams(loaded, hparams_path, schedule)
    requests = read_requests(requests_path, loaded)
    clock.lap("load")
    c0, sources = covariances(loaded, hparams, corpus=corpus, stats_dir=stats_dir)
    clock.lap("C0")
    try:
        result = edit(loaded.model, loaded.tok, [requests], hparams, c0, schedule=schedule, stats_files=sources)
    except RequestError as err:  # e.g. a prompt too long for the model: name the file it came from
        raise RequestError(f"{requests_path}: {err}") from None
    clock.add(result.seconds)
    result.delta.apply(loaded.model)
    out.mkdir(parents=True, exist_ok=True)
    # Saved as the base was stored (a bfloat16 checkpoint stays bfloat16); the delta itself applies
    # to the base loaded in float32, as it was computed.
    loaded.model.to(loaded.stored_dtype).save_pretrained(out)
    (loaded.tok_as_stored or loaded.tok).save_pretrained(out)  # the base's padding settings, not MEMIT's
    result.delta.save(out / "delta")
    meta = {key: result.delta.metadata.get(key) for key in
            ("schedule", "hparams", "context_templates", "request_ids", "stats_files", "model_fingerprint")}
    meta.update({"base_model": loaded.name, "n_requests": len(requests),
                 "saved_dtype": str(loaded.stored_dtype).removeprefix("torch."),
                 "module_templates": module_templates(loaded.model, hparams)})
    (out / "edit_meta.json").write_text(json.dumps(meta, indent=2, default=str))
    share_as_umask_allows(*out.rglob("*"))  # safetensors writes 0600: others could not read the model
    clock.lap("save")
    log.info("%s", edit_summary_line(len(requests), hparams.layers, hparams.mom2_update_weight, schedule, sources,
                                     clock.stages))
    return out


def module_templates(model, hparams: MemitHparams) -> dict[str, str]:
    """The module templates the edit used, by MEMIT's hparams field names: the family's defaults with
    the hparams' overrides, as resolved on this model (an hparams file may leave them out)."""
    templates = ModelAdapter.from_model(model, hparams).templates
    return {"rewrite_module_tmp": templates.rewrite, "layer_module_tmp": templates.layer,
            "mlp_module_tmp": templates.mlp, "attn_module_tmp": templates.attn,
            "ln_f_module": templates.ln_f, "lm_head_module": templates.lm_head}


EDIT_META_KEYS = ("schedule", "n_requests", "base_model", "model_fingerprint")


def edit_summary(model: str) -> dict | None:
    """What `collabedit edit` recorded about an edited model directory, for the eval report; else None."""
    from .eval.datasets import read_json

    path = Path(model) / "edit_meta.json"
    if model == DEFAULT_MODEL or not path.is_file():
        return None
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got a JSON {type(meta).__name__}")
    summary = {key: meta[key] for key in EDIT_META_KEYS if meta.get(key) is not None}
    hparams = meta.get("hparams")
    if isinstance(hparams, dict) and "layers" in hparams:
        summary["layers"] = hparams["layers"]
    delta_meta = Path(model) / "delta" / "metadata.json"  # the delta names its algorithm; edit_meta does not
    delta = read_json(delta_meta) if delta_meta.is_file() else {}
    if isinstance(delta, dict) and delta.get("algorithm"):
        summary["method"] = delta["algorithm"]
    return summary


def run_eval(model: str, dataset: Path, json_out: Path | None, fluency: bool = True,
             round_prompts: Path | None = None, seed: int = 0, max_out_len: int = 100, consistency: str | None = None,
             device: str = "cpu", extra_meta: dict | None = None) -> dict:
    """`collabedit eval`: metrics of a model on a CounterFact/zsRE/conflict file.

    `round_prompts` (conflict files only): the relation probes of spec 2.9. `consistency` ('world' or a
    directory of MEMIT's snippet and TF-IDF files) adds the reference score. Everything checkable without
    the model (dataset, round prompts, consistency files, edit_meta.json) is checked before it loads.
    A plain request list (as `edit --requests` takes) is scored on its rewrite prompts (eval/plain.py).
    `json_out` None writes no report; `extra_meta` goes into the report's meta.
    """
    from .eval.consistency import consistency_reference
    from .eval.datasets import check_dataset, load_dataset, prefixed_errors
    from .eval.plain import plain_eval_records
    from .eval.report import evaluate_dataset, write_report
    from .progress import showing

    device = resolve_device(device)
    plain = plain_eval_records(dataset, round_prompts, consistency is not None)
    if plain is not None:
        kind, fluency = "counterfact", False  # no generation prompts to sample from
    else:
        kind = check_dataset(dataset, fluency=fluency, round_prompts=round_prompts,
                             consistency=consistency is not None)
    if consistency is not None and (kind != "counterfact" or not fluency):
        raise ValueError("consistency scores the fluency generations of a CounterFact dataset: "
                         + (f"{dataset} is {kind}" if kind != "counterfact" else "drop --no-fluency"))
    reference = consistency_reference(consistency) if consistency is not None else None
    edit = edit_summary(model)
    loaded = load_model(model, device)
    kind, records = (kind, plain) if plain is not None else load_dataset(dataset, loaded.tok, round_prompts)
    fluency = fluency and kind == "counterfact"  # only CounterFact has generation prompts
    with showing("eval"):  # the evaluation's progress bars
        per_case, summary = prefixed_errors(dataset, lambda: evaluate_dataset(
            loaded.model, loaded.tok, records, kind=kind, fluency=fluency, max_out_len=max_out_len, seed=seed,
            consistency=reference))
    meta = {"model": loaded.name, "dataset": str(dataset), "kind": kind, "n_records": len(records),
            "round_prompts": str(round_prompts) if round_prompts is not None else None, "edit": edit,
            "fluency": {"seed": seed, "max_out_len": max_out_len} if fluency else None,
            "consistency": reference.source if reference is not None else None, **(extra_meta or {})}
    if plain is not None:
        meta["format"] = "plain requests"
    if json_out is not None:
        write_report(json_out, per_case, summary, meta)
    return summary
